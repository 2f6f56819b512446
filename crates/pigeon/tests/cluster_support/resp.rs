//! A Redis client in a few lines of RESP: what the tests need to inject bus messages byte for
//! byte and to watch what the nodes publish, without a Redis crate in this package.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(Some(b)) => Some(b),
            _ => None,
        }
    }
}

pub struct Resp {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Resp {
    pub async fn connect(port: u16) -> std::io::Result<Resp> {
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .map_err(|_| std::io::Error::other("connect to redis timed out"))??;
        Ok(Resp {
            stream,
            buf: Vec::new(),
        })
    }

    pub async fn send(&mut self, args: &[&[u8]]) -> std::io::Result<()> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend(format!("${}\r\n", a.len()).as_bytes());
            out.extend(*a);
            out.extend(b"\r\n");
        }
        self.stream.write_all(&out).await
    }

    /// One command and its reply (5 s at most).
    pub async fn cmd(&mut self, args: &[&[u8]]) -> std::io::Result<Reply> {
        self.send(args).await?;
        self.read(Duration::from_secs(5))
            .await?
            .ok_or_else(|| std::io::Error::other("no reply from redis in 5 s"))
    }

    /// The next reply or push; `Ok(None)` when nothing came within `wait`.
    pub async fn read(&mut self, wait: Duration) -> std::io::Result<Option<Reply>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut pos = 0;
            if let Some(r) = parse(&self.buf, &mut pos) {
                self.buf.drain(..pos);
                return Ok(Some(r));
            }
            let mut chunk = [0u8; 16384];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Ok(None),
                Ok(Ok(0)) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(Ok(n)) => self.buf.extend(&chunk[..n]),
                Ok(Err(e)) => return Err(e),
            }
        }
    }
}

fn line(buf: &[u8], pos: &mut usize) -> Option<String> {
    let rest = buf.get(*pos..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    let s = String::from_utf8_lossy(&rest[..end]).into_owned();
    *pos += end + 2;
    Some(s)
}

fn parse(buf: &[u8], pos: &mut usize) -> Option<Reply> {
    let kind = *buf.get(*pos)?;
    *pos += 1;
    let head = line(buf, pos)?;
    Some(match kind {
        b'+' => Reply::Simple(head),
        b'-' => Reply::Error(head),
        b':' => Reply::Int(head.parse().ok()?),
        b'$' => {
            let n: i64 = head.parse().ok()?;
            if n < 0 {
                Reply::Bulk(None)
            } else {
                let n = n as usize;
                let data = buf.get(*pos..*pos + n)?.to_vec();
                if buf.get(*pos + n..*pos + n + 2)? != b"\r\n" {
                    return None;
                }
                *pos += n + 2;
                Reply::Bulk(Some(data))
            }
        }
        b'*' => {
            let n: i64 = head.parse().ok()?;
            if n < 0 {
                Reply::Array(None)
            } else {
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(parse(buf, pos)?);
                }
                Reply::Array(Some(items))
            }
        }
        _ => return None,
    })
}

/// A connection in pub/sub mode that records what is published on the channels matching a pattern.
pub struct Watch {
    conn: Resp,
}

impl Watch {
    pub async fn psubscribe(port: u16, pattern: &str) -> Watch {
        let mut conn = Resp::connect(port).await.expect("connect to redis");
        conn.send(&[b"PSUBSCRIBE", pattern.as_bytes()])
            .await
            .expect("PSUBSCRIBE");
        conn.read(Duration::from_secs(5))
            .await
            .expect("PSUBSCRIBE reply")
            .expect("PSUBSCRIBE confirmed");
        Watch { conn }
    }

    /// (channel, message) pairs published during the next `period` (nodes' heartbeats keep the
    /// channel busy, so this does not wait for silence).
    pub async fn collect_for(&mut self, period: Duration) -> Vec<(Vec<u8>, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + period;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return got;
            }
            match self.conn.read(left).await {
                Ok(Some(Reply::Array(Some(items)))) => {
                    if let [_, _, channel, message] = &items[..] {
                        if let (Some(c), Some(m)) = (channel.bytes(), message.bytes()) {
                            got.push((c.to_vec(), m.to_vec()));
                        }
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return got,
            }
        }
    }
}
