//! Arbitrary bytes into a `Decoder`: it must never panic, and whatever it accepts must survive
//! encode-then-decode unchanged.
//!
//! The first input byte picks the setting: bits 0-1 the level (0: unknown, as a server before
//! CONNECT; 1: 3.1; 2: 3.1.1; 3: 5.0), bits 2-3 the maximum packet size. The rest is the stream.
//! The first packet is also decoded from a few prefixes of the stream, which must give either
//! "need more" or the same packet, never a different answer.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pigeon_codec::{encode, encoded_len, Decoder, Packet, Protocol};

fuzz_target!(|data: &[u8]| {
    let Some((&setting, stream)) = data.split_first() else {
        return;
    };
    let max = match (setting >> 2) & 0b11 {
        0 => 16,
        1 => 300,
        2 => 4096,
        _ => u32::MAX,
    };
    let decoder = match setting & 0b11 {
        0 => Decoder::new(max),
        1 => Decoder::with_protocol(Protocol::V3_1, max),
        2 => Decoder::with_protocol(Protocol::V3_1_1, max),
        _ => Decoder::with_protocol(Protocol::V5, max),
    };

    let mut first = true;
    let mut running = decoder.clone();
    let mut buf = BytesMut::from(stream);
    loop {
        let before = buf.clone();
        let protocol_before = running.protocol();
        match running.decode(&mut buf) {
            Ok(Some(packet)) => {
                let used = before.len() - buf.len();
                if first {
                    check_prefixes(&decoder, &before[..used], &packet);
                }
                let protocol = match &packet {
                    Packet::Connect(c) => c.protocol,
                    _ => protocol_before.expect("only CONNECT decodes before the level is known"),
                };
                check_round_trip(&packet, protocol);
            }
            Ok(None) => {
                assert_eq!(buf, before, "Ok(None) consumed bytes");
                break;
            }
            Err(_) => break,
        }
        first = false;
    }
});

/// Any prefix of a packet's bytes is either not enough or the same packet.
fn check_prefixes(decoder: &Decoder, bytes: &[u8], packet: &Packet) {
    let n = bytes.len();
    for cut in [1, n / 3, n / 2, n.saturating_sub(1)] {
        if cut == 0 || cut >= n {
            continue;
        }
        let mut d = decoder.clone();
        let mut prefix = BytesMut::from(&bytes[..cut]);
        match d.decode(&mut prefix) {
            Ok(None) => assert_eq!(prefix.len(), cut, "Ok(None) consumed bytes"),
            other => panic!("prefix of {cut}/{n} bytes of {packet:?} gave {other:?}"),
        }
    }
}

fn check_round_trip(packet: &Packet, protocol: Protocol) {
    let mut buf = BytesMut::new();
    encode(packet, protocol, &mut buf);
    assert_eq!(
        buf.len(),
        encoded_len(packet, protocol),
        "encoded_len of {packet:?}"
    );
    let mut decoder = match packet {
        Packet::Connect(_) => Decoder::new(u32::MAX),
        _ => Decoder::with_protocol(protocol, u32::MAX),
    };
    let again = decoder.decode(&mut buf);
    assert_eq!(
        again.as_ref(),
        Ok(&Some(packet.clone())),
        "re-encoded {packet:?} at {protocol:?}"
    );
    assert!(buf.is_empty(), "bytes left after the re-encoded packet");
}
