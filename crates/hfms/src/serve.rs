//! `hfms serve`: discover, build the manager, preload, listen.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use hfms_engine::compute::ComputePool;
use hfms_engine::discover::discover;
use hfms_engine::manager::{ManagerConfig, ModelManager};
use hfms_server::AppState;

use crate::config::ServeArgs;

pub fn run(s: ServeArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // HTTP work is light; model maths has its own pool.
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(s))
}

async fn serve(s: ServeArgs) -> Result<()> {
    let discover_config = s.models.discover_config()?;
    if s.exit_on_stdin_eof {
        std::thread::spawn(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            // stderr may be gone with the supervisor: never panic on it.
            let _ = std::io::Write::write_all(&mut std::io::stderr(), b"hfms: standard input closed; exiting\n");
            std::process::exit(0);
        });
    }
    let registry = crate::registry();
    let catalog = discover(&registry, &discover_config);
    for d in &catalog {
        match &d.error {
            None => {
                tracing::info!(model = %d.id, aliases = ?d.aliases, skill = ?d.skill, path = %d.path.display(), "model found")
            }
            Some(e) => {
                tracing::warn!(model = %d.id, path = %d.path.display(), error = %e, "model found but not servable")
            }
        }
    }
    if catalog.iter().all(|d| !d.servable()) {
        tracing::warn!(dirs = ?discover_config.models_dirs, "no servable model found; run scripts/fetch-models.sh or pass --model");
    }
    let hardware = hfms_hardware::detect_default();
    for p in &hardware.platforms {
        if p.present {
            tracing::info!(
                platform = %p.platform,
                devices = p.devices.len(),
                build_supports = p.build_supports,
                reason = %p.build_reason,
                "hardware"
            );
        }
    }
    // Config names models by id or alias; the manager sees ids.
    let id_of = |name: &str, flag: &str| -> Result<String> {
        catalog
            .iter()
            .find(|d| d.id == name || d.aliases.iter().any(|a| a == name))
            .map(|d| d.id.clone())
            .with_context(|| format!("{flag} {name}: no such model (see `hfms discover`)"))
    };
    let mut pins = std::collections::BTreeMap::new();
    for (name, dev) in &s.device_pins()? {
        pins.insert(id_of(name, "--device")?, *dev);
    }
    let (templates, default_chat_template) = s.chat_templates()?;
    let mut chat_templates = std::collections::BTreeMap::new();
    for (name, source) in templates {
        let id = id_of(&name, "--chat-template")?;
        if catalog
            .iter()
            .any(|d| d.id == id && d.task == Some(hfms_engine::skills::Task::Embed))
        {
            anyhow::bail!("--chat-template {name}: an embedding model has no chat");
        }
        if chat_templates
            .insert(id.clone(), std::sync::Arc::<str>::from(source))
            .is_some()
        {
            anyhow::bail!("--chat-template: two templates for {id} (by id and alias)");
        }
    }
    let mut pinned = std::collections::BTreeSet::new();
    for name in &s.pin {
        pinned.insert(id_of(name, "--pin")?);
    }
    // What models may use per device: the budget given, else a fraction of
    // what was free at start.
    let budget = s.memory_budget()?;
    let mut devices = hardware.device_states();
    for d in devices.iter_mut() {
        d.free_bytes = match budget.get(&d.id) {
            Some(&b) => b.min(d.total_bytes),
            None => (d.free_bytes as f64 * s.memory_fraction) as u64,
        };
    }
    hfms_engine::quant::set_precise_activations(!s.fast_activations);
    let pool = ComputePool::new(s.threads)?;
    tracing::info!(
        threads = pool.threads(),
        kernels = hfms_engine::quant::kernels().name,
        "compute pool ready"
    );
    let encoder_weights: hfms_engine::skills::bert::EncoderWeights =
        s.encoder_weights.parse().map_err(anyhow::Error::msg)?;
    if encoder_weights == hfms_engine::skills::bert::EncoderWeights::Bf16
        && hfms_engine::quant::kernels().panels.bf16.is_none()
    {
        tracing::warn!(
            "--encoder-weights bf16: the kernel set in use has no bf16 kernel (no AVX512_BF16, or HFMS_NO_AVX512): its portable kernel is slower than f32 or f16"
        );
    }
    let listen = s.listen()?;
    let metrics = hfms_server::metrics::Metrics::new();
    let manager = Arc::new(ModelManager::new(
        registry,
        catalog,
        discover_config.aliases.clone(),
        pool,
        ManagerConfig {
            scheduler: s.scheduler(),
            batcher: s.batcher(),
            devices,
            pins,
            forbidden: s.forbidden()?,
            keep_alive: s.keep_alive()?,
            pinned,
            encoder_weights,
            chat_templates,
            default_chat_template: default_chat_template.map(Into::into),
            observers: metrics.clone(),
        },
    ));
    // Prices are given by id or alias; records hold ids.
    let resolve = |name: &str| manager.resolve(name).map(|d| d.id.clone());
    let access = hfms_server::auth::Access::open(&s.access(&resolve)?)
        .await
        .map_err(anyhow::Error::msg)?;
    let access = Arc::new(access);
    if !listen.ip().is_loopback() && !access.required() && !s.no_auth {
        anyhow::bail!(
            "refusing to serve {listen} without API keys: give an admin key (HFMS_ADMIN_KEY or --admin-key-file), \
             create keys with `hfms keys create`, or pass --no-auth to serve the network openly"
        );
    }
    let state = AppState::new(
        manager.clone(),
        s.server(listen),
        Some(hardware),
        metrics,
        access.clone(),
    )
    .map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to find the port when it was 0.
    tracing::info!(address = %addr, "listening");
    eprintln!("hfms listening on http://{addr}");

    let preload: Vec<String> = if s.preload.iter().any(|p| p == "all") {
        manager
            .catalog()
            .iter()
            .filter(|d| d.servable())
            .map(|d| d.id.clone())
            .collect()
    } else {
        s.preload.clone()
    };
    for name in &preload {
        if manager.resolve(name).is_none() {
            bail!("--preload {name}: no such model (see `hfms discover`)");
        }
    }
    let preload_state = state.clone();
    tokio::spawn(async move {
        for name in preload {
            let m = preload_state.manager().clone();
            let n = name.clone();
            let failure = match tokio::task::spawn_blocking(move || m.get(&n)).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(format!("the preload task failed: {e}")),
            };
            if let Some(e) = failure {
                tracing::error!(model = %name, error = %e, "preload failed; /ready answers 503 until it loads");
                let id = preload_state
                    .manager()
                    .resolve(&name)
                    .map_or(name.clone(), |d| d.id.clone());
                preload_state.preload_failed(&id, &e);
            }
        }
        preload_state.set_ready();
        tracing::info!("ready");
    });

    // Shutdown: on SIGTERM/SIGINT stop accepting and turn /ready to 503;
    // requests and streams in flight get `--shutdown-grace` to finish, then
    // they are cancelled (streams end with an error event) and the process
    // exits 0 once their connections close (or a few seconds later, at most).
    let grace = std::time::Duration::from_secs(s.shutdown_grace);
    let drain = state.clone();
    let signalled = async move {
        shutdown_signal().await;
        tracing::info!(
            grace_seconds = grace.as_secs(),
            "shutting down: no new connections; finishing requests in flight"
        );
        drain.begin_drain();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            tracing::warn!("shutdown grace period over; cancelling what is still running");
            drain.cancel_all();
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            tracing::warn!("connections still open 5 s after cancelling; exiting anyway");
            std::process::exit(0);
        });
    };
    axum::serve(listener, hfms_server::router(state))
        .with_graceful_shutdown(signalled)
        .await
        .context("serving")?;
    // Every request has ended: commit their usage records.
    access.shutdown().await;
    tracing::info!("shut down");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
