//! Key schedule (proto-spec.md §3) and the MAC used on every tagged datagram.
//!
//! Argon2id is the only slow step and runs once per license on each side, never per datagram.
//! Everything after it is HKDF and HMAC, cheap enough for the heartbeat path.

use std::fmt;

use hkdf::Hkdf;
use hmac::{Mac, SimpleHmac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

pub use super::mac::MacKey;
use super::wire::Cookie;

/// A serial as typed by the user: exactly 10 ASCII digits once spaces and dashes are removed.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Serial([u8; 10]);

/// Why a serial was rejected before anything was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SerialError {
    #[error("a serial has exactly 10 digits (spaces and dashes are ignored); this one has {0}")]
    Length(usize),
    #[error("a serial has only digits, spaces and dashes; found {0:?}")]
    Character(char),
}

impl Serial {
    pub fn parse(s: &str) -> Result<Self, SerialError> {
        let mut out = [0u8; 10];
        let mut n = 0usize;
        for c in s.trim().chars() {
            match c {
                ' ' | '-' => continue,
                '0'..='9' => {
                    if let Some(slot) = out.get_mut(n) {
                        *slot = c as u8;
                    }
                    n += 1;
                }
                other => return Err(SerialError::Character(other)),
            }
        }
        if n != 10 {
            return Err(SerialError::Length(n));
        }
        Ok(Self(out))
    }

    /// Builds a serial from a number below 10^10 (the issuer draws it uniformly).
    pub fn from_number(n: u64) -> Option<Self> {
        if n >= 10_000_000_000 {
            return None;
        }
        let s = format!("{n:010}");
        Self::parse(&s).ok()
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Serial(**********)")
    }
}

/// The public Argon2id parameters a server announces in CHALLENGE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct KdfParams {
    pub m_kib: u32,
    pub t: u8,
    pub p: u8,
}

impl KdfParams {
    /// What ships: 64 MiB, 3 passes, one lane (same result on every client CPU).
    pub const SHIPPED: Self = Self { m_kib: 65536, t: 3, p: 1 };
    /// For tests and benchmarks only: fast, and weak against offline guessing.
    pub const TEST: Self = Self { m_kib: 1024, t: 1, p: 1 };

    /// Bounds a client accepts, so a spoofed CHALLENGE cannot make it allocate without limit.
    pub fn is_acceptable(&self) -> bool {
        (8..=1024 * 1024).contains(&self.m_kib)
            && (1..=16).contains(&self.t)
            && (1..=8).contains(&self.p)
            && self.m_kib >= 8 * u32::from(self.p)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KdfError {
    #[error("Argon2 parameters out of range: {0:?}")]
    Params(KdfParams),
}

/// What both sides know about a license once Argon2 has run: the wire name and two keys.
/// The server stores exactly this, never the serial.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct LicenseKeys {
    pub license_id: [u8; 8],
    pub k_proof: [u8; 32],
    pub k_auth: [u8; 32],
}

impl fmt::Debug for LicenseKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LicenseKeys").field("license_id", &hex8(&self.license_id)).finish_non_exhaustive()
    }
}

fn hex8(b: &[u8; 8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn expand<const N: usize>(hk: &Hkdf<Sha256>, info: &[&[u8]]) -> [u8; N] {
    let mut out = [0u8; N];
    // N ≤ 255 × 32 for every caller, so expansion cannot fail.
    if hk.expand_multi_info(info, &mut out).is_err() {
        out = [0u8; N];
    }
    out
}

/// serial → Argon2id → HKDF (proto-spec.md §3). Slow by design: call once, cache the result.
pub fn derive_license_keys(
    serial: &Serial,
    server_salt: &[u8; 16],
    params: KdfParams,
) -> Result<LicenseKeys, KdfError> {
    let argon_params = argon2::Params::new(params.m_kib, u32::from(params.t), u32::from(params.p), Some(32))
        .map_err(|_| KdfError::Params(params))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, argon_params);
    let mut salt = Vec::with_capacity(30);
    salt.extend_from_slice(b"lic-udp/1 salt");
    salt.extend_from_slice(server_salt);
    let mut k_serial = Zeroizing::new([0u8; 32]);
    argon.hash_password_into(&serial.0, &salt, k_serial.as_mut()).map_err(|_| KdfError::Params(params))?;
    let hk = Hkdf::<Sha256>::new(Some(b"lic-udp/1"), k_serial.as_ref());
    Ok(LicenseKeys {
        license_id: expand(&hk, &[b"lic-udp/1 license-id"]),
        k_proof: expand(&hk, &[b"lic-udp/1 proof"]),
        k_auth: expand(&hk, &[b"lic-udp/1 auth"]),
    })
}

/// The per-direction keys of one lease session.
#[derive(Clone)]
pub struct SessionKeys {
    pub c2s: MacKey,
    pub s2c: MacKey,
}

/// Session keys (proto-spec.md §3). `lease_id = 0` gives the DENY key.
pub fn derive_session_keys(
    k_auth: &[u8; 32],
    client_nonce: &[u8; 16],
    cookie: &Cookie,
    license_id: &[u8; 8],
    instance_id: &[u8; 16],
    lease_id: u64,
    epoch: u32,
) -> SessionKeys {
    let mut salt = [0u8; 16 + Cookie::LEN];
    salt[..16].copy_from_slice(client_nonce);
    salt[16..].copy_from_slice(&cookie.to_bytes());
    let hk = Hkdf::<Sha256>::new(Some(&salt), k_auth);
    let lease = lease_id.to_le_bytes();
    let ep = epoch.to_le_bytes();
    let c2s: Zeroizing<[u8; 32]> =
        Zeroizing::new(expand(&hk, &[b"lic-udp/1 c2s", license_id, instance_id, &lease, &ep]));
    let s2c: Zeroizing<[u8; 32]> =
        Zeroizing::new(expand(&hk, &[b"lic-udp/1 s2c", license_id, instance_id, &lease, &ep]));
    SessionKeys { c2s: MacKey::new(&c2s), s2c: MacKey::new(&s2c) }
}

/// One-shot HMAC for the cookie, where the key changes every period.
pub fn hmac16(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 16] {
    let mut m = match SimpleHmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0u8; 16],
    };
    for p in parts {
        m.update(p);
    }
    let full = m.finalize().into_bytes();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// Constant-time equality for cookie macs.
pub fn ct_eq16(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_accept_spaces_and_dashes_only() {
        let a = Serial::parse("0123-456 789").expect("valid");
        assert_eq!(a.as_str(), "0123456789");
        assert_eq!(Serial::parse("012345678").err(), Some(SerialError::Length(9)));
        assert_eq!(Serial::parse("01234567890").err(), Some(SerialError::Length(11)));
        assert_eq!(Serial::parse("01234x6789").err(), Some(SerialError::Character('x')));
        assert_eq!(Serial::from_number(7).map(|s| s.as_str().to_owned()).as_deref(), Some("0000000007"));
        assert!(Serial::from_number(10_000_000_000).is_none());
    }

    #[test]
    fn serial_debug_hides_digits() {
        let s = Serial::parse("0123456789").expect("valid");
        assert!(!format!("{s:?}").contains("0123"));
    }

    #[test]
    fn kdf_bounds() {
        assert!(KdfParams::SHIPPED.is_acceptable());
        assert!(KdfParams::TEST.is_acceptable());
        assert!(!KdfParams { m_kib: 4 * 1024 * 1024, t: 1, p: 1 }.is_acceptable());
        assert!(!KdfParams { m_kib: 1024, t: 0, p: 1 }.is_acceptable());
    }
}
