//! Decoding from a growing read buffer.

use crate::error::DecodeError;
use crate::packet::{Packet, Protocol};
use bytes::BytesMut;

/// Decodes packets for one connection. It learns the protocol level from CONNECT (server side)
/// or is told it (client side), and refuses a packet larger than `max_packet_size` from its fixed
/// header alone.
#[derive(Debug, Clone)]
pub struct Decoder {
    protocol: Option<Protocol>,
    max_packet_size: u32,
}

impl Decoder {
    /// Server side: the protocol is not known until CONNECT, the only packet accepted before it.
    pub fn new(max_packet_size: u32) -> Decoder {
        Decoder { protocol: None, max_packet_size }
    }

    /// Client side, or a server that already read CONNECT.
    pub fn with_protocol(protocol: Protocol, max_packet_size: u32) -> Decoder {
        Decoder { protocol: Some(protocol), max_packet_size }
    }

    pub fn protocol(&self) -> Option<Protocol> {
        self.protocol
    }

    pub fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    pub fn set_max_packet_size(&mut self, max: u32) {
        self.max_packet_size = max;
    }

    /// Takes one whole packet off the front of `buf`. `Ok(None)`: not enough bytes yet (nothing is
    /// consumed). `Err`: the connection must close; with 5.0, after a DISCONNECT carrying
    /// `err.reason_code()`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let _ = buf;
        Err(DecodeError::Malformed("decoder not written yet"))
    }
}
