//! Paged KV cache. The pool owns fixed-size blocks of `block_size` positions
//! (all layers, keys and values); a sequence owns a block table into it. The
//! model's weights hold no per-request state, so any set of sequences can be
//! stepped together, and a finished or cancelled sequence gives its blocks
//! back at once.
//!
//! Block layout: `[layer][k|v][kv_head][slot][head_dim]`, so the keys of one
//! head within a block are contiguous for the attention loop.

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    /// Bytes of one cached number: 4 in the CPU engine's f32 blocks, 2 where
    /// a device keeps its cache in 16 bits.
    pub elem_bytes: usize,
}

impl KvLayout {
    pub fn block_floats(&self) -> usize {
        self.layers * 2 * self.kv_heads * self.block_size * self.head_dim
    }

    pub fn block_bytes(&self) -> usize {
        self.block_floats() * self.elem_bytes
    }

    /// Bytes of cache one token position takes.
    pub fn bytes_per_token(&self) -> usize {
        self.layers * 2 * self.kv_heads * self.head_dim * self.elem_bytes
    }

    #[inline]
    fn offset(&self, layer: usize, which: usize, head: usize, slot: usize) -> usize {
        (((layer * 2 + which) * self.kv_heads + head) * self.block_size + slot) * self.head_dim
    }
}

pub type BlockId = u32;

/// Where the keys and values of blocks live. The model decides: CPU memory
/// for the native engine ([`CpuBlocks`]), device memory for a GPU backend.
/// The pool only hands out block ids; the store holds their contents.
pub trait BlockStore: Send {
    /// Give block `id` storage; called the first time the id is handed out.
    fn ensure(&mut self, id: BlockId) -> Result<()>;
    /// Copy the contents of one block into another.
    fn copy_block(&mut self, from: BlockId, to: BlockId) -> Result<()>;
    fn as_any(&self) -> &dyn std::any::Any;
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

/// Blocks in CPU memory, allocated on first use.
pub struct CpuBlocks {
    layout: KvLayout,
    blocks: Vec<Box<[f32]>>,
}

impl CpuBlocks {
    pub fn new(layout: KvLayout) -> Self {
        debug_assert_eq!(layout.elem_bytes, 4, "CPU blocks hold f32");
        CpuBlocks {
            layout,
            blocks: Vec::new(),
        }
    }

    /// Store the keys and values of one position (all kv heads).
    pub fn write(&mut self, id: BlockId, layer: usize, slot: usize, k: &[f32], v: &[f32]) {
        let l = self.layout;
        let block = &mut self.blocks[id as usize];
        for h in 0..l.kv_heads {
            let src = h * l.head_dim..(h + 1) * l.head_dim;
            let ko = l.offset(layer, 0, h, slot);
            block[ko..ko + l.head_dim].copy_from_slice(&k[src.clone()]);
            let vo = l.offset(layer, 1, h, slot);
            block[vo..vo + l.head_dim].copy_from_slice(&v[src]);
        }
    }

    /// Keys of one head in a block: `block_size * head_dim` values.
    #[inline]
    pub fn keys(&self, id: BlockId, layer: usize, head: usize) -> &[f32] {
        let l = &self.layout;
        let o = l.offset(layer, 0, head, 0);
        &self.blocks[id as usize][o..o + l.block_size * l.head_dim]
    }

    #[inline]
    pub fn values(&self, id: BlockId, layer: usize, head: usize) -> &[f32] {
        let l = &self.layout;
        let o = l.offset(layer, 1, head, 0);
        &self.blocks[id as usize][o..o + l.block_size * l.head_dim]
    }

    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }
}

impl BlockStore for CpuBlocks {
    fn ensure(&mut self, id: BlockId) -> Result<()> {
        while self.blocks.len() <= id as usize {
            self.blocks
                .push(vec![0f32; self.layout.block_floats()].into_boxed_slice());
        }
        Ok(())
    }

    fn copy_block(&mut self, from: BlockId, to: BlockId) -> Result<()> {
        let src = self.blocks[from as usize].clone();
        self.blocks[to as usize].copy_from_slice(&src);
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// The block pool of one model. Blocks get storage on first use, up to
/// `max_blocks`, and are recycled, never given back to the allocator, so
/// memory is bounded by configuration.
pub struct KvPool {
    layout: KvLayout,
    store: Box<dyn BlockStore>,
    /// Blocks that have storage.
    allocated: usize,
    free: Vec<BlockId>,
    refs: Vec<u32>,
    max_blocks: usize,
}

impl std::fmt::Debug for KvPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvPool")
            .field("layout", &self.layout)
            .field("allocated", &self.allocated)
            .field("free", &self.free.len())
            .field("max_blocks", &self.max_blocks)
            .finish()
    }
}

impl KvPool {
    /// A pool holding at most `budget_bytes` of cache (at least one block)
    /// in `store`.
    pub fn with_store(layout: KvLayout, budget_bytes: usize, store: Box<dyn BlockStore>) -> Self {
        let max_blocks = (budget_bytes / layout.block_bytes()).max(1);
        KvPool {
            layout,
            store,
            allocated: 0,
            free: Vec::new(),
            refs: Vec::new(),
            max_blocks,
        }
    }

    /// A pool in CPU memory.
    pub fn new(layout: KvLayout, budget_bytes: usize) -> Self {
        Self::with_store(layout, budget_bytes, Box::new(CpuBlocks::new(layout)))
    }

    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }

    pub fn store(&self) -> &dyn BlockStore {
        self.store.as_ref()
    }

    pub fn store_mut(&mut self) -> &mut dyn BlockStore {
        self.store.as_mut()
    }

    /// The CPU store, when the blocks live in CPU memory.
    pub fn cpu(&self) -> Option<&CpuBlocks> {
        self.store.as_any().downcast_ref()
    }

    pub fn cpu_mut(&mut self) -> Option<&mut CpuBlocks> {
        self.store.as_any_mut().downcast_mut()
    }

    pub fn max_blocks(&self) -> usize {
        self.max_blocks
    }

    /// Blocks that can still be handed out.
    pub fn available_blocks(&self) -> usize {
        self.free.len() + (self.max_blocks - self.allocated)
    }

    pub fn used_blocks(&self) -> usize {
        self.allocated - self.free.len()
    }

    /// Bytes of cache memory allocated so far (in use or recycled).
    pub fn allocated_bytes(&self) -> usize {
        self.allocated * self.layout.block_bytes()
    }

    pub fn capacity_tokens(&self) -> usize {
        self.max_blocks * self.layout.block_size
    }

    pub fn allocate(&mut self) -> Option<BlockId> {
        let id = if let Some(id) = self.free.pop() {
            id
        } else if self.allocated < self.max_blocks {
            let id = self.allocated as BlockId;
            if let Err(e) = self.store.ensure(id) {
                tracing::warn!(error = %e, "KV block storage could not grow");
                return None;
            }
            self.allocated += 1;
            self.refs.push(0);
            id
        } else {
            return None;
        };
        self.refs[id as usize] = 1;
        Some(id)
    }

    /// Another owner of a block (a sequence sharing a cached prefix).
    pub fn retain(&mut self, id: BlockId) {
        self.refs[id as usize] += 1;
    }

    pub fn ref_count(&self, id: BlockId) -> u32 {
        self.refs[id as usize]
    }

    pub fn release(&mut self, id: BlockId) {
        let r = &mut self.refs[id as usize];
        debug_assert!(*r > 0, "block {id} released twice");
        *r = r.saturating_sub(1);
        if *r == 0 {
            self.free.push(id);
        }
    }
}

/// The cache of one sequence: its block table and how many positions hold
/// computed keys/values.
#[derive(Debug, Default, Clone)]
pub struct SeqKv {
    pub blocks: Vec<BlockId>,
    /// Positions `0..len` are filled.
    pub len: usize,
}

impl SeqKv {
    /// Make room for positions up to `total` (exclusive). On failure nothing
    /// is allocated and the pool is unchanged.
    pub fn reserve(&mut self, pool: &mut KvPool, total: usize) -> Result<()> {
        let need = total.div_ceil(pool.layout.block_size);
        if need <= self.blocks.len() {
            return Ok(());
        }
        let extra = need - self.blocks.len();
        if extra > pool.available_blocks() {
            return Err(EngineError::Unavailable(format!(
                "KV cache full: {extra} more blocks needed, {} free",
                pool.available_blocks()
            )));
        }
        for _ in 0..extra {
            let Some(b) = pool.allocate() else {
                return Err(EngineError::internal("KV pool accounting is off"));
            };
            self.blocks.push(b);
        }
        Ok(())
    }

    /// Blocks still needed to hold `total` positions.
    pub fn blocks_needed(&self, pool: &KvPool, total: usize) -> usize {
        total.div_ceil(pool.layout.block_size).saturating_sub(self.blocks.len())
    }

    /// Give every block back.
    pub fn free(&mut self, pool: &mut KvPool) {
        for b in self.blocks.drain(..) {
            pool.release(b);
        }
        self.len = 0;
    }

    /// Block and slot of a position.
    #[inline]
    pub fn locate(&self, block_size: usize, pos: usize) -> (BlockId, usize) {
        (self.blocks[pos / block_size], pos % block_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> KvLayout {
        KvLayout {
            layers: 2,
            kv_heads: 2,
            head_dim: 4,
            block_size: 4,
            elem_bytes: 4,
        }
    }

    #[test]
    fn budget_bounds_allocation_and_free_recycles() {
        let l = layout();
        let mut pool = KvPool::new(l, l.block_bytes() * 3);
        let mut a = SeqKv::default();
        a.reserve(&mut pool, 9).unwrap(); // 3 blocks
        assert_eq!(pool.available_blocks(), 0);
        let mut b = SeqKv::default();
        assert!(b.reserve(&mut pool, 1).is_err());
        assert!(b.blocks.is_empty());
        a.free(&mut pool);
        assert_eq!(pool.available_blocks(), 3);
        b.reserve(&mut pool, 4).unwrap();
        assert_eq!(pool.allocated_bytes(), 3 * l.block_bytes());
    }

    #[test]
    fn write_and_read_back_by_head() {
        let l = layout();
        let mut pool = KvPool::new(l, l.block_bytes() * 2);
        let mut s = SeqKv::default();
        s.reserve(&mut pool, 6).unwrap();
        let (blk, slot) = s.locate(l.block_size, 5);
        let k: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let v: Vec<f32> = (0..8).map(|i| 100.0 + i as f32).collect();
        let cpu = pool.cpu_mut().unwrap();
        cpu.write(blk, 1, slot, &k, &v);
        assert_eq!(&cpu.keys(blk, 1, 1)[slot * 4..slot * 4 + 4], &[4.0, 5.0, 6.0, 7.0]);
        assert_eq!(
            &cpu.values(blk, 1, 0)[slot * 4..slot * 4 + 4],
            &[100.0, 101.0, 102.0, 103.0]
        );
    }
}
