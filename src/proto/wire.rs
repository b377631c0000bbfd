//! Datagram format (proto-spec.md §2).
//!
//! Every message type has exactly one valid length, so the length table is checked before any
//! decoding, and a datagram that passes it can be decoded without further bounds surprises.
//! Bodies are postcard encodings of structs made only of `u8` and `[u8; N]`; multi-byte integers
//! go through [`le`] so they stay fixed-width little-endian instead of postcard varints.
//!
//! Nothing here panics on any input: all slicing is checked, and errors are values.

use serde::{Deserialize, Serialize};

use super::identity::{self, Identity};

/// `"LU"`: cheap rejection of stray traffic before anything else is looked at.
pub const MAGIC: [u8; 2] = [0x4C, 0x55];
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 4;
pub const TAG_LEN: usize = 16;
/// The largest datagram of version 1 (PROOF_ID). Receive buffers are larger so that an
/// oversize datagram is seen as oversize rather than silently truncated to a valid length.
pub const MAX_DATAGRAM: usize = 233;
/// The largest server-to-client datagram (CHALLENGE): what a server's reply buffers hold.
pub const MAX_REPLY: usize = 63;
/// Bit 7 of the type byte marks server-to-client messages, which a server never answers.
pub const SERVER_TO_CLIENT: u8 = 0x80;

/// A PROOF's body: the fields a PROOF_ID's body starts with.
const PROOF_BODY: usize = 69;

/// The heartbeat flag that gives the seat back.
pub const FLAG_RELEASE: u8 = 0x01;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsgType {
    Hello = 0x01,
    Proof = 0x02,
    Heartbeat = 0x03,
    /// A PROOF that also states who holds the seat (proto-spec.md §2).
    ProofId = 0x04,
    Challenge = 0x81,
    Grant = 0x82,
    Deny = 0x83,
    Ack = 0x84,
    Stale = 0x85,
    Unknown = 0x86,
}

impl MsgType {
    /// Every type, client-to-server first (proto-spec.md §2's table order).
    pub const ALL: [MsgType; 10] = [
        Self::Hello,
        Self::Proof,
        Self::Heartbeat,
        Self::ProofId,
        Self::Challenge,
        Self::Grant,
        Self::Deny,
        Self::Ack,
        Self::Stale,
        Self::Unknown,
    ];

    /// A `match`, not a search of [`ALL`](Self::ALL): every datagram's decode starts here.
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0x01 => Self::Hello,
            0x02 => Self::Proof,
            0x03 => Self::Heartbeat,
            0x04 => Self::ProofId,
            0x81 => Self::Challenge,
            0x82 => Self::Grant,
            0x83 => Self::Deny,
            0x84 => Self::Ack,
            0x85 => Self::Stale,
            0x86 => Self::Unknown,
            _ => return None,
        })
    }

    /// `(body, padding, tag)` lengths; the header is always 4 bytes.
    pub const fn layout(self) -> (usize, usize, usize) {
        match self {
            Self::Hello => (16, 44, 0),
            Self::Proof => (PROOF_BODY, 0, TAG_LEN),
            Self::Heartbeat => (21, 7, TAG_LEN),
            Self::ProofId => (PROOF_BODY + identity::WIRE_LEN, 0, TAG_LEN),
            Self::Challenge => (59, 0, 0),
            Self::Grant => (24, 0, TAG_LEN),
            Self::Deny => (13, 0, TAG_LEN),
            Self::Ack => (25, 0, TAG_LEN),
            Self::Stale => (12, 0, 0),
            Self::Unknown => (16, 0, 0),
        }
    }

    /// The one valid length of a datagram of this type.
    pub const fn wire_len(self) -> usize {
        let (b, p, t) = self.layout();
        HEADER_LEN + b + p + t
    }

    pub const fn is_server_to_client(self) -> bool {
        (self as u8) & SERVER_TO_CLIENT != 0
    }
}

/// Why a datagram was dropped. Each cause has its own counter on the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("datagram shorter than a header, or not lic-udp (bad magic)")]
    NotLicUdp,
    #[error("unsupported protocol version {0}")]
    Version(u8),
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    #[error("wrong length for its type")]
    Length,
    #[error("body does not decode, or nonzero padding or flags")]
    Body,
}

/// Fixed-width little-endian integers for serde, so postcard writes raw bytes, not varints.
pub mod le {
    macro_rules! le_int {
        ($name:ident, $t:ty, $n:expr) => {
            pub mod $name {
                use serde::{Deserialize, Deserializer, Serialize, Serializer};
                pub fn serialize<S: Serializer>(v: &$t, s: S) -> Result<S::Ok, S::Error> {
                    v.to_le_bytes().serialize(s)
                }
                pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
                    <[u8; $n]>::deserialize(d).map(<$t>::from_le_bytes)
                }
            }
        };
    }
    le_int!(u16, u16, 2);
    le_int!(u32, u32, 4);
    le_int!(u64, u64, 8);
}

/// Server cookie: `ts ‖ kid ‖ mac[16]` (proto-spec.md §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cookie {
    #[serde(with = "le::u32")]
    pub ts: u32,
    pub kid: u8,
    pub mac: [u8; 16],
}

impl Cookie {
    pub const LEN: usize = 21;

    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..4].copy_from_slice(&self.ts.to_le_bytes());
        b[4] = self.kid;
        b[5..].copy_from_slice(&self.mac);
        b
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub client_nonce: [u8; 16],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub client_nonce: [u8; 16],
    pub cookie: Cookie,
    pub server_salt: [u8; 16],
    #[serde(with = "le::u32")]
    pub kdf_m_kib: u32,
    pub kdf_t: u8,
    pub kdf_p: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub license_id: [u8; 8],
    pub instance_id: [u8; 16],
    pub client_nonce: [u8; 16],
    pub cookie: Cookie,
    #[serde(with = "le::u64")]
    pub prev_lease_id: u64,
}

/// A PROOF and the identity block it carries (proto-spec.md §2). `who` is known to be a valid
/// block ([`Identity::from_wire`]) once decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProofId {
    pub proof: Proof,
    pub who: [u8; identity::WIRE_LEN],
}

impl ProofId {
    pub fn new(proof: Proof, who: &Identity) -> Self {
        Self { proof, who: who.to_wire() }
    }

    pub fn identity(&self) -> Identity {
        Identity::from_wire(&self.who).unwrap_or_default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    #[serde(with = "le::u64")]
    pub lease_id: u64,
    #[serde(with = "le::u32")]
    pub epoch: u32,
    #[serde(with = "le::u32")]
    pub ttl_ms: u32,
    #[serde(with = "le::u32")]
    pub heartbeat_ms: u32,
    #[serde(with = "le::u16")]
    pub used: u16,
    #[serde(with = "le::u16")]
    pub seats: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    Full = 1,
    Busy = 2,
    Revoked = 3,
    Expired = 4,
    Unavailable = 5,
}

impl DenyReason {
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Full,
            2 => Self::Busy,
            3 => Self::Revoked,
            4 => Self::Expired,
            5 => Self::Unavailable,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deny {
    #[serde(with = "le::u32")]
    pub epoch: u32,
    pub reason: u8,
    #[serde(with = "le::u32")]
    pub retry_after_ms: u32,
    #[serde(with = "le::u16")]
    pub used: u16,
    #[serde(with = "le::u16")]
    pub seats: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    #[serde(with = "le::u64")]
    pub lease_id: u64,
    #[serde(with = "le::u32")]
    pub epoch: u32,
    #[serde(with = "le::u64")]
    pub seq: u64,
    pub flags: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckStatus {
    Ok = 0,
    Released = 1,
    Revoked = 2,
    Expired = 3,
}

impl AckStatus {
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Ok,
            1 => Self::Released,
            2 => Self::Revoked,
            3 => Self::Expired,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    #[serde(with = "le::u64")]
    pub lease_id: u64,
    #[serde(with = "le::u32")]
    pub epoch: u32,
    #[serde(with = "le::u64")]
    pub seq: u64,
    pub status: u8,
    #[serde(with = "le::u32")]
    pub ttl_ms: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stale {
    #[serde(with = "le::u64")]
    pub lease_id: u64,
    #[serde(with = "le::u32")]
    pub epoch: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unknown {
    pub client_nonce: [u8; 16],
}

/// A decoded datagram of any type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    Proof(Proof),
    Heartbeat(Heartbeat),
    ProofId(ProofId),
    Challenge(Challenge),
    Grant(Grant),
    Deny(Deny),
    Ack(Ack),
    Stale(Stale),
    Unknown(Unknown),
}

impl Message {
    pub fn msg_type(&self) -> MsgType {
        match self {
            Self::Hello(_) => MsgType::Hello,
            Self::Proof(_) => MsgType::Proof,
            Self::Heartbeat(_) => MsgType::Heartbeat,
            Self::ProofId(_) => MsgType::ProofId,
            Self::Challenge(_) => MsgType::Challenge,
            Self::Grant(_) => MsgType::Grant,
            Self::Deny(_) => MsgType::Deny,
            Self::Ack(_) => MsgType::Ack,
            Self::Stale(_) => MsgType::Stale,
            Self::Unknown(_) => MsgType::Unknown,
        }
    }
}

/// A datagram that passed every structural check. Its tag, if the type has one, is *not yet
/// verified*: the caller picks the key, then calls `crate::proto::keys::MacKey::verify`.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    pub msg: Message,
    /// Every byte the tag covers (header and body, exactly as received).
    pub signed: &'a [u8],
    /// Empty for untagged types.
    pub tag: &'a [u8],
}

/// Reads only the header: the cheapest rejection, used before any other work.
pub fn peek_type(datagram: &[u8]) -> Result<MsgType, DecodeError> {
    let header = datagram.get(..HEADER_LEN).ok_or(DecodeError::NotLicUdp)?;
    if header[..2] != MAGIC {
        return Err(DecodeError::NotLicUdp);
    }
    if header[2] != VERSION {
        return Err(DecodeError::Version(header[2]));
    }
    let ty = MsgType::from_byte(header[3]).ok_or(DecodeError::UnknownType(header[3]))?;
    if datagram.len() != ty.wire_len() {
        return Err(DecodeError::Length);
    }
    Ok(ty)
}

/// The `lease_id` of a datagram that has a heartbeat's header and length, without decoding or
/// checking anything else: only a hint, for [`ServerCore::warm`](crate::proto::server::ServerCore::warm).
pub fn peek_lease_id(datagram: &[u8]) -> Option<u64> {
    if peek_type(datagram).ok()? != MsgType::Heartbeat {
        return None;
    }
    let bytes = datagram.get(HEADER_LEN..HEADER_LEN + 8)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

fn body<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, DecodeError> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((v, [])) => Ok(v),
        _ => Err(DecodeError::Body),
    }
}

/// Decodes and structurally validates one datagram (proto-spec.md §2).
pub fn decode(datagram: &[u8]) -> Result<Frame<'_>, DecodeError> {
    let ty = peek_type(datagram)?;
    let (b, p, t) = ty.layout();
    let body_end = HEADER_LEN + b;
    let signed_end = body_end + p;
    let body_bytes = datagram.get(HEADER_LEN..body_end).ok_or(DecodeError::Length)?;
    let pad = datagram.get(body_end..signed_end).ok_or(DecodeError::Length)?;
    if pad.iter().any(|&x| x != 0) {
        return Err(DecodeError::Body);
    }
    let signed = datagram.get(..signed_end).ok_or(DecodeError::Length)?;
    let tag = datagram.get(signed_end..signed_end + t).ok_or(DecodeError::Length)?;
    let msg = match ty {
        MsgType::Hello => Message::Hello(body(body_bytes)?),
        MsgType::Proof => Message::Proof(body(body_bytes)?),
        MsgType::Heartbeat => {
            let hb: Heartbeat = body(body_bytes)?;
            if hb.flags & !FLAG_RELEASE != 0 {
                return Err(DecodeError::Body);
            }
            Message::Heartbeat(hb)
        }
        MsgType::ProofId => {
            let (proof_bytes, who) = body_bytes.split_at_checked(PROOF_BODY).ok_or(DecodeError::Length)?;
            let who: [u8; identity::WIRE_LEN] = who.try_into().map_err(|_| DecodeError::Length)?;
            if Identity::from_wire(&who).is_none() {
                return Err(DecodeError::Body);
            }
            Message::ProofId(ProofId { proof: body(proof_bytes)?, who })
        }
        MsgType::Challenge => Message::Challenge(body(body_bytes)?),
        MsgType::Grant => Message::Grant(body(body_bytes)?),
        MsgType::Deny => Message::Deny(body(body_bytes)?),
        MsgType::Ack => Message::Ack(body(body_bytes)?),
        MsgType::Stale => Message::Stale(body(body_bytes)?),
        MsgType::Unknown => Message::Unknown(body(body_bytes)?),
    };
    Ok(Frame { msg, signed, tag })
}

/// Writes the header, body and padding of `msg` into `out` and returns the number of bytes
/// the tag must cover. The caller appends the tag (if the type has one) at that offset.
///
/// `out` must hold the message: [`MAX_DATAGRAM`] bytes for any, [`MAX_REPLY`] for what a server
/// sends; a shorter buffer yields `None`.
pub fn encode_unsigned(msg: &Message, out: &mut [u8]) -> Option<usize> {
    let ty = msg.msg_type();
    let (b, p, _) = ty.layout();
    let out = out.get_mut(..ty.wire_len())?;
    out[..2].copy_from_slice(&MAGIC);
    out[2] = VERSION;
    out[3] = ty as u8;
    let body_out = &mut out[HEADER_LEN..HEADER_LEN + b];
    let written = match msg {
        Message::Hello(m) => postcard::to_slice(m, body_out).map(|s| s.len()),
        Message::Proof(m) => postcard::to_slice(m, body_out).map(|s| s.len()),
        Message::Heartbeat(m) => postcard::to_slice(m, body_out).map(|s| s.len()),
        Message::ProofId(m) => {
            let (proof_out, who_out) = body_out.split_at_mut_checked(PROOF_BODY)?;
            who_out.get_mut(..identity::WIRE_LEN)?.copy_from_slice(&m.who);
            postcard::to_slice(&m.proof, proof_out).map(|s| s.len() + identity::WIRE_LEN)
        }
        Message::Challenge(m) => postcard::to_slice(m, body_out).map(|s| s.len()),
        Message::Grant(m) => postcard::to_slice(m, body_out).map(|s| s.len()),
        Message::Deny(m) => postcard::to_slice(m, body_out).map(|s| s.len()),
        Message::Ack(m) => postcard::to_slice(m, body_out).map(|s| s.len()),
        Message::Stale(m) => postcard::to_slice(m, body_out).map(|s| s.len()),
        Message::Unknown(m) => postcard::to_slice(m, body_out).map(|s| s.len()),
    };
    if written.ok()? != b {
        return None;
    }
    out[HEADER_LEN + b..HEADER_LEN + b + p].fill(0);
    Some(HEADER_LEN + b + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_samples() -> Vec<Message> {
        let cookie = Cookie { ts: 42, kid: 0, mac: [7; 16] };
        vec![
            Message::Hello(Hello { client_nonce: [1; 16] }),
            Message::Proof(Proof {
                license_id: [2; 8],
                instance_id: [3; 16],
                client_nonce: [4; 16],
                cookie,
                prev_lease_id: 9,
            }),
            Message::Heartbeat(Heartbeat { lease_id: 5, epoch: 6, seq: 7, flags: 1 }),
            Message::ProofId(ProofId::new(
                Proof {
                    license_id: [2; 8],
                    instance_id: [3; 16],
                    client_nonce: [4; 16],
                    cookie,
                    prev_lease_id: 0,
                },
                &Identity::new("alice", "ws12", "cad", "2.1").expect("identity"),
            )),
            Message::Challenge(Challenge {
                client_nonce: [1; 16],
                cookie,
                server_salt: [8; 16],
                kdf_m_kib: 65536,
                kdf_t: 3,
                kdf_p: 1,
            }),
            Message::Grant(Grant { lease_id: 1, epoch: 2, ttl_ms: 3, heartbeat_ms: 4, used: 5, seats: 6 }),
            Message::Deny(Deny { epoch: 1, reason: 1, retry_after_ms: 2, used: 3, seats: 3 }),
            Message::Ack(Ack { lease_id: 1, epoch: 2, seq: 3, status: 0, ttl_ms: 4 }),
            Message::Stale(Stale { lease_id: 1, epoch: 2 }),
            Message::Unknown(Unknown { client_nonce: [9; 16] }),
        ]
    }

    #[test]
    fn every_type_round_trips_at_its_exact_length() {
        for msg in all_samples() {
            let mut buf = [0u8; MAX_DATAGRAM];
            let n = encode_unsigned(&msg, &mut buf).expect("encodes");
            let total = msg.msg_type().wire_len();
            assert_eq!(n + msg.msg_type().layout().2, total);
            let frame = decode(&buf[..total]).expect("decodes");
            assert_eq!(frame.msg, msg);
            assert_eq!(frame.signed.len(), n);
            // One byte more or less is always malformed.
            assert_eq!(decode(&buf[..total - 1]).err(), Some(DecodeError::Length));
        }
    }

    #[test]
    fn no_datagram_exceeds_the_documented_maximum() {
        let max = all_samples().iter().map(|m| m.msg_type().wire_len()).max();
        assert_eq!(max, Some(MAX_DATAGRAM));
        let replies = MsgType::ALL.iter().filter(|t| t.is_server_to_client()).map(|t| t.wire_len()).max();
        assert_eq!(replies, Some(MAX_REPLY));
    }

    #[test]
    fn nonzero_padding_and_unknown_flags_are_rejected() {
        let mut buf = [0u8; MAX_DATAGRAM];
        let hello = Message::Hello(Hello { client_nonce: [1; 16] });
        encode_unsigned(&hello, &mut buf).expect("encodes");
        buf[63] = 1;
        assert_eq!(decode(&buf[..64]).err(), Some(DecodeError::Body));

        let hb = Message::Heartbeat(Heartbeat { lease_id: 1, epoch: 1, seq: 1, flags: 2 });
        encode_unsigned(&hb, &mut buf).expect("encodes");
        assert_eq!(decode(&buf[..48]).err(), Some(DecodeError::Body));
    }

    #[test]
    fn header_checks() {
        assert_eq!(decode(b"").err(), Some(DecodeError::NotLicUdp));
        assert_eq!(decode(b"XY\x01\x01").err(), Some(DecodeError::NotLicUdp));
        assert_eq!(decode(b"LU\x02\x01").err(), Some(DecodeError::Version(2)));
        assert_eq!(decode(b"LU\x01\x07").err(), Some(DecodeError::UnknownType(7)));
    }
}
