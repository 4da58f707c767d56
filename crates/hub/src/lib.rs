//! Models from the Hugging Face Hub.
//!
//! `pull` resolves a repo spec (`org/name[:QUANT][@REVISION]`) against the
//! Hub's API, chooses the files a model server needs, downloads them
//! (resumable, size- and hash-checked) into the cache layout
//! `huggingface_hub` writes (`models--org--name/{blobs,snapshots,refs}`), so
//! Python tools and hfms share one cache. A snapshot folder appears only
//! once every blob it links to is complete and verified: discovery never
//! sees half a model.
//!
//! Why not the `hf-hub` crate: it does not check a downloaded file against
//! the Hub's sha256 / git hash, and it links each file into the snapshot as
//! it completes (discovery would see half a model); the server also needs
//! pull events it can stream and a cache budget.

pub mod cache;
pub mod pull;
pub mod select;

use std::path::PathBuf;

pub use cache::{CachedRepo, evict_to_budget, remove_repo, scan_cache};
pub use pull::{PullEvent, PullOutcome, pull};

/// The Hub when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where and how to reach the Hub, as `huggingface_hub` reads its
/// environment.
#[derive(Clone)]
pub struct HubConfig {
    /// `HF_ENDPOINT`, without a trailing slash.
    pub endpoint: String,
    /// `HF_TOKEN`, else the file `HF_TOKEN_PATH`, else `$HF_HOME/token`.
    pub token: Option<String>,
    /// The hub cache folder (`…/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// `HF_HUB_OFFLINE`: the cache only, no request leaves the machine.
    pub offline: bool,
}

impl std::fmt::Debug for HubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubConfig")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .finish()
    }
}

fn env_truthy(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "on" | "yes" | "true"))
}

impl HubConfig {
    /// The settings from the environment, with the cache folder the caller
    /// resolved (discovery's `default_hf_cache` or a flag).
    pub fn from_env(cache_dir: PathBuf) -> Self {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let token = std::env::var("HF_TOKEN")
            .ok()
            .or_else(|| {
                let path = std::env::var_os("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .or_else(|| hfms_engine::discover::hf_home().map(|h| h.join("token")))?;
                std::fs::read_to_string(path).ok()
            })
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        HubConfig {
            endpoint,
            token,
            cache_dir,
            offline: env_truthy("HF_HUB_OFFLINE"),
        }
    }
}

/// What to pull: `org/name`, an optional GGUF quantisation tag and an
/// optional revision (branch, tag or commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSpec {
    pub repo: String,
    pub quant: Option<String>,
    pub revision: String,
}

impl RepoSpec {
    /// `org/name`, `org/name:Q4_K_M`, `org/name@v1.0`, `org/name:Q8_0@abc…`.
    pub fn parse(spec: &str) -> Result<RepoSpec, HubError> {
        let bad = |why: &str| HubError::InvalidSpec(format!("{spec:?}: {why}"));
        let spec_t = spec.trim();
        if spec_t.is_empty() {
            return Err(bad("empty; expected ORG/NAME[:QUANT][@REVISION]"));
        }
        if spec_t.len() > 300 {
            return Err(bad("longer than 300 characters"));
        }
        let (head, revision) = match spec_t.split_once('@') {
            Some((h, r)) => (h, r.to_string()),
            None => (spec_t, "main".to_string()),
        };
        let (repo, quant) = match head.split_once(':') {
            Some((r, q)) => (r, Some(q.to_string())),
            None => (head, None),
        };
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.len() != 2 {
            return Err(bad("the repo must be ORG/NAME"));
        }
        for p in &parts {
            let ok_chars = p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if p.is_empty()
                || p.len() > 96
                || !ok_chars
                || p.starts_with(['-', '.'])
                || p.ends_with('.')
                || p.contains("--")
                || p.contains("..")
            {
                return Err(bad(
                    "ORG and NAME are 1–96 characters of letters, digits, '-', '_', '.' (no '--' or '..', not starting with '-' or '.')",
                ));
            }
        }
        if let Some(q) = &quant
            && (q.is_empty() || q.len() > 32 || !q.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            return Err(bad("a quantisation tag is letters, digits and '_' (e.g. Q4_K_M)"));
        }
        let rev_ok = revision.len() <= 200
            && revision
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
            && revision
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !rev_ok {
            return Err(bad(
                "a revision is a branch, tag or commit (letters, digits, '-', '_', '.', '/')",
            ));
        }
        Ok(RepoSpec {
            repo: repo.to_string(),
            quant: quant.map(|q| q.to_ascii_uppercase()),
            revision,
        })
    }

    /// The model id discovery gives the pulled files: `org/name`, with the
    /// tag when one was asked for.
    pub fn model_id(&self) -> String {
        match &self.quant {
            Some(q) => format!("{}:{q}", self.repo),
            None => self.repo.clone(),
        }
    }
}

/// Is this a full commit hash (what `refs/*` files hold)?
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The one error type of this crate.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("invalid model spec {0}")]
    InvalidSpec(String),
    #[error("{repo} needs a Hugging Face token (the repo is gated or private): {}", if *token_set { "the Hub refused the token in HF_TOKEN (expired or invalid?)" } else { "set HF_TOKEN to a token that has access" })]
    Unauthorized { repo: String, token_set: bool },
    #[error("{repo}: the token in HF_TOKEN has no access (gated repo: request access on its Hub page)")]
    Forbidden { repo: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NoMatchingFiles(String),
    #[error("HF_HUB_OFFLINE is set and {0}")]
    Offline(String),
    #[error("the Hub at {endpoint}: {message}")]
    Http { endpoint: String, message: String },
    #[error("{file}: downloaded {actual} but the Hub says {expected}; the download was discarded")]
    Integrity {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("{0}")]
    OverBudget(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl HubError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        HubError::Io {
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let s = RepoSpec::parse("org/name").unwrap();
        assert_eq!(
            (s.repo.as_str(), s.quant.as_deref(), s.revision.as_str()),
            ("org/name", None, "main")
        );
        let s = RepoSpec::parse("Qwen/Qwen2.5-0.5B-Instruct-GGUF:q4_k_m@v1.0").unwrap();
        assert_eq!(s.quant.as_deref(), Some("Q4_K_M"));
        assert_eq!(s.revision, "v1.0");
        assert_eq!(s.model_id(), "Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M");
        assert_eq!(RepoSpec::parse("a/b@refs/pr/1").unwrap().revision, "refs/pr/1");
        for bad in [
            "",
            " ",
            "name",
            "a/b/c",
            "/b",
            "a/",
            "../b",
            "a/..",
            "a/b:",
            "a/b@",
            "a/b@../x",
            "a/b:Q4 K",
            "a--b/c",
            "-a/b",
            "a/b@/x",
            "a/b@main/",
            "a/b@.",
            "a/b@x//y",
            &"x".repeat(400),
            "a/b\0",
            "a/b c",
            "a/ä",
        ] {
            assert!(RepoSpec::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
