//! The coordinator's plain-HTTP listener (`http_listen` in coordinator.toml): Prometheus
//! metrics, a health check and the read-only status page. It serves nothing that changes
//! state and no model bytes, so it needs no client certificate; bind it to localhost or a
//! monitoring network. The gRPC port stays mutual-TLS only.

pub mod metrics;
pub mod status_page;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::engine::{EngineError, Federation};

/// Largest request head accepted; a GET needs a few hundred bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;

struct Reply {
    status: &'static str,
    kind: &'static str,
    body: String,
}

impl Reply {
    fn ok(kind: &'static str, body: String) -> Self {
        Self {
            status: "200 OK",
            kind,
            body,
        }
    }
    fn text(status: &'static str, body: String) -> Self {
        Self {
            status,
            kind: "text/plain; charset=utf-8",
            body,
        }
    }
    fn json(v: Result<serde_json::Value, EngineError>) -> Self {
        match v {
            Ok(v) => Self::ok("application/json", v.to_string()),
            Err(e @ EngineError::NotFound(_)) => Self::text("404 Not Found", format!("{e}\n")),
            Err(e) => Self::text("503 Service Unavailable", format!("{e}\n")),
        }
    }
}

fn route(fed: &Federation, method: &str, path: &str) -> Reply {
    if method != "GET" && method != "HEAD" {
        return Reply::text("405 Method Not Allowed", "read-only: GET only\n".into());
    }
    // Query strings (cache busters) do not change what is served.
    let path = path.split('?').next().unwrap_or("");
    match path {
        "/metrics" => Reply::ok("text/plain; version=0.0.4", metrics::render(fed)),
        "/healthz" => match fed.store.jobs() {
            Ok(_) => Reply::text("200 OK", "ok\n".into()),
            Err(e) => Reply::text("503 Service Unavailable", format!("store: {e}\n")),
        },
        "/" | "/index.html" => Reply::ok("text/html; charset=utf-8", status_page::PAGE.into()),
        "/api/jobs" => Reply::json(status_page::jobs(fed)),
        "/api/sites" => Reply::json(status_page::sites(fed)),
        p => match p.strip_prefix("/api/jobs/") {
            Some(id) if !id.is_empty() && !id.contains('/') => {
                Reply::json(status_page::job(fed, id))
            }
            _ => Reply::text("404 Not Found", "not found\n".into()),
        },
    }
}

/// Reads one request head; `None` for a connection that sent no complete head in time.
async fn read_head(conn: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    // A request may arrive in several segments (clients that write the request line and the
    // headers separately): answering after the first read and closing with bytes unread
    // resets the connection under the client.
    let read = async {
        loop {
            let n = conn.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                return Some(String::from_utf8_lossy(&buf).into_owned());
            }
            if buf.len() > MAX_HEAD_BYTES {
                return None;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()
        .flatten()
}

/// Serves until the task is dropped. One request per connection (`Connection: close`):
/// scrapers, probes and the page's polling need no more.
pub async fn serve(listener: tokio::net::TcpListener, fed: Arc<Federation>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let fed = Arc::clone(&fed);
        tokio::spawn(async move {
            let Some(head) = read_head(&mut conn).await else {
                return;
            };
            let mut words = head.split_whitespace();
            let method = words.next().unwrap_or("");
            let path = words.next().unwrap_or("");
            let reply = route(&fed, method, path);
            let head = format!(
                "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
                reply.status,
                reply.kind,
                reply.body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            if method != "HEAD" {
                let _ = conn.write_all(reply.body.as_bytes()).await;
            }
            let _ = conn.shutdown().await;
        });
    }
}
