//! Request lines as Go's HTTP server takes them, under hyper.
//!
//! Grafana, curl and scripts send PromQL in the URL as typed: `/api/v1/query?query=up{job="x"}`.
//! Prometheus (Go) answers it; hyper parses the target with the `http` crate, which refuses a
//! raw `"` (and `<`, `>`, `#`, bytes over 0x7f) in a query string with an empty 400 before any
//! of our code runs. [`RequestLineFix`] sits between the socket and hyper, and rewrites each
//! HTTP/1 request line before hyper sees it: those bytes are percent-encoded, which the
//! parameter decoder turns back into the same text (or refuses, for bytes that are not UTF-8,
//! with a Prometheus-shaped 400). A target too long for the `http` crate (65,534 bytes) is
//! answered here with a Prometheus-shaped 414 and the connection closed, instead of hyper's
//! empty one.
//!
//! Only request lines are touched. A request line is expected at the start of a connection and
//! after each final response was written (1xx responses do not count); the bytes there are
//! rewritten only if they are a complete `METHOD SP /target SP HTTP/1.x` line, and passed
//! through untouched otherwise (a body read after an early response, an HTTP/2 preface).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::ApiError;

/// The longest request target the `http` crate parses.
const MAX_TARGET: usize = u16::MAX as usize - 1;
/// A request line is at most a method, the target and ` HTTP/1.1\r\n`.
const MAX_LINE: usize = MAX_TARGET + 64;
/// Longest method we recognise (`OPTIONS`, `CONNECT`, extensions).
const MAX_METHOD: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The next bytes should start a request line.
    LineStart,
    /// Bytes pass through.
    Pass,
    /// HTTP/2: bytes pass through for good.
    Http2,
    /// Writing a canned refusal, then end of stream.
    Refusing,
    Closed,
}

/// An IO wrapper for one server connection; see the module docs.
#[derive(Debug)]
pub struct RequestLineFix<S> {
    inner: S,
    state: State,
    /// Bytes read while looking for the end of a request line.
    line: Vec<u8>,
    /// Bytes ready for hyper, and how many it has taken.
    ready: Vec<u8>,
    taken: usize,
    /// The refusal being written, and how much of it went out.
    refusal: Vec<u8>,
    sent: usize,
    /// A final response was written since the last request line.
    responded: bool,
}

impl<S> RequestLineFix<S> {
    pub fn new(inner: S) -> Self {
        RequestLineFix {
            inner,
            state: State::LineStart,
            line: Vec::new(),
            ready: Vec::new(),
            taken: 0,
            refusal: Vec::new(),
            sent: 0,
            responded: false,
        }
    }

    fn note_write(&mut self, first: &[u8]) {
        // hyper writes a response head at the start of a write; `100 Continue` is followed
        // by the same request's body, not a new request line.
        if !first.starts_with(b"HTTP/1.1 1") && !first.starts_with(b"HTTP/1.0 1") {
            self.responded = true;
        }
    }

    fn hand_over(&mut self, bytes: Vec<u8>) {
        self.ready = bytes;
        self.taken = 0;
    }

    fn refuse_too_long(&mut self, len: usize) {
        let err = ApiError::bad_data(format!(
            "request URI too long: {len} bytes, at most {MAX_TARGET}"
        ));
        let body = err.body_json();
        self.refusal = format!(
            "HTTP/1.1 414 URI Too Long\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
        self.sent = 0;
        self.line = Vec::new();
        self.state = State::Refusing;
    }
}

/// What the bytes gathered so far at a line start are.
enum Line {
    /// Could still become a request line: read more.
    Partial,
    /// Not a request line: pass through.
    Other,
    /// A complete line ending at this index (exclusive, after `\n`).
    Complete(usize),
}

fn classify(buf: &[u8]) -> Line {
    let method_len = buf
        .iter()
        .take(MAX_METHOD + 1)
        .take_while(|b| b.is_ascii_uppercase())
        .count();
    if method_len == buf.len() {
        return if method_len <= MAX_METHOD {
            Line::Partial
        } else {
            Line::Other
        };
    }
    if method_len == 0 || method_len > MAX_METHOD || buf[method_len] != b' ' {
        return Line::Other;
    }
    match buf.get(method_len + 1) {
        None => Line::Partial,
        Some(b'/') => match buf.iter().position(|b| *b == b'\n') {
            Some(i) => Line::Complete(i + 1),
            None => Line::Partial,
        },
        // `*`, absolute-form targets, the HTTP/2 preface (`PRI * HTTP/2.0`): hyper's business.
        Some(_) => Line::Other,
    }
}

/// Would the `http` crate refuse this target byte? `in_query`: after the first `?`.
fn needs_escape(b: u8, in_query: bool) -> bool {
    match b {
        b'#' | b'<' | b'>' | 0x80..=0xff => true,
        b'"' => in_query,
        b'`' => !in_query,
        _ => false,
    }
}

/// Rewrites a complete request line; `Err(len)` when its target is too long to parse.
fn fix_line(line: &[u8]) -> Result<Option<Vec<u8>>, usize> {
    let body = line
        .strip_suffix(b"\r\n")
        .or_else(|| line.strip_suffix(b"\n"))
        .unwrap_or(line);
    let Some(sp1) = body.iter().position(|b| *b == b' ') else {
        return Ok(None);
    };
    let Some(sp2) = body.iter().rposition(|b| *b == b' ') else {
        return Ok(None);
    };
    let version = &body[sp2 + 1..];
    if sp2 <= sp1 || (version != b"HTTP/1.1" && version != b"HTTP/1.0") {
        return Ok(None);
    }
    let target = &body[sp1 + 1..sp2];
    let mut in_query = false;
    let extra: usize = target
        .iter()
        .map(|b| {
            let e = needs_escape(*b, in_query);
            in_query |= *b == b'?';
            if e { 2 } else { 0 }
        })
        .sum();
    if target.len() + extra > MAX_TARGET {
        return Err(target.len() + extra);
    }
    if extra == 0 {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(line.len() + extra);
    out.extend_from_slice(&line[..=sp1]);
    let mut in_query = false;
    for &b in target {
        if needs_escape(b, in_query) {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            out.push(b);
        }
        in_query |= b == b'?';
    }
    out.extend_from_slice(&line[sp2..]);
    Ok(Some(out))
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RequestLineFix<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.taken < this.ready.len() {
                let n = (this.ready.len() - this.taken).min(buf.remaining());
                buf.put_slice(&this.ready[this.taken..this.taken + n]);
                this.taken += n;
                if this.taken == this.ready.len() {
                    this.ready = Vec::new();
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            match this.state {
                State::Closed => return Poll::Ready(Ok(())),
                State::Http2 => return Pin::new(&mut this.inner).poll_read(cx, buf),
                State::Refusing => {
                    while this.sent < this.refusal.len() {
                        let n = ready!(
                            Pin::new(&mut this.inner).poll_write(cx, &this.refusal[this.sent..])
                        )?;
                        if n == 0 {
                            break;
                        }
                        this.sent += n;
                    }
                    ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
                    this.state = State::Closed;
                }
                State::Pass => {
                    if this.responded {
                        this.responded = false;
                        this.state = State::LineStart;
                        continue;
                    }
                    return Pin::new(&mut this.inner).poll_read(cx, buf);
                }
                State::LineStart => {
                    let mut chunk = [0u8; 8192];
                    let mut rb = ReadBuf::new(&mut chunk);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                    let got = rb.filled();
                    if got.is_empty() {
                        // End of stream: hand over what there is; the next read sees EOF.
                        let line = std::mem::take(&mut this.line);
                        this.state = State::Pass;
                        if line.is_empty() {
                            return Poll::Ready(Ok(()));
                        }
                        this.hand_over(line);
                        continue;
                    }
                    this.line.extend_from_slice(got);
                    this.responded = false;
                    match classify(&this.line) {
                        Line::Partial if this.line.len() > MAX_LINE => {
                            let len = this.line.len();
                            this.refuse_too_long(len);
                        }
                        Line::Partial => {}
                        Line::Other => {
                            let line = std::mem::take(&mut this.line);
                            this.state = if line.starts_with(b"PRI * HTTP/2.0") {
                                State::Http2
                            } else {
                                State::Pass
                            };
                            this.hand_over(line);
                        }
                        Line::Complete(end) => {
                            let mut line = std::mem::take(&mut this.line);
                            let rest = line.split_off(end);
                            match fix_line(&line) {
                                Err(len) => this.refuse_too_long(len),
                                Ok(fixed) => {
                                    let mut out = fixed.unwrap_or(line);
                                    out.extend_from_slice(&rest);
                                    this.state = State::Pass;
                                    this.hand_over(out);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RequestLineFix<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.note_write(buf);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            this.note_write(first);
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn fixed(line: &str) -> String {
        match fix_line(line.as_bytes()) {
            Ok(Some(v)) => String::from_utf8(v).expect("ascii"),
            Ok(None) => line.to_string(),
            Err(n) => format!("too long: {n}"),
        }
    }

    #[test]
    fn only_what_the_http_crate_refuses_is_escaped() {
        assert_eq!(
            fixed("GET /api/v1/query?query=up{job=\"x\"} HTTP/1.1\r\n"),
            "GET /api/v1/query?query=up{job=%22x%22} HTTP/1.1\r\n"
        );
        assert_eq!(
            fixed("GET /q?query=a>1#c\u{e9} HTTP/1.0\n"),
            "GET /q?query=a%3E1%23c%C3%A9 HTTP/1.0\n"
        );
        // Already valid lines are left alone, and so is anything that is not HTTP/1.
        for same in [
            "GET /api/v1/query?query=up%7Bjob%3D%22x%22%7D HTTP/1.1\r\n",
            "GET /a\"b HTTP/1.1\r\n",
            "GET /a\"b HTTP/2.0\r\n",
        ] {
            assert_eq!(fixed(same), same);
        }
        let long = format!("GET /?q={} HTTP/1.1\r\n", "\"".repeat(30_000));
        assert!(fixed(&long).starts_with("too long"));
    }

    #[test]
    fn request_line_detection() {
        assert!(matches!(classify(b"GE"), Line::Partial));
        assert!(matches!(classify(b"GET /x"), Line::Partial));
        assert!(matches!(
            classify(b"GET /x HTTP/1.1\r\n"),
            Line::Complete(17)
        ));
        assert!(matches!(classify(b"PRI * HTTP/2.0\r\n"), Line::Other));
        assert!(matches!(classify(b"\x00\x01snappy"), Line::Other));
        assert!(matches!(classify(b"query=up"), Line::Other));
    }

    #[tokio::test]
    async fn rewrites_each_request_line_and_passes_bodies() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut fix = RequestLineFix::new(server);
        let mut client = client;
        client
            .write_all(b"POST /a?q=\"1\" HTTP/1.1\r\nContent-Length: 9\r\n\r\nbody \"x\"\n")
            .await
            .expect("write");
        let mut got = vec![0u8; 256];
        let mut all = Vec::new();
        while !all.ends_with(b"\"x\"\n") {
            let n = fix.read(&mut got).await.expect("read");
            all.extend_from_slice(&got[..n]);
        }
        assert_eq!(
            String::from_utf8_lossy(&all),
            "POST /a?q=%221%22 HTTP/1.1\r\nContent-Length: 9\r\n\r\nbody \"x\"\n"
        );
        // After a response, the next request line is rewritten too.
        fix.write_all(b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .expect("respond");
        client
            .write_all(b"GET /b?q=\"2\" HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let n = fix.read(&mut got).await.expect("read");
        assert_eq!(
            String::from_utf8_lossy(&got[..n]),
            "GET /b?q=%222%22 HTTP/1.1\r\n\r\n"
        );
    }
}
