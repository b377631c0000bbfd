//! HMAC-SHA-256 with precomputed pad states: the MAC on every tagged datagram.
//!
//! HMAC(k, m) = H((k ⊕ opad) ‖ H((k ⊕ ipad) ‖ m)). The two key blocks are the same for every
//! message under one key, so [`MacKey`] compresses them once and keeps only the two resulting
//! SHA-256 states: 64 bytes a key, cheap to hold for a million leases, plain arrays that are
//! wiped on drop, and two block compressions saved per datagram. A tag is then 2 compressions
//! for a heartbeat (48 bytes) and 3 for a PROOF (89 bytes), plus 1 for the outer hash.

use sha2::digest::generic_array::GenericArray;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::wire::TAG_LEN;

/// SHA-256's initial state (FIPS 180-4 §5.3.3).
const IV: [u32; 8] =
    [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
const BLOCK: usize = 64;

/// A 32-byte HMAC-SHA-256 key, kept as its two precomputed pad states.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MacKey {
    inner: [u32; 8],
    outer: [u32; 8],
}

fn compress(state: &mut [u32; 8], block: &[u8]) {
    // Callers pass exactly one 64-byte block.
    if block.len() == BLOCK {
        sha2::compress256(state, &[*GenericArray::from_slice(block)]);
    }
}

/// Finishes a SHA-256 whose first 64 bytes (the pad block) are already in `state`.
///
/// Nothing here is wiped: `tail` holds the message (which crosses the wire anyway) or the
/// inner digest, and `state` ends as the digest the caller gets. Neither says anything about
/// the key without the other pad's state, which only [`MacKey`] holds (and wipes on drop).
/// Wiping them byte by byte with volatile writes cost about a third of a heartbeat's MAC work.
fn finish(mut state: [u32; 8], msg: &[u8]) -> [u8; 32] {
    let mut chunks = msg.chunks_exact(BLOCK);
    for c in &mut chunks {
        compress(&mut state, c);
    }
    let rem = chunks.remainder();
    let mut tail = [0u8; 2 * BLOCK];
    tail[..rem.len()].copy_from_slice(rem);
    tail[rem.len()] = 0x80;
    let n = if rem.len() + 9 <= BLOCK { BLOCK } else { 2 * BLOCK };
    let bits = ((BLOCK + msg.len()) as u64).wrapping_mul(8);
    tail[n - 8..n].copy_from_slice(&bits.to_be_bytes());
    for c in tail[..n].chunks_exact(BLOCK) {
        compress(&mut state, c);
    }
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

impl MacKey {
    pub fn new(key: &[u8; 32]) -> Self {
        let mut ipad = [0x36u8; BLOCK];
        let mut opad = [0x5cu8; BLOCK];
        for (i, k) in key.iter().enumerate() {
            ipad[i] ^= k;
            opad[i] ^= k;
        }
        let (mut inner, mut outer) = (IV, IV);
        compress(&mut inner, &ipad);
        compress(&mut outer, &opad);
        ipad.zeroize();
        opad.zeroize();
        Self { inner, outer }
    }

    /// A word from each end of the key's 64 bytes (the first of the inner pad state, the last
    /// of the outer), so that reading it pulls every cache line the key spans into the cache
    /// (see `ServerCore::warm`). Nothing outside the core sees the value.
    pub(crate) fn touch(&self) -> u32 {
        self.inner[0] ^ self.outer[7]
    }

    /// The full 32-byte HMAC of `msg`. Crate-private: [`finish`] leaves the inner digest
    /// unwiped on the stack, which is fine for tags of datagrams that cross the wire anyway,
    /// and a caller MACing secrets would need to think again.
    pub(crate) fn hmac(&self, msg: &[u8]) -> [u8; 32] {
        let inner = finish(self.inner, msg);
        finish(self.outer, &inner)
    }

    /// The 16-byte tag over `signed` (the leftmost half of the HMAC).
    pub fn tag(&self, signed: &[u8]) -> [u8; TAG_LEN] {
        let full = self.hmac(signed);
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(&full[..TAG_LEN]);
        out
    }

    /// Constant-time check of a 16-byte tag. Any other length fails.
    pub fn verify(&self, signed: &[u8], tag: &[u8]) -> bool {
        tag.len() == TAG_LEN && bool::from(self.tag(signed)[..].ct_eq(tag))
    }

    /// Writes the tag for `out[..signed_len]` right after it; returns the datagram length.
    pub fn seal(&self, out: &mut [u8], signed_len: usize) -> Option<usize> {
        let tag = self.tag(out.get(..signed_len)?);
        out.get_mut(signed_len..signed_len + TAG_LEN)?.copy_from_slice(&tag);
        Some(signed_len + TAG_LEN)
    }
}

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use hmac::{Hmac, Mac};
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn matches_the_hmac_crate_at_every_length_around_the_block_edges() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for len in 0..=200 {
            let key: [u8; 32] = rng.gen();
            let msg: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let mut reference = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key).expect("key");
            reference.update(&msg);
            let expected: [u8; 32] = reference.finalize().into_bytes().into();
            assert_eq!(MacKey::new(&key).hmac(&msg), expected, "length {len}");
        }
    }

    #[test]
    fn rfc4231_case_2_shape() {
        // RFC 4231 test case 2 uses a 4-byte key; padded with zeros to 32 bytes it is the same
        // HMAC key (HMAC zero-pads short keys to the block size).
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let mac = MacKey::new(&key).hmac(b"what do ya want for nothing?");
        assert_eq!(hex::encode(mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn tags_verify_and_reject() {
        let k = MacKey::new(&[5; 32]);
        let t = k.tag(b"hello");
        assert!(k.verify(b"hello", &t));
        assert!(!k.verify(b"hellp", &t));
        assert!(!k.verify(b"hello", &t[..15]));
        assert!(!MacKey::new(&[6; 32]).verify(b"hello", &t));
    }
}
