//! Resolve a repo spec on the Hub and download what a model server needs
//! into the cache, resumably and checked against the Hub's hashes.
//!
//! The protocol is `huggingface_hub`'s: `GET /api/models/<repo>/revision/<rev>`
//! lists the files and the commit; `HEAD /<repo>/resolve/<commit>/<file>`
//! gives each file's ETag (the sha256 of an LFS file, the git blob sha1 of
//! a small one) and size, with a redirect to the CDN for LFS files; the
//! content is fetched with `Range` when a `.incomplete` blob is resumed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::header::{HeaderMap, LOCATION, RANGE};
use reqwest::{Client, StatusCode};
use serde::Serialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::cache::{RepoPaths, human_bytes, publish_snapshot, write_atomic};
use crate::select::{self, SAFETENSORS_INDEX};
use crate::{HubConfig, HubError, RepoSpec, is_commit_hash};

/// The largest API answer read (a file listing); more is a broken Hub.
const MAX_API_BYTES: usize = 32 << 20;
/// No pull announces more than this (a Hub that does is broken or hostile).
const MAX_PULL_BYTES: u64 = 1 << 50;
/// A request for the listing or a file's metadata ends after this.
const META_TIMEOUT: Duration = Duration::from_secs(60);
/// A body that delivers less than `STALL_BYTES` in this long is a stall.
const STALL_WINDOW: Duration = Duration::from_secs(60);
const STALL_BYTES: u64 = 64 << 10;
/// Attempts per file when the connection drops; each resumes.
const ATTEMPTS: usize = 4;

/// What a pull reports as it goes (the CLI draws bars from these; the
/// server streams them as SSE).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum PullEvent {
    /// The files chosen, their sizes, and which are already cached.
    Resolved {
        repo: String,
        revision: String,
        commit: String,
        files: Vec<PlannedFile>,
        total_bytes: u64,
        download_bytes: u64,
    },
    /// Bytes of one file so far (sent at most every 100 ms per file).
    Progress { file: String, completed: u64, total: u64 },
    /// One file complete and verified (or found in the cache). `verified`:
    /// checked against the Hub's sha256 or git hash (always so on
    /// huggingface.co); false when the ETag was neither and only the size
    /// could be checked.
    FileDone {
        file: String,
        total: u64,
        cached: bool,
        verified: bool,
    },
    /// A repo removed from the cache to keep it under `--max-cache-gb`.
    Evicted { repo: String },
    /// Every file is in the cache and the snapshot is published.
    Done {
        repo: String,
        model: String,
        commit: String,
        path: PathBuf,
        downloaded_bytes: u64,
        seconds: f64,
        offline: bool,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedFile {
    pub file: String,
    pub size: u64,
    pub cached: bool,
}

/// What a pull left in the cache.
#[derive(Debug, Clone, Serialize)]
pub struct PullOutcome {
    pub repo: String,
    /// The id discovery will give it (`org/name`, or `org/name:QUANT`).
    pub model: String,
    pub commit: String,
    pub snapshot: PathBuf,
    /// What to serve: the snapshot folder, or the (first) GGUF file in it.
    pub model_path: PathBuf,
    pub files: Vec<String>,
    pub downloaded_bytes: u64,
    pub offline: bool,
}

/// Which repos a budget may evict (not loaded, not pinned).
pub type Evictable = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What to fetch besides the spec.
#[derive(Clone, Default)]
pub struct PullOptions {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// `--max-cache-gb`, in bytes: the cache is kept under it by evicting
    /// least recently used repos that `evictable` allows.
    pub max_cache_bytes: Option<u64>,
    pub evictable: Option<Evictable>,
    /// Bytes the running pulls of this process have yet to write (a
    /// server's pulls share one, so together they stay under the budget).
    pub reserved: Option<Arc<std::sync::Mutex<u64>>>,
}

/// A pull's share of `PullOptions::reserved`, given back when it ends.
struct Reservation {
    reserved: Arc<std::sync::Mutex<u64>>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut taken = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        *taken = taken.saturating_sub(self.bytes);
    }
}

/// Pull `spec` into the cache. `on_event` sees progress.
pub async fn pull(
    cfg: &HubConfig,
    spec: &RepoSpec,
    opts: &PullOptions,
    on_event: &(dyn Fn(PullEvent) + Send + Sync),
) -> Result<PullOutcome, HubError> {
    let started = Instant::now();
    let include = select::globset(&opts.include, "--include")?;
    let exclude = select::globset(&opts.exclude, "--exclude")?;
    let paths = RepoPaths::new(&cfg.cache_dir, &spec.repo);
    if cfg.offline {
        return from_cache(spec, &paths, include.as_ref(), exclude.as_ref(), started, on_event);
    }
    let hub = Hub::new(cfg, &spec.repo)?;
    let info = match hub.repo_info(spec).await {
        Ok(i) => i,
        // The Hub cannot be reached but the cache has this revision: use
        // it, as huggingface_hub does.
        Err(e @ HubError::Http { .. })
            if paths
                .cached_commit(&spec.revision)
                .is_some_and(|c| paths.snapshot(&c).is_dir()) =>
        {
            tracing::warn!(error = %e, repo = %spec.repo, "the Hub is unreachable; using the cached snapshot");
            return from_cache(spec, &paths, include.as_ref(), exclude.as_ref(), started, on_event);
        }
        Err(e) => return Err(e),
    };
    let commit = info.sha;
    let files = info.files;

    // A sharded checkpoint: its index says which shards make the model.
    let mut metas: Vec<(String, FileMeta)> = Vec::new();
    let wants_index = include.is_none()
        && spec.quant.is_none()
        && select::has_safetensors(&files)
        && files.iter().any(|f| f == SAFETENSORS_INDEX);
    let index = if wants_index {
        let meta = hub.file_meta(&commit, SAFETENSORS_INDEX).await?;
        if meta.size > MAX_API_BYTES as u64 {
            return Err(HubError::NoMatchingFiles(format!(
                "{SAFETENSORS_INDEX} is {} (more than an index can be)",
                human_bytes(meta.size)
            )));
        }
        let blob = hub
            .download_blob(&paths, &commit, SAFETENSORS_INDEX, &meta, &|_| {})
            .await?;
        let text = std::fs::read(&blob).map_err(|e| HubError::io(&blob, e))?;
        let v: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| HubError::NoMatchingFiles(format!("{SAFETENSORS_INDEX} is not JSON: {e}")))?;
        metas.push((SAFETENSORS_INDEX.to_string(), meta));
        Some(v)
    } else {
        None
    };
    let chosen = select::select(
        &files,
        spec.quant.as_deref(),
        include.as_ref(),
        exclude.as_ref(),
        index.as_ref(),
    )?;
    for f in &chosen {
        if !metas.iter().any(|(n, _)| n == f) {
            metas.push((f.clone(), hub.file_meta(&commit, f).await?));
        }
    }
    metas.retain(|(n, _)| chosen.contains(n));
    // A file and a folder of the same name cannot both be in a snapshot.
    if let Some(f) = chosen
        .iter()
        .find(|f| chosen.iter().any(|g| g.starts_with(&format!("{f}/"))))
    {
        return Err(hub.http_err(format!("the repo has both a file and a folder named {f}")));
    }
    let cached = |m: &FileMeta| std::fs::metadata(paths.blob(&m.etag)).is_ok_and(|md| md.len() == m.size);
    let planned: Vec<PlannedFile> = metas
        .iter()
        .map(|(n, m)| PlannedFile {
            file: n.clone(),
            size: m.size,
            cached: cached(m),
        })
        .collect();
    // Sizes come from the Hub: summed without wrapping, and no pull is
    // larger than any disk.
    let total = planned
        .iter()
        .try_fold(0u64, |a, p| a.checked_add(p.size))
        .filter(|t| *t <= MAX_PULL_BYTES)
        .ok_or_else(|| hub.http_err("the Hub announced files larger than any disk (over 1 PB)"))?;
    let to_download: u64 = planned.iter().filter(|p| !p.cached).map(|p| p.size).sum();
    // What the disk still has to take: a resumed file's kept part is
    // already on it.
    let needed: u64 = metas
        .iter()
        .zip(&planned)
        .filter(|(_, p)| !p.cached)
        .map(|((_, m), _)| {
            let kept = std::fs::metadata(paths.incomplete(&m.etag))
                .map(|md| md.len())
                .unwrap_or(0);
            m.size.saturating_sub(kept)
        })
        .sum();
    if needed > 0 {
        std::fs::create_dir_all(&cfg.cache_dir).map_err(|e| HubError::io(&cfg.cache_dir, e))?;
        if let Ok(free) = fs2::available_space(&cfg.cache_dir)
            && needed > free
        {
            return Err(HubError::OverBudget(format!(
                "{} to download, but the disk of {} has {} free",
                human_bytes(needed),
                cfg.cache_dir.display(),
                human_bytes(free)
            )));
        }
    }
    // Held until the pull ends: other pulls of this process count these
    // bytes as taken.
    let _reservation = match opts.max_cache_bytes {
        Some(budget) if needed > 0 => {
            let reserved = opts.reserved.clone().unwrap_or_default();
            let mut taken = reserved.lock().unwrap_or_else(|p| p.into_inner());
            let this = spec.repo.clone();
            let allowed = opts.evictable.clone();
            let evictable = move |r: &str| r != this && allowed.as_ref().is_none_or(|f| f(r));
            let asked = needed.saturating_add(*taken);
            for repo in crate::cache::evict_to_budget(&cfg.cache_dir, budget, asked, &evictable)? {
                on_event(PullEvent::Evicted { repo });
            }
            *taken += needed;
            drop(taken);
            Some(Reservation {
                reserved,
                bytes: needed,
            })
        }
        _ => None,
    };
    on_event(PullEvent::Resolved {
        repo: spec.repo.clone(),
        revision: spec.revision.clone(),
        commit: commit.clone(),
        files: planned.clone(),
        total_bytes: total,
        download_bytes: to_download,
    });
    let mut downloaded = 0u64;
    for ((name, meta), plan) in metas.iter().zip(&planned) {
        if !plan.cached {
            hub.download_blob(&paths, &commit, name, meta, on_event).await?;
            downloaded += meta.size;
        }
        on_event(PullEvent::FileDone {
            file: name.clone(),
            total: meta.size,
            cached: plan.cached,
            verified: is_hash_etag(&meta.etag),
        });
    }
    let links: Vec<(String, String, u64)> = metas.iter().map(|(n, m)| (n.clone(), m.etag.clone(), m.size)).collect();
    let snapshot = publish_snapshot(&paths, &commit, &links)?;
    if spec.revision != commit {
        write_atomic(&paths.reference(&spec.revision), commit.as_bytes())?;
    }
    let outcome = outcome(spec, commit, snapshot, chosen, downloaded, false);
    on_event(done_event(&outcome, started));
    Ok(outcome)
}

fn outcome(
    spec: &RepoSpec,
    commit: String,
    snapshot: PathBuf,
    files: Vec<String>,
    downloaded: u64,
    offline: bool,
) -> PullOutcome {
    let first_gguf = files.iter().filter(|f| f.ends_with(".gguf")).min().cloned();
    let model_path = match first_gguf {
        Some(g)
            if files
                .iter()
                .all(|f| f.ends_with(".gguf") || !f.ends_with(".safetensors")) =>
        {
            snapshot.join(g)
        }
        _ => snapshot.clone(),
    };
    PullOutcome {
        repo: spec.repo.clone(),
        model: spec.model_id(),
        commit,
        snapshot,
        model_path,
        files,
        downloaded_bytes: downloaded,
        offline,
    }
}

fn done_event(o: &PullOutcome, started: Instant) -> PullEvent {
    PullEvent::Done {
        repo: o.repo.clone(),
        model: o.model.clone(),
        commit: o.commit.clone(),
        path: o.model_path.clone(),
        downloaded_bytes: o.downloaded_bytes,
        seconds: started.elapsed().as_secs_f64(),
        offline: o.offline,
    }
}

/// The pull answered from the cache alone (offline, or the Hub
/// unreachable).
fn from_cache(
    spec: &RepoSpec,
    paths: &RepoPaths,
    include: Option<&globset::GlobSet>,
    exclude: Option<&globset::GlobSet>,
    started: Instant,
    on_event: &(dyn Fn(PullEvent) + Send + Sync),
) -> Result<PullOutcome, HubError> {
    let Some(commit) = paths.cached_commit(&spec.revision) else {
        return Err(HubError::Offline(format!(
            "{}@{} is not in the cache ({})",
            spec.repo,
            spec.revision,
            paths.root.display()
        )));
    };
    let snapshot = paths.snapshot(&commit);
    let mut files: Vec<String> = crate::cache::walk_files(&snapshot)
        .into_iter()
        .map(|(rel, _)| rel)
        .collect();
    files.sort();
    let index = files
        .iter()
        .any(|f| f == SAFETENSORS_INDEX)
        .then(|| std::fs::read(snapshot.join(SAFETENSORS_INDEX)).ok())
        .flatten()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let chosen = select::select(&files, spec.quant.as_deref(), include, exclude, index.as_ref()).map_err(|e| {
        HubError::Offline(format!(
            "the cached snapshot of {} does not hold the model: {e}",
            spec.repo
        ))
    })?;
    let out = outcome(spec, commit, snapshot, chosen, 0, true);
    on_event(done_event(&out, started));
    Ok(out)
}

/// A file's identity on the Hub.
#[derive(Debug, Clone)]
pub struct FileMeta {
    /// The blob name: sha256 (LFS) or git blob sha1.
    pub etag: String,
    pub size: u64,
    /// Where its bytes are (the CDN for LFS files).
    pub url: String,
}

struct RepoInfo {
    sha: String,
    files: Vec<String>,
}

/// Percent-encode one URL path segment.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn encode_path(p: &str) -> String {
    p.split('/').map(encode_segment).collect::<Vec<_>>().join("/")
}

/// A repo file name the cache can hold: relative, no `..`, no empty parts.
fn safe_file_name(f: &str) -> bool {
    !f.is_empty()
        && f.len() <= 1000
        && !f.starts_with('/')
        && !f.contains('\\')
        && !f.contains('\0')
        && f.split('/')
            .all(|p| !p.is_empty() && p != "." && p != ".." && p.len() <= 200)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// `"abc"`, `W/"abc"` → `abc`; only names that are safe as a file name.
fn normalize_etag(raw: &str) -> Option<String> {
    let e = raw.trim().trim_start_matches("W/").trim_matches('"');
    (!e.is_empty() && e.len() <= 128 && e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .then(|| e.to_string())
}

/// An ETag the content can be checked against: a sha256 (LFS) or a git
/// blob sha1, in hex.
fn is_hash_etag(etag: &str) -> bool {
    matches!(etag.len(), 40 | 64) && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

enum Hasher {
    Sha256(Sha256),
    GitSha1(Sha1),
    /// An ETag that is neither: the size is all that can be checked.
    None,
}

impl Hasher {
    fn for_etag(etag: &str, size: u64) -> Hasher {
        match etag.len() {
            _ if !is_hash_etag(etag) => Hasher::None,
            64 => Hasher::Sha256(Sha256::new()),
            40 => {
                let mut h = Sha1::new();
                h.update(format!("blob {size}\0").as_bytes());
                Hasher::GitSha1(h)
            }
            _ => Hasher::None,
        }
    }
    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(b),
            Hasher::GitSha1(h) => h.update(b),
            Hasher::None => {}
        }
    }
    fn finish(self) -> Option<String> {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        match self {
            Hasher::Sha256(h) => Some(hex(&h.finalize())),
            Hasher::GitSha1(h) => Some(hex(&h.finalize())),
            Hasher::None => None,
        }
    }
}

struct Hub<'a> {
    cfg: &'a HubConfig,
    repo: String,
    client: Client,
}

impl<'a> Hub<'a> {
    fn new(cfg: &'a HubConfig, repo: &str) -> Result<Self, HubError> {
        let client = Client::builder()
            .user_agent(concat!("hfms/", env!("CARGO_PKG_VERSION"), "; hf_hub-compatible"))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(20))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| HubError::Http {
                endpoint: cfg.endpoint.clone(),
                message: e.to_string(),
            })?;
        Ok(Hub {
            cfg,
            repo: repo.to_string(),
            client,
        })
    }

    fn http_err(&self, e: impl std::fmt::Display) -> HubError {
        HubError::Http {
            endpoint: self.cfg.endpoint.clone(),
            message: e.to_string(),
        }
    }

    /// A transport error with its causes (reqwest's own message omits
    /// them: "error sending request" says nothing of a timeout).
    fn transport_err(&self, e: reqwest::Error) -> HubError {
        let mut msg = e.to_string();
        if e.is_timeout() {
            msg.push_str(": timed out");
        }
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(&format!(": {s}"));
            source = s.source();
        }
        self.http_err(msg)
    }

    /// The token goes to the Hub only, never to a CDN it redirects to.
    fn authorize(&self, rb: reqwest::RequestBuilder, url: &str) -> reqwest::RequestBuilder {
        match &self.cfg.token {
            Some(t) if url.starts_with(&format!("{}/", self.cfg.endpoint)) => rb.bearer_auth(t),
            _ => rb,
        }
    }

    /// Map the Hub's refusals to errors that say what to do. `what` names
    /// the revision or file asked for.
    fn refusal(&self, repo: &str, what: &str, status: StatusCode, headers: &HeaderMap) -> HubError {
        let code = header(headers, "x-error-code").unwrap_or("");
        let no_repo = || {
            HubError::NotFound(format!(
                "{repo}: no such model repo on {} (if it is private, set HF_TOKEN to a token with access)",
                self.cfg.endpoint
            ))
        };
        match (status, code) {
            (StatusCode::UNAUTHORIZED, "RepoNotFound") => no_repo(),
            (StatusCode::UNAUTHORIZED, _) => HubError::Unauthorized {
                repo: repo.to_string(),
                token_set: self.cfg.token.is_some(),
            },
            (StatusCode::FORBIDDEN, _) => HubError::Forbidden { repo: repo.to_string() },
            (StatusCode::NOT_FOUND, "RevisionNotFound") => HubError::NotFound(format!("{repo}: no revision {what}")),
            (StatusCode::NOT_FOUND, "EntryNotFound") => HubError::NotFound(format!("{repo}: no file {what}")),
            (StatusCode::NOT_FOUND, _) => no_repo(),
            (s, _) => self.http_err(format!("{repo} {what}: HTTP {s}")),
        }
    }

    async fn repo_info(&self, spec: &RepoSpec) -> Result<RepoInfo, HubError> {
        let url = format!(
            "{}/api/models/{}/revision/{}",
            self.cfg.endpoint,
            spec.repo,
            encode_segment(&spec.revision)
        );
        let resp = self
            .authorize(self.client.get(&url).timeout(META_TIMEOUT), &url)
            .send()
            .await
            .map_err(|e| self.transport_err(e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(self.refusal(&spec.repo, &spec.revision, status, resp.headers()));
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.transport_err(e))?;
            if body.len() + chunk.len() > MAX_API_BYTES {
                return Err(self.http_err("the repo listing is larger than 32 MiB"));
            }
            body.extend_from_slice(&chunk);
        }
        #[derive(serde::Deserialize)]
        struct Info {
            sha: Option<String>,
            #[serde(default)]
            siblings: Vec<Sibling>,
        }
        #[derive(serde::Deserialize)]
        struct Sibling {
            rfilename: String,
        }
        let info: Info =
            serde_json::from_slice(&body).map_err(|e| self.http_err(format!("unreadable repo listing: {e}")))?;
        let sha = info
            .sha
            .filter(|s| is_commit_hash(s))
            .ok_or_else(|| self.http_err("the repo listing has no commit hash"))?;
        if is_commit_hash(&spec.revision) && !sha.eq_ignore_ascii_case(&spec.revision) {
            return Err(self.http_err(format!("asked for commit {} but the Hub answered {sha}", spec.revision)));
        }
        let mut files: Vec<String> = info
            .siblings
            .into_iter()
            .map(|s| s.rfilename)
            .filter(|f| {
                let ok = safe_file_name(f);
                if !ok {
                    tracing::warn!(file = %f, "skipping a repo file name that is not a safe relative path");
                }
                ok
            })
            .collect();
        files.sort();
        files.dedup();
        Ok(RepoInfo {
            sha: sha.to_lowercase(),
            files,
        })
    }

    async fn file_meta(&self, commit: &str, file: &str) -> Result<FileMeta, HubError> {
        let mut url = format!(
            "{}/{}/resolve/{commit}/{}",
            self.cfg.endpoint,
            self.repo,
            encode_path(file)
        );
        // Relative redirects (a renamed repo) are followed; absolute ones
        // point at the CDN and carry the LFS headers themselves.
        for _ in 0..5 {
            let resp = self
                .authorize(self.client.head(&url).timeout(META_TIMEOUT), &url)
                .header(reqwest::header::ACCEPT_ENCODING, "identity")
                .send()
                .await
                .map_err(|e| self.transport_err(e))?;
            let status = resp.status();
            let h = resp.headers();
            if status.is_redirection() {
                let loc = header(h, LOCATION.as_str()).ok_or_else(|| self.http_err("a redirect without Location"))?;
                let target = resp
                    .url()
                    .join(loc)
                    .map_err(|e| self.http_err(format!("bad Location {loc:?}: {e}")))?;
                if header(h, "x-linked-etag").is_none() && loc.starts_with('/') {
                    url = target.to_string();
                    continue;
                }
                return self.meta_from(file, h, target.to_string(), true);
            }
            if !status.is_success() {
                return Err(self.refusal(&self.repo, file, status, h));
            }
            return self.meta_from(file, h, url.clone(), false);
        }
        Err(self.http_err(format!("{file}: too many redirects")))
    }

    /// `redirected`: the size must be `X-Linked-Size` (a redirect's own
    /// Content-Length is of the redirect).
    fn meta_from(&self, file: &str, h: &HeaderMap, url: String, redirected: bool) -> Result<FileMeta, HubError> {
        let etag = header(h, "x-linked-etag")
            .or_else(|| header(h, "etag"))
            .and_then(normalize_etag)
            .ok_or_else(|| self.http_err(format!("{file}: the Hub sent no usable ETag")))?;
        let size = header(h, "x-linked-size")
            .or_else(|| if redirected { None } else { header(h, "content-length") })
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| self.http_err(format!("{file}: the Hub sent no size")))?;
        Ok(FileMeta { etag, size, url })
    }

    /// Download one blob (resuming its `.incomplete`), verify it, and move
    /// it into `blobs/`. Holds the blob's lock (shared with Python).
    async fn download_blob(
        &self,
        paths: &RepoPaths,
        commit: &str,
        file: &str,
        meta: &FileMeta,
        on_event: &(dyn Fn(PullEvent) + Send + Sync),
    ) -> Result<PathBuf, HubError> {
        let blob = paths.blob(&meta.etag);
        for dir in [paths.root.join("blobs"), paths.locks.clone()] {
            std::fs::create_dir_all(&dir).map_err(|e| HubError::io(&dir, e))?;
        }
        let lock_path = paths.lock(&meta.etag);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| HubError::io(&lock_path, e))?;
        while fs2::FileExt::try_lock_exclusive(&lock).is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let result = self.download_locked(paths, commit, file, meta, &blob, on_event).await;
        let _ = fs2::FileExt::unlock(&lock);
        result.map(|()| blob)
    }

    async fn download_locked(
        &self,
        paths: &RepoPaths,
        commit: &str,
        file: &str,
        meta: &FileMeta,
        blob: &Path,
        on_event: &(dyn Fn(PullEvent) + Send + Sync),
    ) -> Result<(), HubError> {
        if std::fs::metadata(blob).is_ok_and(|m| m.len() == meta.size) {
            return Ok(());
        }
        let part = paths.incomplete(&meta.etag);
        let mut last_err = None;
        let mut meta = meta.clone();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 << (attempt - 1))).await;
                // A signed CDN address may have expired: ask again (the
                // same blob, or the Hub changed under us and we stop).
                match self.file_meta(commit, file).await {
                    Ok(fresh) if fresh.etag == meta.etag && fresh.size == meta.size => meta = fresh,
                    Ok(_) => {
                        return Err(self.http_err(format!("{file} changed on the Hub during the pull; run it again")));
                    }
                    Err(e) => {
                        last_err = Some(e);
                        continue;
                    }
                }
            }
            let meta = &meta;
            match self.fetch_into(file, meta, &part, on_event).await {
                Ok(FetchEnd::Complete(hasher)) => {
                    let expected = meta.etag.to_ascii_lowercase();
                    if let Some(actual) = hasher.finish()
                        && actual != expected
                    {
                        let _ = std::fs::remove_file(&part);
                        return Err(HubError::Integrity {
                            file: file.to_string(),
                            expected: format!("hash {expected}"),
                            actual: format!("hash {actual}"),
                        });
                    }
                    std::fs::rename(&part, blob).map_err(|e| HubError::io(blob, e))?;
                    return Ok(());
                }
                Ok(FetchEnd::TooLong(n)) => {
                    let _ = std::fs::remove_file(&part);
                    return Err(HubError::Integrity {
                        file: file.to_string(),
                        expected: format!("{} bytes", meta.size),
                        actual: format!("{n} bytes or more"),
                    });
                }
                // Refusals do not get better by retrying.
                Err(
                    e @ (HubError::Unauthorized { .. }
                    | HubError::Forbidden { .. }
                    | HubError::NotFound(_)
                    | HubError::Io { .. }),
                ) => {
                    return Err(e);
                }
                Err(e) => {
                    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
                    tracing::warn!(file, attempt = attempt + 1, have_bytes = have, error = %e, "download interrupted; resuming");
                    last_err = Some(e);
                }
            }
        }
        let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        Err(self.http_err(format!(
            "{file}: download interrupted at {} of {} ({}); run the pull again to resume",
            human_bytes(have),
            human_bytes(meta.size),
            last_err.map(|e| e.to_string()).unwrap_or_default()
        )))
    }

    /// One attempt: resume `part` from its length.
    async fn fetch_into(
        &self,
        file: &str,
        meta: &FileMeta,
        part: &Path,
        on_event: &(dyn Fn(PullEvent) + Send + Sync),
    ) -> Result<FetchEnd, HubError> {
        let mut have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        if have > meta.size {
            have = 0;
        }
        let mut hasher = Hasher::for_etag(&meta.etag, meta.size);
        if have > 0 {
            // Re-hash what is there: the hash covers the whole file.
            let mut f = std::fs::File::open(part).map_err(|e| HubError::io(part, e))?;
            let mut buf = vec![0u8; 1 << 20];
            let mut left = have;
            while left > 0 {
                let n = std::io::Read::read(&mut f, &mut buf[..left.min(1 << 20) as usize])
                    .map_err(|e| HubError::io(part, e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
            have -= left;
        }
        if have == meta.size {
            if meta.size == 0 {
                // An empty file: nothing to fetch, but a blob to make.
                std::fs::File::create(part).map_err(|e| HubError::io(part, e))?;
            }
            return Ok(FetchEnd::Complete(hasher));
        }
        let mut rb = self.authorize(self.client.get(&meta.url), &meta.url);
        if have > 0 {
            rb = rb.header(RANGE, format!("bytes={have}-"));
        }
        let resp = rb.send().await.map_err(|e| self.transport_err(e))?;
        let status = resp.status();
        if status == StatusCode::RANGE_NOT_SATISFIABLE {
            let _ = std::fs::remove_file(part);
            return Err(self.http_err(format!("{file}: the server refused to resume; starting over")));
        }
        if !status.is_success() {
            // The Hub's own refusals say what to do; a CDN's (an expired
            // signed address, a hiccup) are worth another try.
            if meta.url.starts_with(&format!("{}/", self.cfg.endpoint)) {
                return Err(self.refusal(&self.repo, file, status, resp.headers()));
            }
            return Err(self.http_err(format!("{file}: the download server answered {status}")));
        }
        let resumed = status == StatusCode::PARTIAL_CONTENT;
        if resumed {
            let start = header(resp.headers(), "content-range")
                .and_then(|r| r.strip_prefix("bytes "))
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.parse::<u64>().ok());
            if start != Some(have) {
                let _ = std::fs::remove_file(part);
                return Err(self.http_err(format!("{file}: the server resumed at the wrong offset; starting over")));
            }
        } else if have > 0 {
            // A 200 to a Range request: the whole file comes again.
            have = 0;
            hasher = Hasher::for_etag(&meta.etag, meta.size);
        }
        let mut out = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed)
            .truncate(!resumed)
            .open(part)
            .await
            .map_err(|e| HubError::io(part, e))?;
        let mut stream = resp.bytes_stream();
        let mut last_report = Instant::now();
        let (mut window, mut window_bytes) = (Instant::now(), 0u64);
        on_event(PullEvent::Progress {
            file: file.to_string(),
            completed: have,
            total: meta.size,
        });
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    out.flush().await.map_err(|e| HubError::io(part, e))?;
                    return Err(self.transport_err(e));
                }
            };
            window_bytes += chunk.len() as u64;
            if window.elapsed() >= STALL_WINDOW {
                if window_bytes < STALL_BYTES {
                    out.flush().await.map_err(|e| HubError::io(part, e))?;
                    return Err(self.http_err(format!(
                        "{file}: the download stalled ({window_bytes} bytes in {} s)",
                        STALL_WINDOW.as_secs()
                    )));
                }
                (window, window_bytes) = (Instant::now(), 0);
            }
            if have + chunk.len() as u64 > meta.size {
                return Ok(FetchEnd::TooLong(have + chunk.len() as u64));
            }
            out.write_all(&chunk).await.map_err(|e| HubError::io(part, e))?;
            hasher.update(&chunk);
            have += chunk.len() as u64;
            if last_report.elapsed() >= Duration::from_millis(100) {
                last_report = Instant::now();
                on_event(PullEvent::Progress {
                    file: file.to_string(),
                    completed: have,
                    total: meta.size,
                });
            }
        }
        out.flush().await.map_err(|e| HubError::io(part, e))?;
        out.sync_all().await.map_err(|e| HubError::io(part, e))?;
        on_event(PullEvent::Progress {
            file: file.to_string(),
            completed: have,
            total: meta.size,
        });
        if have < meta.size {
            return Err(self.http_err(format!(
                "{file}: the connection closed at {have} of {} bytes",
                meta.size
            )));
        }
        Ok(FetchEnd::Complete(hasher))
    }
}

enum FetchEnd {
    Complete(Hasher),
    TooLong(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_and_names() {
        assert_eq!(normalize_etag("W/\"abc123\"").as_deref(), Some("abc123"));
        assert_eq!(normalize_etag("\"../../x\""), None);
        assert_eq!(normalize_etag("\"\""), None);
        assert!(safe_file_name("1_Pooling/config.json"));
        for bad in ["", "/etc/passwd", "a/../b", "a//b", "a\\b", "./a"] {
            assert!(!safe_file_name(bad), "{bad}");
        }
        assert_eq!(encode_path("a b/c+d.json"), "a%20b/c%2Bd.json");
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
    }

    #[test]
    fn git_blob_hash() {
        // `printf 'hello\n' | git hash-object --stdin`
        let mut h = Hasher::for_etag("ce013625030ba8dba906f756967f9e9ca394464a", 6);
        h.update(b"hello\n");
        assert_eq!(h.finish().unwrap(), "ce013625030ba8dba906f756967f9e9ca394464a");
        let mut h = Hasher::for_etag(&"0".repeat(64), 0);
        h.update(b"");
        assert_eq!(
            h.finish().unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
