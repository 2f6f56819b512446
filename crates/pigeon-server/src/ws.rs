//! MQTT over WebSocket (`ws` and `wss` listeners): the HTTP upgrade, and `WsStream`, which turns
//! a WebSocket's messages into the byte stream the connection task reads and writes.
//!
//! The upgrade request is parsed here rather than by tungstenite's handshake, so that every
//! refusal gets an HTTP answer (404 for another path, 403 for an origin not allowed, 426 for a
//! plain GET) and the request head is bounded. After the 101 answer, tungstenite does the framing
//! and answers pings and close frames. Reads yield the bytes of binary messages, whatever the
//! message boundaries (one MQTT packet may span messages, one message may hold several packets);
//! a text message closes the connection with code 1003. Writes collect bytes until the next
//! flush, which sends them as one binary message: the connection writes its whole buffer of
//! packets, then flushes, so a batch of packets leaves as one message.

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// Largest upgrade request head read; larger ones get 431.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// Subprotocols offered by MQTT clients, in order of preference: `mqtt` (3.1.1 and 5.0) and
/// `mqttv3.1` (older clients, e.g. paho's 3.1 mode).
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];
/// Bytes written before a flush that are sent as one message; more are split across messages,
/// which MQTT over WebSocket allows.
const MAX_OUT_MESSAGE: usize = 64 * 1024;
/// tungstenite allocates its read buffer up front, per connection; its default is 128 KiB.
const READ_BUFFER: usize = 8 * 1024;

/// A `ws`/`wss` listener's upgrade rules.
#[derive(Debug, Clone)]
pub(crate) struct WsSettings {
    pub(crate) path: String,
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) trusted_proxies: Vec<IpAddr>,
    /// Largest WebSocket message or frame accepted from a client.
    pub(crate) max_message: usize,
}

/// Why an upgrade did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpgradeError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("connection closed before the request was complete")]
    Eof,
    /// Answered with this HTTP status.
    #[error("refused with HTTP {status}: {reason}")]
    Refused { status: u16, reason: String },
}

/// The result of a successful upgrade.
pub(crate) struct Upgraded<S> {
    pub(crate) stream: WsStream<S>,
    /// The client's address: the TCP peer, or from `X-Forwarded-For` behind a trusted proxy.
    pub(crate) peer: SocketAddr,
    pub(crate) subprotocol: Option<&'static str>,
}

/// Reads the upgrade request, answers it, and wraps the stream. The caller bounds it in time.
pub(crate) async fn accept<S>(
    mut stream: S,
    peer: SocketAddr,
    settings: &WsSettings,
) -> Result<Upgraded<S>, UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    let (head_len, request) = loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(UpgradeError::Eof);
        }
        match parse(&buf, peer, settings) {
            Ok(Some(parsed)) => break parsed,
            Ok(None) if buf.len() < MAX_REQUEST_HEAD => {
                buf.reserve(1024.min(MAX_REQUEST_HEAD - buf.len()));
            }
            Ok(None) => {
                let refusal = Refusal::new(431, "request head too large");
                return Err(refuse(&mut stream, refusal).await);
            }
            Err(refusal) => return Err(refuse(&mut stream, refusal).await),
        }
    };
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        request.accept_key
    );
    if let Some(protocol) = request.subprotocol {
        response.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
    }
    response.push_str("\r\n");
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await?;

    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(settings.max_message))
        .max_frame_size(Some(settings.max_message));
    // Bytes after the request head are the client's first frames.
    buf.advance(head_len);
    let ws = WebSocketStream::from_partially_read(stream, buf.to_vec(), Role::Server, Some(config))
        .await;
    Ok(Upgraded {
        stream: WsStream::new(ws),
        peer: request.peer,
        subprotocol: request.subprotocol,
    })
}

struct Request {
    accept_key: String,
    subprotocol: Option<&'static str>,
    peer: SocketAddr,
}

struct Refusal {
    status: u16,
    reason: String,
    extra_headers: &'static str,
}

impl Refusal {
    fn new(status: u16, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
            extra_headers: "",
        }
    }
}

/// `Ok(None)`: the head is not complete yet.
fn parse(
    buf: &[u8],
    peer: SocketAddr,
    settings: &WsSettings,
) -> Result<Option<(usize, Request)>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(431, "too many headers"));
        }
        Err(e) => return Err(Refusal::new(400, format!("malformed request: {e}"))),
    };
    let path = req.path.unwrap_or("");
    let path = path.split_once('?').map_or(path, |(path, _query)| path);
    if path != settings.path {
        return Err(Refusal::new(
            404,
            format!(
                "no WebSocket endpoint at {path}; MQTT is at {}",
                settings.path
            ),
        ));
    }
    if req.method != Some("GET") {
        return Err(Refusal::new(405, "the WebSocket upgrade is a GET request"));
    }
    let headers: &[httparse::Header<'_>] = req.headers;
    let header = |name: &'static str| header_values(headers, name);
    let has_token = |name: &'static str, token: &str| {
        header(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(Refusal {
            extra_headers: "Upgrade: websocket\r\n",
            ..Refusal::new(
                426,
                "this is an MQTT over WebSocket endpoint; upgrade to websocket",
            )
        });
    }
    if !header("sec-websocket-version").any(|v| v.trim() == "13") {
        return Err(Refusal {
            extra_headers: "Sec-WebSocket-Version: 13\r\n",
            ..Refusal::new(426, "WebSocket version 13 is required")
        });
    }
    let Some(key) = header("sec-websocket-key").next() else {
        return Err(Refusal::new(400, "Sec-WebSocket-Key is missing"));
    };
    if !settings.allowed_origins.is_empty() {
        if let Some(origin) = header("origin").next() {
            let allowed = settings
                .allowed_origins
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin.trim()));
            if !allowed {
                return Err(Refusal::new(403, format!("origin {origin} is not allowed")));
            }
        }
    }
    let offered: Vec<&str> = header("sec-websocket-protocol")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let subprotocol = SUBPROTOCOLS
        .into_iter()
        .find(|ours| offered.iter().any(|o| o.eq_ignore_ascii_case(ours)));
    let peer = match forwarded_for(peer, &settings.trusted_proxies, header("x-forwarded-for")) {
        Some(ip) => SocketAddr::new(ip, 0),
        None => peer,
    };
    Ok(Some((
        head_len,
        Request {
            accept_key: derive_accept_key(key.trim().as_bytes()),
            subprotocol,
            peer,
        },
    )))
}

/// The values of every header named `name`, as text.
fn header_values<'a>(
    headers: &'a [httparse::Header<'a>],
    name: &'static str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
}

/// The client's address from `X-Forwarded-For` when `peer` is a trusted proxy: the right-most
/// address that is not a trusted proxy (addresses to its left were written by the client and
/// prove nothing), or the left-most when every one is trusted.
fn forwarded_for<'a>(
    peer: SocketAddr,
    trusted: &[IpAddr],
    values: impl Iterator<Item = &'a str>,
) -> Option<IpAddr> {
    let is_trusted = |ip: IpAddr| trusted.contains(&ip.to_canonical());
    if !is_trusted(peer.ip()) {
        return None;
    }
    let hops: Vec<IpAddr> = values
        .flat_map(|v| v.split(','))
        .map(parse_hop)
        .collect::<Option<_>>()?;
    hops.iter()
        .rev()
        .copied()
        .find(|ip| !is_trusted(*ip))
        .or_else(|| hops.first().copied())
}

/// One `X-Forwarded-For` entry: `192.0.2.1`, `2001:db8::1`, `[2001:db8::1]:443`, `192.0.2.1:80`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|a| a.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// Answers a refused upgrade and closes; returns the error for the caller to log.
async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, refusal: Refusal) -> UpgradeError {
    let status = refusal.status;
    let text = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        _ => "Request Header Fields Too Large",
    };
    let body = format!("{}\n", refusal.reason);
    let response = format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n{}\r\n{body}",
        body.len(),
        refusal.extra_headers
    );
    // Best effort: the client may already be gone.
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
    UpgradeError::Refused {
        status,
        reason: refusal.reason,
    }
}

/// A WebSocket as a byte stream, for `connection::serve`.
pub(crate) struct WsStream<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    read: Bytes,
    /// Bytes written since the last flush, sent as one binary message by the next flush.
    out: BytesMut,
}

impl<S> WsStream<S> {
    fn new(ws: WebSocketStream<S>) -> WsStream<S> {
        WsStream {
            ws,
            read: Bytes::new(),
            out: BytesMut::new(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Hands the collected bytes to the WebSocket as one binary message and drives everything
    /// queued to the socket.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.out.is_empty() {
            ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(into_io)?;
            let message = Message::Binary(self.out.split().freeze());
            Pin::new(&mut self.ws)
                .start_send(message)
                .map_err(into_io)?;
        }
        Pin::new(&mut self.ws).poll_flush(cx).map_err(into_io)
    }

    /// Starts the close handshake with 1003 (unsupported data); the caller then drops or shuts
    /// down the stream.
    fn refuse_text(&mut self, cx: &mut Context<'_>) {
        if let Poll::Ready(Ok(())) = Pin::new(&mut self.ws).poll_ready(cx) {
            let frame = CloseFrame {
                code: CloseCode::Unsupported,
                reason: "MQTT over WebSocket uses binary messages".into(),
            };
            if Pin::new(&mut self.ws)
                .start_send(Message::Close(Some(frame)))
                .is_ok()
            {
                let _ = Pin::new(&mut self.ws).poll_flush(cx);
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.read.is_empty() {
                let n = buf.remaining().min(this.read.len());
                buf.put_slice(&this.read[..n]);
                this.read.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                // End of stream: the close handshake is done, or the socket closed.
                None => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(data))) => this.read = data,
                Some(Ok(Message::Text(_))) => {
                    this.refuse_text(cx);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text WebSocket message; MQTT over WebSocket uses binary messages",
                    )));
                }
                // tungstenite answers pings and close frames itself; after a close frame the
                // next poll ends the stream.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_))) => {}
                Some(Ok(Message::Frame(_))) => {}
                Some(Err(e)) => return Poll::Ready(Err(into_io(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.out.len() >= MAX_OUT_MESSAGE {
            ready!(this.poll_send(cx))?;
        }
        let n = buf.len().min(MAX_OUT_MESSAGE - this.out.len());
        this.out.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.ws).poll_close(cx).map_err(into_io)
    }
}

fn into_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "WebSocket closed")
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(trusted: &[&str]) -> WsSettings {
        WsSettings {
            path: "/mqtt".into(),
            allowed_origins: vec!["https://app.example".into()],
            trusted_proxies: trusted.iter().map(|t| t.parse().expect("ip")).collect(),
            max_message: 1 << 20,
        }
    }

    const PEER: &str = "127.0.0.1:5000";

    fn upgrade(path: &str, extra: &str) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        )
    }

    fn parse_ok(text: &str, trusted: &[&str]) -> Request {
        let (len, request) = parse(
            text.as_bytes(),
            PEER.parse().expect("addr"),
            &settings(trusted),
        )
        .unwrap_or_else(|r| panic!("refused {}: {}", r.status, r.reason))
        .expect("complete");
        assert_eq!(len, text.len());
        request
    }

    fn status(text: &str) -> u16 {
        match parse(text.as_bytes(), PEER.parse().expect("addr"), &settings(&[])) {
            Err(refusal) => refusal.status,
            Ok(_) => 101,
        }
    }

    #[test]
    fn accept_key_and_subprotocol() {
        let request = parse_ok(
            &upgrade("/mqtt?x=1", "Sec-WebSocket-Protocol: mqttv3.1, mqtt\r\n"),
            &[],
        );
        assert_eq!(request.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(request.subprotocol, Some("mqtt"));
        let request = parse_ok(
            &upgrade("/mqtt", "Sec-WebSocket-Protocol: mqttv3.1\r\n"),
            &[],
        );
        assert_eq!(request.subprotocol, Some("mqttv3.1"));
        let request = parse_ok(&upgrade("/mqtt", "Sec-WebSocket-Protocol: chat\r\n"), &[]);
        assert_eq!(request.subprotocol, None);
    }

    #[test]
    fn refusals() {
        assert_eq!(status(&upgrade("/other", "")), 404);
        assert_eq!(status("GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n"), 426);
        assert_eq!(status("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"), 404);
        assert_eq!(
            status(&upgrade("/mqtt", "Origin: https://evil.example\r\n")),
            403
        );
        assert_eq!(
            status(&upgrade("/mqtt", "Origin: https://APP.example\r\n")),
            101
        );
        assert_eq!(status("POST /mqtt HTTP/1.1\r\nHost: x\r\n\r\n"), 405);
        assert_eq!(status("\x16\x03\x01\x02\x00"), 400);
        assert_eq!(
            status(&upgrade("/mqtt", "").replace("Version: 13", "Version: 8")),
            426
        );
        let partial = &upgrade("/mqtt", "")[..30];
        assert!(matches!(
            parse(
                partial.as_bytes(),
                PEER.parse().expect("addr"),
                &settings(&[])
            ),
            Ok(None)
        ));
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let xff = "X-Forwarded-For: 203.0.113.9, 198.51.100.7\r\n";
        let ip = |r: Request| r.peer.ip().to_string();
        assert_eq!(ip(parse_ok(&upgrade("/mqtt", xff), &[])), "127.0.0.1");
        assert_eq!(
            ip(parse_ok(&upgrade("/mqtt", xff), &["127.0.0.1"])),
            "198.51.100.7"
        );
        assert_eq!(
            ip(parse_ok(
                &upgrade("/mqtt", xff),
                &["127.0.0.1", "198.51.100.7"]
            )),
            "203.0.113.9"
        );
        let mapped = "[::ffff:127.0.0.1]:9".parse().expect("addr");
        assert_eq!(
            forwarded_for(
                mapped,
                &["127.0.0.1".parse().expect("ip")],
                ["[2001:db8::1]:443"].into_iter()
            ),
            Some("2001:db8::1".parse().expect("ip"))
        );
        assert_eq!(
            ip(parse_ok(
                &upgrade("/mqtt", "X-Forwarded-For: garbage\r\n"),
                &["127.0.0.1"]
            )),
            "127.0.0.1"
        );
    }
}
