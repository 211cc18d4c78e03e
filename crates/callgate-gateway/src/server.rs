//! Listeners: accept connections (plain or TLS), serve HTTP/1.1 and HTTP/2 on each, and shut
//! down gracefully — stop accepting, mark not-ready, let in-flight calls finish within the
//! grace period.

use axum::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;

use crate::Gateway;
use crate::framing::FramingGuard;

/// Serves `gateway` on `listener` until `shutdown` resolves, then drains for up to `grace`.
pub async fn serve(
    gateway: Gateway,
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        // No header block larger than the framing guard follows reaches a handler: hyper
        // answers 431 and closes the connection where the guard stops following it.
        .max_buf_size(crate::framing::MAX_HEAD);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // An IPv4 client of a dual-stack listener is known by its IPv4 address everywhere
        // (policy, audit, X-Forwarded-For), not as `::ffff:a.b.c.d`.
        let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let gw = gateway.clone();
        let service =
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let gw = gw.clone();
                async move { Ok::<_, Infallible>(gw.handle(req.map(Body::new), Some(peer)).await) }
            });
        let builder = builder.clone();
        match &acceptor {
            None => {
                let conn = builder
                    .serve_connection(TokioIo::new(FramingGuard::new(stream)), service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(
                        Duration::from_secs(10),
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => return tracing::debug!("TLS handshake timed out"),
                    };
                    let conn = builder
                        .serve_connection(TokioIo::new(FramingGuard::new(tls)), service)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    gateway.shared.draining.store(true, Ordering::Release);
    tracing::info!("shutting down: draining in-flight calls");
    let deadline = tokio::time::Instant::now() + grace;
    match tokio::time::timeout_at(deadline, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all connections closed"),
        Err(_) => tracing::warn!(
            "grace period over with connections still open; the audit log is closed now"
        ),
    }
    // Approved calls executing in the background have no connection to drain: wait for them
    // and their records too (new ones stay approved and run after the next start).
    let left = gateway.shared.approvals.wait_executions(deadline).await;
    if left > 0 {
        tracing::warn!(
            executing = left,
            "grace period over with approved calls still executing; they are found unfinished at the next start"
        );
    }
    // Last: the stop record and the final checkpoint, after every in-flight call is recorded.
    gateway.shared.audit.shutdown("shutdown").await;
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when this is called, not
/// when the future is first polled, so a signal that arrives early is not lost (and does not
/// kill the process with the default action).
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let int = signal(SignalKind::interrupt());
    let term = signal(SignalKind::terminate());
    async move {
        match (int, term) {
            (Ok(mut i), Ok(mut t)) => {
                tokio::select! { _ = i.recv() => {}, _ = t.recv() => {} }
            }
            _ => {
                tracing::warn!("cannot install signal handlers; stop with SIGKILL");
                std::future::pending::<()>().await
            }
        }
    }
}
