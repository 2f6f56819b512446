//! `pigeon bench relay`: the ceiling brokers are measured against. It serves `--addr` until
//! killed, answers CONNECT, SUBSCRIBE and PINGREQ with canned acknowledgements (MQTT 3.1.1) and
//! PUBACKs QoS 1 PUBLISH packets, and forwards every PUBLISH frame, unchanged and without
//! looking at its topic, to every connection that has subscribed to anything. No routing, no
//! sessions, no queues beyond one bounded channel per subscriber, which holds publishers back
//! when full. Right for `fanin` and `fanout`, where every subscriber wants every message; not for
//! `p2p`.
//!
//! Frames are found by their fixed header alone, and a run of PUBLISH frames read together is
//! forwarded as one slice of the read buffer (shared, not copied, between subscribers).

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Chunks waiting for one connection's writer: enough to keep it busy, few enough that a slow
/// subscriber stops the publishers (as TCP between two hosts would).
const CHANNEL: usize = 64;
const READ_BUF: usize = 64 * 1024;

type Subscribers = Arc<Mutex<Arc<Vec<mpsc::Sender<Bytes>>>>>;

/// Serves until the process is killed.
pub(crate) async fn run(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    eprintln!("pigeon bench relay: listening on {addr}");
    let subscribers = Subscribers::default();
    loop {
        let (socket, _) = listener.accept().await.context("accepting")?;
        socket.set_nodelay(true)?;
        tokio::spawn(serve(socket, Arc::clone(&subscribers)));
    }
}

/// One fixed header: packet type, flags, header length and remaining length. `None` until the
/// header is complete.
fn header(buf: &[u8]) -> Option<(u8, u8, usize, usize)> {
    let first = *buf.first()?;
    let mut len = 0usize;
    for i in 0..4 {
        let b = *buf.get(1 + i)?;
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((first >> 4, first & 0x0f, 2 + i, len));
        }
    }
    Some((0, 0, 5, usize::MAX)) // malformed: more than four length bytes
}

async fn serve(socket: TcpStream, subscribers: Subscribers) {
    let (mut reader, mut writer) = socket.into_split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(CHANNEL);
    let writing = tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut buf = BytesMut::with_capacity(READ_BUF);
    let mut runs = Vec::new();
    'read: loop {
        if buf.capacity() - buf.len() < READ_BUF / 4 {
            buf.reserve(READ_BUF);
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let mut replies = BytesMut::new();
        let mut at = 0;
        let mut closing = false;
        runs.clear();
        while let Some((kind, flags, head, len)) = header(&buf[at..]) {
            if len == usize::MAX {
                break 'read;
            }
            let end = at + head + len;
            if end > buf.len() {
                break;
            }
            let body = &buf[at + head..end];
            match kind {
                // PUBLISH: PUBACK at QoS 1 (the packet id follows the topic), then forward.
                3 => {
                    if (flags >> 1) & 3 == 1 && body.len() >= 2 {
                        let topic = usize::from(u16::from_be_bytes([body[0], body[1]]));
                        if let Some(id) = body.get(2 + topic..4 + topic) {
                            replies.extend_from_slice(&[0x40, 2, id[0], id[1]]);
                        }
                    }
                    match runs.last_mut() {
                        Some((_, run_end)) if *run_end == at => *run_end = end,
                        _ => runs.push((at, end)),
                    }
                }
                1 => replies.extend_from_slice(&[0x20, 2, 0, 0]),
                // SUBSCRIBE: grant each filter the QoS it asks for; from now on, a subscriber.
                8 if body.len() >= 2 => {
                    let mut granted = Vec::new();
                    let mut i = 2;
                    while i + 2 <= body.len() {
                        let n = usize::from(u16::from_be_bytes([body[i], body[i + 1]]));
                        i += 2 + n;
                        granted.push(body.get(i).map_or(0, |o| o & 3));
                        i += 1;
                    }
                    replies.extend_from_slice(&[0x90, 2 + granted.len() as u8, body[0], body[1]]);
                    replies.extend_from_slice(&granted);
                    let mut list = subscribers
                        .lock()
                        .expect("never poisoned: no panics inside");
                    let mut more = Vec::clone(&list);
                    more.push(tx.clone());
                    *list = Arc::new(more);
                }
                12 => replies.extend_from_slice(&[0xd0, 0]),
                14 => closing = true,
                // Subscribers' PUBACKs and anything else: nothing to do.
                _ => {}
            }
            at = end;
        }
        let chunk = buf.split_to(at).freeze();
        if !runs.is_empty() {
            let targets = Arc::clone(&subscribers.lock().expect("never poisoned"));
            for &(start, end) in &runs {
                let frames = chunk.slice(start..end);
                for target in targets.iter() {
                    // A gone subscriber is skipped; a full one holds this publisher back.
                    let _ = target.send(frames.clone()).await;
                }
            }
        }
        if !replies.is_empty() && tx.send(replies.freeze()).await.is_err() {
            break;
        }
        if closing {
            break;
        }
    }
    drop(tx);
    let _ = writing.await;
}
