//! A deliberately tiny HTTP/1.1 client on raw tokio TCP.
//!
//! One [`Conn`] is one keep-alive connection. Requests are pre-serialised byte
//! strings written with a single `write_all`; responses are parsed just enough
//! to frame them (status line, `Content-Length`, `Transfer-Encoding: chunked`,
//! `Connection: close`). Bodies are handed to a sink as they arrive, so a
//! streaming caller can timestamp the first token and stop reading early.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;
/// Largest SSE line kept while scanning (longer lines are dropped).
const MAX_SSE_LINE: usize = 1024 * 1024;

/// Why an exchange failed.
#[derive(Debug)]
pub enum Error {
    /// Socket error.
    Io(io::Error),
    /// The peer closed the connection before the response was complete.
    Closed,
    /// The response could not be parsed.
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "i/o error: {e}"),
            Error::Closed => write!(f, "connection closed before the response was complete"),
            Error::Protocol(m) => write!(f, "bad response: {m}"),
        }
    }
}

fn proto(msg: impl Into<String>) -> Error {
    Error::Protocol(msg.into())
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length: n` (or no body at all for 1xx/204/304).
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: the body ends when the server closes.
    UntilClose,
}

/// The parsed status line and framing headers.
#[derive(Debug, Clone, Copy)]
pub struct Head {
    /// HTTP status code.
    pub status: u16,
    /// Body framing.
    pub framing: Framing,
    /// The server will close the connection after this response.
    pub close: bool,
}

/// What a body sink wants after seeing a piece of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Stop now (the connection is then unusable and must be dropped).
    Stop,
}

/// One keep-alive client connection.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Conn {
    /// Opens a connection (with `TCP_NODELAY`).
    pub async fn connect(addr: SocketAddr) -> Result<Conn, Error> {
        let stream = TcpStream::connect(addr).await.map_err(Error::Io)?;
        stream.set_nodelay(true).map_err(Error::Io)?;
        Ok(Conn {
            stream,
            buf: vec![0; 16 * 1024],
            start: 0,
            end: 0,
        })
    }

    /// Writes a complete, pre-serialised request.
    pub async fn send(&mut self, request: &[u8]) -> Result<(), Error> {
        self.stream.write_all(request).await.map_err(Error::Io)
    }

    /// Reads more bytes into the buffer; `Err(Closed)` on EOF.
    async fn fill(&mut self) -> Result<(), Error> {
        make_room(&mut self.buf, &mut self.start, &mut self.end);
        let n = self
            .stream
            .read(&mut self.buf[self.end..])
            .await
            .map_err(Error::Io)?;
        if n == 0 {
            return Err(Error::Closed);
        }
        self.end += n;
        Ok(())
    }

    /// Reads and parses the response head.
    pub async fn read_head(&mut self) -> Result<Head, Error> {
        let mut scanned = 0;
        loop {
            let avail = &self.buf[self.start..self.end];
            if let Some(i) = find(&avail[scanned..], b"\r\n\r\n") {
                let len = scanned + i + 4;
                let head = parse_head(&avail[..len])?;
                self.start += len;
                return Ok(head);
            }
            scanned = avail.len().saturating_sub(3);
            if avail.len() > MAX_HEAD {
                return Err(proto("response head larger than 64 KiB"));
            }
            self.fill().await?;
        }
    }

    /// Reads one `\r\n`-terminated line (without the terminator) and consumes it;
    /// returns its (start, len) in the buffer.
    async fn read_line(&mut self) -> Result<(usize, usize), Error> {
        loop {
            if let Some(i) = find(&self.buf[self.start..self.end], b"\r\n") {
                let at = self.start;
                self.start += i + 2;
                return Ok((at, i));
            }
            if self.end - self.start > MAX_LINE {
                return Err(proto("chunk-size or trailer line too long"));
            }
            self.fill().await?;
        }
    }

    /// Reads the body, passing each decoded piece to `sink` as it arrives.
    ///
    /// Returns `Ok(true)` when the body was read to its end and `Ok(false)`
    /// when `sink` asked to stop (the connection must then be dropped).
    pub async fn read_body<F>(&mut self, framing: Framing, mut sink: F) -> Result<bool, Error>
    where
        F: FnMut(&[u8]) -> Flow,
    {
        match framing {
            Framing::Length(n) => self.read_exact_to(n, &mut sink).await,
            Framing::UntilClose => loop {
                if self.start < self.end {
                    let flow = sink(&self.buf[self.start..self.end]);
                    self.start = self.end;
                    if flow == Flow::Stop {
                        return Ok(false);
                    }
                }
                match self.fill().await {
                    Ok(()) => {}
                    Err(Error::Closed) => return Ok(true),
                    Err(e) => return Err(e),
                }
            },
            Framing::Chunked => loop {
                let (at, len) = self.read_line().await?;
                let line = &self.buf[at..at + len];
                let size_text = std::str::from_utf8(line)
                    .map_err(|_| proto("chunk size is not text"))?
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim();
                let size = usize::from_str_radix(size_text, 16)
                    .map_err(|_| proto(format!("bad chunk size {size_text:?}")))?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    loop {
                        let (_, len) = self.read_line().await?;
                        if len == 0 {
                            return Ok(true);
                        }
                    }
                }
                if !self.read_exact_to(size, &mut sink).await? {
                    return Ok(false);
                }
                let (_, len) = self.read_line().await?;
                if len != 0 {
                    return Err(proto("chunk data not followed by CRLF"));
                }
            },
        }
    }

    async fn read_exact_to<F>(&mut self, n: usize, sink: &mut F) -> Result<bool, Error>
    where
        F: FnMut(&[u8]) -> Flow,
    {
        let mut remaining = n;
        while remaining > 0 {
            if self.start == self.end {
                self.fill().await?;
            }
            let take = remaining.min(self.end - self.start);
            let flow = sink(&self.buf[self.start..self.start + take]);
            self.start += take;
            remaining -= take;
            if flow == Flow::Stop {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(raw: &[u8]) -> Result<Head, Error> {
    let text = std::str::from_utf8(raw).map_err(|_| proto("response head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(proto(format!("bad status line {status_line:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| proto(format!("bad status line {status_line:?}")))?;
    let mut close = version == "HTTP/1.0";
    let mut length = None;
    let mut chunked = false;
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(proto(format!("bad header line {line:?}")));
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| proto(format!("bad Content-Length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                close = true;
            } else if v.contains("keep-alive") {
                close = false;
            }
        }
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        close = true;
        Framing::UntilClose
    };
    Ok(Head {
        status,
        framing,
        close,
    })
}

/// Serialises a request with a JSON (or empty) body.
pub fn build_request(
    method: &str,
    host: SocketAddr,
    path: &str,
    extra_headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in extra_headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        out.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if let Some(body) = body {
        bytes.extend_from_slice(body);
    }
    bytes
}

/// Watches an SSE body for the first non-empty content token and `[DONE]`.
#[derive(Debug)]
pub struct SseScan {
    t0: Instant,
    line: Vec<u8>,
    /// Time from `t0` to the first `data:` line carrying a non-empty token.
    pub ttft: Option<Duration>,
    /// `data: [DONE]` was seen.
    pub done: bool,
    /// Largest gap between two consecutive tokens (reveals batching/stalls).
    pub max_gap: Duration,
    last_token: Option<Instant>,
}

impl SseScan {
    /// A scanner measuring from `t0`.
    pub fn new(t0: Instant) -> SseScan {
        SseScan {
            t0,
            line: Vec::new(),
            ttft: None,
            done: false,
            max_gap: Duration::ZERO,
            last_token: None,
        }
    }

    /// Feeds body bytes; returns true when this piece held the first token.
    pub fn feed(&mut self, data: &[u8]) -> bool {
        let mut found = false;
        let mut rest = data;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            let part = &rest[..i];
            if self.line.is_empty() {
                found |= self.on_line(part);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(part);
                found |= self.on_line(&line);
                line.clear();
                self.line = line;
            }
            rest = &rest[i + 1..];
        }
        if self.line.len() + rest.len() <= MAX_SSE_LINE {
            self.line.extend_from_slice(rest);
        } else {
            self.line.clear();
        }
        found
    }

    fn on_line(&mut self, line: &[u8]) -> bool {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(payload) = line.strip_prefix(b"data:") else {
            return false;
        };
        let payload = payload.trim_ascii();
        if payload == b"[DONE]" {
            self.done = true;
            return false;
        }
        if !has_token(payload) {
            return false;
        }
        let now = Instant::now();
        if let Some(last) = self.last_token {
            self.max_gap = self.max_gap.max(now - last);
        }
        self.last_token = Some(now);
        if self.ttft.is_none() {
            self.ttft = Some(now - self.t0);
            return true;
        }
        false
    }
}

/// Whether an SSE JSON payload carries a non-empty content (or text) token.
fn has_token(payload: &[u8]) -> bool {
    // Fast path for compact JSON (what the mock sends and proxies relay).
    if let Some(i) = find(payload, b"\"content\":\"") {
        return payload.get(i + 11).is_some_and(|&b| b != b'"');
    }
    if find(payload, b"\"content\"").is_none() && find(payload, b"\"text\"").is_none() {
        return false;
    }
    let Ok(v) = serde_json::from_slice::<Value>(payload) else {
        return false;
    };
    let Some(choice) = v.get("choices").and_then(|c| c.get(0)) else {
        return false;
    };
    choice
        .get("delta")
        .and_then(|d| d.get("content"))
        .or_else(|| choice.get("text"))
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
}

/// Makes space after `end` in a read buffer holding unread bytes `start..end`: resets an
/// empty buffer, moves unread bytes to the front when the tail is full, doubles it when the
/// unread bytes fill it. Shared by the HTTP and WebSocket clients.
pub(crate) fn make_room(buf: &mut Vec<u8>, start: &mut usize, end: &mut usize) {
    if *start == *end {
        *start = 0;
        *end = 0;
    } else if *start > 0 && *end == buf.len() {
        buf.copy_within(*start..*end, 0);
        *end -= *start;
        *start = 0;
    }
    if *end == buf.len() {
        let n = buf.len() * 2;
        buf.resize(n, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n").unwrap();
        assert_eq!(
            (h.status, h.framing, h.close),
            (200, Framing::Length(12), false)
        );
        let h = parse_head(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        assert_eq!((h.framing, h.close), (Framing::Chunked, true));
        let h = parse_head(b"HTTP/1.0 502 Bad\r\n\r\n").unwrap();
        assert_eq!(
            (h.status, h.framing, h.close),
            (502, Framing::UntilClose, true)
        );
    }

    #[test]
    fn scans_sse() {
        let mut s = SseScan::new(Instant::now());
        let role =
            b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n";
        assert!(!s.feed(role));
        assert!(!s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"he"));
        assert!(s.feed(b"llo\"}}]}\n\n: keepalive\n\ndata: [DONE]\n\n"));
        assert!(s.ttft.is_some() && s.done);
    }
}
