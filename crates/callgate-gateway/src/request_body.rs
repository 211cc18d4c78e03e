//! The request body as the listener hands it to handlers: a whole-body deadline, and a record
//! of whether a handler read it to its end, so that an unread HTTP/1.1 body is drained (a
//! little of it, briefly) or the answer says `Connection: close`.
//!
//! A body sent after its headers (Python's `http.client` writes them in two calls) that the
//! handler never reads — a 401 answered from the headers alone — would otherwise be left on
//! the connection: hyper reads once, gives up and closes the connection after the answer, with
//! nothing in the answer telling a keep-alive client not to send its next request on it.

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The most of an unread body drained before answering; beyond it the connection is closed.
const DRAIN_BYTES: usize = 64 * 1024;
/// How long an unread body is waited for before answering; after it the connection is closed.
const DRAIN_TIME: Duration = Duration::from_millis(500);

/// How a [`BodyTimeout`] reads; the API framework's own rejection quotes it.
pub const TIMEOUT_TEXT: &str = "the request body did not arrive within";

/// The error a body read past its deadline ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} ms", .0.as_millis())]
pub struct BodyTimeout(pub Duration);

struct Slot {
    body: Option<Incoming>,
    ended: bool,
    deadline: Instant,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

/// The handler's end of the body; the listener keeps the other ([`Watch`]).
pub struct RequestBody(Arc<Mutex<Slot>>);

/// The listener's end: tells, once the handler has answered, whether the body was read.
pub struct Watch(Arc<Mutex<Slot>>);

/// Wraps `body`, which must arrive in full within `timeout` from now.
pub fn watch(body: Incoming, timeout: Duration) -> (RequestBody, Watch) {
    let ended = body.is_end_stream();
    let slot = Arc::new(Mutex::new(Slot {
        body: Some(body),
        ended,
        deadline: Instant::now() + timeout,
        timeout,
        timer: None,
    }));
    (RequestBody(slot.clone()), Watch(slot))
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = &mut *slot;
        let Some(body) = slot.body.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(body).poll_frame(cx) {
            Poll::Ready(None) => {
                slot.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(r)) => {
                if let Some(b) = slot.body.as_ref()
                    && b.is_end_stream()
                {
                    slot.ended = true;
                }
                Poll::Ready(Some(r.map_err(Into::into)))
            }
            Poll::Pending => {
                // The timer is made only when the body is really waited for: a body that came
                // with its head costs nothing.
                let deadline = slot.deadline;
                let timer = slot
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_ready() {
                    slot.body = None;
                    return Poll::Ready(Some(Err(BodyTimeout(slot.timeout).into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.ended || slot.body.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.body
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_default()
    }
}

impl Watch {
    /// After the handler answered: drains what is left of the body if it is small and
    /// already on its way, else marks the answer `Connection: close`. With `Expect:
    /// 100-continue` the client is still waiting for leave to send the body, so nothing is
    /// asked of it: the connection is simply closed.
    pub async fn settle<B>(self, expects_continue: bool, resp: &mut Response<B>) {
        let body = {
            let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            if slot.ended {
                return;
            }
            slot.body.take()
        };
        let drained = match body {
            Some(body) if !expects_continue => drain(body).await,
            _ => false,
        };
        if !drained {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
}

/// Reads and drops up to [`DRAIN_BYTES`] for up to [`DRAIN_TIME`]; whether the body ended.
async fn drain(mut body: Incoming) -> bool {
    use http_body_util::BodyExt;
    let read = async {
        let mut n = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(d) = frame.data_ref() {
                n += d.len();
                if n > DRAIN_BYTES {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_TIME, read)
        .await
        .unwrap_or(false)
}

/// Whether `err`, or any error it wraps, is a [`BodyTimeout`].
pub fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(x) = e {
        if x.is::<BodyTimeout>() {
            return true;
        }
        e = x.source();
    }
    false
}
