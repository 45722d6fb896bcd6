//! The kernel's `hsiphash` as built on 64-bit kernels (spec §2).
//!
//! On 64-bit kernels `lib/siphash.c` turns "HalfSipHash-1-3" into full SipHash-1-3 with 64-bit state
//! and returns the low 32 bits. [`hsiphash`] is the general form (any message length; it exists to
//! pass the kernel's self-test vectors). [`hsiphash_u32`] is the 4-byte fast path that IPVS `mh`
//! actually uses: `hsiphash(&v, 4, key)` with `v` in little-endian CPU byte order.

use siphasher::sip::SipHasher13;
use std::hash::Hasher;

/// A kernel `hsiphash_key_t` on a 64-bit kernel: two `unsigned long` words `(key[0], key[1])`.
pub type HsipKey = (u64, u64);

/// General `hsiphash` of a 64-bit little-endian kernel: SipHash-1-3 truncated to 32 bits.
///
/// Uses the `siphasher` crate; `Hasher::write` feeds the bytes without any length prefix, so this
/// is plain SipHash-1-3 of `data`.
#[must_use]
pub fn hsiphash(key: HsipKey, data: &[u8]) -> u32 {
    let mut h = SipHasher13::new_with_keys(key.0, key.1);
    h.write(data);
    // Truncation to the low 32 bits is exactly what the kernel's `u32` return does.
    h.finish() as u32
}

#[inline(always)]
const fn sipround(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

/// `hsiphash(&x, 4, key)` on a 64-bit little-endian kernel, hand-unrolled (spec §2 steps 1–5).
///
/// Equal to `hsiphash(key, &x.to_le_bytes())` for every `x` (tested).
#[inline]
#[must_use]
pub const fn hsiphash_u32(key: HsipKey, x: u32) -> u32 {
    let (k0, k1) = key;
    let mut v = [
        0x736f_6d65_7073_6575 ^ k0,
        0x646f_7261_6e64_6f6d ^ k1,
        0x6c79_6765_6e65_7261 ^ k0,
        0x7465_6462_7974_6573 ^ k1,
    ];
    // Single (partial) block: length 4 in the top byte, the 4 message bytes in little-endian.
    let b = (4u64 << 56) | x as u64;
    v[3] ^= b;
    sipround(&mut v); // c = 1 compression round
    v[0] ^= b;
    v[2] ^= 0xff;
    sipround(&mut v); // d = 3 finalization rounds
    sipround(&mut v);
    sipround(&mut v);
    (v[0] ^ v[1] ^ v[2] ^ v[3]) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Key of the kernel's `test_siphash` self-test.
    const TEST_KEY: HsipKey = (0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);

    fn vectors() -> Vec<u32> {
        include_str!("../../tests/data/hsiphash_vectors.txt")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| u32::from_str_radix(l.trim_start_matches("0x"), 16).expect("hex vector"))
            .collect()
    }

    #[test]
    fn kernel_hsiphash_64bit_vectors() {
        let v = vectors();
        assert_eq!(v.len(), 64, "vector file must hold n = 0..63");
        let msg: Vec<u8> = (0u8..64).collect();
        for (n, want) in v.iter().enumerate() {
            assert_eq!(hsiphash(TEST_KEY, &msg[..n]), *want, "length {n}");
        }
    }

    #[test]
    fn fast_path_matches_vector_of_length_4() {
        // Bytes 00 01 02 03 read as a little-endian u32.
        assert_eq!(hsiphash_u32(TEST_KEY, 0x0302_0100), vectors()[4]);
    }

    #[test]
    fn fast_path_matches_general_path() {
        let keys = [TEST_KEY, super::super::K1, super::super::K2, (0, 0), (u64::MAX, 1)];
        let xs = [0u32, 1, 0x0A00_0053, 0x8000_0000, 0xFFFF_FFFF, 0xDEAD_BEEF, 65534];
        for k in keys {
            for x in xs {
                assert_eq!(hsiphash_u32(k, x), hsiphash(k, &x.to_le_bytes()), "{k:x?} {x:#x}");
            }
        }
        // A cheap deterministic sweep over many inputs as well.
        let mut x = 0x1234_5678u32;
        for _ in 0..10_000 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            assert_eq!(hsiphash_u32(TEST_KEY, x), hsiphash(TEST_KEY, &x.to_le_bytes()));
        }
    }
}
