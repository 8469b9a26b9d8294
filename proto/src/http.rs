//! A minimal read-only HTTP/1.1 responder for the plain-HTTP endpoints both binaries offer
//! (Prometheus `/metrics`, `/healthz`, the coordinator's status page). One GET per
//! connection; no client certificate, so callers bind it to localhost or a monitoring network.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest request head accepted; a GET needs a few hundred bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;

pub struct Reply {
    pub status: &'static str,
    pub kind: &'static str,
    pub body: String,
}

impl Reply {
    pub fn ok(kind: &'static str, body: String) -> Self {
        Self {
            status: "200 OK",
            kind,
            body,
        }
    }
    pub fn text(status: &'static str, body: String) -> Self {
        Self {
            status,
            kind: "text/plain; charset=utf-8",
            body,
        }
    }
    pub fn not_found() -> Self {
        Self::text("404 Not Found", "not found\n".into())
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

/// Serves until the task is dropped: `route(path)` answers each GET (query string removed);
/// other methods get 405.
pub async fn serve<F>(listener: tokio::net::TcpListener, route: F)
where
    F: Fn(&str) -> Reply + Send + Sync + 'static,
{
    let route = Arc::new(route);
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let route = Arc::clone(&route);
        tokio::spawn(async move {
            let Some(head) = read_head(&mut conn).await else {
                return;
            };
            let mut words = head.split_whitespace();
            let method = words.next().unwrap_or("");
            let path = words.next().unwrap_or("");
            let path = path.split('?').next().unwrap_or("");
            let reply = if method == "GET" || method == "HEAD" {
                route(path)
            } else {
                Reply::text("405 Method Not Allowed", "read-only: GET only\n".into())
            };
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

/// Prometheus text exposition: `# HELP`/`# TYPE` and one line per labelled sample.
pub fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}
