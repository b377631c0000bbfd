//! Property tests of the datagram codec (proto-spec.md §2) with proptest: random messages of all
//! ten types round-trip at exactly their length, random bytes never panic the decoder, any other
//! length is rejected, and no single-byte change of a tagged datagram survives decode plus tag
//! verification.

use lic_udp::proto::keys::MacKey;
use lic_udp::proto::wire::ProofId;
use lic_udp::proto::wire::{
    self, Ack, Challenge, Cookie, DecodeError, Deny, Grant, Heartbeat, Hello, Message, MsgType, Proof, Stale,
    Unknown, HEADER_LEN, MAGIC, MAX_DATAGRAM, TAG_LEN, VERSION,
};
use lic_udp::Identity;
use proptest::prelude::*;

const ALL_TYPES: [MsgType; 10] = MsgType::ALL;

fn arb_cookie() -> impl Strategy<Value = Cookie> {
    (any::<u32>(), any::<u8>(), any::<[u8; 16]>()).prop_map(|(ts, kid, mac)| Cookie { ts, kid, mac })
}

/// Any valid message of any of the ten types (HEARTBEAT flags are 0 or RELEASE: other bits
/// are malformed by definition).
fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        any::<[u8; 16]>().prop_map(|client_nonce| Message::Hello(Hello { client_nonce })),
        (any::<[u8; 8]>(), any::<[u8; 16]>(), any::<[u8; 16]>(), arb_cookie(), any::<u64>()).prop_map(
            |(license_id, instance_id, client_nonce, cookie, prev_lease_id)| {
                Message::Proof(Proof { license_id, instance_id, client_nonce, cookie, prev_lease_id })
            }
        ),
        (
            (any::<[u8; 8]>(), any::<[u8; 16]>(), any::<[u8; 16]>(), arb_cookie(), any::<u64>()),
            ("[a-z]{0,32}", "[a-z0-9.é-]{0,21}", "\\PC{0,8}", "[0-9.]{0,16}")
        )
            .prop_map(
                |((license_id, instance_id, client_nonce, cookie, prev_lease_id), (u, h, p, v))| {
                    let who = Identity::new(&u, &h, &p, &v).unwrap_or_default();
                    Message::ProofId(ProofId::new(
                        Proof { license_id, instance_id, client_nonce, cookie, prev_lease_id },
                        &who,
                    ))
                }
            ),
        (any::<u64>(), any::<u32>(), any::<u64>(), 0u8..=1).prop_map(|(lease_id, epoch, seq, flags)| {
            Message::Heartbeat(Heartbeat { lease_id, epoch, seq, flags })
        }),
        (any::<[u8; 16]>(), arb_cookie(), any::<[u8; 16]>(), any::<u32>(), any::<u8>(), any::<u8>())
            .prop_map(|(client_nonce, cookie, server_salt, kdf_m_kib, kdf_t, kdf_p)| {
                Message::Challenge(Challenge { client_nonce, cookie, server_salt, kdf_m_kib, kdf_t, kdf_p })
            }),
        (any::<u64>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<u16>(), any::<u16>()).prop_map(
            |(lease_id, epoch, ttl_ms, heartbeat_ms, used, seats)| {
                Message::Grant(Grant { lease_id, epoch, ttl_ms, heartbeat_ms, used, seats })
            }
        ),
        (any::<u32>(), any::<u8>(), any::<u32>(), any::<u16>(), any::<u16>()).prop_map(
            |(epoch, reason, retry_after_ms, used, seats)| {
                Message::Deny(Deny { epoch, reason, retry_after_ms, used, seats })
            }
        ),
        (any::<u64>(), any::<u32>(), any::<u64>(), any::<u8>(), any::<u32>()).prop_map(
            |(lease_id, epoch, seq, status, ttl_ms)| Message::Ack(Ack {
                lease_id,
                epoch,
                seq,
                status,
                ttl_ms
            })
        ),
        (any::<u64>(), any::<u32>()).prop_map(|(lease_id, epoch)| Message::Stale(Stale { lease_id, epoch })),
        any::<[u8; 16]>().prop_map(|client_nonce| Message::Unknown(Unknown { client_nonce })),
    ]
}

fn arb_type() -> impl Strategy<Value = MsgType> {
    prop::sample::select(ALL_TYPES.to_vec())
}

/// `msg` encoded, with `tag` appended if its type has one.
fn datagram(msg: &Message, tag: &[u8; TAG_LEN]) -> (Vec<u8>, usize) {
    let mut buf = [0u8; MAX_DATAGRAM];
    let n = wire::encode_unsigned(msg, &mut buf).expect("every message encodes");
    let mut d = buf[..n].to_vec();
    if msg.msg_type().layout().2 == TAG_LEN {
        d.extend_from_slice(tag);
    }
    (d, n)
}

/// `msg` sealed under `key` (only for tagged types).
fn sealed(msg: &Message, key: &MacKey) -> Vec<u8> {
    let mut buf = [0u8; MAX_DATAGRAM];
    let n = wire::encode_unsigned(msg, &mut buf).expect("every message encodes");
    let n = key.seal(&mut buf, n).expect("the tag fits");
    buf[..n].to_vec()
}

fn is_tagged(msg: &Message) -> bool {
    msg.msg_type().layout().2 == TAG_LEN
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// Every message encodes to exactly its type's length and decodes to itself, with the tag
    /// returned as received and the signed part covering everything before it.
    #[test]
    fn every_message_round_trips_at_its_exact_length(msg in arb_message(), tag in any::<[u8; TAG_LEN]>()) {
        let ty = msg.msg_type();
        let (d, n) = datagram(&msg, &tag);
        prop_assert_eq!(d.len(), ty.wire_len());
        let (b, p, t) = ty.layout();
        prop_assert_eq!(n, HEADER_LEN + b + p);
        let frame = wire::decode(&d).expect("a fresh encoding decodes");
        prop_assert_eq!(frame.msg, msg);
        prop_assert_eq!(frame.signed, &d[..n]);
        prop_assert_eq!(frame.tag, &d[n..]);
        prop_assert_eq!(frame.tag.len(), t);
        prop_assert_eq!(wire::peek_type(&d), Ok(ty));
    }

    /// Arbitrary bytes never panic the decoder, and whatever it accepts has its type's length.
    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(frame) = wire::decode(&data) {
            prop_assert_eq!(data.len(), frame.msg.msg_type().wire_len());
        }
        let _ = wire::peek_type(&data);
    }

    /// Arbitrary bodies behind a valid header: the decoder's deeper paths, still no panic, and
    /// an accepted datagram re-encodes to itself.
    #[test]
    fn arbitrary_bodies_behind_a_valid_header(
        ty in arb_type(),
        exact in any::<bool>(),
        body in prop::collection::vec(any::<u8>(), 0..128),
    ) {
        let mut data = vec![MAGIC[0], MAGIC[1], VERSION, ty as u8];
        data.extend_from_slice(&body);
        if exact {
            // Half the cases at the type's own length, so bodies really get decoded.
            data.resize(ty.wire_len(), 0);
        }
        if let Ok(frame) = wire::decode(&data) {
            prop_assert_eq!(data.len(), ty.wire_len());
            let (d, _) = datagram(&frame.msg, &[0; TAG_LEN]);
            prop_assert_eq!(&d[..frame.signed.len()], frame.signed);
            prop_assert_eq!(frame.signed.len() + frame.tag.len(), data.len());
        }
    }

    /// Any length but the type's own is rejected, whatever the bytes.
    #[test]
    fn any_other_length_is_rejected(
        ty in arb_type(),
        len in 0usize..=2 * MAX_DATAGRAM,
        fill in any::<u8>(),
    ) {
        prop_assume!(len != ty.wire_len());
        let mut data = vec![fill; len];
        if len >= HEADER_LEN {
            data[..HEADER_LEN].copy_from_slice(&[MAGIC[0], MAGIC[1], VERSION, ty as u8]);
            prop_assert_eq!(wire::decode(&data).err(), Some(DecodeError::Length));
            prop_assert_eq!(wire::peek_type(&data).err(), Some(DecodeError::Length));
        } else {
            prop_assert!(wire::decode(&data).is_err());
        }
    }

    /// A valid datagram cut or extended by any amount is rejected for its length.
    #[test]
    fn truncated_or_extended_datagrams_are_rejected(
        msg in arb_message(),
        tag in any::<[u8; TAG_LEN]>(),
        cut in 0usize..MAX_DATAGRAM,
        extra in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        let (d, _) = datagram(&msg, &tag);
        let cut = cut % d.len();
        prop_assert!(wire::decode(&d[..cut]).is_err());
        if cut >= HEADER_LEN {
            prop_assert_eq!(wire::decode(&d[..cut]).err(), Some(DecodeError::Length));
        }
        let mut long = d.clone();
        long.extend_from_slice(&extra);
        prop_assert_eq!(wire::decode(&long).err(), Some(DecodeError::Length));
    }

    /// Changing any single byte of a valid tagged datagram makes decode fail or the tag fail to
    /// verify under the key that sealed it.
    #[test]
    fn any_single_byte_change_of_a_tagged_datagram_is_caught(
        msg in arb_message().prop_filter("tagged types", is_tagged),
        key in any::<[u8; 32]>(),
        pos in any::<prop::sample::Index>(),
        delta in 1u8..=255,
    ) {
        let key = MacKey::new(&key);
        let d = sealed(&msg, &key);
        let frame = wire::decode(&d).expect("the sealed datagram decodes");
        prop_assert!(key.verify(frame.signed, frame.tag), "the untouched datagram verifies");
        let mut bad = d.clone();
        let i = pos.index(bad.len());
        bad[i] ^= delta;
        if let Ok(frame) = wire::decode(&bad) {
            prop_assert!(
                !key.verify(frame.signed, frame.tag),
                "byte {} ^ {:#04x} of {:?} still verifies", i, delta, msg.msg_type()
            );
        }
    }

    /// A change of any byte of any datagram breaks the decode or shows in the decoded message
    /// or tag: no byte is ignored (padding must be zero, flags must be known).
    #[test]
    fn any_single_byte_change_is_seen(
        msg in arb_message(),
        tag in any::<[u8; TAG_LEN]>(),
        pos in any::<prop::sample::Index>(),
        delta in 1u8..=255,
    ) {
        let (d, n) = datagram(&msg, &tag);
        let mut bad = d.clone();
        let i = pos.index(bad.len());
        bad[i] ^= delta;
        if let Ok(frame) = wire::decode(&bad) {
            let changed = frame.msg != msg || (i >= n && frame.tag != &d[n..]);
            prop_assert!(changed, "byte {} ^ {:#04x} of {:?} went unnoticed", i, delta, msg.msg_type());
        }
    }
}

/// The vectors of proto-spec.md §9 are valid datagrams of their types, at their exact lengths.
#[test]
fn spec_vectors_decode_at_their_lengths() {
    let spec = include_str!("../proto-spec.md");
    let mut seen = Vec::new();
    for line in spec.lines() {
        let Some(rest) = line.trim().strip_prefix("- ") else { continue };
        let Some((name, hex)) = rest.split_once(": `") else { continue };
        let Ok(bytes) = hex::decode(hex.trim_end_matches('`')) else { continue };
        if bytes.first() != Some(&MAGIC[0]) {
            continue; // key and cookie vectors
        }
        let frame = wire::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(bytes.len(), frame.msg.msg_type().wire_len(), "{name}");
        seen.push(frame.msg.msg_type());
    }
    let order = [
        MsgType::Hello,
        MsgType::Challenge,
        MsgType::Proof,
        MsgType::Grant,
        MsgType::Deny,
        MsgType::Heartbeat,
        MsgType::Ack,
        MsgType::Stale,
        MsgType::Unknown,
    ];
    assert_eq!(seen, order.to_vec(), "one vector per type, in the order of §9");
}
