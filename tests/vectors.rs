//! The test vectors of proto-spec.md §9. Each value here is also printed in the spec; a change
//! to either must change both.

use std::net::SocketAddr;

use lic_udp::proto::cookie::CookieJar;
use lic_udp::proto::keys::{derive_license_keys, derive_session_keys, KdfParams, MacKey, Serial};
use lic_udp::proto::wire::{
    self, Ack, Challenge, Cookie, Deny, Grant, Heartbeat, Hello, Message, Proof, Stale, Unknown,
};

fn seq<const N: usize>(start: u8) -> [u8; N] {
    std::array::from_fn(|i| start + i as u8)
}

const LEASE: u64 = 0x0102_0304_0506_0708;
const EPOCH: u32 = 7;

fn encode(msg: &Message, key: Option<&MacKey>) -> String {
    let mut buf = [0u8; wire::MAX_DATAGRAM];
    let n = wire::encode_unsigned(msg, &mut buf).expect("encode");
    let n = match key {
        Some(k) => k.seal(&mut buf, n).expect("seal"),
        None => n,
    };
    let bytes = &buf[..n];
    // Every vector must also decode back to the same message.
    assert_eq!(wire::decode(bytes).expect("decode").msg, *msg);
    hex::encode(bytes)
}

/// (name, hex) for every vector, in the order of proto-spec.md §9.
fn vectors() -> Vec<(&'static str, String)> {
    let serial = Serial::parse("0123456789").expect("serial");
    let salt: [u8; 16] = seq(0x00);
    let keys = derive_license_keys(&serial, &salt, KdfParams::TEST).expect("kdf");
    let instance: [u8; 16] = seq(0x10);
    let nonce: [u8; 16] = seq(0x20);
    let cookie = Cookie { ts: 42, kid: 0, mac: seq(0x30) };
    let session =
        derive_session_keys(&keys.k_auth, &nonce, &cookie, &keys.license_id, &instance, LEASE, EPOCH);
    let deny_keys = derive_session_keys(&keys.k_auth, &nonce, &cookie, &keys.license_id, &instance, 0, EPOCH);
    let src: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    let jar = CookieJar::new(seq(0x40), 42);
    let real_cookie = jar.issue(42, &src, &nonce);

    vec![
        ("license_id", hex::encode(keys.license_id)),
        ("K_proof", hex::encode(keys.k_proof)),
        ("K_auth", hex::encode(keys.k_auth)),
        ("cookie (K_cookie = 40..5f, 127.0.0.1:40000)", hex::encode(real_cookie.to_bytes())),
        ("HELLO", encode(&Message::Hello(Hello { client_nonce: nonce }), None)),
        (
            "CHALLENGE",
            encode(
                &Message::Challenge(Challenge {
                    client_nonce: nonce,
                    cookie,
                    server_salt: salt,
                    kdf_m_kib: 1024,
                    kdf_t: 1,
                    kdf_p: 1,
                }),
                None,
            ),
        ),
        (
            "PROOF",
            encode(
                &Message::Proof(Proof {
                    license_id: keys.license_id,
                    instance_id: instance,
                    client_nonce: nonce,
                    cookie,
                    prev_lease_id: 0,
                }),
                Some(&MacKey::new(&keys.k_proof)),
            ),
        ),
        (
            "GRANT",
            encode(
                &Message::Grant(Grant {
                    lease_id: LEASE,
                    epoch: EPOCH,
                    ttl_ms: 60_000,
                    heartbeat_ms: 15_000,
                    used: 1,
                    seats: 5,
                }),
                Some(&session.s2c),
            ),
        ),
        (
            "DENY",
            encode(
                &Message::Deny(Deny { epoch: EPOCH, reason: 1, retry_after_ms: 15_000, used: 5, seats: 5 }),
                Some(&deny_keys.s2c),
            ),
        ),
        (
            "HEARTBEAT",
            encode(
                &Message::Heartbeat(Heartbeat { lease_id: LEASE, epoch: EPOCH, seq: 1, flags: 0 }),
                Some(&session.c2s),
            ),
        ),
        (
            "ACK",
            encode(
                &Message::Ack(Ack { lease_id: LEASE, epoch: EPOCH, seq: 1, status: 0, ttl_ms: 60_000 }),
                Some(&session.s2c),
            ),
        ),
        ("STALE", encode(&Message::Stale(Stale { lease_id: LEASE, epoch: EPOCH }), None)),
        ("UNKNOWN", encode(&Message::Unknown(Unknown { client_nonce: nonce }), None)),
    ]
}

/// The spec's §9, parsed: lines of the form `` - NAME: `HEX` ``.
fn spec_vectors() -> Vec<(String, String)> {
    let spec = include_str!("../proto-spec.md");
    let section = spec.split("## 9. Test vectors").nth(1).expect("§9").split("\n## ").next().expect("end");
    section
        .lines()
        .filter_map(|l| {
            let l = l.trim().strip_prefix("- ")?;
            let (name, rest) = l.split_once(": `")?;
            Some((name.to_owned(), rest.trim_end_matches('`').to_owned()))
        })
        .collect()
}

#[test]
fn the_code_reproduces_the_spec_vectors() {
    let ours = vectors();
    let spec = spec_vectors();
    if std::env::var_os("PRINT_VECTORS").is_some() {
        for (name, hex) in &ours {
            println!("- {name}: `{hex}`");
        }
    }
    assert_eq!(spec.len(), ours.len(), "every vector is in the spec, and only those");
    for ((name, hex), (spec_name, spec_hex)) in ours.iter().zip(&spec) {
        assert_eq!(name, spec_name);
        assert_eq!(hex, spec_hex, "{name}");
    }
}
