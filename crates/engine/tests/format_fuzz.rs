//! Property tests of the model file readers over mutated real files: GGUF
//! (SmolLM2's header, metadata and tensor directory, and the tiny fixtures),
//! safetensors (all-MiniLM-L6-v2 and the tiny fixtures) and `tokenizer.json`
//! (MiniLM's WordPiece, the tiny byte-level BPE). Each case truncates the
//! file, flips bits, or sets a structural field (a count, a string or array
//! length, a tensor's dims, type or offset, a safetensors header length,
//! dtype, shape or data offsets, a vocabulary id, a merge) to an awkward
//! value, then goes through the entry points the server uses: open, metadata,
//! tensor directory, reading tensors, the tokenizer, discovery's description
//! and check, and for the small files a whole load through the skill.
//!
//! Every outcome must be `Ok` or `Err`: a panic fails the case, and so does an
//! allocation above [`guard::MAX_SINGLE`] or a case whose live heap grows by
//! more than [`guard::MAX_GROWTH`] (a counting global allocator watches).
//!
//! `PROPTEST_CASES=N` sets the number of cases of every property (each has a
//! small default so the file runs in seconds); `FORMAT_FUZZ_SEED=S` replays
//! the cases of a failed run (the failure message prints its seed).

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use hfms_engine::compute::ComputePool;
use hfms_engine::discover::describe;
use hfms_engine::formats::WeightSource;
use hfms_engine::formats::gguf::GgufFile;
use hfms_engine::formats::safetensors::Checkpoint;
use hfms_engine::skills::hf::HfFolder;
use hfms_engine::skills::{Format, LoadContext, ModelSource, Registry, architecture_of, llama};
use hfms_engine::tokenizer::Tokenizer;
use hfms_engine::tokenizer::chat_template::{ChatTemplate, TemplateMessage};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use serde_json::Value;

// ---------------------------------------------------------------------------
// The allocation guard.

mod guard {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::io::Write;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    /// No single allocation may be larger.
    pub const MAX_SINGLE: usize = 512 << 20;
    /// No case may grow the live heap by more.
    pub const MAX_GROWTH: usize = 1 << 30;
    /// Requests past this are refused outright (the process then aborts
    /// with the case named on stderr) instead of being attempted.
    const REFUSE: usize = 2 << 30;

    static LIVE: AtomicUsize = AtomicUsize::new(0);
    static PEAK: AtomicUsize = AtomicUsize::new(0);
    static BIGGEST: AtomicUsize = AtomicUsize::new(0);
    /// The case being run, for the message of a refused allocation.
    pub static CASE: Mutex<String> = Mutex::new(String::new());

    pub struct Counting;

    fn request(size: usize) -> bool {
        BIGGEST.fetch_max(size, Relaxed);
        if size <= REFUSE {
            return true;
        }
        let mut err = std::io::stderr();
        let _ = write!(err, "format_fuzz: refusing an allocation of {size} bytes in case: ");
        match CASE.try_lock() {
            Ok(label) => {
                let _ = writeln!(err, "{}", label.as_str());
            }
            Err(_) => {
                let _ = writeln!(err, "(label busy)");
            }
        }
        false
    }

    fn grew(size: usize) {
        let live = LIVE.fetch_add(size, Relaxed) + size;
        PEAK.fetch_max(live, Relaxed);
    }

    // SAFETY: every call is forwarded to `System` with the same layout; the
    // counters only observe.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if !request(layout.size()) {
                return std::ptr::null_mut();
            }
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                grew(layout.size());
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            if !request(layout.size()) {
                return std::ptr::null_mut();
            }
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() {
                grew(layout.size());
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) };
            LIVE.fetch_sub(layout.size(), Relaxed);
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if !request(new_size) {
                return std::ptr::null_mut();
            }
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                LIVE.fetch_sub(layout.size(), Relaxed);
                grew(new_size);
            }
            p
        }
    }

    /// Start watching a case: returns the live heap now.
    pub fn begin() -> usize {
        let live = LIVE.load(Relaxed);
        PEAK.store(live, Relaxed);
        BIGGEST.store(0, Relaxed);
        live
    }

    /// (largest single request, peak growth of the live heap) since `begin`.
    pub fn end(base: usize) -> (usize, usize) {
        (BIGGEST.load(Relaxed), PEAK.load(Relaxed).saturating_sub(base))
    }
}

#[global_allocator]
static ALLOC: guard::Counting = guard::Counting;

// ---------------------------------------------------------------------------
// Running cases.

/// Cases run one at a time (across the properties too) so that the heap
/// figures belong to one case.
static SERIAL: Mutex<()> = Mutex::new(());

/// Panics seen by the hook, on any thread and wherever they were caught (the
/// engine turns a panic in the `tokenizers` crate into an error; the case
/// still fails), and the message of the last one.
static PANICS: AtomicUsize = AtomicUsize::new(0);
static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

fn count_panics() {
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, SeqCst);
            let at = info.location().map(|l| l.to_string()).unwrap_or_default();
            *LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()) =
                format!("{} at {at}", info.payload_as_str().unwrap_or("(no message)"));
            default(info);
        }));
    });
}

/// Run one case: it must not panic (even where the panic is caught) nor
/// allocate too much.
fn check_case(label: &str, f: impl FnOnce()) -> Result<(), TestCaseError> {
    count_panics();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let panics = PANICS.load(SeqCst);
    *guard::CASE.lock().unwrap_or_else(|p| p.into_inner()) = label.to_string();
    let base = guard::begin();
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err();
    let (biggest, growth) = guard::end(base);
    if unwound || PANICS.load(SeqCst) != panics {
        let msg = LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let caught = if unwound { "" } else { " (caught inside the engine)" };
        return Err(TestCaseError::fail(format!("panicked{caught}: {msg}\n  case: {label}")));
    }
    if biggest > guard::MAX_SINGLE {
        return Err(TestCaseError::fail(format!(
            "allocated {biggest} bytes at once (limit {})\n  case: {label}",
            guard::MAX_SINGLE
        )));
    }
    if growth > guard::MAX_GROWTH {
        return Err(TestCaseError::fail(format!(
            "grew the heap by {growth} bytes (limit {})\n  case: {label}",
            guard::MAX_GROWTH
        )));
    }
    Ok(())
}

thread_local! {
    /// How far the cases of the property on this thread got (printed at its
    /// end, to show the damage is not all rejected at the first byte).
    static REACHED: std::cell::RefCell<std::collections::BTreeMap<&'static str, u32>> = Default::default();
}

fn reached(what: &'static str) {
    REACHED.with(|r| *r.borrow_mut().entry(what).or_default() += 1);
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Run a property: `PROPTEST_CASES` or `default_cases` cases from a seed
/// (`FORMAT_FUZZ_SEED`, else the clock) that the failure message names.
fn fuzz<S>(name: &str, default_cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let cases = env_u64("PROPTEST_CASES").map(|n| n as u32).unwrap_or(default_cases);
    let seed = env_u64("FORMAT_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let mut runner = TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 64,
        ..Config::default()
    });
    let start = Instant::now();
    REACHED.with(|r| r.borrow_mut().clear());
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{name}: {e}\n  seed {seed}: rerun with FORMAT_FUZZ_SEED={seed} PROPTEST_CASES={cases}");
    }
    let reached = REACHED.with(|r| format!("{:?}", r.borrow()));
    eprintln!(
        "{name}: {cases} cases in {:.1?} (seed {seed}); reached {reached}",
        start.elapsed()
    );
}

/// A fresh folder per case (earlier cases' maps may outlive the case in a
/// model's threads, so files are never rewritten in place).
struct Scratch {
    root: PathBuf,
    n: std::cell::Cell<u64>,
}

impl Scratch {
    fn new(name: &str) -> Self {
        let root = std::env::temp_dir().join(format!("hfms-format-fuzz-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        Scratch {
            root,
            n: std::cell::Cell::new(0),
        }
    }

    fn next(&self) -> PathBuf {
        let n = self.n.get();
        if n > 0 {
            let _ = std::fs::remove_dir_all(self.root.join(format!("case-{}", n - 1)));
        }
        self.n.set(n + 1);
        let dir = self.root.join(format!("case-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Write `bytes`, then extend the file with a hole to `len` (the data region
/// of a big model reads back as zeros without being written).
fn write_sparse(path: &Path, bytes: &[u8], len: u64) {
    std::fs::write(path, bytes).unwrap();
    if len > bytes.len() as u64 {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.set_len(len).unwrap();
    }
}

fn copy_small_files(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        let name = e.file_name();
        let keep = p.is_file()
            && p.extension().is_some_and(|x| x == "json" || x == "jinja")
            && std::fs::metadata(&p).map(|m| m.len() < (4 << 20)).unwrap_or(false);
        if keep {
            std::fs::copy(&p, to.join(&name)).unwrap();
        } else if p.is_dir() && name == "1_Pooling" {
            std::fs::create_dir_all(to.join(&name)).unwrap();
            copy_small_files(&p, &to.join(&name));
        }
    }
}

fn pool() -> ComputePool {
    static POOL: OnceLock<ComputePool> = OnceLock::new();
    POOL.get_or_init(|| ComputePool::new(1).unwrap()).clone()
}

fn tiny(name: &str) -> PathBuf {
    common::workspace().join("tests/fixtures/tiny").join(name)
}

// ---------------------------------------------------------------------------
// Values for structural fields.

/// A replacement for an integer field of `width` bytes.
#[derive(Debug, Clone, Copy)]
enum Val {
    Max,
    Pow2(u32),
    Zero,
    Delta(i64),
    FlipBit(u32),
    /// One more than the bytes left in the file after the field.
    PastEnd,
    Random(u64),
}

fn val() -> impl Strategy<Value = Val> {
    prop_oneof![
        2 => Just(Val::Max),
        3 => (16u32..64).prop_map(Val::Pow2),
        1 => Just(Val::Zero),
        2 => (-3i64..=3).prop_map(Val::Delta),
        2 => (0u32..64).prop_map(Val::FlipBit),
        2 => Just(Val::PastEnd),
        1 => any::<u64>().prop_map(Val::Random),
    ]
}

impl Val {
    fn resolve(self, orig: u64, width: usize, left: u64) -> u64 {
        let v = match self {
            Val::Max => u64::MAX,
            Val::Pow2(b) => 1u64 << b,
            Val::Zero => 0,
            Val::Delta(d) => orig.wrapping_add(d as u64),
            Val::FlipBit(b) => orig ^ (1u64 << (b as usize % (width * 8))),
            Val::PastEnd => left.saturating_add(1),
            Val::Random(r) => r,
        };
        if width >= 8 { v } else { v & ((1u64 << (width * 8)) - 1) }
    }
}

fn read_uint(b: &[u8], at: usize, width: usize) -> u64 {
    let mut a = [0u8; 8];
    a[..width].copy_from_slice(&b[at..at + width]);
    u64::from_le_bytes(a)
}

fn write_uint(b: &mut [u8], at: usize, width: usize, v: u64) {
    b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
}

/// Byte-level damage common to every format.
#[derive(Debug, Clone)]
enum Raw {
    /// Cut the file at this fraction (in 1/65536ths) of the region.
    Truncate(u16),
    /// Flip these bits (position in 1/65536ths of the region, bit).
    Flip(Vec<(u16, u8)>),
    /// Overwrite bytes at a position.
    Overwrite(u16, Vec<u8>),
}

fn raw() -> impl Strategy<Value = Raw> {
    prop_oneof![
        any::<u16>().prop_map(Raw::Truncate),
        prop::collection::vec((any::<u16>(), 0u8..8), 1..8).prop_map(Raw::Flip),
        (any::<u16>(), prop::collection::vec(any::<u8>(), 1..9)).prop_map(|(a, b)| Raw::Overwrite(a, b)),
    ]
}

fn scaled(frac: u16, len: usize) -> usize {
    (len as u64 * frac as u64 / 65536) as usize
}

impl Raw {
    /// Apply to `bytes[..region]`; returns what was done. Truncation only
    /// records the cut (the caller writes that many bytes).
    fn apply(&self, bytes: &mut [u8], region: usize, cut: &mut Option<usize>) -> String {
        let region = region.min(bytes.len()).max(1);
        match self {
            Raw::Truncate(f) => {
                let at = scaled(*f, region);
                *cut = Some(cut.map_or(at, |c| c.min(at)));
                format!("truncate at {at}")
            }
            Raw::Flip(bits) => {
                let mut s = String::from("flip");
                for (f, bit) in bits {
                    let at = scaled(*f, region).min(bytes.len() - 1);
                    bytes[at] ^= 1 << bit;
                    let _ = write!(s, " {at}:{bit}");
                }
                s
            }
            Raw::Overwrite(f, with) => {
                let at = scaled(*f, region);
                let end = (at + with.len()).min(bytes.len());
                bytes[at..end].copy_from_slice(&with[..end - at]);
                format!("overwrite {at}..{end} with {with:02x?}")
            }
        }
    }
}

// ---------------------------------------------------------------------------
// GGUF.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Version,
    TensorCount,
    KvCount,
    KeyLen,
    ValueType,
    StrLen,
    ArrayType,
    ArrayLen,
    Scalar,
    NameLen,
    NDims,
    Dim,
    TensorType,
    TensorOffset,
}

const SLOTS: [Slot; 14] = [
    Slot::Version,
    Slot::TensorCount,
    Slot::KvCount,
    Slot::KeyLen,
    Slot::ValueType,
    Slot::StrLen,
    Slot::ArrayType,
    Slot::ArrayLen,
    Slot::Scalar,
    Slot::NameLen,
    Slot::NDims,
    Slot::Dim,
    Slot::TensorType,
    Slot::TensorOffset,
];

#[derive(Debug, Clone, Copy)]
struct Field {
    slot: Slot,
    at: usize,
    width: usize,
    /// Metadata key index or tensor index.
    owner: u32,
}

/// Where the structural fields of a GGUF file are (read independently of
/// the engine's reader, from the intact file).
struct GgufLayout {
    fields: Vec<Vec<Field>>,
    keys: Vec<String>,
    tensors: Vec<String>,
    data_offset: usize,
}

fn slot(s: Slot) -> usize {
    SLOTS.iter().position(|x| *x == s).unwrap()
}

fn scan_gguf(b: &[u8]) -> GgufLayout {
    struct S<'a> {
        b: &'a [u8],
        p: usize,
        fields: Vec<Vec<Field>>,
        owner: u32,
    }
    impl S<'_> {
        fn field(&mut self, kind: Slot, width: usize) -> u64 {
            let v = read_uint(self.b, self.p, width);
            self.fields[slot(kind)].push(Field {
                slot: kind,
                at: self.p,
                width,
                owner: self.owner,
            });
            self.p += width;
            v
        }
        fn string(&mut self, slot: Slot) -> String {
            let n = self.field(slot, 8) as usize;
            let s = String::from_utf8_lossy(&self.b[self.p..self.p + n]).into_owned();
            self.p += n;
            s
        }
        fn value(&mut self, ty: u64) -> Option<u64> {
            let width = match ty {
                0 | 1 | 7 => 1,
                2 | 3 => 2,
                4..=6 => 4,
                10..=12 => 8,
                8 => {
                    self.string(Slot::StrLen);
                    return None;
                }
                9 => {
                    let item = self.field(Slot::ArrayType, 4);
                    let n = self.field(Slot::ArrayLen, 8);
                    for _ in 0..n {
                        self.value(item);
                    }
                    return None;
                }
                other => panic!("the intact file has value type {other}"),
            };
            Some(self.field(Slot::Scalar, width))
        }
    }
    assert_eq!(&b[..4], b"GGUF");
    let mut s = S {
        b,
        p: 4,
        fields: vec![Vec::new(); SLOTS.len()],
        owner: 0,
    };
    s.field(Slot::Version, 4);
    let n_tensors = s.field(Slot::TensorCount, 8);
    let n_kv = s.field(Slot::KvCount, 8);
    let mut keys = Vec::new();
    let mut alignment = 32;
    for k in 0..n_kv {
        s.owner = k as u32;
        let key = s.string(Slot::KeyLen);
        let ty = s.field(Slot::ValueType, 4);
        if let Some(v) = s.value(ty)
            && key == "general.alignment"
        {
            alignment = v as usize;
        }
        keys.push(key);
    }
    let mut tensors = Vec::new();
    for t in 0..n_tensors {
        s.owner = t as u32;
        let name = s.string(Slot::NameLen);
        let n_dims = s.field(Slot::NDims, 4);
        for _ in 0..n_dims {
            s.field(Slot::Dim, 8);
        }
        s.field(Slot::TensorType, 4);
        s.field(Slot::TensorOffset, 8);
        tensors.push(name);
    }
    GgufLayout {
        fields: s.fields,
        keys,
        tensors,
        data_offset: s.p.div_ceil(alignment) * alignment,
    }
}

/// A GGUF file to mutate: the bytes kept (for SmolLM2 its header, metadata,
/// tensor directory and the first MiB of data; the rest of the file is a
/// hole of the original length), and where its fields are.
struct GgufBase {
    name: &'static str,
    bytes: Vec<u8>,
    len: u64,
    layout: GgufLayout,
    /// Load the whole model through the skill (small files only).
    full_load: bool,
}

fn gguf_base(name: &'static str, path: &Path, full_load: bool) -> GgufBase {
    use std::io::Read;
    let len = std::fs::metadata(path).unwrap().len();
    // SmolLM2's header and tensor directory take some 2 MB.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .unwrap()
        .take(16 << 20)
        .read_to_end(&mut bytes)
        .unwrap();
    let layout = scan_gguf(&bytes);
    // Keep a MiB of data; the rest of the file is a hole.
    bytes.truncate(layout.data_offset + (1 << 20));
    GgufBase {
        name,
        bytes,
        len,
        layout,
        full_load,
    }
}

fn smollm2() -> &'static GgufBase {
    static B: OnceLock<GgufBase> = OnceLock::new();
    B.get_or_init(|| gguf_base("SmolLM2 Q4_1", &common::smollm2_gguf(), false))
}

fn tiny_ggufs() -> &'static [GgufBase] {
    static B: OnceLock<Vec<GgufBase>> = OnceLock::new();
    B.get_or_init(|| {
        vec![
            gguf_base("llama-quant", &tiny("llama-quant.gguf"), true),
            gguf_base("qwen2-q8_0", &tiny("qwen2-q8_0.gguf"), true),
            gguf_base("spm-tokenizer", &tiny("spm-tokenizer.gguf"), false),
        ]
    })
}

#[derive(Debug, Clone)]
enum GgufMut {
    Raw(Raw),
    /// Set the `pick`-th field of a slot kind.
    Field(usize, usize, Val),
    /// Reverse the dims of the `n`-th tensor (same size, another shape).
    Permute(usize),
    /// Move the `n`-th tensor's data by whole alignment steps.
    Shift(usize, i64),
    /// Give the `n`-th metadata value another type of the same width (the
    /// file still parses; the value now reads differently).
    Retype(usize, usize),
    /// Cut the file inside its data region.
    CutData(u16),
}

/// Cut at a fraction of the data region `start..len`, keeping an earlier cut.
fn cut_data(cut: &mut Option<usize>, start: usize, len: u64, frac: u16) -> String {
    let at = start + scaled(frac, (len as usize).saturating_sub(start));
    *cut = Some(cut.map_or(at, |c| c.min(at)));
    format!("cut the data at {at}")
}

fn gguf_mut() -> impl Strategy<Value = GgufMut> {
    let scalar = SLOTS.iter().position(|s| *s == Slot::Scalar).unwrap();
    prop_oneof![
        2 => raw().prop_map(GgufMut::Raw),
        6 => (0..SLOTS.len(), any::<usize>(), val()).prop_map(|(s, p, v)| GgufMut::Field(s, p, v)),
        3 => (any::<usize>(), val()).prop_map(move |(p, v)| GgufMut::Field(scalar, p, v)),
        1 => any::<usize>().prop_map(GgufMut::Permute),
        1 => (any::<usize>(), -4i64..=4).prop_map(|(t, k)| GgufMut::Shift(t, k)),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(i, t)| GgufMut::Retype(i, t)),
        1 => any::<u16>().prop_map(GgufMut::CutData),
    ]
}

/// GGUF value types by width.
const SAME_WIDTH: [&[u64]; 4] = [&[0, 1, 7], &[2, 3], &[4, 5, 6], &[10, 11, 12]];

fn gguf_case(base: &GgufBase, muts: &[GgufMut]) -> (Vec<u8>, u64, String) {
    let mut bytes = base.bytes.clone();
    let mut cut = None;
    let mut label = format!("{}:", base.name);
    let region = base.layout.data_offset;
    for m in muts {
        let what = match m {
            GgufMut::Raw(r) => r.apply(&mut bytes, region, &mut cut),
            GgufMut::Field(slot, pick, v) => {
                let list = &base.layout.fields[*slot];
                if list.is_empty() {
                    continue;
                }
                let f = list[pick % list.len()];
                let orig = read_uint(&bytes, f.at, f.width);
                let left = base.len - (f.at + f.width) as u64;
                let new = v.resolve(orig, f.width, left);
                write_uint(&mut bytes, f.at, f.width, new);
                let owner = match f.slot {
                    Slot::KeyLen | Slot::ValueType | Slot::StrLen | Slot::ArrayType | Slot::ArrayLen | Slot::Scalar => {
                        base.layout.keys.get(f.owner as usize).cloned().unwrap_or_default()
                    }
                    Slot::NameLen | Slot::NDims | Slot::Dim | Slot::TensorType | Slot::TensorOffset => {
                        base.layout.tensors.get(f.owner as usize).cloned().unwrap_or_default()
                    }
                    _ => String::new(),
                };
                format!("{:?}[{owner}]@{}: {orig} -> {new}", f.slot, f.at)
            }
            GgufMut::Permute(pick) => {
                let l = &base.layout;
                let dims: Vec<&Field> = l.fields[slot(Slot::Dim)].iter().collect();
                let Some(first) = dims.get(pick % dims.len().max(1)) else {
                    continue;
                };
                let mine: Vec<&Field> = dims.iter().filter(|f| f.owner == first.owner).copied().collect();
                let vals: Vec<u64> = mine.iter().map(|f| read_uint(&bytes, f.at, 8)).collect();
                for (f, v) in mine.iter().zip(vals.iter().rev()) {
                    write_uint(&mut bytes, f.at, 8, *v);
                }
                let name = l.tensors.get(first.owner as usize).cloned().unwrap_or_default();
                format!("dims of {name}: {vals:?} reversed")
            }
            GgufMut::Shift(pick, k) => {
                let offs = &base.layout.fields[slot(Slot::TensorOffset)];
                if offs.is_empty() {
                    continue;
                }
                let f = offs[pick % offs.len()];
                let orig = read_uint(&bytes, f.at, 8);
                let new = orig.wrapping_add((k * 32) as u64);
                write_uint(&mut bytes, f.at, 8, new);
                let name = base.layout.tensors.get(f.owner as usize).cloned().unwrap_or_default();
                format!("offset of {name}: {orig} -> {new}")
            }
            GgufMut::Retype(pick, to) => {
                let tys = &base.layout.fields[slot(Slot::ValueType)];
                if tys.is_empty() {
                    continue;
                }
                let f = tys[pick % tys.len()];
                let orig = read_uint(&bytes, f.at, 4);
                let Some(group) = SAME_WIDTH.iter().find(|g| g.contains(&orig)) else {
                    continue;
                };
                let new = group[to % group.len()];
                write_uint(&mut bytes, f.at, 4, new);
                let key = base.layout.keys.get(f.owner as usize).cloned().unwrap_or_default();
                format!("type of {key}: {orig} -> {new}")
            }
            GgufMut::CutData(f) => cut_data(&mut cut, region, base.len, *f),
        };
        let _ = write!(label, " {what};");
    }
    let len = cut.map_or(base.len, |c| c as u64);
    bytes.truncate(len as usize);
    (bytes, len, label)
}

const TEXTS: [&str; 3] = [
    "Hello, world!",
    "The quick brown fox — naïve café, 1234 <|im_start|>user [CLS] ▁x\n\t",
    "",
];

fn exercise_tokenizer(tok: &Tokenizer) {
    for text in TEXTS {
        for special in [false, true] {
            if let Ok(ids) = tok.encode(text, special) {
                reached("encode ok");
                let _ = tok.decode(&ids, true);
                for &id in &ids {
                    let _ = tok.token_bytes(id);
                    let _ = tok.is_special(id);
                }
            }
            let _ = tok.encode_with_overflow(text, special);
        }
    }
    let n = tok.vocab_size() as u32;
    for id in [0, n.saturating_sub(1), n, u32::MAX] {
        let _ = tok.id_to_token(id);
        let _ = tok.token_text(id);
    }
    if let Some(b) = tok.bos() {
        let _ = tok.id_to_token(b);
    }
}

fn exercise_template(src: &str) {
    if let Ok(t) = ChatTemplate::new(src, "<s>", "</s>") {
        let msgs = [
            TemplateMessage {
                role: "system".into(),
                content: "Be brief.".into(),
                ..Default::default()
            },
            TemplateMessage {
                role: "user".into(),
                content: "Hi".into(),
                ..Default::default()
            },
        ];
        let _ = t.render(&msgs, true);
    }
}

fn load_through_skill(source: &ModelSource) {
    let registry = Registry::builtin();
    if let Ok(skill) = registry.for_source(source)
        && skill.load(source, &LoadContext::cpu(pool(), "fuzz")).is_ok()
    {
        reached("skill load ok");
    }
}

/// Everything the server does with a GGUF file before serving it.
fn exercise_gguf(path: &Path, full_load: bool, probes: &[usize]) {
    let registry = Registry::builtin();
    let source = ModelSource {
        format: Format::Gguf,
        path: path.to_path_buf(),
    };
    let _ = architecture_of(&source);
    let d = describe(&registry, "fuzz".into(), source.clone(), "config");
    if d.servable() {
        reached("servable");
    }
    let Ok(f) = GgufFile::open(path) else {
        return;
    };
    reached("open ok");
    for (k, v) in &f.metadata {
        let _ = (
            k.len(),
            v.as_u64(),
            v.as_f64(),
            v.as_str(),
            v.as_array().map(|a| a.len()),
        );
    }
    let _ = (f.architecture(), f.data_bytes(), f.parameter_count());
    for t in &f.tensors {
        if let Ok(b) = f.tensor_bytes(t) {
            assert_eq!(Some(b.len()), t.byte_len().ok(), "tensor {}", t.name);
            let _ = (b.first(), b.last());
        }
    }
    if !f.tensors.is_empty() {
        for p in probes {
            let t = &f.tensors[p % f.tensors.len()];
            // Dequantising a large tensor is real work, not the reader's.
            if t.byte_len().is_ok_and(|n| n <= (4 << 20)) {
                if t.dims.len() >= 2 {
                    let _ = f.matrix(&t.name);
                } else {
                    let _ = f.vector(&t.name);
                }
            }
        }
    }
    let _ = llama::config_from_gguf(&f);
    if let Ok(tok) = Tokenizer::from_gguf(&f) {
        reached("tokenizer ok");
        exercise_tokenizer(&tok);
    }
    if let Some(src) = f.get_str("tokenizer.chat_template") {
        exercise_template(src);
    }
    drop(f);
    if full_load {
        load_through_skill(&source);
    }
}

fn run_gguf(dir: &Path, base: &GgufBase, muts: &[GgufMut], probes: &[usize]) -> Result<(), TestCaseError> {
    let (bytes, len, label) = gguf_case(base, muts);
    let path = dir.join("model.gguf");
    write_sparse(&path, &bytes, len);
    drop(bytes);
    check_case(&label, || exercise_gguf(&path, base.full_load, probes))
}

#[test]
fn gguf_smollm2_mutations() {
    let base = smollm2();
    let scratch = Scratch::new("gguf-smollm2");
    fuzz(
        "gguf_smollm2_mutations",
        64,
        (
            prop::collection::vec(gguf_mut(), 1..4),
            prop::collection::vec(any::<usize>(), 3),
        ),
        |(muts, probes)| run_gguf(&scratch.next(), base, &muts, &probes),
    );
}

#[test]
fn gguf_tiny_mutations() {
    let bases = tiny_ggufs();
    let scratch = Scratch::new("gguf-tiny");
    fuzz(
        "gguf_tiny_mutations",
        256,
        (
            0..bases.len(),
            prop::collection::vec(gguf_mut(), 1..4),
            prop::collection::vec(any::<usize>(), 3),
        ),
        |(b, muts, probes)| run_gguf(&scratch.next(), &bases[b], &muts, &probes),
    );
}

// ---------------------------------------------------------------------------
// safetensors.

struct StBase {
    name: &'static str,
    dir: PathBuf,
    header: serde_json::Map<String, Value>,
    /// The bytes of the data region that are kept (the rest is a hole).
    data: Vec<u8>,
    data_len: u64,
    full_load: bool,
}

fn st_base(name: &'static str, dir: PathBuf, full_load: bool) -> StBase {
    use std::io::Read;
    let path = dir.join("model.safetensors");
    let len = std::fs::metadata(&path).unwrap().len();
    let mut f = std::fs::File::open(&path).unwrap();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).unwrap();
    let n = u64::from_le_bytes(n);
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).unwrap();
    let header: Value = serde_json::from_slice(&header).unwrap();
    let mut data = Vec::new();
    f.take(1 << 20).read_to_end(&mut data).unwrap();
    StBase {
        name,
        dir,
        header: header.as_object().unwrap().clone(),
        data,
        data_len: len - 8 - n,
        full_load,
    }
}

fn st_bases() -> &'static [StBase] {
    static B: OnceLock<Vec<StBase>> = OnceLock::new();
    B.get_or_init(|| {
        vec![
            st_base("all-MiniLM-L6-v2", common::minilm_dir(), false),
            st_base("llama-f32", tiny("llama-f32"), true),
            st_base("mistral-f16", tiny("mistral-f16"), true),
            st_base("qwen2-bf16", tiny("qwen2-bf16"), true),
            st_base("qwen3-f32", tiny("qwen3-f32"), true),
            st_base("xlm-roberta-f32", tiny("xlm-roberta-f32"), true),
        ]
    })
}

#[derive(Debug, Clone)]
enum StMut {
    HeaderLen(Val),
    Dtype(usize, usize),
    Shape(usize, ShapeMut),
    Offsets(usize, OffMut),
    Remove(usize),
    /// Give tensor a the name of tensor b (JSON keeps the last).
    Rename(usize, usize),
    /// A tensor that is not an object, or `__metadata__` that is not a map
    /// of strings.
    Garbage(usize, JsonVal),
    /// A dtype of the same width (the file stays valid).
    SameWidthDtype(usize, usize),
    /// Swap the names of two tensors (the file stays valid).
    SwapNames(usize, usize),
    Raw(Raw),
    /// Cut the file inside its data region.
    CutData(u16),
}

const SAME_WIDTH_DTYPES: [&[&str]; 3] = [&["F32", "I32", "U32"], &["F16", "BF16", "I16"], &["I64", "F64", "U64"]];

#[derive(Debug, Clone)]
enum ShapeMut {
    Empty,
    ZeroDim(usize),
    Huge(usize, u64),
    Overflow,
    Extra(u64),
    Drop,
    Swap,
    /// One dim holding every element.
    Flatten,
    Json(JsonVal),
}

#[derive(Debug, Clone)]
enum OffMut {
    Swap,
    End(i64),
    Start(i64),
    Huge(u64),
    BothHuge(u64),
    OverlapPrevious,
    WholeFile,
    Json(JsonVal),
}

/// A JSON value to put where something else was.
#[derive(Debug, Clone, Copy)]
enum JsonVal {
    Null,
    True,
    Neg,
    Huge,
    U64Max,
    Float,
    BigFloat,
    EmptyStr,
    Str,
    EmptyArr,
    Arr3,
    EmptyObj,
}

fn json_val() -> impl Strategy<Value = JsonVal> {
    prop_oneof![
        Just(JsonVal::Null),
        Just(JsonVal::True),
        Just(JsonVal::Neg),
        Just(JsonVal::Huge),
        Just(JsonVal::U64Max),
        Just(JsonVal::Float),
        Just(JsonVal::BigFloat),
        Just(JsonVal::EmptyStr),
        Just(JsonVal::Str),
        Just(JsonVal::EmptyArr),
        Just(JsonVal::Arr3),
        Just(JsonVal::EmptyObj),
    ]
}

impl JsonVal {
    fn value(self) -> Value {
        match self {
            JsonVal::Null => Value::Null,
            JsonVal::True => Value::Bool(true),
            JsonVal::Neg => serde_json::json!(-1),
            JsonVal::Huge => serde_json::json!(1u64 << 40),
            JsonVal::U64Max => serde_json::json!(u64::MAX),
            JsonVal::Float => serde_json::json!(0.5),
            JsonVal::BigFloat => serde_json::json!(1e300),
            JsonVal::EmptyStr => serde_json::json!(""),
            JsonVal::Str => serde_json::json!("x y"),
            JsonVal::EmptyArr => serde_json::json!([]),
            JsonVal::Arr3 => serde_json::json!([1, 2, 3]),
            JsonVal::EmptyObj => serde_json::json!({}),
        }
    }
}

const DTYPES: [&str; 12] = [
    "F32", "F16", "BF16", "I64", "I32", "U8", "BOOL", "F64", "F8_E4M3", "F4", "Q4_K", "f32",
];

const HUGE: [u64; 6] = [u64::MAX, 1 << 63, 1 << 40, 1 << 32, u32::MAX as u64, 1 << 20];

fn st_mut() -> impl Strategy<Value = StMut> {
    let shape = prop_oneof![
        Just(ShapeMut::Empty),
        any::<usize>().prop_map(ShapeMut::ZeroDim),
        (any::<usize>(), prop::sample::select(&HUGE[..])).prop_map(|(i, v)| ShapeMut::Huge(i, v)),
        Just(ShapeMut::Overflow),
        prop::sample::select(&[0u64, 1, 2, 1 << 32][..]).prop_map(ShapeMut::Extra),
        Just(ShapeMut::Drop),
        Just(ShapeMut::Swap),
        Just(ShapeMut::Flatten),
        json_val().prop_map(ShapeMut::Json),
    ];
    let offsets = prop_oneof![
        Just(OffMut::Swap),
        (-8i64..=8).prop_map(OffMut::End),
        (-8i64..=8).prop_map(OffMut::Start),
        prop::sample::select(&HUGE[..]).prop_map(OffMut::Huge),
        prop::sample::select(&HUGE[..]).prop_map(OffMut::BothHuge),
        Just(OffMut::OverlapPrevious),
        Just(OffMut::WholeFile),
        json_val().prop_map(OffMut::Json),
    ];
    prop_oneof![
        1 => val().prop_map(StMut::HeaderLen),
        2 => (any::<usize>(), 0..DTYPES.len()).prop_map(|(t, d)| StMut::Dtype(t, d)),
        3 => (any::<usize>(), shape).prop_map(|(t, s)| StMut::Shape(t, s)),
        3 => (any::<usize>(), offsets).prop_map(|(t, o)| StMut::Offsets(t, o)),
        1 => any::<usize>().prop_map(StMut::Remove),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| StMut::Rename(a, b)),
        1 => (any::<usize>(), json_val()).prop_map(|(t, v)| StMut::Garbage(t, v)),
        3 => (any::<usize>(), any::<usize>()).prop_map(|(t, d)| StMut::SameWidthDtype(t, d)),
        3 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| StMut::SwapNames(a, b)),
        2 => raw().prop_map(StMut::Raw),
        1 => any::<u16>().prop_map(StMut::CutData),
    ]
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// A field of a tensor's entry (Null when an earlier mutation made the
/// entry something else).
fn get(h: &serde_json::Map<String, Value>, name: &str, key: &str) -> Value {
    h.get(name).and_then(|t| t.get(key)).cloned().unwrap_or(Value::Null)
}

fn set(h: &mut serde_json::Map<String, Value>, name: &str, key: &str, v: Value) -> Option<()> {
    h.get_mut(name)?.as_object_mut()?.insert(key.to_string(), v);
    Some(())
}

/// Apply one JSON-level mutation; returns its description.
fn st_json_mut(base: &StBase, h: &mut serde_json::Map<String, Value>, m: &StMut) -> Option<String> {
    let names: Vec<String> = h.keys().filter(|k| *k != "__metadata__").cloned().collect();
    if names.is_empty() {
        return None;
    }
    let pick = |i: usize| names[i % names.len()].clone();
    let file_len = 8 + base.data_len + (16 << 10);
    let what = match m {
        StMut::Dtype(t, d) => {
            let name = pick(*t);
            set(h, &name, "dtype", Value::from(DTYPES[*d]))?;
            format!("{name}.dtype = {}", DTYPES[*d])
        }
        StMut::Shape(t, s) => {
            let name = pick(*t);
            let shape = get(h, &name, "shape").as_array().cloned().unwrap_or_default();
            let mut dims: Vec<Value> = shape.clone();
            let new = match s {
                ShapeMut::Empty => Value::Array(Vec::new()),
                ShapeMut::ZeroDim(i) => {
                    if !dims.is_empty() {
                        let i = i % dims.len();
                        dims[i] = Value::from(0);
                    }
                    Value::Array(dims)
                }
                ShapeMut::Huge(i, v) => {
                    if dims.is_empty() {
                        dims.push(Value::from(*v));
                    } else {
                        let i = i % dims.len();
                        dims[i] = Value::from(*v);
                    }
                    Value::Array(dims)
                }
                ShapeMut::Overflow => serde_json::json!([1u64 << 32, 1u64 << 32, 1u64 << 32]),
                ShapeMut::Extra(v) => {
                    dims.push(Value::from(*v));
                    Value::Array(dims)
                }
                ShapeMut::Drop => {
                    dims.pop();
                    Value::Array(dims)
                }
                ShapeMut::Swap => {
                    dims.reverse();
                    Value::Array(dims)
                }
                ShapeMut::Flatten => serde_json::json!([dims.iter().map(u64_of).product::<u64>()]),
                ShapeMut::Json(j) => j.value(),
            };
            let s = new.to_string();
            set(h, &name, "shape", new)?;
            format!("{name}.shape = {s}")
        }
        StMut::Offsets(t, o) => {
            let name = pick(*t);
            let (a, b) = {
                let v = get(h, &name, "data_offsets");
                (u64_of(&v[0]), u64_of(&v[1]))
            };
            let new = match o {
                OffMut::Swap => serde_json::json!([b, a]),
                OffMut::End(d) => serde_json::json!([a, b.wrapping_add(*d as u64)]),
                OffMut::Start(d) => serde_json::json!([a.wrapping_add(*d as u64), b]),
                OffMut::Huge(v) => serde_json::json!([a, v]),
                OffMut::BothHuge(v) => serde_json::json!([v, v]),
                OffMut::OverlapPrevious => serde_json::json!([a.saturating_sub(4), b]),
                OffMut::WholeFile => serde_json::json!([0, file_len]),
                OffMut::Json(j) => j.value(),
            };
            let s = new.to_string();
            set(h, &name, "data_offsets", new)?;
            format!("{name}.data_offsets = {s}")
        }
        StMut::Remove(t) => {
            let name = pick(*t);
            h.remove(&name);
            format!("remove {name}")
        }
        StMut::Rename(a, b) => {
            let (a, b) = (pick(*a), pick(*b));
            if let Some(v) = h.remove(&a) {
                h.insert(b.clone(), v);
            }
            format!("rename {a} to {b}")
        }
        StMut::Garbage(t, v) => {
            let name = if t % 4 == 0 {
                "__metadata__".to_string()
            } else {
                pick(*t)
            };
            h.insert(name.clone(), v.value());
            format!("{name} = {}", v.value())
        }
        StMut::SameWidthDtype(t, d) => {
            let name = pick(*t);
            let orig = get(h, &name, "dtype").as_str().unwrap_or("").to_string();
            let group = SAME_WIDTH_DTYPES.iter().find(|g| g.contains(&orig.as_str()))?;
            let new = group[d % group.len()];
            set(h, &name, "dtype", Value::from(new))?;
            format!("{name}.dtype: {orig} -> {new}")
        }
        StMut::SwapNames(a, b) => {
            let (a, b) = (pick(*a), pick(*b));
            let va = h.get(&a).cloned()?;
            let vb = h.get(&b).cloned()?;
            h.insert(a.clone(), vb);
            h.insert(b.clone(), va);
            format!("swap {a} and {b}")
        }
        StMut::HeaderLen(_) | StMut::Raw(_) | StMut::CutData(_) => return None,
    };
    Some(what)
}

fn st_case(base: &StBase, muts: &[StMut]) -> (Vec<u8>, u64, String) {
    let mut h = base.header.clone();
    let mut label = format!("{}:", base.name);
    for m in muts {
        if let Some(what) = st_json_mut(base, &mut h, m) {
            let _ = write!(label, " {what};");
        }
    }
    let mut json = serde_json::to_string(&Value::Object(h)).unwrap();
    while !json.len().is_multiple_of(8) {
        json.push(' ');
    }
    let mut bytes = Vec::with_capacity(8 + json.len() + base.data.len());
    bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
    bytes.extend_from_slice(json.as_bytes());
    let header_end = bytes.len();
    bytes.extend_from_slice(&base.data);
    let full_len = header_end as u64 + base.data_len;
    let mut cut = None;
    for m in muts {
        let what = match m {
            StMut::Raw(r) => r.apply(&mut bytes, header_end, &mut cut),
            StMut::CutData(f) => cut_data(&mut cut, header_end, full_len, *f),
            StMut::HeaderLen(v) => {
                let orig = json.len() as u64;
                let new = v.resolve(orig, 8, full_len - 8);
                write_uint(&mut bytes, 0, 8, new);
                format!("header length {orig} -> {new}")
            }
            _ => continue,
        };
        let _ = write!(label, " {what};");
    }
    let len = cut.map_or(full_len, |c| c as u64);
    bytes.truncate(len as usize);
    (bytes, len, label)
}

/// Everything the server does with a safetensors folder.
fn exercise_safetensors(dir: &Path, full_load: bool, probes: &[usize]) {
    let registry = Registry::builtin();
    let source = ModelSource {
        format: Format::Safetensors,
        path: dir.to_path_buf(),
    };
    let d = describe(&registry, "fuzz".into(), source.clone(), "config");
    if d.servable() {
        reached("servable");
    }
    if let Ok(ck) = Checkpoint::open(dir) {
        reached("open ok");
        let _ = (ck.parameter_count(), ck.data_bytes(), ck.main_dtype());
        let mut names: Vec<String> = ck.names().cloned().collect();
        names.sort();
        for name in &names {
            let Some(t) = ck.get(name) else { continue };
            let _ = ck.dtype(name, t);
            if let Ok(b) = ck.bytes(t) {
                let b = b.bytes();
                let _ = (b.first(), b.last());
            }
        }
        if !names.is_empty() {
            for p in probes {
                let name = &names[p % names.len()];
                let Some(t) = ck.get(name) else { continue };
                if ck.bytes(t).is_ok_and(|b| b.bytes().len() <= (4 << 20)) {
                    if t.shape.len() == 2 {
                        let _ = ck.matrix(name);
                    } else {
                        let _ = ck.vector(name);
                    }
                }
            }
        }
    }
    if full_load {
        load_through_skill(&source);
    }
}

#[test]
fn safetensors_mutations() {
    let bases = st_bases();
    let scratch = Scratch::new("safetensors");
    fuzz(
        "safetensors_mutations",
        256,
        (
            0..bases.len(),
            prop::collection::vec(st_mut(), 1..4),
            prop::collection::vec(any::<usize>(), 3),
        ),
        |(b, muts, probes)| {
            let base = &bases[b];
            let (bytes, len, label) = st_case(base, &muts);
            let dir = scratch.next();
            copy_small_files(&base.dir, &dir);
            write_sparse(&dir.join("model.safetensors"), &bytes, len);
            drop(bytes);
            check_case(&label, || exercise_safetensors(&dir, base.full_load, &probes))
        },
    );
}

// ---------------------------------------------------------------------------
// tokenizer.json.

struct TokBase {
    name: &'static str,
    dir: PathBuf,
    json: Value,
}

fn tok_bases() -> &'static [TokBase] {
    static B: OnceLock<Vec<TokBase>> = OnceLock::new();
    B.get_or_init(|| {
        [
            ("all-MiniLM-L6-v2 (WordPiece)", common::minilm_dir()),
            ("tiny byte-level BPE", tiny("llama-f32")),
        ]
        .into_iter()
        .map(|(name, dir)| {
            let text = std::fs::read_to_string(dir.join("tokenizer.json")).unwrap();
            TokBase {
                name,
                json: serde_json::from_str(&text).unwrap(),
                dir,
            }
        })
        .collect()
    })
}

#[derive(Debug, Clone)]
enum TokMut {
    /// Give the `n`-th vocabulary entry this id.
    VocabId(usize, IdVal),
    /// Replace the `n`-th merge.
    Merge(usize, MergeMut),
    /// Change a field of the `n`-th added token.
    Added(usize, AddedMut),
    /// Replace whatever a random walk from the root reaches.
    Replace(Vec<usize>, JsonVal),
    /// Remove whatever a random walk from the root reaches.
    Remove(Vec<usize>),
    /// Damage the text.
    Raw(Raw),
}

#[derive(Debug, Clone, Copy)]
enum IdVal {
    U32Max,
    Huge,
    Neg,
    PastEnd(u32),
    /// The id of another entry.
    Duplicate(usize),
    Float,
    Str,
}

#[derive(Debug, Clone, Copy)]
enum MergeMut {
    NoSpace,
    Unknown,
    Empty,
    OneSided,
    ThreeParts,
    Number,
    SelfMerge,
}

#[derive(Debug, Clone, Copy)]
enum AddedMut {
    Id(IdVal),
    EmptyContent,
    LongContent,
    SpecialNotBool,
}

fn id_val() -> impl Strategy<Value = IdVal> {
    prop_oneof![
        Just(IdVal::U32Max),
        Just(IdVal::Huge),
        Just(IdVal::Neg),
        (0u32..1000).prop_map(IdVal::PastEnd),
        any::<usize>().prop_map(IdVal::Duplicate),
        Just(IdVal::Float),
        Just(IdVal::Str),
    ]
}

fn tok_mut() -> impl Strategy<Value = TokMut> {
    let merge = prop_oneof![
        Just(MergeMut::NoSpace),
        Just(MergeMut::Unknown),
        Just(MergeMut::Empty),
        Just(MergeMut::OneSided),
        Just(MergeMut::ThreeParts),
        Just(MergeMut::Number),
        Just(MergeMut::SelfMerge),
    ];
    let added = prop_oneof![
        id_val().prop_map(AddedMut::Id),
        Just(AddedMut::EmptyContent),
        Just(AddedMut::LongContent),
        Just(AddedMut::SpecialNotBool),
    ];
    let path = prop::collection::vec(any::<usize>(), 1..6);
    prop_oneof![
        3 => (any::<usize>(), id_val()).prop_map(|(i, v)| TokMut::VocabId(i, v)),
        2 => (any::<usize>(), merge).prop_map(|(i, m)| TokMut::Merge(i, m)),
        2 => (any::<usize>(), added).prop_map(|(i, a)| TokMut::Added(i, a)),
        3 => (path.clone(), json_val()).prop_map(|(p, v)| TokMut::Replace(p, v)),
        1 => path.prop_map(TokMut::Remove),
        2 => raw().prop_map(TokMut::Raw),
    ]
}

impl IdVal {
    fn value(self, vocab: &serde_json::Map<String, Value>) -> Value {
        match self {
            IdVal::U32Max => Value::from(u32::MAX),
            IdVal::Huge => Value::from(1u64 << 40),
            IdVal::Neg => Value::from(-1),
            IdVal::PastEnd(d) => Value::from(vocab.len() as u64 + d as u64),
            IdVal::Duplicate(i) => vocab
                .values()
                .nth(i % vocab.len().max(1))
                .cloned()
                .unwrap_or(Value::from(0)),
            IdVal::Float => serde_json::json!(1.5),
            IdVal::Str => Value::from("7"),
        }
    }
}

/// Follow `path` (child index at each level) from the root; returns the
/// parent and the key or index of the last step.
fn walk<'a>(root: &'a mut Value, path: &[usize]) -> Option<(&'a mut Value, PathStep)> {
    let mut cur = root;
    for (depth, &i) in path.iter().enumerate() {
        let step = match &*cur {
            Value::Object(o) if !o.is_empty() => PathStep::Key(o.keys().nth(i % o.len()).cloned()?),
            Value::Array(a) if !a.is_empty() => PathStep::Index(i % a.len()),
            _ => return None,
        };
        let last = depth + 1 == path.len();
        let has_children = match (&*cur, &step) {
            (Value::Object(o), PathStep::Key(k)) => matches!(o.get(k), Some(Value::Object(_) | Value::Array(_))),
            (Value::Array(a), PathStep::Index(i)) => matches!(a.get(*i), Some(Value::Object(_) | Value::Array(_))),
            _ => false,
        };
        if last || !has_children {
            return Some((cur, step));
        }
        cur = match step {
            PathStep::Key(k) => cur.get_mut(&k)?,
            PathStep::Index(i) => cur.get_mut(i)?,
        };
    }
    None
}

enum PathStep {
    Key(String),
    Index(usize),
}

fn tok_json_mut(json: &mut Value, m: &TokMut) -> Option<String> {
    Some(match m {
        TokMut::VocabId(i, v) => {
            let vocab = json.get_mut("model")?.get_mut("vocab")?.as_object_mut()?;
            let key = vocab.keys().nth(i % vocab.len().max(1))?.clone();
            let new = v.value(vocab);
            let s = new.to_string();
            vocab.insert(key.clone(), new);
            format!("vocab[{key:?}] = {s}")
        }
        TokMut::Merge(i, mm) => {
            let merges = json.get_mut("model")?.get_mut("merges")?.as_array_mut()?;
            if merges.is_empty() {
                return None;
            }
            let i = i % merges.len();
            let pair = merges[i].clone();
            let parts: Vec<String> = match &pair {
                Value::String(s) => s.split(' ').map(str::to_string).collect(),
                Value::Array(a) => a.iter().map(|x| x.as_str().unwrap_or("").to_string()).collect(),
                _ => vec![String::new()],
            };
            let a = parts.first().cloned().unwrap_or_default();
            let as_pair = pair.is_array();
            let mk = |x: &str, y: &str| {
                if as_pair {
                    serde_json::json!([x, y])
                } else {
                    Value::from(format!("{x} {y}"))
                }
            };
            let new = match mm {
                MergeMut::NoSpace => Value::from(parts.concat()),
                MergeMut::Unknown => mk("zq\u{1F600}", "qz\u{0}"),
                MergeMut::Empty => mk("", ""),
                MergeMut::OneSided => serde_json::json!([a]),
                MergeMut::ThreeParts => serde_json::json!([a, a, a]),
                MergeMut::Number => Value::from(42),
                MergeMut::SelfMerge => mk(&a, &a),
            };
            let s = new.to_string();
            merges[i] = new;
            format!("merges[{i}] = {s}")
        }
        TokMut::Added(i, am) => {
            let added = json.get_mut("added_tokens")?.as_array_mut()?;
            if added.is_empty() {
                return None;
            }
            let i = i % added.len();
            let t = added[i].as_object_mut()?;
            let what = match am {
                AddedMut::Id(v) => {
                    let new = v.value(&serde_json::Map::new());
                    let s = new.to_string();
                    t.insert("id".into(), new);
                    format!("id = {s}")
                }
                AddedMut::EmptyContent => {
                    t.insert("content".into(), Value::from(""));
                    "content = \"\"".to_string()
                }
                AddedMut::LongContent => {
                    t.insert("content".into(), Value::from("<|x|>".repeat(2000)));
                    "content = 10000 bytes".to_string()
                }
                AddedMut::SpecialNotBool => {
                    t.insert("special".into(), Value::from(1));
                    "special = 1".to_string()
                }
            };
            format!("added_tokens[{i}].{what}")
        }
        TokMut::Replace(path, v) => {
            let (parent, step) = walk(json, path)?;
            match step {
                PathStep::Key(k) => {
                    parent[&k] = v.value();
                    format!("…{k:?} = {}", v.value())
                }
                PathStep::Index(i) => {
                    parent[i] = v.value();
                    format!("…[{i}] = {}", v.value())
                }
            }
        }
        TokMut::Remove(path) => {
            let (parent, step) = walk(json, path)?;
            match step {
                PathStep::Key(k) => {
                    parent.as_object_mut()?.remove(&k);
                    format!("remove …{k:?}")
                }
                PathStep::Index(i) => {
                    parent.as_array_mut()?.remove(i);
                    format!("remove …[{i}]")
                }
            }
        }
        TokMut::Raw(_) => return None,
    })
}

/// Everything the server does with a `tokenizer.json`.
fn exercise_tokenizer_json(dir: &Path) {
    let path = dir.join("tokenizer.json");
    for max in [None, Some(128)] {
        if let Ok(tok) = Tokenizer::from_file(&path, max) {
            reached("tokenizer ok");
            exercise_tokenizer(&tok);
        }
    }
    if let Ok(meta) = HfFolder::read(dir) {
        if let Ok(tok) = meta.tokenizer(Some(256)) {
            exercise_tokenizer(&tok);
        }
        if let Ok(Some(t)) = meta.chat_template() {
            exercise_template(t.source());
        }
    }
}

#[test]
fn tokenizer_json_mutations() {
    let bases = tok_bases();
    let scratch = Scratch::new("tokenizer");
    fuzz(
        "tokenizer_json_mutations",
        256,
        (0..bases.len(), prop::collection::vec(tok_mut(), 1..4)),
        |(b, muts)| {
            let base = &bases[b];
            let mut json = base.json.clone();
            let mut label = format!("{}:", base.name);
            for m in &muts {
                if let Some(what) = tok_json_mut(&mut json, m) {
                    let _ = write!(label, " {what};");
                }
            }
            let mut bytes = serde_json::to_vec(&json).unwrap();
            let region = bytes.len();
            let mut cut = None;
            for m in &muts {
                if let TokMut::Raw(r) = m {
                    let what = r.apply(&mut bytes, region, &mut cut);
                    let _ = write!(label, " {what};");
                }
            }
            if let Some(c) = cut {
                bytes.truncate(c);
            }
            let dir = scratch.next();
            for f in ["config.json", "tokenizer_config.json", "generation_config.json"] {
                if base.dir.join(f).exists() {
                    std::fs::copy(base.dir.join(f), dir.join(f)).unwrap();
                }
            }
            std::fs::write(dir.join("tokenizer.json"), &bytes).unwrap();
            drop(bytes);
            check_case(&label, || exercise_tokenizer_json(&dir))
        },
    );
}

// ---------------------------------------------------------------------------
// The intact files pass through the same paths (so the properties above test
// damage, not a harness that rejects everything).

#[test]
fn intact_files_open() {
    let scratch = Scratch::new("intact");
    for base in tiny_ggufs().iter().chain([smollm2()]) {
        let (bytes, len, _) = gguf_case(base, &[]);
        let dir = scratch.next();
        let path = dir.join("model.gguf");
        write_sparse(&path, &bytes, len);
        let f = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", base.name));
        assert_eq!(f.tensors.len(), base.layout.tensors.len());
        Tokenizer::from_gguf(&f).unwrap_or_else(|e| panic!("{}: {e}", base.name));
    }
    for base in st_bases() {
        let (bytes, len, _) = st_case(base, &[]);
        let dir = scratch.next();
        copy_small_files(&base.dir, &dir);
        write_sparse(&dir.join("model.safetensors"), &bytes, len);
        let ck = Checkpoint::open(&dir).unwrap_or_else(|e| panic!("{}: {e}", base.name));
        assert!(ck.names().count() > 0);
        let d = describe(
            &Registry::builtin(),
            "x".into(),
            ModelSource {
                format: Format::Safetensors,
                path: dir.clone(),
            },
            "config",
        );
        assert!(d.servable(), "{}: {:?}", base.name, d.error);
    }
    for base in tok_bases() {
        let dir = scratch.next();
        std::fs::write(dir.join("tokenizer.json"), serde_json::to_vec(&base.json).unwrap()).unwrap();
        let tok = Tokenizer::from_file(&dir.join("tokenizer.json"), None).unwrap();
        assert!(!tok.encode("Hello, world!", true).unwrap().is_empty());
    }
}
