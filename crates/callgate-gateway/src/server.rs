//! Listeners: accept connections (plain or TLS), serve HTTP/1.1 and HTTP/2 on each, and shut
//! down gracefully — stop accepting, mark not-ready, let in-flight calls finish within the
//! grace period.
//!
//! Slow clients are bounded here: a connection idle before its first request, or between
//! requests, for `limits.idle_timeout_ms` is closed (an HTTP/2 connection once no request has
//! been in flight for that long, whatever frames arrive); a header block must arrive within
//! `limits.header_read_timeout_ms` of its first byte ([`FramingGuard`] keeps that clock, hyper's
//! does between requests); a body must arrive within `limits.body_read_timeout_ms` of its head
//! ([`crate::request_body`], 408); and one source address holds at most
//! `limits.max_connections_per_source` connections at once. The limits are read from the
//! current configuration for each new connection.

use axum::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::TcpListener;

use crate::Gateway;
use crate::framing::{Activity, Deadlines, FramingGuard};

/// The connection limits in force, read from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConnLimits {
    idle: Duration,
    head: Duration,
    body: Duration,
    per_source: usize,
}

impl ConnLimits {
    fn of(gateway: &Gateway) -> ConnLimits {
        let l = &gateway.shared.reloader.peek().config.limits;
        ConnLimits {
            idle: Duration::from_millis(l.idle_timeout_ms.max(1)),
            head: Duration::from_millis(l.header_read_timeout_ms.max(1)),
            body: Duration::from_millis(l.body_read_timeout_ms.max(1)),
            per_source: l.max_connections_per_source,
        }
    }

    fn builder(&self) -> Arc<auto::Builder<TokioExecutor>> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // Between requests hyper's header timer starts when it waits for the next head: it is
            // the keep-alive idle timeout. The first head is timed by the framing guard.
            .header_read_timeout(self.idle)
            // No header block larger than the framing guard follows reaches a handler: hyper
            // answers 431 and closes the connection where the guard stops following it.
            .max_buf_size(crate::framing::MAX_HEAD);
        builder.http2().timer(TokioTimer::new());
        Arc::new(builder)
    }
}

/// Open connections per source address (an IPv6 /64 counts as one).
#[derive(Default)]
struct PerSource(Mutex<HashMap<IpAddr, usize>>);

/// One counted connection; uncounted when dropped (the connection's task ended).
struct Counted(Arc<PerSource>, IpAddr);

impl PerSource {
    fn admit(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<Counted> {
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = m.entry(ip).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(Counted(self.clone(), ip))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut m = self.0.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

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
    let mut limits = ConnLimits::of(&gateway);
    let mut builder = limits.builder();
    let per_source = Arc::new(PerSource::default());
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
        let now = ConnLimits::of(&gateway);
        if now != limits {
            limits = now;
            builder = limits.builder();
        }
        let block = callgate_core::model::source_block(peer.ip());
        let Some(counted) = per_source.admit(block, limits.per_source) else {
            gateway.shared.metrics.connections_refused.inc();
            tracing::debug!(source = %peer.ip(), "connection refused: too many open from this address");
            continue;
        };
        let activity = Arc::new(Activity::default());
        let deadlines = Deadlines {
            idle: limits.idle,
            head: limits.head,
            activity: activity.clone(),
        };
        let gw = gateway.clone();
        let body_timeout = limits.body;
        let service =
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let gw = gw.clone();
                let in_flight = activity.begin();
                async move {
                    let resp = handle(gw, req, peer, body_timeout).await;
                    drop(in_flight);
                    Ok::<_, Infallible>(resp)
                }
            });
        let builder = builder.clone();
        match &acceptor {
            None => {
                let conn = builder
                    .serve_connection(
                        TokioIo::new(FramingGuard::with_deadlines(stream, deadlines)),
                        service,
                    )
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _counted = counted;
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let _counted = counted;
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
                        .serve_connection(
                            TokioIo::new(FramingGuard::with_deadlines(tls, deadlines)),
                            service,
                        )
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

/// One request: its body on a deadline, and an HTTP/1 body the handler left unread drained
/// or the connection closed after the answer.
async fn handle(
    gateway: Gateway,
    req: http::Request<hyper::body::Incoming>,
    peer: std::net::SocketAddr,
    body_timeout: Duration,
) -> http::Response<Body> {
    // A request without a body (most GETs) has nothing to time or drain.
    if hyper::body::Body::is_end_stream(req.body()) {
        return gateway.handle(req.map(Body::new), Some(peer)).await;
    }
    let h1 = req.version() < http::Version::HTTP_2;
    let expects_continue = req
        .headers()
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (parts, body) = req.into_parts();
    let (body, watch) = crate::request_body::watch(body, body_timeout);
    let req = http::Request::from_parts(parts, Body::new(body));
    let mut resp = gateway.handle(req, Some(peer)).await;
    if h1 {
        watch.settle(expects_continue, &mut resp).await;
    }
    resp
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
