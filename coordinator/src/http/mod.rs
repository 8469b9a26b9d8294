//! The coordinator's plain-HTTP listener (`http_listen` in coordinator.toml): Prometheus
//! metrics, a health check and the read-only status page. It serves nothing that changes
//! state and no model bytes, so it needs no client certificate; bind it to localhost or a
//! monitoring network. The gRPC port stays mutual-TLS only.

pub mod metrics;
pub mod status_page;

use std::sync::Arc;

use fedseg_proto::http::Reply;

use crate::engine::{EngineError, Federation};

fn json(v: Result<serde_json::Value, EngineError>) -> Reply {
    match v {
        Ok(v) => Reply::ok("application/json", v.to_string()),
        Err(e @ EngineError::NotFound(_)) => Reply::text("404 Not Found", format!("{e}\n")),
        Err(e) => Reply::text("503 Service Unavailable", format!("{e}\n")),
    }
}

fn route(fed: &Federation, path: &str) -> Reply {
    match path {
        "/metrics" => Reply::ok("text/plain; version=0.0.4", metrics::render(fed)),
        "/healthz" => match fed.store.jobs() {
            Ok(_) => Reply::text("200 OK", "ok\n".into()),
            Err(e) => Reply::text("503 Service Unavailable", format!("store: {e}\n")),
        },
        "/" | "/index.html" => Reply::ok("text/html; charset=utf-8", status_page::PAGE.into()),
        "/api/jobs" => json(status_page::jobs(fed)),
        "/api/sites" => json(status_page::sites(fed)),
        p => match p.strip_prefix("/api/jobs/") {
            Some(id) if !id.is_empty() && !id.contains('/') => json(status_page::job(fed, id)),
            _ => Reply::not_found(),
        },
    }
}

/// Serves until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, fed: Arc<Federation>) {
    fedseg_proto::http::serve(listener, move |path| route(&fed, path)).await
}
