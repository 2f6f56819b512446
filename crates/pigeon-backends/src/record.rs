//! The byte layout of what the embedded store keeps.
//!
//! A message is a small header (format version, flags, expiry as wall-clock milliseconds, the
//! publisher's client id) followed by the message as an MQTT 5.0 PUBLISH packet, so every
//! property is kept by the codec that already reads and writes them. Keys start with the client
//! id behind a two-byte length, so one session's rows form one contiguous key range.

use bytes::{Buf, BufMut, BytesMut};
use pigeon_codec::{
    encode, ByteStr, Decoder, Packet, Protocol, Publish, QoS, RetainHandling, SubscriptionOptions,
};
use pigeon_core::session::OutStage;
use pigeon_core::store::{instant_to_ms, ms_to_instant, QueueEntry, SessionRecord};
use pigeon_core::Message;
use std::sync::Arc;

const VERSION: u8 = 1;

/// `len(client_id) as u16 BE ++ client_id`.
pub(crate) fn client_prefix(client_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + client_id.len());
    k.put_u16(client_id.len() as u16);
    k.extend_from_slice(client_id.as_bytes());
    k
}

/// The smallest key greater than every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xFF: no upper bound exists among finite keys of this shape; a longer max works.
    vec![u8::MAX; prefix.len() + 1]
}

/// Splits a key made by `client_prefix(..) ++ rest` into the client id and the rest.
pub(crate) fn split_client_key(key: &[u8]) -> Option<(ByteStr, &[u8])> {
    let mut k = key;
    if k.len() < 2 {
        return None;
    }
    let n = usize::from(k.get_u16());
    if k.len() < n {
        return None;
    }
    let client = ByteStr::from_utf8(bytes::Bytes::copy_from_slice(&k[..n]))?;
    Some((client, &k[n..]))
}

pub(crate) fn encode_message(m: &Message, out: &mut Vec<u8>) {
    out.push(VERSION);
    let mut flags = m.retain as u8 | (m.qos as u8) << 1;
    if m.expires_at.is_some() {
        flags |= 0b1000;
    }
    if m.origin.is_some() {
        flags |= 0b1_0000;
    }
    out.push(flags);
    if let Some(at) = m.expires_at {
        out.put_u64(instant_to_ms(at));
    }
    if let Some(origin) = &m.origin {
        out.put_u16(origin.len() as u16);
        out.extend_from_slice(origin.as_bytes());
    }
    let publish = Publish {
        dup: false,
        qos: m.qos,
        retain: m.retain,
        topic: m.topic.clone(),
        packet_id: if m.qos == QoS::AtMostOnce { 0 } else { 1 },
        properties: m.properties.clone(),
        payload: m.payload.clone(),
    };
    let mut buf = BytesMut::new();
    encode(&Packet::Publish(publish), Protocol::V5, &mut buf);
    out.extend_from_slice(&buf);
}

pub(crate) fn decode_message(mut b: &[u8]) -> Result<Message, String> {
    if b.len() < 2 || b[0] != VERSION {
        return Err("unknown message format".into());
    }
    let flags = b[1];
    b = &b[2..];
    let expires_ms = if flags & 0b1000 != 0 {
        if b.len() < 8 {
            return Err("truncated expiry".into());
        }
        Some(b.get_u64())
    } else {
        None
    };
    let origin = if flags & 0b1_0000 != 0 {
        if b.len() < 2 {
            return Err("truncated origin".into());
        }
        let n = usize::from(b.get_u16());
        if b.len() < n {
            return Err("truncated origin".into());
        }
        let o = ByteStr::from_utf8(bytes::Bytes::copy_from_slice(&b[..n]))
            .ok_or("origin is not UTF-8")?;
        b = &b[n..];
        Some(o)
    } else {
        None
    };
    let mut buf = BytesMut::from(b);
    let packet = Decoder::with_protocol(Protocol::V5, u32::MAX)
        .decode(&mut buf)
        .map_err(|e| e.to_string())?
        .ok_or("truncated PUBLISH")?;
    let Packet::Publish(p) = packet else {
        return Err("not a PUBLISH".into());
    };
    let mut m = Message::new(p.topic, p.payload, p.qos, p.retain, p.properties, origin);
    m.expires_at = expires_ms.map(ms_to_instant);
    Ok(m)
}

pub(crate) fn encode_entry(e: &QueueEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + e.message.payload.len());
    out.push(VERSION);
    out.push(e.qos as u8);
    out.push(e.retain as u8);
    out.put_u16(e.packet_id);
    out.push(match e.stage {
        None => 0,
        Some(OutStage::Published) => 1,
        Some(OutStage::Released) => 2,
    });
    out.put_u16(e.subscription_ids.len() as u16);
    for id in &e.subscription_ids {
        out.put_u32(*id);
    }
    encode_message(&e.message, &mut out);
    out
}

pub(crate) fn decode_entry(mut b: &[u8]) -> Result<QueueEntry, String> {
    if b.len() < 8 || b[0] != VERSION {
        return Err("unknown queue entry format".into());
    }
    let qos = QoS::from_u8(b[1]).ok_or("bad QoS")?;
    let retain = b[2] != 0;
    b = &b[3..];
    let packet_id = b.get_u16();
    let stage = match b.get_u8() {
        0 => None,
        1 => Some(OutStage::Published),
        2 => Some(OutStage::Released),
        _ => return Err("bad stage".into()),
    };
    let n = usize::from(b.get_u16());
    if b.len() < n * 4 {
        return Err("truncated subscription ids".into());
    }
    let subscription_ids = (0..n).map(|_| b.get_u32()).collect();
    let message = Arc::new(decode_message(b)?);
    Ok(QueueEntry {
        message,
        qos,
        retain,
        subscription_ids,
        packet_id,
        stage,
    })
}

pub(crate) fn encode_session(r: &SessionRecord) -> Vec<u8> {
    let mut out = vec![VERSION];
    out.put_u32(r.expiry_interval);
    match r.disconnected_at_ms {
        Some(ms) => {
            out.push(1);
            out.put_u64(ms);
        }
        None => out.push(0),
    }
    match &r.will {
        Some((m, delay)) => {
            out.push(1);
            out.put_u32(*delay);
            encode_message(m, &mut out);
        }
        None => out.push(0),
    }
    out
}

pub(crate) fn decode_session(mut b: &[u8]) -> Result<SessionRecord, String> {
    if b.len() < 6 || b[0] != VERSION {
        return Err("unknown session format".into());
    }
    b = &b[1..];
    let expiry_interval = b.get_u32();
    let disconnected_at_ms = match b.get_u8() {
        0 => None,
        _ if b.len() >= 8 => Some(b.get_u64()),
        _ => return Err("truncated disconnect time".into()),
    };
    let will = match b.first() {
        Some(1) if b.len() >= 5 => {
            b.advance(1);
            let delay = b.get_u32();
            Some((Arc::new(decode_message(b)?), delay))
        }
        Some(0) => None,
        _ => return Err("bad will flag".into()),
    };
    Ok(SessionRecord {
        expiry_interval,
        disconnected_at_ms,
        will,
    })
}

pub(crate) fn encode_subscription(options: &SubscriptionOptions, id: Option<u32>) -> Vec<u8> {
    let byte = options.qos as u8
        | (options.no_local as u8) << 2
        | (options.retain_as_published as u8) << 3
        | (options.retain_handling as u8) << 4;
    let mut out = vec![VERSION, byte];
    if let Some(id) = id {
        out.put_u32(id);
    }
    out
}

pub(crate) fn decode_subscription(b: &[u8]) -> Result<(SubscriptionOptions, Option<u32>), String> {
    if b.len() < 2 || b[0] != VERSION {
        return Err("unknown subscription format".into());
    }
    let byte = b[1];
    let options = SubscriptionOptions {
        qos: QoS::from_u8(byte & 0b11).ok_or("bad QoS")?,
        no_local: byte & 0b100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling: match (byte >> 4) & 0b11 {
            0 => RetainHandling::OnSubscribe,
            1 => RetainHandling::OnNewSubscribe,
            _ => RetainHandling::Never,
        },
    };
    let id = match &b[2..] {
        [] => None,
        [a, b, c, d] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => return Err("bad subscription identifier".into()),
    };
    Ok((options, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use pigeon_codec::PublishProperties;

    #[tokio::test]
    async fn entries_round_trip_with_properties_and_expiry() {
        let props = PublishProperties {
            user_properties: vec![(ByteStr::from("k"), ByteStr::from("v"))],
            content_type: Some(ByteStr::from("text/plain")),
            message_expiry_interval: Some(30),
            ..Default::default()
        };
        let m = Message::new(
            ByteStr::from("a/b"),
            Bytes::from_static(b"\x00\xffpayload"),
            QoS::ExactlyOnce,
            true,
            props,
            Some(ByteStr::from("pub-1")),
        );
        let e = QueueEntry {
            message: Arc::new(m),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![3, 9],
            packet_id: 77,
            stage: Some(OutStage::Released),
        };
        let back = decode_entry(&encode_entry(&e)).expect("decodes");
        assert_eq!(back.message.topic, e.message.topic);
        assert_eq!(back.message.payload, e.message.payload);
        assert_eq!(back.message.properties, e.message.properties);
        assert_eq!(back.message.origin, e.message.origin);
        assert_eq!(
            (back.qos, back.retain, back.packet_id, back.stage),
            (QoS::AtLeastOnce, false, 77, Some(OutStage::Released))
        );
        assert_eq!(back.subscription_ids, vec![3, 9]);
        let left = back
            .message
            .remaining_expiry(tokio::time::Instant::now())
            .expect("has expiry");
        assert!((29..=30).contains(&left), "{left}");
    }

    #[test]
    fn prefixes_bound_exactly_one_client() {
        let a = client_prefix("ab");
        let end = prefix_end(&a);
        let mut inside = a.clone();
        inside.extend_from_slice(b"\xff\xff");
        assert!(inside < end && a < end);
        let other = client_prefix("abc");
        assert!(
            !(other >= a && other < end),
            "a longer id must not fall inside the range"
        );
        assert_eq!(
            split_client_key(&inside).map(|(c, r)| (c.to_string(), r.to_vec())),
            Some(("ab".into(), vec![0xff, 0xff]))
        );
    }
}
