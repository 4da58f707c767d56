//! Logs and traces: one tracing subscriber with a log layer (JSON lines or
//! text on stderr) and, when an OTLP endpoint is given, an OpenTelemetry
//! layer that exports hfms' spans (request, queue, prefill, decode, embed,
//! model_load) over OTLP/HTTP (protobuf) from a background thread.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::prelude::*;
use tracing_subscriber::{Layer, Registry};

/// Where and how much to export.
#[derive(Debug, Clone)]
pub struct OtlpSettings {
    /// The collector's OTLP/HTTP traces URL (`…/v1/traces`).
    pub traces_url: String,
    /// Fraction of new traces kept; a caller's sampling decision is followed.
    pub sample_ratio: f64,
}

/// Keeps the exporter; `shutdown` sends what is still queued.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown_with_timeout(Duration::from_secs(5))
        {
            eprintln!("hfms: flushing traces failed: {e}");
        }
    }
}

/// Install the subscriber. Log level from HFMS_LOG or RUST_LOG (default
/// info); JSON unless a person is watching a terminal (`format` "auto").
pub fn init(format: &str, otlp: Option<&OtlpSettings>) -> Result<Telemetry> {
    let filter = EnvFilter::try_from_env("HFMS_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        "json" => true,
        "text" => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let logs: Box<dyn Layer<Registry> + Send + Sync> = if json {
        // One object per line: the event's fields at the top, and under
        // `span` the fields of every span it is in (request_id, trace_id,
        // model…), the innermost winning.
        let mut layer = json_subscriber::JsonLayer::stderr();
        layer.with_timer("timestamp", tracing_subscriber::fmt::time::SystemTime);
        layer.with_level("level");
        layer.with_target("target");
        layer.with_flattened_event();
        layer.with_flattened_span_fields("span");
        Box::new(layer.with_filter(filter))
    } else {
        Box::new(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
    };
    let (traces, provider) = match otlp {
        None => (None, None),
        Some(o) => {
            let provider = tracer_provider(o)?;
            // hfms' own spans only: the exporter's HTTP client is traced
            // too, and exporting its spans would feed on itself.
            let targets = Targets::new()
                .with_target("hfms", LevelFilter::INFO)
                .with_target("hfms_server", LevelFilter::INFO)
                .with_target("hfms_engine", LevelFilter::INFO);
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("hfms"))
                .with_filter(targets);
            (Some(layer), Some(provider))
        }
    };
    tracing_subscriber::registry().with(logs).with(traces).init();
    Ok(Telemetry { provider })
}

fn tracer_provider(o: &OtlpSettings) -> Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(&o.traces_url)
        .with_timeout(Duration::from_secs(10))
        .build()
        .with_context(|| format!("the OTLP exporter for {}", o.traces_url))?;
    // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are honoured.
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("hfms");
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            o.sample_ratio,
        ))))
        .with_resource(resource)
        .build())
}
