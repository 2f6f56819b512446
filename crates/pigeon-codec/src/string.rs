//! `ByteStr`: an MQTT UTF-8 string held as a `Bytes` view, checked once when it is made.
//!
//! Invariant: the bytes are valid UTF-8 with no U+0000 (MQTT-1.5.4-1, MQTT-1.5.4-2). Cloning is a
//! reference-count increment, so topics and client ids travel through the broker without copies.
//! This is the one module allowed `unsafe`: `as_str` skips re-validating what `from_utf8` checked.

use bytes::Bytes;
use std::fmt;
use std::ops::Deref;

#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteStr(Bytes);

/// Hashes as the `str` it holds: `Borrow<str>` promises that, and maps keyed by `ByteStr` (the
/// session registry, a session's subscriptions) are searched with `&str`. The derived hash went
/// through `[u8]`, which hashes differently, and such look-ups found nothing.
impl std::hash::Hash for ByteStr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl ByteStr {
    /// Checks `bytes` against the MQTT string rules; `None` if they break one.
    pub fn from_utf8(bytes: Bytes) -> Option<ByteStr> {
        // U+0000 is the byte 0 in UTF-8 and no other character's encoding holds a 0 byte, so a
        // byte scan finds it. A fold without early exit vectorizes; for strings as short as
        // topics and property values it beats memchr's set-up (seen in the decode profile).
        if bytes.iter().fold(false, |nul, &b| nul | (b == 0)) {
            return None;
        }
        std::str::from_utf8(&bytes).ok()?;
        Some(ByteStr(bytes))
    }

    pub fn from_static(s: &'static str) -> ByteStr {
        ByteStr(Bytes::from_static(s.as_bytes()))
    }

    #[allow(unsafe_code)]
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checks (or starts from) valid UTF-8, and `Bytes` is immutable,
        // so the check is not repeated on every access (topics are read on every routed message).
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The string in an allocation of its own, with its reference count (one small block),
    /// when it is short (up to 47 bytes); as it is otherwise. A view keeps the whole buffer it
    /// was read from alive: a client id kept for a connection's life would keep its CONNECT
    /// packet and the packet buffer's shared header, two blocks, for as long.
    pub fn compact(&self) -> ByteStr {
        fn inline<const N: usize>(s: &[u8]) -> Bytes {
            let mut bytes = [0; N];
            bytes[..s.len()].copy_from_slice(s);
            Bytes::from_owner(Inline {
                len: s.len() as u8,
                bytes,
            })
        }
        let s = self.0.as_ref();
        ByteStr(match s.len() {
            0 => Bytes::new(),
            1..=15 => inline::<15>(s),
            16..=31 => inline::<31>(s),
            32..=47 => inline::<47>(s),
            _ => return self.clone(),
        })
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

/// A short string's bytes, stored inline (`ByteStr::compact`). Sized so that with the reference
/// count `Bytes` adds it fills a malloc block of 32, 48 or 64 bytes.
struct Inline<const N: usize> {
    len: u8,
    bytes: [u8; N],
}

impl<const N: usize> AsRef<[u8]> for Inline<N> {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl From<&str> for ByteStr {
    /// Copies `s`. A string with U+0000 keeps it; the encoder writes it as it is, so only build
    /// `ByteStr`s this way from text the program controls.
    fn from(s: &str) -> ByteStr {
        ByteStr(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for ByteStr {
    fn from(s: String) -> ByteStr {
        ByteStr(Bytes::from(s))
    }
}

impl Deref for ByteStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for ByteStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for ByteStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ByteStr;
    use bytes::Bytes;
    use std::collections::HashMap;

    #[test]
    fn a_compact_copy_holds_the_same_string_and_lets_the_buffer_go() {
        let packet = Bytes::from(
            b"..client-0123456789-abcdefghijklmnopqrstuvwxyz-0123456789-0123456789".to_vec(),
        );
        for len in [0, 1, 15, 16, 31, 32, 47, 48, 56] {
            let view = ByteStr::from_utf8(packet.slice(2..2 + len)).unwrap();
            let compact = view.compact();
            assert_eq!(compact, view);
            assert_eq!(compact.as_str(), &view[..]);
            let shares_the_packet = compact.as_bytes().as_ptr() == view.as_bytes().as_ptr();
            // Up to 47 bytes the copy is its own; longer strings stay views.
            assert_eq!(shares_the_packet, len > 47, "length {len}");
        }
    }

    #[test]
    fn a_map_keyed_by_byte_str_is_searched_with_str() {
        let mut map = HashMap::new();
        map.insert(ByteStr::from("client-1"), 1);
        assert_eq!(map.get("client-1"), Some(&1));
        assert_eq!(map.remove("client-1"), Some(1));
    }
}
