//! HTTP/1.1 message-framing guard (RFC 9112 §6.3), below hyper.
//!
//! hyper resolves ambiguous framing on its own terms: with both `Content-Length` and
//! `Transfer-Encoding` it silently drops the length, and it folds repeated identical lengths
//! into one — so the request handler cannot see that the message was ambiguous. Callgate
//! refuses such messages outright (400, connection closed), because a message two parsers can
//! frame differently is how requests are smuggled.
//!
//! This reader sits between the socket and hyper and follows HTTP/1.1 message boundaries
//! (header block, then a `Content-Length` body or chunked body). When a header block carries
//! conflicting framing it appends the marker header [`MARKER`] to it; the handler refuses any
//! request carrying the marker. Anything it does not understand (HTTP/2's preface, malformed
//! input, a header block over [`MAX_HEAD`]) switches it to plain pass-through for the rest of
//! the connection — input hyper's own parser refuses and closes the connection on (the server
//! caps hyper's buffer at [`MAX_HEAD`], so a head too large for the guard is too large for
//! hyper). Protocol upgrades are not served, so an `Upgrade` header changes nothing: the
//! connection stays HTTP/1.1 and is followed. A chunk-size line longer than any real one ends
//! the connection with an error rather than going unfollowed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Added to a header block whose framing is ambiguous. A client that sends it itself is
/// refused the same way.
pub const MARKER: &str = "x-callgate-ambiguous-framing";

/// The header of the stand-in request handed to hyper for a head that does not parse; its
/// value says what was wrong. A client that sends it itself is refused the same way.
pub const MALFORMED: &str = "x-callgate-malformed-request";

/// HTTP/2's connection preface up to its first empty line: passed through, never refused.
const H2_PREFACE_HEAD: &[u8] = b"PRI * HTTP/2.0\r\n\r\n";

/// The guard's own deadlines (see the module doc).
#[derive(Debug, Clone)]
pub struct Deadlines {
    /// No byte at all since the connection opened; for HTTP/2, no request in flight and none
    /// begun or ended for this long.
    pub idle: Duration,
    /// A header block incomplete this long after its first byte.
    pub head: Duration,
    /// The connection's requests, as the server counts them (HTTP/2's idle deadline).
    pub activity: std::sync::Arc<Activity>,
}

/// Requests in flight on one connection and when one last began or ended: what tells an idle
/// HTTP/2 connection (the guard sees only frames, and a client's PING is no request).
#[derive(Debug)]
pub struct Activity {
    start: tokio::time::Instant,
    in_flight: std::sync::atomic::AtomicUsize,
    last_ms: std::sync::atomic::AtomicU64,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity {
            start: tokio::time::Instant::now(),
            in_flight: Default::default(),
            last_ms: Default::default(),
        }
    }
}

/// One request in flight; ended when dropped.
pub struct InFlight(std::sync::Arc<Activity>);

impl Activity {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// A request began; it ends when the returned value is dropped.
    pub fn begin(self: &std::sync::Arc<Self>) -> InFlight {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.touch();
        InFlight(self.clone())
    }

    /// When the connection turned idle: `None` while a request is in flight.
    fn idle_since(&self) -> Option<tokio::time::Instant> {
        if self.in_flight.load(std::sync::atomic::Ordering::Acquire) > 0 {
            return None;
        }
        let ms = self.last_ms.load(std::sync::atomic::Ordering::Relaxed);
        Some(self.start + Duration::from_millis(ms))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Nothing,
    FirstByte,
    /// The head begun after `heads` heads were complete.
    HeadEnd {
        heads: u64,
    },
    /// HTTP/2: a request to begin.
    H2Idle,
}

/// The largest header block followed (and the size of hyper's read buffer, set by the server).
pub const MAX_HEAD: usize = 64 * 1024;

/// The longest chunk-size line (size and extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

enum State {
    Head(Vec<u8>),
    Body(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    ChunkEnd(u8),
    Trailers(Vec<u8>),
    PassThrough,
    /// The input cannot be followed safely: the connection ends with an error.
    Broken,
    /// A stand-in for a malformed head was handed over: the rest is read and dropped until the
    /// answer closes the connection.
    Discard,
}

pub struct FramingGuard<S> {
    inner: S,
    state: State,
    pending: Vec<u8>,
    offset: usize,
    deadlines: Option<Deadlines>,
    waiting: Waiting,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Complete heads followed so far.
    heads: u64,
    /// The connection speaks HTTP/2 (its preface was passed through).
    h2: bool,
}

/// Where the header block in `buf` ends (just past its empty line), looking at line ends
/// from `from` on. Lines end in LF with an optional CR before it, as httparse reads them.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(p) = buf[i..].iter().position(|b| *b == b'\n') {
        let nl = i + p;
        match &buf[nl + 1..] {
            [b'\n', ..] => return Some(nl + 2),
            [b'\r', b'\n', ..] => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

impl<S> FramingGuard<S> {
    pub fn new(inner: S) -> FramingGuard<S> {
        FramingGuard {
            inner,
            state: State::Head(Vec::new()),
            pending: Vec::new(),
            offset: 0,
            deadlines: None,
            waiting: Waiting::Nothing,
            timer: None,
            heads: 0,
            h2: false,
        }
    }

    /// A guard that also ends the connection on its [`Deadlines`]; the idle one runs from now.
    pub fn with_deadlines(inner: S, deadlines: Deadlines) -> FramingGuard<S> {
        let mut g = FramingGuard::new(inner);
        g.timer = Some(Box::pin(tokio::time::sleep(deadlines.idle)));
        g.deadlines = Some(deadlines);
        g.waiting = Waiting::FirstByte;
        g
    }

    /// After input was followed: a head begun and not finished runs on the head deadline (from
    /// its first byte); anything else is hyper's to time.
    fn rearm(&mut self) {
        let Some(d) = &self.deadlines else { return };
        let (idle, head) = (d.idle, d.head);
        if self.h2 {
            if self.waiting != Waiting::H2Idle {
                self.waiting = Waiting::H2Idle;
                self.timer = Some(Box::pin(tokio::time::sleep(idle)));
            }
            return;
        }
        let in_head = matches!(&self.state, State::Head(h) if !h.is_empty());
        match (in_head, self.waiting) {
            // The same head is still coming in: its deadline runs on.
            (true, Waiting::HeadEnd { heads }) if heads == self.heads => {}
            (true, _) => {
                self.waiting = Waiting::HeadEnd { heads: self.heads };
                self.timer = Some(Box::pin(tokio::time::sleep(head)));
            }
            (false, _) => {
                self.waiting = Waiting::Nothing;
                self.timer = None;
            }
        }
    }

    /// Whether the running deadline has passed (registering the waker when it has not). An
    /// HTTP/2 connection's deadline moves on while requests are in flight or were lately.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        loop {
            let timer = self.timer.as_mut()?;
            if timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            if self.waiting == Waiting::H2Idle
                && let Some(d) = &self.deadlines
            {
                let now = tokio::time::Instant::now();
                let until = match d.activity.idle_since() {
                    None => now + d.idle,
                    Some(since) => since + d.idle,
                };
                if until > now {
                    self.timer = Some(Box::pin(tokio::time::sleep_until(until)));
                    continue;
                }
            }
            self.timer = None;
            return Some(match self.waiting {
                Waiting::HeadEnd { .. } => "the request's header block did not arrive in time",
                _ => "the connection stayed idle too long",
            });
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    fn pass_through(&mut self, bytes: &[u8]) {
        self.state = State::PassThrough;
        self.emit(bytes);
    }

    /// Follows message boundaries through `input`, queueing the (possibly marked) bytes.
    fn process(&mut self, mut input: &[u8]) {
        while !input.is_empty() {
            match &mut self.state {
                State::PassThrough => {
                    let all = input.to_vec();
                    self.emit(&all);
                    return;
                }
                State::Broken | State::Discard => return,
                State::Head(head) => {
                    if head.is_empty() {
                        // Empty lines before a request line are skipped by hyper (RFC 9112
                        // §2.2); passed on as they are, so they cannot pose as a header block.
                        let blank = input.iter().take_while(|b| matches!(b, b'\r' | b'\n'));
                        let n = blank.count();
                        if n > 0 {
                            self.emit(&input[..n]);
                            input = &input[n..];
                            continue;
                        }
                    }
                    let start = head.len().saturating_sub(2);
                    head.extend_from_slice(input);
                    input = &[];
                    let Some(end) = head_end(head, start) else {
                        if head.len() > MAX_HEAD {
                            let h = std::mem::take(head);
                            self.pass_through(&h);
                        }
                        continue;
                    };
                    let mut head = std::mem::take(head);
                    let rest = head.split_off(end);
                    self.head(head);
                    self.process(&rest);
                    return;
                }
                State::Body(n) => {
                    let k = (*n).min(input.len() as u64) as usize;
                    *n -= k as u64;
                    if *n == 0 {
                        self.state = State::Head(Vec::new());
                    }
                    let (a, b) = input.split_at(k);
                    self.emit(a);
                    input = b;
                }
                State::ChunkSize(line) | State::Trailers(line) => {
                    let Some(nl) = input.iter().position(|b| *b == b'\n') else {
                        line.extend_from_slice(input);
                        if line.len() > MAX_CHUNK_LINE {
                            self.state = State::Broken;
                            return;
                        }
                        let all = input.to_vec();
                        self.emit(&all);
                        return;
                    };
                    line.extend_from_slice(&input[..=nl]);
                    let l = std::mem::take(line);
                    let trailers = matches!(self.state, State::Trailers(_));
                    self.emit(&input[..=nl]);
                    input = &input[nl + 1..];
                    self.state = if trailers {
                        if l == b"\r\n" {
                            State::Head(Vec::new())
                        } else {
                            State::Trailers(Vec::new())
                        }
                    } else {
                        let text = String::from_utf8_lossy(&l);
                        let size = text.split(';').next().unwrap_or("").trim();
                        match u64::from_str_radix(size, 16) {
                            Ok(0) => State::Trailers(Vec::new()),
                            Ok(n) => State::ChunkData(n),
                            Err(_) => State::PassThrough,
                        }
                    };
                }
                State::ChunkData(n) => {
                    let k = (*n).min(input.len() as u64) as usize;
                    *n -= k as u64;
                    if *n == 0 {
                        self.state = State::ChunkEnd(2);
                    }
                    let (a, b) = input.split_at(k);
                    self.emit(a);
                    input = b;
                }
                State::ChunkEnd(n) => {
                    let k = (*n as usize).min(input.len());
                    *n -= k as u8;
                    if *n == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                    let (a, b) = input.split_at(k);
                    self.emit(a);
                    input = b;
                }
            }
        }
    }

    /// Inspects one complete header block and decides how the body is framed.
    fn head(&mut self, head: Vec<u8>) {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {}
            Err(_) if head == H2_PREFACE_HEAD => {
                self.h2 = true;
                return self.pass_through(&head);
            }
            Err(e) if e != httparse::Error::TooManyHeaders => return self.stand_in(Some(e)),
            _ => return self.pass_through(&head),
        }
        let (mut lengths, mut te, mut chunked_last) = (Vec::new(), false, false);
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                for v in String::from_utf8_lossy(h.value).split(',') {
                    lengths.push(v.trim().to_string());
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = true;
                chunked_last = String::from_utf8_lossy(h.value)
                    .rsplit(',')
                    .next()
                    .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
            }
        }
        let conflict = (te && !lengths.is_empty()) || lengths.len() > 1;
        if conflict {
            // Mark the message and stop following this connection: it is closed after the 400.
            // The block ends with an empty line: CRLF, or a bare LF as httparse allows.
            let cut = if head.ends_with(b"\r\n") { 2 } else { 1 };
            let mut marked = head[..head.len() - cut].to_vec();
            marked.extend_from_slice(MARKER.as_bytes());
            marked.extend_from_slice(b": 1\r\n\r\n");
            return self.pass_through(&marked);
        }
        // hyper refuses a target `http::Uri` does not take with a bare 400 as well.
        if req.path.is_some_and(|p| http::Uri::try_from(p).is_err()) {
            return self.stand_in(None);
        }
        if req
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(MALFORMED))
        {
            return self.pass_through(&head);
        }
        self.heads += 1;
        self.emit(&head);
        self.state = if te {
            if chunked_last {
                State::ChunkSize(Vec::new())
            } else {
                State::PassThrough
            }
        } else if let Some(l) = lengths.first() {
            match l.parse::<u64>() {
                Ok(0) => State::Head(Vec::new()),
                Ok(n) => State::Body(n),
                Err(_) => State::PassThrough,
            }
        } else {
            State::Head(Vec::new())
        };
    }
}

impl<S> FramingGuard<S> {
    /// Hands hyper a request it parses, naming what was wrong with the real one, and drops
    /// the rest of the connection's input.
    fn stand_in(&mut self, e: Option<httparse::Error>) {
        let Some(e) = e else {
            return self.stand_in_for("the request target is not a valid URI");
        };
        let what = match e {
            httparse::Error::HeaderValue => {
                "a header value holds a character HTTP does not allow (a control character such as NUL)"
            }
            httparse::Error::HeaderName => "a header name is not a valid token",
            httparse::Error::Token => {
                "the request line is malformed (its method, or a character its target may not hold)"
            }
            httparse::Error::Version => "the request line does not end in HTTP/1.0 or HTTP/1.1",
            httparse::Error::NewLine => "a line ends in a bare carriage return",
            _ => "the request head does not parse",
        };
        self.stand_in_for(what)
    }

    fn stand_in_for(&mut self, what: &str) {
        let stand_in = format!("GET / HTTP/1.1\r\nhost: callgate\r\n{MALFORMED}: {what}\r\n\r\n");
        self.emit(stand_in.as_bytes());
        self.state = State::Discard;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FramingGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.offset < self.pending.len() {
                let k = (self.pending.len() - self.offset).min(out.remaining());
                let start = self.offset;
                out.put_slice(&self.pending[start..start + k]);
                self.offset += k;
                if self.offset == self.pending.len() {
                    self.pending.clear();
                    self.offset = 0;
                }
                return Poll::Ready(Ok(()));
            }
            // What has arrived is read before any deadline is looked at: a deadline ends only
            // a connection with nothing more to give.
            let timed_out = |g: &mut Self, cx: &mut Context<'_>| {
                g.expired(cx)
                    .map(|what| Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what))))
            };
            match self.state {
                State::PassThrough => {
                    let r = Pin::new(&mut self.inner).poll_read(cx, out);
                    if r.is_pending()
                        && let Some(t) = timed_out(&mut self, cx)
                    {
                        return t;
                    }
                    return r;
                }
                State::Broken => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a chunk-size line too long to follow",
                    )));
                }
                _ => {}
            }
            let mut buf = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                Poll::Ready(r) => r?,
                Poll::Pending => return timed_out(&mut self, cx).unwrap_or(Poll::Pending),
            }
            let n = rb.filled().len();
            if n == 0 {
                // End of stream: hand over whatever partial head was buffered and finish.
                if let State::Head(h) = &mut self.state {
                    let h = std::mem::take(h);
                    self.pass_through(&h);
                } else {
                    self.state = State::PassThrough;
                }
                if self.pending.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            if matches!(self.state, State::Discard) {
                continue;
            }
            self.process(&buf[..n]);
            self.rearm();
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FramingGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::AsyncReadExt;

    async fn run(input: &[u8], chunk: usize) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let data = input.to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for c in data.chunks(chunk.max(1)) {
                client.write_all(c).await.unwrap();
            }
        });
        let mut g = FramingGuard::new(server);
        let mut out = Vec::new();
        writer.await.unwrap();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n =
                tokio::time::timeout(std::time::Duration::from_millis(200), g.read(&mut buf)).await;
            match n {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => panic!("{e}"),
            }
        }
        out
    }

    const KEEPALIVE: &[u8] = b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nt: 1\r\n\r\nGET /c HTTP/1.1\r\nhost: x\r\n\r\n";

    #[tokio::test]
    async fn clean_messages_pass_unchanged() {
        for chunk in [1, 2, 7, 64, 4096] {
            assert_eq!(run(KEEPALIVE, chunk).await, KEEPALIVE, "chunk {chunk}");
        }
    }

    #[tokio::test]
    async fn leading_empty_lines_and_bare_line_feeds_do_not_hide_conflicting_framing() {
        let conflict = "content-length: 3\r\ntransfer-encoding: chunked\r\n";
        for input in [
            format!("\r\n\r\nPOST /a HTTP/1.1\r\nhost: x\r\n{conflict}\r\n0\r\n\r\n"),
            format!("\n\nPOST /a HTTP/1.1\r\nhost: x\r\n{conflict}\r\n0\r\n\r\n"),
            "POST /a HTTP/1.1\nhost: x\ncontent-length: 3\ntransfer-encoding: chunked\n\n0\r\n\r\n"
                .to_string(),
            "POST /a HTTP/1.1\r\nhost: x\ncontent-length: 3\r\ntransfer-encoding: chunked\n\r\n0\r\n\r\n"
                .to_string(),
        ] {
            for chunk in [1, 2, 5, 4096] {
                let out = String::from_utf8(run(input.as_bytes(), chunk).await).unwrap();
                assert_eq!(out.matches(MARKER).count(), 1, "{input:?} in chunks of {chunk}");
                // What hyper reads still parses, marker included.
                let start = out.find("POST").unwrap();
                let mut headers = [httparse::EMPTY_HEADER; 16];
                let mut req = httparse::Request::new(&mut headers);
                assert!(req.parse(&out.as_bytes()[start..]).unwrap().is_complete());
                assert!(req.headers.iter().any(|h| h.name == MARKER), "{out:?}");
            }
        }
        // A clean message with bare line feeds keeps its framing: its body is not a head.
        let clean = b"POST /a HTTP/1.1\nhost: x\ncontent-length: 4\n\n\r\n\r\nGET /b HTTP/1.1\ncontent-length: 3\ntransfer-encoding: chunked\n\n";
        for chunk in [1, 3, 4096] {
            let out = run(clean, chunk).await;
            assert_eq!(
                String::from_utf8_lossy(&out).matches(MARKER).count(),
                1,
                "the second message is seen as one, chunk {chunk}"
            );
        }
    }

    #[tokio::test]
    async fn conflicting_framing_is_marked_even_after_clean_messages() {
        let mut input = KEEPALIVE.to_vec();
        input.extend_from_slice(b"POST /d HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n");
        let out = String::from_utf8(run(&input, 5).await).unwrap();
        assert_eq!(out.matches(MARKER).count(), 1);
        assert!(out.contains("/d HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\nx-callgate-ambiguous-framing: 1\r\n\r\n"));
        for dup in [
            "content-length: 3\r\ncontent-length: 3\r\n",
            "content-length: 3, 3\r\n",
        ] {
            let m = format!("POST /e HTTP/1.1\r\n{dup}\r\nabc");
            assert!(
                String::from_utf8(run(m.as_bytes(), 3).await)
                    .unwrap()
                    .contains(MARKER),
                "{dup}"
            );
        }
    }

    #[tokio::test]
    async fn an_upgrade_header_does_not_stop_the_guard() {
        let input = b"GET /a HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nPOST /b HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
        for chunk in [1, 9, 4096] {
            let out = String::from_utf8(run(input, chunk).await).unwrap();
            assert_eq!(out.matches(MARKER).count(), 1, "chunk {chunk}");
        }
    }

    #[tokio::test]
    async fn an_endless_chunk_line_ends_the_connection() {
        let mut input = b"POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n1;".to_vec();
        input.extend(std::iter::repeat_n(b'x', 2 * MAX_CHUNK_LINE));
        input.extend_from_slice(b"\r\nz\r\n0\r\n\r\nPOST /b HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n");
        let (mut client, server) = tokio::io::duplex(1 << 20);
        use tokio::io::AsyncWriteExt;
        client.write_all(&input).await.unwrap();
        let mut g = FramingGuard::new(server);
        let mut buf = vec![0u8; 1 << 16];
        let mut seen = Vec::new();
        let err = loop {
            match g.read(&mut buf).await {
                Ok(0) => panic!("ended without an error"),
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            !String::from_utf8_lossy(&seen).contains("/b"),
            "nothing after it is served"
        );
    }

    proptest! {
        /// Whatever the input and however it is split, bytes are only ever passed through or
        /// marked — nothing is lost or reordered — until a malformed head, which is replaced by
        /// the stand-in request, with nothing after it.
        #[test]
        fn never_loses_bytes(body in proptest::collection::vec(any::<u8>(), 0..300), chunk in 1usize..50) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let mut input = KEEPALIVE.to_vec();
            input.extend_from_slice(&body);
            let mut out = rt.block_on(run(&input, chunk));
            let stand_in = b"GET / HTTP/1.1\r\nhost: callgate\r\nx-callgate-malformed-request: ";
            if let Some(at) = out.windows(stand_in.len()).position(|w| w == stand_in) {
                let rest = &out[at..];
                prop_assert!(rest.ends_with(b"\r\n\r\n"));
                prop_assert_eq!(rest.windows(4).filter(|w| *w == b"\r\n\r\n").count(), 1);
                out.truncate(at);
                input.truncate(out.len().max(KEEPALIVE.len()));
                prop_assert!(out.len() >= KEEPALIVE.len(), "the clean messages before it pass");
            }
            let marker = format!("{MARKER}: 1\r\n").into_bytes();
            let mut cleaned = Vec::new();
            let mut i = 0;
            while i < out.len() {
                if out[i..].starts_with(&marker) {
                    i += marker.len();
                } else {
                    cleaned.push(out[i]);
                    i += 1;
                }
            }
            prop_assert_eq!(cleaned, input);
        }
    }
}
