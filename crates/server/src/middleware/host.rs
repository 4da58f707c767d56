//! DNS-rebinding protection: a web page on `evil.example` that makes its
//! name resolve to 127.0.0.1 can reach a local server from the browser, but
//! its requests still carry `Host: evil.example`. With an allow-list (by
//! default when bound to loopback) other Host names get a 403.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

/// The host name of a `Host` header value, without the port, lowercased
/// (`[::1]:8000` → `[::1]`, `Localhost:80` → `localhost`).
pub(crate) fn host_name(value: &str) -> String {
    let v = value.trim();
    let name = if v.starts_with('[') {
        v.split_once(']').map_or(v, |(h, _)| h).to_string() + "]"
    } else {
        v.rsplit_once(':')
            .map_or(
                v,
                |(h, port)| {
                    if port.bytes().all(|b| b.is_ascii_digit()) { h } else { v }
                },
            )
            .to_string()
    };
    name.to_ascii_lowercase()
}

pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(allowed) = &state.config().allowed_hosts {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(host_name)
            .or_else(|| req.uri().host().map(str::to_ascii_lowercase));
        let ok = host
            .as_deref()
            .is_some_and(|h| allowed.iter().any(|a| a.eq_ignore_ascii_case(h)));
        if !ok {
            let mut e = ApiError::new(
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                format!(
                    "Host {:?} is not allowed by this server (its operator sets --allowed-hosts).",
                    host.unwrap_or_default()
                ),
            );
            e.code = Some("host_not_allowed");
            return e.into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::host_name;

    #[test]
    fn host_names_lose_their_port() {
        assert_eq!(host_name("127.0.0.1:8000"), "127.0.0.1");
        assert_eq!(host_name("Localhost"), "localhost");
        assert_eq!(host_name("[::1]:8000"), "[::1]");
        assert_eq!(host_name("[::1]"), "[::1]");
        assert_eq!(host_name("evil.example:80"), "evil.example");
        assert_eq!(host_name("a:b"), "a:b");
    }
}
