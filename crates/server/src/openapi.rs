//! `GET /openapi.json`: hfms' own API, generated from the handlers and the
//! request/response types themselves (utoipa), errors included.

use axum::response::IntoResponse;
use utoipa::OpenApi;

use crate::error::OpenGetErrors;
use crate::{admin, dashboard, health, management, openai};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "hfms",
        description = "A unified Hugging Face model server: the OpenAI API (chat, completions, embeddings, models), model management and health. Every error is OpenAI's envelope.",
        license(name = "Apache-2.0")
    ),
    paths(
        openai::chat::create,
        openai::completions::create,
        openai::embeddings::create,
        openai::classify::classify,
        openai::classify::rerank,
        openai::classify::tei_rerank,
        openai::models::list,
        openai::models::get,
        management::load,
        management::unload,
        crate::downloads::pull,
        health::health,
        health::ready,
        health::status,
        crate::metrics::scrape,
        admin::create,
        admin::list,
        admin::show,
        admin::update,
        admin::revoke,
        admin::rotate,
        admin::usage,
        dashboard::current,
        dashboard::sign_in,
        dashboard::sign_out,
        document,
    ),
    components(schemas(openai::types::ChatCompletionChunk)),
    tags(
        (name = "OpenAI", description = "OpenAI-compatible endpoints"),
        (name = "Management", description = "Loading, unloading and pulling models"),
        (name = "Health", description = "Liveness, readiness, status"),
        (name = "Admin", description = "API keys, usage, and the dashboard's sign-in session (scope `admin`)"),
    )
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "Health",
    responses((status = 200, description = "The OpenAPI 3.1 document of this server", body = Object), OpenGetErrors))]
pub async fn document() -> axum::response::Response {
    axum::Json(ApiDoc::openapi()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_with_its_errors() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for (path, method) in [
            ("/v1/chat/completions", "post"),
            ("/v1/completions", "post"),
            ("/v1/embeddings", "post"),
            ("/v1/classify", "post"),
            ("/v1/rerank", "post"),
            ("/rerank", "post"),
            ("/v1/models", "get"),
            ("/v1/models/{id}", "get"),
            ("/models/load", "post"),
            ("/models/unload", "post"),
            ("/health", "get"),
            ("/ready", "get"),
            ("/status", "get"),
            ("/openapi.json", "get"),
            ("/metrics", "get"),
            ("/admin/keys", "post"),
            ("/admin/keys", "get"),
            ("/admin/keys/{id}", "get"),
            ("/admin/keys/{id}", "patch"),
            ("/admin/keys/{id}", "delete"),
            ("/admin/keys/{id}/rotate", "post"),
            ("/admin/usage", "get"),
            ("/admin/session", "get"),
            ("/admin/session", "post"),
            ("/admin/session", "delete"),
        ] {
            let op = &paths[path][method];
            assert!(op.is_object(), "{method} {path} is not documented");
            let ok = op["responses"]["200"].is_object()
                || op["responses"]["201"].is_object()
                || op["responses"]["204"].is_object();
            assert!(ok, "{method} {path}");
            let open = ["/health", "/ready", "/openapi.json"].contains(&path);
            assert_eq!(
                op["responses"]["401"].is_object(),
                !open,
                "{method} {path}: 401 documented where a key is needed"
            );
            if method == "post" {
                for code in ["400", "415", "503"] {
                    assert!(op["responses"][code].is_object(), "{path} lacks {code}");
                }
            }
        }
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for s in [
            "ErrorEnvelope",
            "ChatCompletionRequest",
            "EmbeddingResponse",
            "TextOrTokens",
            "ChatCompletionChunk",
        ] {
            assert!(schemas.contains_key(s), "{s} missing");
        }
    }
}
