//! Models pulled from the Hugging Face Hub while serving: `POST
//! /models/pull` (progress as SSE) and, with `--allow-download`, a request
//! for an unknown `org/name` that pulls, registers and then loads it.
//!
//! One pull per model at a time (single-flight, like loads): whoever asks
//! while it runs watches the same download. Other models keep serving.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use hfms_engine::discover::{DiscoverConfig, discover};
use hfms_engine::manager::ModelManager;
use hfms_hub::cache::human_bytes;
use hfms_hub::pull::PullOptions;
use hfms_hub::{HubConfig, HubError, PullEvent, PullOutcome, RepoSpec};
use serde::Deserialize;
use tokio::sync::watch;

use crate::error::{ApiError, ApiResult, PostErrors};
use crate::extract::ApiJson;
use crate::state::AppState;

/// How the server pulls.
#[derive(Debug, Clone)]
pub struct DownloadConfig {
    /// The Hub and the cache; None when the server runs without a hub
    /// cache (`--no-hf-cache`): pulls are refused.
    pub hub: Option<HubConfig>,
    /// `--allow-download`: a request for an unknown `org/name` pulls it.
    pub on_demand: bool,
    /// How long such a request waits for its download before a 503.
    pub wait: Duration,
    /// `--max-cache-gb`, in bytes.
    pub max_cache_bytes: Option<u64>,
}

impl DownloadConfig {
    pub const DEFAULT: DownloadConfig = DownloadConfig {
        hub: None,
        on_demand: false,
        wait: Duration::from_secs(300),
        max_cache_bytes: None,
    };
}

/// One pull as its watchers see it.
#[derive(Debug, Clone, Default)]
pub struct DownloadState {
    /// The events so far, numbered, in order. A progress event replaces
    /// the one before it when nothing came between (a new number), so the
    /// log stays a few entries per file however long the download.
    pub log: Vec<(u64, PullEvent)>,
    seq: u64,
    pub total_bytes: u64,
    /// Bytes fetched so far, per file being downloaded.
    pub completed: HashMap<String, u64>,
    pub result: Option<Result<PullOutcome, ApiError>>,
}

impl DownloadState {
    fn apply(&mut self, e: PullEvent) {
        self.seq += 1;
        match &e {
            PullEvent::Progress { file, completed, .. } => {
                self.completed.insert(file.clone(), *completed);
                if let Some((seq, last @ PullEvent::Progress { .. })) = self.log.last_mut()
                    && matches!(last, PullEvent::Progress { file: f, .. } if f == file)
                {
                    *seq = self.seq;
                    *last = e;
                    return;
                }
            }
            PullEvent::Resolved { download_bytes, .. } => self.total_bytes = *download_bytes,
            _ => {}
        }
        self.log.push((self.seq, e));
    }

    /// `45% (12.0 MiB of 26.7 MiB)`.
    pub fn summary(&self) -> String {
        let done: u64 = self.completed.values().sum();
        if self.total_bytes == 0 {
            return "resolving the files".to_string();
        }
        format!(
            "{:.0}% ({} of {})",
            100.0 * done as f64 / self.total_bytes as f64,
            human_bytes(done),
            human_bytes(self.total_bytes)
        )
    }
}

pub struct Downloads {
    config: DownloadConfig,
    manager: Arc<ModelManager>,
    /// Pulls in progress, by spec.
    running: Arc<Mutex<HashMap<String, watch::Receiver<DownloadState>>>>,
    /// Bytes the running pulls have yet to write, for the cache budget.
    reserved: Arc<Mutex<u64>>,
}

/// A pull failure as an HTTP error: the Hub's refusals are not the
/// caller's API key (no 401 here), an unreachable Hub is a bad gateway.
fn api_error(e: HubError) -> ApiError {
    let msg = e.to_string();
    match e {
        HubError::InvalidSpec(_) => ApiError::invalid(Some("model".to_string()), msg),
        HubError::Unauthorized { .. } | HubError::Forbidden { .. } => {
            ApiError::new(StatusCode::FORBIDDEN, "permission_error", msg).with_code("hub_access_denied")
        }
        HubError::NotFound(_) | HubError::NoMatchingFiles(_) | HubError::Offline(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", msg).with_code("model_not_found")
        }
        HubError::Http { .. } => {
            ApiError::new(StatusCode::BAD_GATEWAY, "server_error", msg).with_code("hub_unreachable")
        }
        HubError::Integrity { .. } => {
            ApiError::new(StatusCode::BAD_GATEWAY, "server_error", msg).with_code("hub_integrity_error")
        }
        HubError::OverBudget(_) => {
            ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "server_error", msg).with_code("cache_budget_exceeded")
        }
        HubError::Io { .. } => ApiError::internal(msg),
    }
}

impl Downloads {
    pub fn new(config: DownloadConfig, manager: Arc<ModelManager>) -> Self {
        Downloads {
            config,
            manager,
            running: Arc::new(Mutex::new(HashMap::new())),
            reserved: Arc::new(Mutex::new(0)),
        }
    }

    pub fn on_demand(&self) -> bool {
        self.config.on_demand && self.config.hub.is_some()
    }

    /// Start pulling `spec` (or join the pull already running). `replace`:
    /// a model already served under the pulled id gets the new files (an
    /// explicit pull); otherwise the catalog entry stays.
    pub fn start(&self, spec: &RepoSpec, replace: bool) -> ApiResult<watch::Receiver<DownloadState>> {
        let Some(hub) = self.config.hub.clone() else {
            return Err(ApiError::invalid(
                Some("model".to_string()),
                "this server has no hub cache to pull into (it runs with --no-hf-cache)",
            ));
        };
        let key = format!("{}@{}", spec.model_id(), spec.revision);
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = running.get(&key) {
            return Ok(rx.clone());
        }
        let (tx, rx) = watch::channel(DownloadState::default());
        running.insert(key.clone(), rx.clone());
        drop(running);
        let manager = self.manager.clone();
        let opts = PullOptions {
            max_cache_bytes: self.config.max_cache_bytes,
            evictable: Some(evictable(manager.clone(), self.running.clone())),
            reserved: Some(self.reserved.clone()),
            ..PullOptions::default()
        };
        let spec = spec.clone();
        let running = self.running.clone();
        let task_key = key.clone();
        // A thread of its own: hashing, re-reading a resumed file, evicting
        // and describing the model are blocking work the server's async
        // threads must not do.
        let span = tracing::info_span!("pull", model = %spec.model_id(), revision = %spec.revision);
        let spawned = std::thread::Builder::new().name("hfms-pull".into()).spawn(move || {
            let _span = span.enter();
            let finish = |result: Result<PullOutcome, ApiError>| {
                tx.send_modify(|s| s.result = Some(result));
                running.lock().unwrap_or_else(|p| p.into_inner()).remove(&task_key);
            };
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return finish(Err(ApiError::internal(format!("no runtime for the pull: {e}")))),
            };
            tracing::info!("pulling from the Hub");
            let on_event = |e: PullEvent| {
                if let PullEvent::Evicted { repo } = &e {
                    let dir = hub.cache_dir.join(hfms_hub::cache::repo_folder_name(repo));
                    let gone = manager.remove_models_under(&dir);
                    tracing::info!(repo = %repo, models = ?gone, "evicted from the hub cache");
                }
                tx.send_modify(|s| s.apply(e));
            };
            let result = match rt.block_on(hfms_hub::pull(&hub, &spec, &opts, &on_event)) {
                Ok(o) => register(&manager, &o, replace).map(|()| o),
                Err(e) => Err(api_error(e)),
            };
            match &result {
                Ok(o) => tracing::info!(model = %o.model, path = %o.model_path.display(), bytes = o.downloaded_bytes, "pulled"),
                Err(e) => tracing::warn!(error = %e.message, "pull failed"),
            }
            finish(result);
        });
        if let Err(e) = spawned {
            self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
            return Err(ApiError::internal(format!("could not start the pull: {e}")));
        }
        Ok(rx)
    }

    /// With `--allow-download`: pull an unknown `org/name[:QUANT]` the
    /// request names and return the id it is served under; None when the
    /// name is not a Hub repo id. Waits up to `--download-timeout`, then
    /// answers 503 with the progress (the download goes on).
    pub async fn fetch_for_request(&self, name: &str) -> ApiResult<Option<String>> {
        let Ok(spec) = RepoSpec::parse(name) else {
            return Ok(None);
        };
        if name.contains('@') {
            return Err(ApiError::invalid(
                Some("model".to_string()),
                "a request cannot pick a revision of a model; pull it with POST /models/pull, then name it without @REVISION",
            ));
        }
        // `org/x:q4_k_m` for the served `org/x:Q4_K_M`.
        if let Some(d) = self.manager.resolve(&spec.model_id()) {
            return Ok(Some(d.id));
        }
        let mut rx = self.start(&spec, false)?;
        let wait = self.config.wait;
        let done = tokio::time::timeout(wait, rx.wait_for(|s| s.result.is_some()))
            .await
            .map(|r| r.map(|s| s.result.clone()));
        match done {
            Ok(Ok(Some(Ok(o)))) => Ok(Some(self.manager.resolve(&o.model).map_or(o.model, |d| d.id))),
            Ok(Ok(Some(Err(e)))) => Err(e),
            Ok(_) => Err(ApiError::internal("the pull ended without a result")),
            Err(_) => {
                let summary = rx.borrow().summary();
                Err(ApiError::unavailable(
                    format!(
                        "{} is being downloaded from the Hub: {summary}; retry shortly",
                        spec.model_id()
                    ),
                    10,
                )
                .with_code("model_downloading"))
            }
        }
    }
}

/// A repo may be evicted when no model served from it is loaded or pinned.
/// Nor one being pulled (its blobs would vanish under the pull).
fn evictable(
    manager: Arc<ModelManager>,
    running: Arc<Mutex<HashMap<String, watch::Receiver<DownloadState>>>>,
) -> hfms_hub::pull::Evictable {
    Arc::new(move |repo: &str| {
        let pulling = running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .any(|k| k.split([':', '@']).next() == Some(repo));
        if pulling {
            return false;
        }
        let folder = hfms_hub::cache::repo_folder_name(repo);
        let catalog = manager.catalog();
        let in_use = manager.status().into_iter().any(|s| {
            let loaded = !matches!(s.state, hfms_engine::manager::ModelState::Unloaded);
            (loaded || s.pinned)
                && catalog
                    .iter()
                    .find(|d| d.id == s.id)
                    .is_some_and(|d| d.path.components().any(|c| c.as_os_str() == folder.as_str()))
        });
        !in_use
    })
}

/// Describe the pulled files and add them to the catalog under the id the
/// request asked for.
fn register(manager: &ModelManager, o: &PullOutcome, replace: bool) -> Result<(), ApiError> {
    if manager
        .resolve(&o.model)
        .is_some_and(|d| d.path == o.model_path || !replace)
    {
        return Ok(());
    }
    let cfg = DiscoverConfig {
        extra: vec![(Some(o.model.clone()), o.model_path.clone())],
        ..DiscoverConfig::default()
    };
    let desc = discover(manager.registry(), &cfg)
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::internal(format!("{} was pulled but could not be described", o.model)))?;
    if let Some(err) = &desc.error {
        tracing::warn!(model = %o.model, error = %err, "pulled a model hfms cannot serve");
    }
    manager.add_model(desc).map_err(ApiError::from)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PullRequest {
    /// `ORG/NAME[:QUANT][@REVISION]`
    pub model: String,
}

/// Pull a model from the Hub into the cache and add it to the served
/// models; progress as server-sent events (`resolved`, `progress`,
/// `file_done`, `done`, or an error event), then `[DONE]`.
#[utoipa::path(post, path = "/models/pull", tag = "Management",
    request_body = PullRequest,
    responses((status = 200, description = "Progress events (text/event-stream)", content_type = "text/event-stream", body = String), PostErrors))]
pub async fn pull(
    State(state): State<AppState>,
    axum::Extension(rid): axum::Extension<crate::middleware::trace::RequestId>,
    ApiJson(req, _): ApiJson<PullRequest>,
) -> ApiResult<axum::response::Response> {
    let spec = RepoSpec::parse(&req.model).map_err(api_error)?;
    let mut rx = state.downloads().start(&spec, true)?;
    // A pull that fails before it has chosen its files (unknown repo, no
    // access, no such quantisation, over the budget) answers with its own
    // status, not an event in a 200 stream.
    let early = state
        .bounded(async {
            rx.wait_for(|s| s.result.is_some() || !s.log.is_empty())
                .await
                .map(|s| s.result.clone())
                .map_err(|_| ApiError::internal("the pull task ended without a result"))
        })
        .await?;
    if let Some(Err(e)) = early {
        return Err(e);
    }
    rx.mark_changed();
    Ok(crate::openai::sse_response(&state, &rid.0, move |sink| async move {
        // The number of the last event sent.
        let mut sent = 0u64;
        loop {
            let (news, result) = {
                let s = rx.borrow_and_update();
                let news: Vec<(u64, PullEvent)> = s.log.iter().filter(|(n, _)| *n > sent).cloned().collect();
                (news, s.result.clone())
            };
            for (n, e) in &news {
                if sink.send_json(e).await.is_err() {
                    return;
                }
                sent = *n;
            }
            match result {
                Some(Ok(_)) => {
                    let _ = sink.send(crate::openai::sse_done()).await;
                    return;
                }
                Some(Err(e)) => {
                    sink.send_error(&e).await;
                    return;
                }
                None => {}
            }
            // The task sets a result before it drops the sender, and the
            // loop returns on a result: a closed channel means it died.
            if rx.changed().await.is_err() {
                sink.send_error(&ApiError::internal("the pull task ended without a result"))
                    .await;
                return;
            }
        }
    }))
}
