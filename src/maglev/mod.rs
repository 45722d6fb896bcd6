//! The Maglev lookup table (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
//! Balancer", NSDI 2016, §3.4): a pure, deterministic function `(backends, weights, size) -> table`.
//!
//! # Algorithm
//! Every backend `i` gets a permutation of the `M` slots, `perm_i(j) = (offset_i + j·skip_i) mod M`,
//! with `offset_i = H(K_OFFSET, ip_i) mod M` and `skip_i = H(K_SKIP, ip_i) mod (M − 1) + 1`. Because
//! `M` is prime every `skip_i` is coprime to `M`, so every permutation visits every slot. Backends
//! then take turns claiming the next slot of their own permutation that is still free, until all
//! `M` slots are taken. The permutation is walked on the fly (`next_i += skip_i`), so the builder
//! needs O(N) state plus the table itself: O(M + N) memory, never an N × M matrix.
//!
//! **Weights** use the credit scheme of Katran's `MaglevHashV2`: in every round each backend adds
//! its weight to a credit counter and claims one slot each time the credit reaches the largest
//! weight. A backend with the largest weight claims once per round; one with weight `w` claims
//! `w / w_max` times per round on average. The result is within a couple of slots of the exact
//! share `M · w_i / Σw` (tested: within 1 % relative for realistic weights at M = 65537), equal
//! weights give every backend ⌊M/N⌋ or ⌈M/N⌉ slots, and weight 0 gives none.
//!
//! # Determinism (the property that makes ECMP across frontends safe)
//! * `H` is SipHash-1-3 (`siphasher` 1.0, a specified algorithm, not `std`'s `DefaultHasher`,
//!   which may change between Rust releases) with the fixed keys [`K_OFFSET`] and [`K_SKIP`], over
//!   the backend's IPv4 address as its 4 network-order bytes — nothing else, so the identity of a
//!   backend is its IP.
//! * Backends are visited in ascending IP order, whatever order the configuration lists them in.
//! * Integer arithmetic only; no platform- or release-dependent behaviour.
//!
//! A golden test pins a checksum of a fixed table, so a change of hash, key or algorithm cannot slip
//! in unnoticed: changing it changes which backend every existing flow reaches on upgrade.
//!
//! # Why not the `maglev` crate
//! `maglev` 0.2.1 materializes the N × M permutation matrix (≈ 518 MB and ≈ 0.9 s for N = 1000,
//! M = 65537 on this machine class, against ≈ 2.5 MB and a few ms here), hashes through `std`'s
//! `DefaultHasher` (not stable across Rust releases, so two frontends built by different compilers
//! could disagree), has no weights and stores `isize` slots. It fails the determinism and the
//! weight requirements above, so the table is written here (about 80 lines).

use std::fmt;
use std::net::Ipv4Addr;

use siphasher::sip::SipHasher13;
use std::hash::Hasher;

/// Slot value meaning "no backend" (only in a table built over zero usable backends).
pub const NO_BACKEND: u32 = u32::MAX;

/// SipHash-1-3 key for the permutation offset: the ASCII bytes `"maglevd-offset-1"` read as two
/// little-endian u64 words.
pub const K_OFFSET: (u64, u64) = (0x2d64_7665_6c67_616d, 0x312d_7465_7366_666f);
/// SipHash-1-3 key for the permutation skip: the ASCII bytes `"maglevd-skip-v01"` read as two
/// little-endian u64 words.
pub const K_SKIP: (u64, u64) = (0x2d64_7665_6c67_616d, 0x3130_762d_7069_6b73);

/// Default table size (the Maglev paper's M).
pub const DEFAULT_TABLE_SIZE: u32 = 65537;
/// Largest accepted table size: the largest prime below 2^22 (16 MiB of 4-byte slots, built in
/// well under a second). The Maglev paper's M ≥ 100·N keeps imbalance near 1 %, so this serves
/// about 40,000 backends in one service.
pub const MAX_TABLE_SIZE: u32 = 4_194_301;
/// Bound on the slots of all tables of a configuration together (128 MiB of slots; e.g. 512
/// services at the default size). A snapshot being built and the one in use coexist for a moment.
pub const MAX_TOTAL_SLOTS: u64 = 1 << 25;
/// Largest accepted weight (the IPVS range).
pub const MAX_WEIGHT: u32 = 65535;

/// One backend as the table sees it: its identity (IP) and weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableBackend {
    pub ip: Ipv4Addr,
    pub weight: u32,
}

/// Why a table could not be built. The configuration layer rejects all of these with a located
/// message first; the builder checks again so that it is total on its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("table size {0} is not a prime")]
    NotPrime(u32),
    #[error("table size {size} is out of range 3..={MAX_TABLE_SIZE}")]
    SizeOutOfRange { size: u32 },
    #[error("table size {size} is too small for {backends} backends (needs at least {min})")]
    TooSmall { size: u32, backends: usize, min: u64 },
    #[error("backend {0} is listed twice")]
    DuplicateBackend(Ipv4Addr),
    #[error("backend {ip} has weight {weight}, above the maximum {MAX_WEIGHT}")]
    WeightOutOfRange { ip: Ipv4Addr, weight: u32 },
}

/// Minimum slots per backend required by [`build`]; below it the balance is meaningless (the paper
/// recommends M ≥ 100·N; the configuration layer warns below that).
pub const MIN_SLOTS_PER_BACKEND: u64 = 10;

/// A built lookup table. `slots[s]` is an index into the backend slice the table was built from.
#[derive(Clone, PartialEq, Eq)]
pub struct Table {
    size: u32,
    slots: Box<[u32]>,
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table").field("size", &self.size).field("populated", &!self.slots.is_empty()).finish()
    }
}

impl Table {
    /// The table size M.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// True when no backend has a positive weight: every lookup misses.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// All slots (empty when [`Table::is_empty`]).
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// The backend index owning the slot that `hash` maps to, or `None` for an empty table.
    ///
    /// The slot is `(low32(hash) · M) >> 32` (Lemire's multiply-shift range reduction): uniform,
    /// cheaper than a division, and — like everything here — fixed and documented.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<u32> {
        let slot = ((hash as u32 as u64 * self.size as u64) >> 32) as usize;
        self.slots.get(slot).copied()
    }

    /// Number of slots owned by each backend index `0..n`.
    pub fn shares(&self, n: usize) -> Vec<u64> {
        slot_counts(&self.slots, n)
    }
}

/// How many of `slots` hold each backend index `0..n` (indices outside, like "no backend", are
/// not counted). Serves every table kind whose slots index a backend list.
pub fn slot_counts(slots: &[u32], n: usize) -> Vec<u64> {
    let mut out = vec![0u64; n];
    for &s in slots {
        if let Some(c) = out.get_mut(s as usize) {
            *c += 1;
        }
    }
    out
}

/// Is `n` prime? Deterministic trial division (n ≤ 2^24 here, so at most ~2000 steps).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

fn sip13(key: (u64, u64), ip: Ipv4Addr) -> u64 {
    let mut h = SipHasher13::new_with_keys(key.0, key.1);
    h.write(&ip.octets());
    h.finish()
}

/// The permutation of one backend: `(offset, skip)` for table size `size`.
pub fn permutation(ip: Ipv4Addr, size: u32) -> (u32, u32) {
    let offset = (sip13(K_OFFSET, ip) % size as u64) as u32;
    let skip = (sip13(K_SKIP, ip) % (size as u64 - 1)) as u32 + 1;
    (offset, skip)
}

/// Check that `size` is usable for `backends` backends.
pub fn check_size(size: u32, backends: usize) -> Result<(), TableError> {
    if !(3..=MAX_TABLE_SIZE).contains(&size) {
        return Err(TableError::SizeOutOfRange { size });
    }
    if !is_prime(size) {
        return Err(TableError::NotPrime(size));
    }
    let min = backends as u64 * MIN_SLOTS_PER_BACKEND;
    if (size as u64) < min {
        return Err(TableError::TooSmall { size, backends, min });
    }
    Ok(())
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Build the table for `backends` (any order) with `size` slots. Slot values index `backends`.
///
/// Backends with weight 0 get no slots; if none has a positive weight the table is empty and every
/// lookup misses (the forwarder counts that as a "no backend" drop).
pub fn build(backends: &[TableBackend], size: u32) -> Result<Table, TableError> {
    check_size(size, backends.len())?;
    for b in backends {
        if b.weight > MAX_WEIGHT {
            return Err(TableError::WeightOutOfRange { ip: b.ip, weight: b.weight });
        }
    }
    // Visit backends in ascending IP order so the configuration's order does not matter.
    let mut order: Vec<u32> = (0..backends.len() as u32).collect();
    order.sort_unstable_by_key(|&i| backends[i as usize].ip);
    if let Some(w) = order.windows(2).find(|w| backends[w[0] as usize].ip == backends[w[1] as usize].ip) {
        return Err(TableError::DuplicateBackend(backends[w[0] as usize].ip));
    }
    order.retain(|&i| backends[i as usize].weight > 0);
    if order.is_empty() {
        return Ok(Table { size, slots: Box::new([]) });
    }

    struct Walker {
        index: u32,
        weight: u32,
        next: u32,
        skip: u32,
        credit: u32,
    }
    let g = order.iter().fold(0, |g, &i| gcd(g, backends[i as usize].weight));
    let mut walkers: Vec<Walker> = order
        .iter()
        .map(|&i| {
            let (offset, skip) = permutation(backends[i as usize].ip, size);
            Walker { index: i, weight: backends[i as usize].weight / g, next: offset, skip, credit: 0 }
        })
        .collect();
    let max_weight = walkers.iter().map(|w| w.weight).max().unwrap_or(1);

    let mut slots = vec![NO_BACKEND; size as usize].into_boxed_slice();
    let mut filled = 0u32;
    loop {
        for w in walkers.iter_mut() {
            w.credit += w.weight;
            if w.credit < max_weight {
                continue;
            }
            w.credit -= max_weight;
            // Walk this backend's permutation to its next free slot. `next` and `skip` are both
            // below `size` (< 2^24), so the sum cannot overflow.
            while slots[w.next as usize] != NO_BACKEND {
                w.next += w.skip;
                if w.next >= size {
                    w.next -= size;
                }
            }
            slots[w.next as usize] = w.index;
            filled += 1;
            if filled == size {
                return Ok(Table { size, slots });
            }
        }
    }
}

#[cfg(test)]
mod tests;
