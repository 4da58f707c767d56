//! The Hugging Face cache layout, as `huggingface_hub` writes and reads it:
//!
//! ```text
//! <cache>/models--org--name/blobs/<etag>          file contents, by the Hub's ETag
//! <cache>/models--org--name/blobs/<etag>.incomplete   a download in progress (resumed)
//! <cache>/models--org--name/snapshots/<commit>/<path> → ../../blobs/<etag>
//! <cache>/models--org--name/refs/<revision>       the commit a branch or tag pointed at
//! <cache>/.locks/models--org--name/<etag>.lock    flock, shared with Python
//! ```

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use crate::HubError;

pub use hfms_engine::discover::{hub_repo_folder as repo_folder_name, hub_repo_id as repo_id_of_folder};

/// The paths of one repo in the cache.
#[derive(Debug, Clone)]
pub struct RepoPaths {
    pub root: PathBuf,
    pub locks: PathBuf,
}

impl RepoPaths {
    pub fn new(cache: &Path, repo: &str) -> Self {
        let folder = repo_folder_name(repo);
        RepoPaths {
            root: cache.join(&folder),
            locks: cache.join(".locks").join(folder),
        }
    }
    pub fn blob(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(etag)
    }
    pub fn incomplete(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(format!("{etag}.incomplete"))
    }
    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.root.join("snapshots").join(commit)
    }
    pub fn reference(&self, revision: &str) -> PathBuf {
        self.root.join("refs").join(revision)
    }
    pub fn lock(&self, etag: &str) -> PathBuf {
        self.locks.join(format!("{etag}.lock"))
    }

    /// The commit a revision resolves to in the cache: the revision itself
    /// when it is a commit, else what `refs/<revision>` holds.
    pub fn cached_commit(&self, revision: &str) -> Option<String> {
        if crate::is_commit_hash(revision) {
            return Some(revision.to_string());
        }
        let c = std::fs::read_to_string(self.reference(revision)).ok()?;
        let c = c.trim();
        crate::is_commit_hash(c).then(|| c.to_string())
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HubError + '_ {
    move |e| HubError::io(path, e)
}

/// A temporary name beside `name` no other writer uses (pid, and a count
/// for pulls running side by side in one process).
fn temp_name(name: &str, what: &str) -> String {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(".{name}.{what}-{}-{n}", std::process::id())
}

/// Write a small file atomically (temp file, then rename).
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), HubError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(temp_name(
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        "tmp",
    ));
    std::fs::write(&tmp, contents).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The relative link target from `snapshots/<commit>/<file>` to its blob.
fn link_target(file: &str, etag: &str) -> PathBuf {
    let depth = file.split('/').count() + 1; // the file's folders + <commit> + snapshots
    let mut p = PathBuf::new();
    for _ in 0..depth {
        p.push("..");
    }
    p.join("blobs").join(etag)
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    // Without symlinks (Windows without developer mode) huggingface_hub
    // copies; so do we.
    let blob = link.parent().unwrap_or(Path::new(".")).join(target);
    std::fs::copy(blob, link).map(|_| ())
}

/// Link every `(file, etag, size)` into `snapshots/<commit>/`, once each
/// blob is checked to be there whole (an eviction by another process must
/// not leave a dangling link). A new snapshot is built under a hidden name
/// and renamed into place, so discovery sees all of it or nothing; files
/// added to an existing snapshot appear one by one, weights first and the
/// config and index last, so what makes a folder a model comes last.
pub fn publish_snapshot(paths: &RepoPaths, commit: &str, files: &[(String, String, u64)]) -> Result<PathBuf, HubError> {
    for (file, etag, size) in files {
        let blob = paths.blob(etag);
        match std::fs::metadata(&blob) {
            Ok(m) if m.len() == *size => {}
            _ => {
                return Err(HubError::io(
                    &blob,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("the blob of {file} is gone or incomplete (removed while pulling?)"),
                    ),
                ));
            }
        }
    }
    let last = |f: &str| {
        let name = f.rsplit('/').next().unwrap_or(f);
        matches!(name, "config.json" | "model.safetensors.index.json" | "modules.json")
    };
    let mut ordered: Vec<&(String, String, u64)> = files.iter().collect();
    ordered.sort_by_key(|(f, _, _)| (last(f), !(f.ends_with(".safetensors") || f.ends_with(".gguf"))));
    let snap = paths.snapshot(commit);
    let building = !snap.exists();
    let dir = if building {
        paths.root.join("snapshots").join(temp_name(commit, "partial"))
    } else {
        snap.clone()
    };
    let linked = link_all(&dir, &ordered);
    if building && linked.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    linked?;
    if building {
        match std::fs::rename(&dir, &snap) {
            Ok(()) => {}
            // Another process published the same commit first: same
            // contents by construction; add ours into it.
            Err(_) if snap.is_dir() => {
                let _ = std::fs::remove_dir_all(&dir);
                return publish_snapshot(paths, commit, files);
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(HubError::io(&snap, e));
            }
        }
    }
    Ok(snap)
}

/// Make each link in `dir` (atomically: a temporary link renamed over).
fn link_all(dir: &Path, ordered: &[&(String, String, u64)]) -> Result<(), HubError> {
    for (file, etag, _) in ordered.iter().copied() {
        let link = dir.join(file);
        let parent = link.parent().unwrap_or(dir).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        let target = link_target(file, etag);
        if std::fs::read_link(&link).is_ok_and(|t| t == target) {
            continue;
        }
        let tmp = parent.join(temp_name(
            link.file_name().and_then(|n| n.to_str()).unwrap_or("f"),
            "link",
        ));
        let _ = std::fs::remove_file(&tmp);
        symlink(&target, &tmp).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &link).map_err(io(&link))?;
    }
    Ok(())
}

/// One repo of the cache, as `hfms ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CachedRepo {
    pub repo: String,
    pub path: PathBuf,
    /// Bytes of complete blobs.
    pub size_bytes: u64,
    /// Bytes of `.incomplete` downloads.
    pub incomplete_bytes: u64,
    pub files: usize,
    /// Commit hashes with a snapshot.
    pub revisions: Vec<String>,
    /// Branch or tag → commit.
    pub refs: Vec<(String, String)>,
    /// Seconds since the epoch: the latest access or change of any blob.
    pub last_used: u64,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Every file under `dir` (links followed, hidden names skipped), as
/// `/`-separated relative names with their paths.
pub fn walk_files(dir: &Path) -> Vec<(String, PathBuf)> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let path = e.path();
            if path.is_dir() {
                walk(&path, &rel, out);
            } else if path.exists() {
                out.push((rel, path));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out);
    out
}

fn describe(repo: String, root: &Path) -> CachedRepo {
    let (mut size, mut incomplete, mut files, mut last) = (0u64, 0u64, 0usize, 0u64);
    if let Ok(rd) = std::fs::read_dir(root.join("blobs")) {
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if !m.is_file() {
                continue;
            }
            if e.file_name().to_string_lossy().ends_with(".incomplete") {
                incomplete += m.len();
                continue;
            }
            size += m.len();
            files += 1;
            for t in [m.accessed(), m.modified()].into_iter().flatten() {
                last = last.max(unix_secs(t));
            }
        }
    }
    let mut revisions: Vec<String> = std::fs::read_dir(root.join("snapshots"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    revisions.sort();
    let mut refs: Vec<(String, String)> = walk_files(&root.join("refs"))
        .into_iter()
        .filter_map(|(name, path)| Some((name, std::fs::read_to_string(path).ok()?.trim().to_string())))
        .collect();
    refs.sort();
    CachedRepo {
        repo,
        path: root.to_path_buf(),
        size_bytes: size,
        incomplete_bytes: incomplete,
        files,
        revisions,
        refs,
        last_used: last,
    }
}

/// Every model repo in the cache, by id.
pub fn scan_cache(cache: &Path) -> Vec<CachedRepo> {
    let Ok(rd) = std::fs::read_dir(cache) else {
        return Vec::new();
    };
    let mut out: Vec<CachedRepo> = rd
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let id = repo_id_of_folder(&e.file_name().to_string_lossy())?;
            Some(describe(id, &e.path()))
        })
        .collect();
    out.sort_by(|a, b| a.repo.cmp(&b.repo));
    out
}

/// Delete a repo from the cache (its blobs, snapshots, refs and locks).
/// Returns the bytes freed.
pub fn remove_repo(cache: &Path, repo: &str) -> Result<u64, HubError> {
    let paths = RepoPaths::new(cache, repo);
    if !paths.root.is_dir() {
        return Err(HubError::NotFound(format!(
            "{repo} is not in the cache at {}",
            cache.display()
        )));
    }
    let d = describe(repo.to_string(), &paths.root);
    std::fs::remove_dir_all(&paths.root).map_err(io(&paths.root))?;
    let _ = std::fs::remove_dir_all(&paths.locks);
    Ok(d.size_bytes + d.incomplete_bytes)
}

/// Make room for `needed` more bytes under `budget`: remove the least
/// recently used repos for which `evictable` says yes (not loaded, not
/// pinned, not being pulled). Returns the repos removed; an error when
/// even after every allowed eviction the budget cannot hold `needed`.
pub fn evict_to_budget(
    cache: &Path,
    budget: u64,
    needed: u64,
    evictable: &dyn Fn(&str) -> bool,
) -> Result<Vec<String>, HubError> {
    let mut repos = scan_cache(cache);
    let used = |rs: &[CachedRepo]| rs.iter().map(|r| r.size_bytes + r.incomplete_bytes).sum::<u64>();
    let total: u64 = used(&repos);
    if total.saturating_add(needed) <= budget {
        return Ok(Vec::new());
    }
    let freeable: u64 = repos
        .iter()
        .filter(|r| evictable(&r.repo))
        .map(|r| r.size_bytes + r.incomplete_bytes)
        .sum();
    if (total - freeable).saturating_add(needed) > budget {
        return Err(HubError::OverBudget(format!(
            "{} more does not fit the cache budget of {} ({} in use by models that cannot be evicted)",
            human_bytes(needed),
            human_bytes(budget),
            human_bytes(total - freeable)
        )));
    }
    repos.sort_by_key(|r| r.last_used);
    let mut removed = Vec::new();
    let mut current = total;
    for r in repos {
        if current.saturating_add(needed) <= budget {
            break;
        }
        if !evictable(&r.repo) {
            continue;
        }
        let freed = remove_repo(cache, &r.repo)?;
        tracing::info!(repo = %r.repo, freed_bytes = freed, "evicted from the hub cache to stay within --max-cache-gb");
        current = current.saturating_sub(freed);
        removed.push(r.repo);
    }
    Ok(removed)
}

/// `1.5 GiB`, `230.0 MiB`, `12 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_links() {
        assert_eq!(repo_folder_name("org/name"), "models--org--name");
        assert_eq!(repo_id_of_folder("models--org--na-me").as_deref(), Some("org/na-me"));
        assert_eq!(link_target("config.json", "e"), PathBuf::from("../../blobs/e"));
        assert_eq!(
            link_target("1_Pooling/config.json", "e"),
            PathBuf::from("../../../blobs/e")
        );
    }

    #[test]
    fn publish_scan_evict_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path();
        for (repo, n) in [("a/old", 300usize), ("b/new", 500)] {
            let p = RepoPaths::new(cache, repo);
            std::fs::create_dir_all(p.root.join("blobs")).unwrap();
            std::fs::write(p.blob("e1"), vec![1u8; n]).unwrap();
            std::fs::write(p.blob("e2"), b"{}").unwrap();
            let snap = publish_snapshot(
                &p,
                &"c".repeat(40),
                &[
                    ("m.bin".into(), "e1".into(), n as u64),
                    ("d/x.json".into(), "e2".into(), 2),
                ],
            )
            .unwrap();
            assert_eq!(std::fs::read(snap.join("d/x.json")).unwrap(), b"{}");
            assert_eq!(std::fs::read(snap.join("m.bin")).unwrap().len(), n);
            write_atomic(&p.reference("main"), "c".repeat(40).as_bytes()).unwrap();
            assert_eq!(p.cached_commit("main"), Some("c".repeat(40)));
            // No hidden build folder is left behind.
            let names: Vec<_> = std::fs::read_dir(p.root.join("snapshots"))
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert_eq!(names.len(), 1);
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        let repos = scan_cache(cache);
        assert_eq!(repos.len(), 2);
        assert_eq!(repos[0].size_bytes, 302);
        assert_eq!(repos[0].refs, vec![("main".to_string(), "c".repeat(40))]);
        // Within budget: nothing removed.
        assert!(evict_to_budget(cache, 10_000, 100, &|_| true).unwrap().is_empty());
        // Over: the older one goes.
        assert_eq!(
            evict_to_budget(cache, 900, 200, &|_| true).unwrap(),
            vec!["a/old".to_string()]
        );
        // Nothing evictable: refused.
        assert!(evict_to_budget(cache, 600, 200, &|_| false).is_err());
        assert_eq!(remove_repo(cache, "b/new").unwrap(), 502);
        assert!(remove_repo(cache, "b/new").is_err());
        assert!(scan_cache(cache).is_empty());
    }
}
