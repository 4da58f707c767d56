//! Automatic prefix caching: KV blocks whose tokens (and every token before
//! them) match blocks already computed are reused instead of recomputed — the
//! shared system prompt of a chat app is prefilled once.
//!
//! A full block is identified by a hash chained over the tokens of all blocks
//! up to and including it. The cache holds its own reference to each block it
//! knows, so a block outlives the sequence that computed it; when the pool
//! runs dry, blocks only the cache still holds are given back, least recently
//! used first. Only full blocks are shared, and a sequence only ever writes at
//! positions past its shared prefix, so shared blocks are never written.
//!
//! The hash only finds a candidate: each entry also keeps its block's tokens
//! and its parent's hash, and a lookup walks the chain from the first block,
//! comparing both at every step. A 64-bit hash collision (SipHash with fixed
//! keys can be searched for offline) therefore costs a cache miss, never
//! another request's KV.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::kv::{BlockId, KvPool, SeqKv};

#[derive(Debug, Default)]
pub struct PrefixCache {
    enabled: bool,
    block_size: usize,
    /// chain hash → the block with what identifies it exactly
    map: HashMap<u64, Entry>,
    tick: u64,
    /// Full prompt blocks looked up, and found.
    pub queried_blocks: u64,
    pub hit_blocks: u64,
}

#[derive(Debug)]
struct Entry {
    block: BlockId,
    /// Last use (LRU clock).
    used: u64,
    /// Depth in its chain (0: the first block of a prompt).
    depth: usize,
    /// The chain hash of the block before it (0 for the first).
    prev: u64,
    /// The block's own tokens.
    tokens: Box<[u32]>,
}

impl Entry {
    fn matches(&self, prev: u64, tokens: &[u32]) -> bool {
        self.prev == prev && *self.tokens == *tokens
    }
}

/// The chain hash of a block following `prev`.
pub fn chain_hash(prev: u64, block: &[u32]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    prev.hash(&mut h);
    block.hash(&mut h);
    h.finish()
}

impl PrefixCache {
    pub fn new(enabled: bool, block_size: usize) -> Self {
        PrefixCache {
            enabled,
            block_size,
            ..Default::default()
        }
    }

    pub fn cached_blocks(&self) -> usize {
        self.map.len()
    }

    /// Give a new sequence the longest cached prefix of `tokens`, keeping
    /// at least one of the first `computable` tokens to compute (the last
    /// prompt token's logits are needed). Fills `hashes` with the chain of
    /// the blocks attached. Returns the number of tokens reused.
    pub fn attach(
        &mut self,
        tokens: &[u32],
        computable: usize,
        seq: &mut SeqKv,
        hashes: &mut Vec<u64>,
        pool: &mut KvPool,
    ) -> usize {
        if !self.enabled || !seq.blocks.is_empty() || computable == 0 {
            return 0;
        }
        let bs = self.block_size;
        let usable = (computable - 1) / bs;
        let mut prev = 0u64;
        // One tick for the whole chain: among equally recent blocks the
        // deepest goes first, so a chain is never cut in the middle.
        self.tick += 1;
        for b in 0..usable {
            self.queried_blocks += 1;
            let block = &tokens[b * bs..(b + 1) * bs];
            let h = chain_hash(prev, block);
            match self.map.get_mut(&h) {
                // Every block before this one matched exactly, so equal
                // tokens after an equal parent hash mean an equal prefix.
                Some(e) if e.matches(prev, block) => {
                    e.used = self.tick;
                    pool.retain(e.block);
                    seq.blocks.push(e.block);
                    hashes.push(h);
                    self.hit_blocks += 1;
                    prev = h;
                }
                _ => break,
            }
        }
        seq.len = seq.blocks.len() * bs;
        seq.len
    }

    /// Remember the blocks of a sequence that became full since its chain
    /// was last extended (`hashes` holds one hash per registered block).
    pub fn register(&mut self, tokens: &[u32], seq: &SeqKv, hashes: &mut Vec<u64>, pool: &mut KvPool) {
        if !self.enabled {
            return;
        }
        let bs = self.block_size;
        let full = seq.len / bs;
        if hashes.len() < full {
            self.tick += 1;
        }
        while hashes.len() < full {
            let b = hashes.len();
            let prev = hashes.last().copied().unwrap_or(0);
            let block = &tokens[b * bs..(b + 1) * bs];
            let h = chain_hash(prev, block);
            hashes.push(h);
            // An occupied slot holds this block already, or (a collision)
            // another one, which keeps its place: this one is not cached.
            if let std::collections::hash_map::Entry::Vacant(e) = self.map.entry(h) {
                let id = seq.blocks[b];
                pool.retain(id);
                e.insert(Entry {
                    block: id,
                    used: self.tick,
                    depth: b,
                    prev,
                    tokens: block.into(),
                });
            }
        }
    }

    /// Blocks that could be handed back (held by the cache alone).
    pub fn evictable(&self, pool: &KvPool) -> usize {
        self.map.values().filter(|e| pool.ref_count(e.block) == 1).count()
    }

    /// Hand back cached blocks, least recently used first, until the pool
    /// has `n` free or nothing more can go.
    pub fn make_room(&mut self, n: usize, pool: &mut KvPool) {
        while pool.available_blocks() < n {
            let victim = self
                .map
                .iter()
                .filter(|(_, e)| pool.ref_count(e.block) == 1)
                .min_by_key(|(_, e)| (e.used, std::cmp::Reverse(e.depth)))
                .map(|(h, e)| (*h, e.block));
            let Some((h, id)) = victim else { return };
            self.map.remove(&h);
            pool.release(id);
        }
    }

    /// Forget everything (blocks only the cache held become free).
    pub fn clear(&mut self, pool: &mut KvPool) {
        for (_, e) in self.map.drain() {
            pool.release(e.block);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvLayout;

    fn pool(blocks: usize) -> KvPool {
        let l = KvLayout {
            layers: 1,
            kv_heads: 1,
            head_dim: 4,
            block_size: 4,
            elem_bytes: 4,
        };
        KvPool::new(l, l.block_bytes() * blocks)
    }

    #[test]
    fn a_shared_prefix_is_reused_and_survives_its_sequence() {
        let mut p = pool(8);
        let mut c = PrefixCache::new(true, 4);
        let prompt: Vec<u32> = (0..11).collect(); // 2 full blocks + 3
        let mut a = SeqKv::default();
        let mut ha = Vec::new();
        assert_eq!(c.attach(&prompt, prompt.len(), &mut a, &mut ha, &mut p), 0);
        a.reserve(&mut p, 11).unwrap();
        a.len = 11;
        c.register(&prompt, &a, &mut ha, &mut p);
        assert_eq!(c.cached_blocks(), 2);
        a.free(&mut p);
        // The cache keeps the two full blocks alive.
        assert_eq!(p.used_blocks(), 2);
        let mut b = SeqKv::default();
        let mut hb = Vec::new();
        let mut other: Vec<u32> = (0..8).collect();
        other.extend([99, 98, 97, 96, 95]);
        assert_eq!(c.attach(&other, other.len(), &mut b, &mut hb, &mut p), 8);
        assert_eq!(b.len, 8);
        assert_eq!(c.hit_blocks, 2);
        // A prompt that is all cached still computes its last block.
        let mut d = SeqKv::default();
        assert_eq!(c.attach(&prompt[..8], 8, &mut d, &mut Vec::new(), &mut p), 4);
    }

    #[test]
    fn room_is_made_by_dropping_blocks_only_the_cache_holds() {
        let mut p = pool(3);
        let mut c = PrefixCache::new(true, 4);
        let t: Vec<u32> = (0..12).collect();
        let mut s = SeqKv::default();
        let mut h = Vec::new();
        s.reserve(&mut p, 12).unwrap();
        s.len = 12;
        c.register(&t, &s, &mut h, &mut p);
        assert_eq!(p.available_blocks(), 0);
        // Still held by the sequence: nothing can go.
        c.make_room(1, &mut p);
        assert_eq!(p.available_blocks(), 0);
        s.free(&mut p);
        assert_eq!(c.evictable(&p), 3);
        c.make_room(2, &mut p);
        assert_eq!(p.available_blocks(), 2);
        assert_eq!(c.cached_blocks(), 1);
    }

    #[test]
    fn a_hash_collision_is_a_miss_not_someone_elses_kv() {
        let mut p = pool(8);
        let mut c = PrefixCache::new(true, 4);
        let a: Vec<u32> = vec![1, 2, 3, 4, 5];
        let mut sa = SeqKv::default();
        let mut ha = Vec::new();
        sa.reserve(&mut p, 5).unwrap();
        sa.len = 5;
        c.register(&a, &sa, &mut ha, &mut p);
        assert_eq!(c.cached_blocks(), 1);
        // Forge a collision: another prompt's first block filed under the
        // hash of `a`'s first block (what a found SipHash collision does).
        let b: Vec<u32> = vec![9, 9, 9, 9, 5];
        let forged = c.map.remove(&ha[0]).unwrap();
        let hb = chain_hash(0, &b[..4]);
        c.map.insert(hb, forged);
        let mut sb = SeqKv::default();
        assert_eq!(c.attach(&b, b.len(), &mut sb, &mut Vec::new(), &mut p), 0);
        assert!(sb.blocks.is_empty());
        assert_eq!(c.hit_blocks, 0);
        // The honest lookup still hits where it should not be forged.
        let entry = c.map.remove(&hb).unwrap();
        c.map.insert(ha[0], entry);
        let mut sc = SeqKv::default();
        assert_eq!(c.attach(&a, a.len(), &mut sc, &mut Vec::new(), &mut p), 4);
    }
}
