//! The HTTP client of the bench: base URL checks, request helpers, and
//! error texts (every failure becomes a string that is counted and reported).

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::Value;

/// Longest error text kept (a server may answer with a whole HTML page).
const MAX_ERROR_CHARS: usize = 300;

pub struct Http {
    pub client: reqwest::Client,
    /// The base URL without a trailing slash.
    pub base: String,
}

/// Whether `host` (as `Url::host_str` gives it) is a loopback address or name.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return match ip {
            IpAddr::V4(a) => a.is_loopback(),
            IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        };
    }
    let name = bare.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

impl Http {
    /// `use_cache`: let the server answer from its response cache; without
    /// it every request carries `Cache-Control: no-store`, so a benchmark
    /// measures the models (servers without a cache ignore the header).
    pub fn new(base_url: &str, allow_remote: bool, api_key: Option<&str>, use_cache: bool) -> Result<Http> {
        let url = reqwest::Url::parse(base_url).with_context(|| format!("--base-url {base_url}: not a URL"))?;
        match url.scheme() {
            "http" => {}
            "https" => bail!(
                "--base-url {base_url}: https is not supported (this client is built without TLS; \
                 bench a server over plain http on this machine)"
            ),
            s => bail!("--base-url {base_url}: unsupported scheme {s} (use http)"),
        }
        let host = url.host_str().unwrap_or_default();
        let loopback = is_loopback_host(host);
        if !loopback && !allow_remote {
            bail!(
                "--base-url {base_url}: {host} is not a loopback address; pass --allow-remote to send \
                 benchmark traffic to another machine"
            );
        }
        let mut headers = HeaderMap::new();
        if !use_cache {
            headers.insert(reqwest::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        if let Some(key) = api_key {
            let mut v =
                HeaderValue::from_str(&format!("Bearer {key}")).context("--api-key: not a valid header value")?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        // A new connection for every request: some servers (llama-server
        // after a streamed answer) close a connection they announced as
        // keep-alive, and a pooled connection picked up at that moment fails
        // with "connection closed before message completed". A loopback
        // connect costs a fraction of a millisecond, the same for every server.
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(0)
            .tcp_nodelay(true);
        if loopback {
            // A proxy from the environment must not carry loopback traffic.
            builder = builder.no_proxy();
        }
        let client = builder.build().context("building the HTTP client")?;
        Ok(Http {
            client,
            base: base_url.trim_end_matches('/').to_string(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POST `body` as JSON; the response when its status is 2xx (its body
    /// not yet read), else the status and body as the error.
    pub async fn post(&self, path: &str, body: &Value) -> Result<reqwest::Response, String> {
        let resp = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .map_err(describe)?;
        if !resp.status().is_success() {
            return Err(status_error(resp).await);
        }
        Ok(resp)
    }

    /// POST `body` as JSON; the parsed JSON answer of a 2xx response.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, String> {
        let resp = self.post(path, body).await?;
        let bytes = resp.bytes().await.map_err(describe)?;
        serde_json::from_slice(&bytes).map_err(|e| truncate(format!("response is not JSON ({e}): {}", lossy(&bytes))))
    }

    /// GET `path`: the HTTP status and the body parsed as JSON (if it is).
    pub async fn get_json(&self, path: &str) -> Result<(u16, Option<Value>), String> {
        self.get_json_at(self.url(path)).await
    }

    /// GET `path` from the server's root rather than the API base (`/health`
    /// beside `/v1`).
    pub async fn get_root_json(&self, path: &str) -> Result<(u16, Option<Value>), String> {
        let url = reqwest::Url::parse(&self.base)
            .and_then(|u| u.join(path))
            .map_err(describe)?;
        self.get_json_at(url.into()).await
    }

    async fn get_json_at(&self, url: String) -> Result<(u16, Option<Value>), String> {
        let resp = self.client.get(url).send().await.map_err(describe)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(describe)?;
        Ok((status, serde_json::from_slice(&bytes).ok()))
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// At most [`MAX_ERROR_CHARS`] characters, on one line.
pub fn truncate(text: String) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(MAX_ERROR_CHARS) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

/// An error with its chain of causes ("error sending request: connection refused").
pub fn describe(e: impl std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    truncate(text)
}

/// The message of an OpenAI error envelope, when `v` is one.
pub fn envelope_message(v: &Value) -> Option<String> {
    let e = v.get("error")?;
    Some(match e.get("message").and_then(Value::as_str) {
        Some(m) => m.to_string(),
        None => e.to_string(),
    })
}

/// "HTTP 400 Bad Request: <the error message or the start of the body>".
pub async fn status_error(resp: reqwest::Response) -> String {
    let status = resp.status();
    let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    let detail = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| envelope_message(&v))
        .unwrap_or_else(|| lossy(&body));
    truncate(format!("HTTP {status}: {detail}"))
}
