//! A deliberately tiny WebSocket client (RFC 6455) on raw tokio TCP.
//!
//! Just what the sessions bench needs: the HTTP/1.1 upgrade (with the
//! `Sec-WebSocket-Accept` check), masked client frames, unmasked server
//! frames, text messages (fragmented ones reassembled), ping → pong, and the
//! close handshake. Every received frame is stamped with the unix time in
//! microseconds at which it was parsed, which is what the latency numbers use.

use crate::client::make_room;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest message accepted from the server (the broker's own limit is 1 MiB).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Largest handshake response head accepted.
const MAX_HEAD: usize = 16 * 1024;
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why a WebSocket operation failed.
#[derive(Debug)]
pub enum Error {
    /// Socket error.
    Io(io::Error),
    /// The TCP connection ended without a close frame.
    Eof,
    /// The server broke the protocol (or refused the upgrade).
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "i/o error: {e}"),
            Error::Eof => write!(f, "connection closed without a close frame"),
            Error::Protocol(m) => write!(f, "websocket protocol: {m}"),
        }
    }
}

fn proto(m: impl Into<String>) -> Error {
    Error::Protocol(m.into())
}

/// A complete message from the server.
#[derive(Debug)]
pub enum Msg {
    /// A text (or binary) message and the unix µs at which it was parsed.
    Text(Vec<u8>, u64),
    /// The server closed: code (if any) and reason. The close was answered.
    Close(Option<u16>, String),
}

/// Unix time in microseconds.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// One client WebSocket connection.
#[derive(Debug)]
pub struct WsConn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    rng: u64,
    /// Opcode and payload of a fragmented message being reassembled.
    partial: Option<Vec<u8>>,
    /// A close frame was sent (do not send another).
    close_sent: bool,
}

static SEED: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);

fn next_rand(state: &mut u64) -> u64 {
    // xorshift64*
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

impl WsConn {
    /// Connects to `addr` and upgrades `path` to a WebSocket.
    pub async fn connect(addr: SocketAddr, path: &str) -> Result<WsConn, Error> {
        let stream = TcpStream::connect(addr).await.map_err(Error::Io)?;
        stream.set_nodelay(true).map_err(Error::Io)?;
        let seed = SEED.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed) ^ unix_micros();
        let mut ws = WsConn {
            stream,
            buf: vec![0; 4096],
            start: 0,
            end: 0,
            rng: seed | 1,
            partial: None,
            close_sent: false,
        };
        let mut key_bytes = [0u8; 16];
        key_bytes[..8].copy_from_slice(&next_rand(&mut ws.rng).to_le_bytes());
        key_bytes[8..].copy_from_slice(&next_rand(&mut ws.rng).to_le_bytes());
        let key = base64(&key_bytes);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        ws.stream
            .write_all(request.as_bytes())
            .await
            .map_err(Error::Io)?;
        ws.read_upgrade(&key).await?;
        Ok(ws)
    }

    async fn read_upgrade(&mut self, key: &str) -> Result<(), Error> {
        loop {
            let avail = &self.buf[self.start..self.end];
            if let Some(i) = avail.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&avail[..i]).into_owned();
                self.start += i + 4;
                let mut lines = head.split("\r\n");
                let status_line = lines.next().unwrap_or("");
                let status = status_line.split(' ').nth(1).unwrap_or("");
                if status != "101" {
                    return Err(proto(format!("upgrade refused: {status_line}")));
                }
                let expected = base64(&sha1(format!("{key}{GUID}").as_bytes()));
                let accept = lines
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("sec-websocket-accept"))
                    .map(|(_, v)| v.trim().to_string());
                if accept.as_deref() != Some(expected.as_str()) {
                    return Err(proto(format!(
                        "bad Sec-WebSocket-Accept {accept:?}, expected {expected}"
                    )));
                }
                return Ok(());
            }
            if avail.len() > MAX_HEAD {
                return Err(proto("handshake response head too large"));
            }
            self.fill().await?;
        }
    }

    /// Reads more bytes; `Err(Eof)` when the peer closed.
    async fn fill(&mut self) -> Result<(), Error> {
        make_room(&mut self.buf, &mut self.start, &mut self.end);
        let n = self
            .stream
            .read(&mut self.buf[self.end..])
            .await
            .map_err(Error::Io)?;
        if n == 0 {
            return Err(Error::Eof);
        }
        self.end += n;
        Ok(())
    }

    /// Writes one masked frame.
    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> Result<(), Error> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | opcode);
        let len = payload.len();
        if len < 126 {
            frame.push(0x80 | len as u8);
        } else if len <= 0xffff {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = (next_rand(&mut self.rng) as u32).to_be_bytes();
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.map_err(Error::Io)
    }

    /// Sends a text message.
    pub async fn send_text(&mut self, text: &str) -> Result<(), Error> {
        self.send_frame(0x1, text.as_bytes()).await
    }

    /// Sends a close frame with `code` (once); the caller then drops the connection.
    pub async fn send_close(&mut self, code: u16) -> Result<(), Error> {
        if self.close_sent {
            return Ok(());
        }
        self.close_sent = true;
        self.send_frame(0x8, &code.to_be_bytes()).await
    }

    /// The next complete message. Pings are answered and pongs skipped on the way.
    pub async fn next(&mut self) -> Result<Msg, Error> {
        loop {
            if let Some(msg) = self.parse_one().await? {
                return Ok(msg);
            }
        }
    }

    /// Parses one frame from the buffer (reading as needed); `None` for
    /// control frames and non-final fragments.
    async fn parse_one(&mut self) -> Result<Option<Msg>, Error> {
        while self.end - self.start < 2 {
            self.fill().await?;
        }
        let b0 = self.buf[self.start];
        let b1 = self.buf[self.start + 1];
        if b1 & 0x80 != 0 {
            return Err(proto("server frame is masked"));
        }
        if b0 & 0x70 != 0 {
            return Err(proto("reserved bits set (no extension was negotiated)"));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        let (header, len) = match b1 & 0x7f {
            126 => {
                while self.end - self.start < 4 {
                    self.fill().await?;
                }
                let s = self.start;
                (
                    4,
                    u16::from_be_bytes([self.buf[s + 2], self.buf[s + 3]]) as usize,
                )
            }
            127 => {
                while self.end - self.start < 10 {
                    self.fill().await?;
                }
                let s = self.start;
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.buf[s + 2..s + 10]);
                let n = u64::from_be_bytes(b);
                (10, usize::try_from(n).unwrap_or(usize::MAX))
            }
            n => (2, n as usize),
        };
        if len > MAX_MESSAGE {
            return Err(proto(format!("frame of {len} bytes")));
        }
        while self.end - self.start < header + len {
            self.fill().await?;
        }
        let at = self.start + header;
        self.start = at + len;
        let payload = at..at + len;
        match opcode {
            0x1 | 0x2 => {
                if self.partial.is_some() {
                    return Err(proto("new message inside a fragmented one"));
                }
                let data = self.buf[payload].to_vec();
                if fin {
                    return Ok(Some(Msg::Text(data, unix_micros())));
                }
                self.partial = Some(data);
                Ok(None)
            }
            0x0 => {
                let Some(mut data) = self.partial.take() else {
                    return Err(proto("continuation without a message"));
                };
                data.extend_from_slice(&self.buf[payload]);
                if data.len() > MAX_MESSAGE {
                    return Err(proto("fragmented message too large"));
                }
                if fin {
                    return Ok(Some(Msg::Text(data, unix_micros())));
                }
                self.partial = Some(data);
                Ok(None)
            }
            0x8 => {
                let data = &self.buf[payload];
                let code = (data.len() >= 2).then(|| u16::from_be_bytes([data[0], data[1]]));
                let reason =
                    String::from_utf8_lossy(data.get(2..).unwrap_or_default()).into_owned();
                if !self.close_sent {
                    self.close_sent = true;
                    let echo = code.map(u16::to_be_bytes);
                    let _ = self
                        .send_frame(0x8, echo.as_ref().map_or(&[][..], |e| &e[..]))
                        .await;
                }
                Ok(Some(Msg::Close(code, reason)))
            }
            0x9 => {
                let data = self.buf[payload].to_vec();
                self.send_frame(0xA, &data).await?;
                Ok(None)
            }
            0xA => Ok(None),
            other => Err(proto(format!("unknown opcode {other:#x}"))),
        }
    }
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// SHA-1 (only for the handshake's `Sec-WebSocket-Accept`).
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xefcd_ab89,
        0x98ba_dcfe,
        0x1032_5476,
        0xc3d2_e1f0,
    ];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5a82_7999),
                20..=39 => (b ^ c ^ d, 0x6ed9_eba1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8f1b_bcdc),
                _ => (b ^ c ^ d, 0xca62_c1d6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_accept_matches_rfc6455_example() {
        // RFC 6455 §1.3.
        let accept = base64(&sha1(format!("dGhlIHNhbXBsZSBub25jZQ=={GUID}").as_bytes()));
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }
}
