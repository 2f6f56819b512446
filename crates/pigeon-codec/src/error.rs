//! Why a packet was refused, and the reason code each refusal earns (one place for the mapping).
//!
//! Each variant carries a short text naming the rule, with its normative statement where the
//! specification numbers it, e.g. "reserved flags in fixed header [MQTT-2.1.3-1]". The same codes
//! serve 3.1.1, where the broker turns them into a closed connection and a log line.

use crate::reason::ReasonCode;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes do not follow the wire format (0x81).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// Well-formed bytes that break a protocol rule (0x82).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A PUBLISH or will topic that is not a valid topic name (0x90).
    #[error("topic name invalid: {0}")]
    TopicNameInvalid(&'static str),
    /// A SUBSCRIBE or UNSUBSCRIBE filter that is not a valid topic filter (0x8F).
    #[error("topic filter invalid: {0}")]
    TopicFilterInvalid(&'static str),
    /// A PUBLISH Topic Alias of 0 (0x94). Aliases above the receiver's maximum depend on the
    /// connection and are the broker's to refuse, with the same code.
    #[error("topic alias invalid: {0}")]
    TopicAliasInvalid(&'static str),
    /// The fixed header announces more than the configured maximum (0x95); refused before the body
    /// is buffered.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max}")]
    PacketTooLarge { size: usize, max: u32 },
    /// A CONNECT with a protocol level this codec does not speak (0x84; 3.1.1 return code 1).
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    /// A CONNECT whose protocol name is neither "MQTT" nor "MQIsdp" (MQTT-3.1.2-1).
    #[error("unknown protocol name")]
    UnknownProtocolName,
}

impl DecodeError {
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_) => ReasonCode::MALFORMED_PACKET,
            DecodeError::Protocol(_) => ReasonCode::PROTOCOL_ERROR,
            DecodeError::TopicNameInvalid(_) => ReasonCode::TOPIC_NAME_INVALID,
            DecodeError::TopicFilterInvalid(_) => ReasonCode::TOPIC_FILTER_INVALID,
            DecodeError::TopicAliasInvalid(_) => ReasonCode::TOPIC_ALIAS_INVALID,
            DecodeError::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocolVersion(_) | DecodeError::UnknownProtocolName => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
        }
    }
}
