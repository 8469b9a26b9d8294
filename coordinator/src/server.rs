//! `coordinator serve`: the mutual-TLS gRPC listener and the engine's clock.

use std::sync::Arc;
use std::time::Duration;

use fedseg_proto::pb::{admin_server::AdminServer, site_server::SiteServer};
use fedseg_proto::{
    MAX_FRAME_BYTES, MAX_MESSAGE_BYTES, SERVER_CONNECTION_WINDOW_BYTES, SERVER_STREAM_WINDOW_BYTES,
};

use crate::config::CoordinatorConfig;
use crate::engine::Federation;
use crate::pki::PkiLayout;
use crate::service::{AdminService, SiteService};

/// Runs until `shutdown` resolves. The engine ticks twice a second, so deadlines and
/// heartbeat timeouts are noticed without any site calling in.
pub async fn serve(
    config: CoordinatorConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("listening on {}: {e}", config.listen))?;
    let http = bind_http(&config).await?;
    // Scripts wait for this line to know the port (useful with port 0); both listeners are
    // bound by then, so a probe right after it is not refused.
    println!("listening on {}", listener.local_addr()?);
    serve_bound(config, listener, http, shutdown).await
}

async fn bind_http(config: &CoordinatorConfig) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    match &config.http_listen {
        Some(addr) => Ok(Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("http_listen {addr}: {e}"))?,
        )),
        None => Ok(None),
    }
}

/// `serve` on a listener the caller bound (the simulation binds port 0 and hands the port to
/// its agents).
pub async fn serve_on(
    config: CoordinatorConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let http = bind_http(&config).await?;
    serve_bound(config, listener, http, shutdown).await
}

/// `serve_on` with the status page's listener bound by the caller too (the simulation keeps
/// the port it printed).
pub async fn serve_bound(
    config: CoordinatorConfig,
    listener: tokio::net::TcpListener,
    http: Option<tokio::net::TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let tls = crate::tls::server_config(&PkiLayout::new(&config.pki_dir), &config.revoked)?;
    let addr = listener.local_addr()?;
    let fed = Federation::open(config)?;
    let http = match http {
        Some(l) => {
            let at = l.local_addr()?;
            tracing::info!(%at, "status page http://{at}/, metrics /metrics, health /healthz");
            Some(tokio::spawn(crate::http::serve(l, Arc::clone(&fed))))
        }
        None => None,
    };
    // The standard gRPC health service (grpc.health.v1) on the mutual-TLS port: "" and both
    // services are SERVING while the engine's store answers, NOT_SERVING when it fails.
    let (health, health_service) = tonic_health::server::health_reporter();
    let ticker = {
        let fed = Arc::clone(&fed);
        tokio::spawn(async move {
            let mut serving = None;
            loop {
                let ok = match fed.tick().await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!("engine: {e}");
                        fed.store.jobs().is_ok()
                    }
                };
                if serving != Some(ok) {
                    set_health(&health, ok).await;
                    serving = Some(ok);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    tracing::info!(%addr, "coordinator listening (mutual TLS)");
    let transfers = Arc::new(tokio::sync::Semaphore::new(
        fed.config.max_concurrent_transfers,
    ));
    let site = SiteServer::new(SiteService {
        fed: Arc::clone(&fed),
        transfers,
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let admin = AdminServer::new(AdminService {
        fed: Arc::clone(&fed),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let result = tonic::transport::Server::builder()
        .initial_stream_window_size(SERVER_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(SERVER_CONNECTION_WINDOW_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(site)
        .add_service(admin)
        .serve_with_incoming_shutdown(crate::tls::incoming(listener, tls), shutdown)
        .await;
    ticker.abort();
    if let Some(h) = http {
        h.abort();
    }
    result?;
    Ok(())
}

async fn set_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    use tonic_health::ServingStatus;
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for name in [
        "",
        <SiteServer<SiteService> as tonic::server::NamedService>::NAME,
        <AdminServer<AdminService> as tonic::server::NamedService>::NAME,
    ] {
        health.set_service_status(name, status).await;
    }
}
