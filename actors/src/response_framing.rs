//! [`CloseDelimited`]: the upstream socket as awc reads it, with one fix. Some backends end an
//! HTTP/1.1 response by closing the connection, with neither `Content-Length` nor
//! `Transfer-Encoding: chunked`. A hand-written SSE server often does this. RFC 9112 §6.3
//! says the body then runs to the close. awc (actix-http 3.20, its issue #2287) reads such a
//! response as having no body at all, so the broker saw "body ended before the first byte" and
//! marked a working backend unhealthy. awc does read an HTTP/1.0 response to the close.
//!
//! So this wrapper follows the framing of every response on the connection: content length,
//! chunks, or to the close. When a response is HTTP/1.1 and close-delimited, it changes that
//! response's status line from `HTTP/1.1` to `HTTP/1.0`. The new text has the same length, so no
//! other byte moves. Everything else passes through untouched. A response head is held back
//! only until it is complete; body bytes go straight through. Anything it cannot follow (TLS
//! bytes, a malformed head or chunk) switches it to plain pass-through for the rest of the
//! connection, which is exactly awc's own behaviour. It sits under TLS (awc adds TLS on top of
//! the TCP connector), so it fixes plain-HTTP backends; an `https://` backend's bytes are
//! ciphertext here and pass through, as before.
//!
//! It assumes the broker never sends `HEAD` upstream (it does not: the routes it relays are
//! `POST` and `GET`), since a `HEAD` answer announces a length it does not send.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_rt::net::{ActixStream, Ready};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A response head longer than this is not followed (awc refuses far smaller heads anyway).
const MAX_HEAD: usize = 64 * 1024;

/// Where the reader is in the current response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a response head (held back until complete).
    Head,
    /// This many body bytes are left.
    Length(u64),
    /// Inside a chunked body.
    Chunked(Chunk),
    /// The body runs to the close, or the framing could not be followed: no more tracking.
    PassThrough,
}

/// Where the reader is in a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line: the size so far, its significant hex digits, whether any
    /// digit came, and whether an extension (`;…`) began.
    Size {
        size: u64,
        digits: u8,
        any: bool,
        ext: bool,
    },
    /// This many data bytes of the current chunk are left.
    Data(u64),
    /// The line end after a chunk's data.
    DataEnd,
    /// Trailer lines after the last chunk: the length of the current line.
    Trailer { line: usize },
}

const CHUNK_START: Chunk = Chunk::Size {
    size: 0,
    digits: 0,
    any: false,
    ext: false,
};

/// The upstream connection, read through the framing fix described in the module docs.
pub struct CloseDelimited<T> {
    inner: T,
    state: State,
    /// Bytes read but not yet given to awc: a head being collected, or what follows it.
    held: BytesMut,
    /// Bytes ready to give to awc (a completed head, and body bytes read along with it).
    ready: BytesMut,
}

impl<T> CloseDelimited<T> {
    /// Wraps a fresh connection, before its first response.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            state: State::Head,
            held: BytesMut::new(),
            ready: BytesMut::new(),
        }
    }

    /// Follows the framing over `bytes` in place: complete heads are rewritten where needed,
    /// body bytes are counted. Returns how many bytes can go to awc now; the rest (an
    /// incomplete head) has to wait for more.
    fn follow(&mut self, bytes: &mut [u8]) -> usize {
        let mut at = 0;
        while at < bytes.len() {
            match self.state {
                State::PassThrough => return bytes.len(),
                State::Head => {
                    // Empty lines before a status line are skipped by awc's parser too.
                    if matches!(bytes[at], b'\r' | b'\n') {
                        at += 1;
                        continue;
                    }
                    let rest = &mut bytes[at..];
                    if !is_http_prefix(rest) {
                        self.state = State::PassThrough;
                        continue;
                    }
                    let Some(end) = head_end(rest) else {
                        if rest.len() > MAX_HEAD {
                            self.state = State::PassThrough;
                            continue;
                        }
                        return at;
                    };
                    self.state = after_head(&mut rest[..end]);
                    at += end;
                }
                _ => at += self.track(&bytes[at..]),
            }
        }
        at
    }

    /// Moves what the framing allows from `held` to `ready`; an incomplete head stays held.
    fn advance_held(&mut self) {
        let mut held = std::mem::take(&mut self.held);
        let used = self.follow(&mut held);
        self.ready.unsplit(held.split_to(used));
        self.held = held;
    }

    /// Follows body bytes through the framing. Returns how many belong to the current body;
    /// when that is fewer than `bytes`, the body ended and the state is back at `Head` (or
    /// `PassThrough` when the framing broke, and then all of `bytes` is returned as used).
    fn track(&mut self, bytes: &[u8]) -> usize {
        let mut at = 0;
        while at < bytes.len() {
            match self.state {
                State::Head => return at,
                State::PassThrough => return bytes.len(),
                State::Length(left) => {
                    let take = left.min((bytes.len() - at) as u64);
                    at += take as usize;
                    self.state = if left == take {
                        State::Head
                    } else {
                        State::Length(left - take)
                    };
                }
                State::Chunked(Chunk::Data(left)) => {
                    let take = left.min((bytes.len() - at) as u64);
                    at += take as usize;
                    self.state = State::Chunked(if left == take {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - take)
                    });
                }
                State::Chunked(chunk) => {
                    self.state = chunk_byte(chunk, bytes[at]);
                    at += 1;
                }
            }
        }
        at
    }
}

/// The state after a complete head, rewriting an HTTP/1.1 close-delimited status line. The
/// framing rules are awc's (actix-http's response decoder), so both read the same bytes as
/// the body: chunking (HTTP/1.1 only), else a length, else none for 1xx, 204 and 304, else
/// to the close.
fn after_head(head: &mut [u8]) -> State {
    let Some(info) = parse_head(head) else {
        return State::PassThrough;
    };
    match info {
        HeadInfo { status: 101, .. } => State::PassThrough,
        HeadInfo { chunked: true, .. } => State::Chunked(CHUNK_START),
        HeadInfo {
            length: Some(0), ..
        } => State::Head,
        HeadInfo {
            length: Some(n), ..
        } => State::Length(n),
        HeadInfo {
            status: 100..=199 | 204 | 304,
            ..
        } => State::Head,
        HeadInfo { http11, .. } => {
            if http11 {
                // "HTTP/1.1" → "HTTP/1.0": awc reads an HTTP/1.0 body to the close.
                head[7] = b'0';
            }
            State::PassThrough
        }
    }
}

/// Where a head ends: after its first empty line (`\r\n\r\n`, or bare `\n` line ends, which
/// awc's parser accepts as well).
fn head_end(b: &[u8]) -> Option<usize> {
    for lf in memchr::memchr_iter(b'\n', b) {
        match b.get(lf + 1..) {
            Some([b'\n', ..]) => return Some(lf + 2),
            Some([b'\r', b'\n', ..]) => return Some(lf + 3),
            _ => {}
        }
    }
    None
}

/// One byte of a chunk-size line, a data line end or a trailer.
fn chunk_byte(chunk: Chunk, b: u8) -> State {
    let next = match chunk {
        Chunk::Size {
            size,
            digits,
            any,
            ext,
        } => match b {
            b'\n' if !any => return State::PassThrough,
            b'\n' if size == 0 => Chunk::Trailer { line: 0 },
            b'\n' => Chunk::Data(size),
            b'\r' => chunk,
            _ if ext => chunk,
            b';' | b' ' | b'\t' => Chunk::Size {
                size,
                digits,
                any,
                ext: true,
            },
            _ => match (b as char).to_digit(16) {
                // Leading zeros are not significant; 15 digits keep the size in a u64.
                Some(d) if digits < 15 => Chunk::Size {
                    size: size * 16 + u64::from(d),
                    digits: digits + u8::from(size > 0 || d > 0),
                    any: true,
                    ext,
                },
                _ => return State::PassThrough,
            },
        },
        Chunk::Data(_) => chunk,
        Chunk::DataEnd => match b {
            b'\n' => CHUNK_START,
            b'\r' => chunk,
            _ => return State::PassThrough,
        },
        Chunk::Trailer { line } => match b {
            b'\n' if line == 0 => return State::Head,
            b'\n' => Chunk::Trailer { line: 0 },
            b'\r' => chunk,
            _ => Chunk::Trailer { line: line + 1 },
        },
    };
    State::Chunked(next)
}

/// What the framing needs from a response head.
#[derive(Debug, PartialEq, Eq)]
struct HeadInfo {
    http11: bool,
    status: u16,
    length: Option<u64>,
    chunked: bool,
}

/// Whether `b` can be the start of a response head (`HTTP/1.`); checked on what is there.
fn is_http_prefix(b: &[u8]) -> bool {
    let prefix = b"HTTP/1.";
    let n = b.len().min(prefix.len());
    b[..n] == prefix[..n]
}

/// Parses a complete head (status line and header lines, ending in an empty line), as bytes:
/// header values need not be UTF-8, line ends may be bare `\n`, and a name may have spaces
/// before its colon (awc accepts all three).
fn parse_head(head: &[u8]) -> Option<HeadInfo> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next()?;
    let http11 = status_line.starts_with(b"HTTP/1.1 ");
    if !http11 && !status_line.starts_with(b"HTTP/1.0 ") {
        return None;
    }
    let status: u16 = std::str::from_utf8(status_line.get(9..12)?)
        .ok()?
        .parse()
        .ok()?;
    let mut info = HeadInfo {
        http11,
        status,
        length: None,
        chunked: false,
    };
    for line in lines {
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            info.length = Some(std::str::from_utf8(value).ok()?.parse().ok()?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") && http11 {
            // awc reads Transfer-Encoding in HTTP/1.1 answers only.
            let last = value
                .rsplit(|&b| b == b',')
                .next()
                .unwrap_or(b"")
                .trim_ascii();
            info.chunked = last.eq_ignore_ascii_case(b"chunked");
        }
    }
    Some(info)
}

impl<T: AsyncRead + Unpin> AsyncRead for CloseDelimited<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.state == State::PassThrough && this.held.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.held.is_empty() {
                // The usual case: read straight into awc's buffer and follow the framing over
                // what came, in place. Only an incomplete head is taken back out and held.
                let before = buf.filled().len();
                std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                let got = buf.filled().len() - before;
                if got == 0 {
                    return Poll::Ready(Ok(()));
                }
                let used = this.follow(&mut buf.filled_mut()[before..]);
                if used < got {
                    this.held.extend_from_slice(&buf.filled()[before + used..]);
                    buf.set_filled(before + used);
                }
                if used > 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // An incomplete head is held: read more behind it.
            let mut chunk = [0u8; 8192];
            let mut more = ReadBuf::new(&mut chunk);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut more))?;
            if more.filled().is_empty() {
                // The close: whatever is held goes to awc as it is.
                this.state = State::PassThrough;
                let rest = this.held.split();
                this.ready.unsplit(rest);
                continue;
            }
            this.held.extend_from_slice(more.filled());
            this.advance_held();
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CloseDelimited<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<T: ActixStream> ActixStream for CloseDelimited<T> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        if !self.ready.is_empty() {
            return Poll::Ready(Ok(Ready::READABLE));
        }
        self.inner.poll_read_ready(cx)
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        self.inner.poll_write_ready(cx)
    }
}

impl<T> fmt::Debug for CloseDelimited<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloseDelimited")
            .field("state", &self.state)
            .field("held", &self.held.len())
            .finish()
    }
}

#[cfg(test)]
mod tests;
