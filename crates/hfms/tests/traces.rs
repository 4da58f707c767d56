//! Traces: W3C trace context honoured and answered, trace ids on log lines,
//! and OTLP export of the request, queue, prefill, decode, embed and
//! model_load spans, received by a real OTLP/HTTP receiver on loopback that
//! decodes the protobuf with the official `opentelemetry-proto` types.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, client};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{Value, json};

/// A span as received, with its resource's service name.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

impl Received {
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    fn attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                AnyValue::StringValue(s) => s.clone(),
                AnyValue::IntValue(i) => i.to_string(),
                AnyValue::BoolValue(b) => b.to_string(),
                AnyValue::DoubleValue(d) => d.to_string(),
                other => format!("{other:?}"),
            })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf
/// `ExportTraceServiceRequest`, answered as a collector does.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let sink = spans.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = axum::Router::new().route(
                    "/v1/traces",
                    axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                        let sink = sink.clone();
                        async move {
                            assert_eq!(headers["content-type"], "application/x-protobuf");
                            let req = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
                            for rs in req.resource_spans {
                                let service = rs
                                    .resource
                                    .iter()
                                    .flat_map(|r| &r.attributes)
                                    .find(|kv| kv.key == "service.name")
                                    .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                                        AnyValue::StringValue(s) => Some(s.clone()),
                                        _ => None,
                                    })
                                    .unwrap_or_default();
                                for ss in rs.scope_spans {
                                    for span in ss.spans {
                                        sink.lock().unwrap().push(Received {
                                            service: service.clone(),
                                            span,
                                        });
                                    }
                                }
                            }
                            (
                                [("content-type", "application/x-protobuf")],
                                ExportTraceServiceResponse::default().encode_to_vec(),
                            )
                        }
                    }),
                );
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        Receiver { url, spans }
    }

    /// The spans of `trace_id` once every name in `names` has arrived.
    fn wait_for(&self, trace_id: &str, names: &[&str]) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got: Vec<Received> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.trace_id() == trace_id)
                .cloned()
                .collect();
            if names.iter().all(|n| got.iter().any(|s| s.span.name == *n)) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "spans {names:?} of trace {trace_id} never all arrived; got {:?}",
                got.iter().map(|s| &s.span.name).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The server exports every 100 ms, so tests do not wait out the default
/// 5 s batch delay.
fn server_exporting_to(receiver_url: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--otlp-endpoint", receiver_url];
    args.extend_from_slice(extra);
    Server::start_with_env(&args, &[("OTEL_BSP_SCHEDULE_DELAY", "100")])
}

/// `00-TRACE-SPAN-FLAGS` → its parts.
fn parse_traceparent(v: &str) -> (String, String, String) {
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "{v}");
    assert_eq!(parts[0], "00", "{v}");
    assert_eq!(parts[1].len(), 32, "{v}");
    assert_eq!(parts[2].len(), 16, "{v}");
    (parts[1].to_string(), parts[2].to_string(), parts[3].to_string())
}

fn one<'a>(spans: &'a [Received], name: &str) -> &'a Received {
    let found: Vec<&Received> = spans.iter().filter(|s| s.span.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span expected: {found:?}");
    found[0]
}

fn json_log_lines(s: &Server, needle: &str) -> Vec<Value> {
    s.logs()
        .iter()
        .filter(|l| l.contains(needle))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

#[test]
fn a_chat_request_is_exported_as_a_child_of_the_callers_span_with_its_phases_and_the_model_load() {
    let receiver = Receiver::start();
    // No preload: the request's own model load is part of its trace.
    let s = server_exporting_to(&receiver.url, &[]);
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .header("tracestate", "vendor=opaque")
        .header("x-request-id", "trace-chat-1")
        .json(&json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let (trace, request_span, flags) = parse_traceparent(r.headers()["traceresponse"].to_str().unwrap());
    assert_eq!(trace, CALLER_TRACE);
    assert_eq!(flags, "01");

    let spans = receiver.wait_for(
        CALLER_TRACE,
        &["POST /v1/chat/completions", "model_load", "queue", "prefill", "decode"],
    );
    let request = one(&spans, "POST /v1/chat/completions");
    assert_eq!(request.service, "hfms");
    assert_eq!(
        request.span_id(),
        request_span,
        "traceresponse names the request's span"
    );
    assert_eq!(request.parent_id(), CALLER_SPAN, "the caller's span is the parent");
    assert_eq!(request.span.kind, 2, "a server span");
    assert_eq!(request.span.trace_state, "vendor=opaque", "tracestate is carried");
    assert_eq!(request.attr("request_id").as_deref(), Some("trace-chat-1"));
    assert_eq!(request.attr("status").as_deref(), Some("200"));
    for name in ["model_load", "queue", "prefill", "decode"] {
        let child = one(&spans, name);
        assert_eq!(child.parent_id(), request_span, "{name} is a child of the request");
        assert!(
            child.span.start_time_unix_nano >= request.span.start_time_unix_nano,
            "{name}"
        );
        assert!(
            child.span.end_time_unix_nano <= request.span.end_time_unix_nano,
            "{name}"
        );
    }
    let load = one(&spans, "model_load");
    assert!(load.attr("model").unwrap().contains("SmolLM2"), "{load:?}");
    assert_eq!(load.attr("device").as_deref(), Some("cpu"));
    // The phases follow each other.
    let (queue, prefill, decode) = (one(&spans, "queue"), one(&spans, "prefill"), one(&spans, "decode"));
    assert!(queue.span.end_time_unix_nano <= prefill.span.start_time_unix_nano);
    assert!(prefill.span.end_time_unix_nano <= decode.span.start_time_unix_nano);
    assert!(load.span.end_time_unix_nano <= queue.span.start_time_unix_nano);
    assert_eq!(decode.attr("finish_reason").as_deref(), Some("length"));
    assert_eq!(decode.attr("completion_tokens").as_deref(), Some("3"));
    assert!(prefill.attr("prompt_tokens").unwrap().parse::<u32>().unwrap() > 1);

    // A streamed request's span lasts until its last event.
    let streamed = "5bf92f3577b34da6a3ce929d0e0e4736";
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .header("traceparent", format!("00-{streamed}-{CALLER_SPAN}-01"))
        .json(
            &json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
                      "stream": true}),
        )
        .send()
        .unwrap();
    assert!(r.text().unwrap().contains("[DONE]"));
    let spans = receiver.wait_for(streamed, &["POST /v1/chat/completions", "decode"]);
    let (request, decode) = (one(&spans, "POST /v1/chat/completions"), one(&spans, "decode"));
    assert_eq!(decode.parent_id(), request.span_id());
    assert!(decode.span.end_time_unix_nano <= request.span.end_time_unix_nano);
    assert_eq!(decode.attr("completion_tokens").as_deref(), Some("8"));

    // Every log line of the request names its request id and trace id,
    // the model load's and the engine's included.
    std::thread::sleep(Duration::from_millis(200));
    let lines = json_log_lines(&s, "trace-chat-1");
    assert!(lines.len() >= 2, "{lines:?}");
    for l in &lines {
        assert_eq!(l["span"]["request_id"], "trace-chat-1", "{l}");
        assert_eq!(l["span"]["trace_id"], CALLER_TRACE, "{l}");
    }
    assert!(
        lines.iter().any(|l| l["message"] == "model loaded"),
        "the model load's log line is the request's: {lines:?}"
    );
}

#[test]
fn an_embedding_request_without_a_traceparent_starts_a_trace_and_unsampled_callers_are_not_exported() {
    let receiver = Receiver::start();
    let s = server_exporting_to(&receiver.url, &["--preload", "all-minilm"]);
    // A caller that did not sample: its decision is followed, its trace id
    // still reaches the logs and the answer.
    let unsampled = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = client()
        .post(s.url("/v1/embeddings"))
        .header("traceparent", format!("00-{unsampled}-00f067aa0ba902b7-00"))
        .header("x-request-id", "trace-unsampled")
        .json(&json!({"model": "all-minilm", "input": "unsampled"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let (trace, _, flags) = parse_traceparent(r.headers()["traceresponse"].to_str().unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (unsampled, "00"));

    let r = client()
        .post(s.url("/v1/embeddings"))
        .json(&json!({"model": "all-minilm", "input": ["a new trace", "two inputs"]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let (trace, request_span, flags) = parse_traceparent(r.headers()["traceresponse"].to_str().unwrap());
    assert_eq!(flags, "01");
    assert_ne!(trace, unsampled);
    let spans = receiver.wait_for(&trace, &["POST /v1/embeddings", "queue", "embed"]);
    let request = one(&spans, "POST /v1/embeddings");
    assert_eq!(request.parent_id(), "", "a new trace starts at the request");
    assert_eq!(request.span_id(), request_span);
    let embed = one(&spans, "embed");
    assert_eq!(embed.parent_id(), request_span);
    assert_eq!(embed.attr("inputs").as_deref(), Some("2"));
    assert_eq!(one(&spans, "queue").parent_id(), request_span);
    // The unsampled request ended first; its spans would be in the same or
    // an earlier export.
    assert!(
        !receiver.spans.lock().unwrap().iter().any(|s| s.trace_id() == unsampled),
        "an unsampled trace was exported"
    );
    let lines = json_log_lines(&s, "trace-unsampled");
    assert!(!lines.is_empty());
    for l in &lines {
        assert_eq!(l["span"]["trace_id"], unsampled, "{l}");
    }
}

#[test]
fn hostile_trace_headers_start_a_new_trace_and_a_dead_collector_costs_requests_nothing() {
    // Nothing listens on this port: exports fail in the background.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let s = server_exporting_to(&dead, &["--preload", "all-minilm"]);
    let long = format!("00-{}-{CALLER_SPAN}-01", "a".repeat(4000));
    let hostile = [
        "garbage".to_string(),
        "".to_string(),
        format!("00-{}-{CALLER_SPAN}-01", "0".repeat(32)), // all-zero trace id
        format!("00-{CALLER_TRACE}-{}-01", "0".repeat(16)), // all-zero span id
        format!("ff-{CALLER_TRACE}-{CALLER_SPAN}-01"),     // version ff is invalid
        format!("00-{}-{CALLER_SPAN}-01", CALLER_TRACE.to_uppercase()),
        format!("00-{CALLER_TRACE}-{CALLER_SPAN}-zz"),
        format!("00-{CALLER_TRACE}-{CALLER_SPAN}"),
        long,
    ];
    let mut seen = HashMap::new();
    for (i, tp) in hostile.iter().enumerate() {
        let started = Instant::now();
        let r = client()
            .post(s.url("/v1/embeddings"))
            .header("traceparent", tp)
            .header("tracestate", "=,=,=".repeat(100))
            .json(&json!({"model": "all-minilm", "input": "x"}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "traceparent {tp:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        let (trace, _, _) = parse_traceparent(r.headers()["traceresponse"].to_str().unwrap());
        assert_ne!(trace, "0".repeat(32));
        assert_ne!(trace, CALLER_TRACE, "an invalid traceparent was honoured: {tp:?}");
        assert!(seen.insert(trace, i).is_none(), "trace ids must be fresh");
    }
    // Health and the API are unaffected by the failing exports.
    assert_eq!(s.get_json("/health").0, 200);
}

#[test]
fn without_an_otlp_endpoint_the_callers_trace_id_still_reaches_the_logs_and_the_answer() {
    let s = Server::start(&["--preload", "all-minilm"]);
    let r = client()
        .post(s.url("/v1/embeddings"))
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .header("x-request-id", "trace-no-otlp")
        .json(&json!({"model": "all-minilm", "input": "x"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let (trace, span, flags) = parse_traceparent(r.headers()["traceresponse"].to_str().unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (CALLER_TRACE, "01"));
    assert_ne!(span, CALLER_SPAN, "the request's span is its own");
    std::thread::sleep(Duration::from_millis(200));
    let lines = json_log_lines(&s, "trace-no-otlp");
    assert!(!lines.is_empty());
    for l in &lines {
        assert_eq!(l["span"]["trace_id"], CALLER_TRACE, "{l}");
    }
    // A request without one gets a fresh trace id, different each time.
    let ids: Vec<String> = (0..2)
        .map(|_| {
            let r = client().get(s.url("/health")).send().unwrap();
            parse_traceparent(r.headers()["traceresponse"].to_str().unwrap()).0
        })
        .collect();
    assert_ne!(ids[0], ids[1]);
}
