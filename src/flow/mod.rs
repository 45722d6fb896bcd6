//! Connection tracking: the backend each flow was sent to, so that an established flow keeps its
//! backend when the Maglev table changes (a backend added, drained or back from a failure), and the
//! later fragments of a datagram follow its first one.
//!
//! Pure data structures with injected time, one set per worker: the worker is the only reader and
//! writer of its tables (AF_PACKET fanout sends all packets of a flow to the same worker), so there
//! is no lock and no atomic, and the counters are plain `u64`s the worker copies out.
//!
//! * [`FlowTable`]: 5-tuple ([`FiveTuple`]) → backend id, with an idle timeout per protocol and TCP
//!   state (after a FIN or RST the shorter `tcp_fin` timeout applies).
//! * [`FragTable`]: (source, destination, protocol, IP ID) ([`FragKey`]) → backend id for a few
//!   seconds, remembered from a datagram's first fragment (the one with the ports).
//!
//! The backend id is opaque here: the caller assigns it and keeps it stable across reloads.
//!
//! # Design: a set-associative cache
//! Every table is an array of buckets of [`WAYS`] = 8 entries. A key's bucket is chosen by its hash
//! (below); inside the bucket the key is searched by comparing all 8 entries, and a new key takes an
//! empty entry, else an expired one, else the bucket's least recently used one (an *eviction*).
//! This gives, per operation, one hash, a scan of 8 tags in one cache line and the key of (nearly
//! always) one entry in a second line: **bounded work, no walk, no allocation** (the array is
//! allocated and written once, in [`FlowTable::new`], so all its pages are resident before the
//! first packet), no lock, no syscall.
//!
//! Why not something else: a `std` `HashMap` grows (allocates) and has no eviction, and its default
//! hasher is randomly seeded; an LRU list (the `lru` crate, or Katran's kernel LRU map) needs two
//! pointers per entry and a pointer chase per access, and the crates allocate per entry or on
//! growth. The price of set-associativity is that LRU is per bucket (approximate), and that a
//! bucket can overflow before the table is full: with `n` live flows in a table of capacity `c`,
//! bucket occupancy is about Poisson(8 n / c), and the share of flows that do not fit their bucket
//! (and evict an idler flow of that bucket) is about 0.8 % at n = c/2, 5 % at n = 3c/4 and 14 % at
//! n = c. **Size the capacity at about twice the expected concurrent flows.** An evicted flow is
//! not lost: its next packet misses and the caller picks its backend again from the Maglev table,
//! which is the same backend unless the backends changed since the flow began.
//!
//! # Bucket layout (24 bytes per entry, no other overhead)
//! A bucket is 192 bytes, three 64-byte cache lines, aligned to a line:
//!
//! | line | bytes | field (one per way, ways 0–7) |
//! |---|---|---|
//! | 0 | 0..32 | tag (u32): protocol (bits 0–7), occupied (bit 8), timeout class (bits 9–10: other, TCP open, TCP closing), fingerprint (bits 16–31) |
//! | 0 | 32..64 | last use ([`Tick`], u32) |
//! | 1 | 64..128 | ways 0–3: addresses (u64: source << 32 \| destination), ports (u32: source port << 16 \| destination port; fragments: the IP ID), backend id (u32) |
//! | 2 | 128..192 | ways 4–7: the same |
//!
//! The fingerprint is 16 bits of the key's hash that the bucket index does not use (its low 16
//! bits). A lookup compares the 8 tags of line 0 with the key's (fingerprint, occupied, protocol)
//! and reads the key line only for the ways whose tag matches: one way for a key that is there
//! (plus a false match once in about 8000 lookups), none for a key that is not. Expiry, LRU age and
//! the sweep need only line 0. Each key also has a preferred half of the bucket (bit 16 of its
//! hash): an insert takes an empty (else an expired) way in that half first, so a key is
//! nearly always in the key line the prefetch loads (below). Which free way a new key takes is
//! the only thing that preference changes; the eviction of the least recently used entry looks at
//! all 8 ways as before.
//!
//! The table's memory is `capacity × 24` bytes: 24 MiB for a million flows
//! ([`FlowTable::memory_bytes`]). An empty entry has tag 0 and never matches a key (the occupied
//! bit is part of the comparison).
//!
//! # Cost, prefetching and memory
//! With 1M active flows in random order nearly every packet's bucket comes from memory, and a
//! packet handled on its own pays the whole memory latency: one lookup is ~150 instructions, too
//! few for the CPU to run ahead into the next packet's bucket (`cargo bench --bench flow`: about
//! 145 ns/packet in a 2M table against 31–35 ns with the table in the CPU caches). A batch-wise
//! caller hides it: [`FlowTable::prefetch`] starts loading the two lines a lookup of a key will
//! read (line 0 and the key's preferred key line), a few packets before that lookup, and
//! [`FiveTuple::hashed`] lets the lookup reuse the prefetch's hash. The data plane does this per
//! batch (see "Batches" in [`crate::dataplane`]). Two lines per lookup instead of three is a third
//! less memory traffic per packet, which is what bounds a prefetching caller.
//!
//! The bucket array asks for transparent huge pages (`madvise(MADV_HUGEPAGE)` on its 2 MiB-aligned
//! part before the first write). Random reads over tens of MiB otherwise miss the TLB on nearly
//! every packet, and in a virtual machine a TLB miss is a two-level page walk: with huge pages
//! the 1M-flow case measured about a fifth faster. Where THP is `never` the advice is refused and
//! nothing else changes; with THP `always` it is what the kernel does anyway.
//!
//! # Hash
//! XXH3-64 (`xxhash-rust`, a specified and frozen algorithm) with a fixed seed per table kind
//! ([`FLOW_TABLE_SEED`], [`FRAG_TABLE_SEED`]), over the key's bytes in network order: source
//! address (4), destination address (4), protocol (1), then source port (2) and destination port
//! (2) for a flow, or the IP ID (2) for a fragment. The bucket is the hash's high bits scaled to
//! the bucket count (`(hash × buckets) >> 64`), so the bucket count need not be a power of two.
//! The seeds differ from the Maglev flow hash's. A fixed seed lets someone who knows it aim many
//! flows at one bucket; the most that does is evict the other flows of that bucket, which then take
//! their backend from the Maglev table again (see above).
//!
//! # Time
//! Time is passed in as a [`Tick`], 1/16 s since an epoch the caller chooses
//! ([`Tick::since`]); nothing here reads a clock. The worker computes `now` once per batch. Ticks
//! wrap after 2^32 (8.5 years) and ages are computed modulo 2^32, so a daemon may run longer than
//! that; a `now` earlier than an entry's last use counts as age 0.
//!
//! # Timeouts
//! An entry expires when it has been idle (no lookup hit, no insert) for longer than its timeout:
//! [`Timeouts::tcp`] (default 900 s, as IPVS's established TCP), [`Timeouts::tcp_fin`] (default
//! 30 s) once a FIN or RST from the client was seen, [`Timeouts::udp`] (default 300 s, as IPVS's
//! UDP) for UDP and every other protocol. With direct server return only the client's packets pass
//! here, so after the client's FIN its ACKs of the server's remaining data still keep the entry
//! alive; a pure SYN (no ACK) on a closing entry is the client reusing the port for a new
//! connection and makes it open again (same backend, unless the data plane re-chooses it because
//! that backend is drained). An expired entry counts as a miss when it is
//! looked up and is reclaimed then (a *timeout*), or when its slot is needed for an insert, or by
//! [`FlowTable::sweep`], which the worker may call with a small budget once per batch so that
//! [`FlowTable::len`] also drops after traffic stops. `len()` counts occupied entries, including
//! expired ones not reclaimed yet.

use std::time::{Duration, Instant};

use xxhash_rust::xxh3::xxh3_64_with_seed;

#[cfg(test)]
mod tests;

/// Entries per bucket.
pub const WAYS: usize = 8;
/// Default total capacity across workers (`[flows] capacity`).
pub const DEFAULT_CAPACITY: usize = 1 << 20;
/// Smallest per-worker capacity [`per_worker`] gives.
pub const MIN_PER_WORKER: usize = 1024;
/// Largest capacity of one table (and largest total the configuration accepts): 64 Mi entries,
/// 1.5 GiB. [`FlowTable::new`] clamps to it.
pub const MAX_CAPACITY: usize = 64 << 20;
/// Entries of a worker's [`FragTable`].
pub const FRAG_CAPACITY: usize = 4096;
/// Default [`FragTable`] timeout.
pub const DEFAULT_FRAGMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes per entry, all overhead included.
pub const ENTRY_BYTES: usize = std::mem::size_of::<Bucket>() / WAYS;

/// Seed of the flow table's bucket hash: `"mlvconn1"` as a little-endian u64. Fixed.
pub const FLOW_TABLE_SEED: u64 = u64::from_le_bytes(*b"mlvconn1");
/// Seed of the fragment table's bucket hash: `"mlvfrag1"` as a little-endian u64. Fixed.
pub const FRAG_TABLE_SEED: u64 = u64::from_le_bytes(*b"mlvfrag1");

/// TCP FIN flag (in byte 13 of the TCP header: the `tcp_flags` of [`FlowTable::lookup`]).
pub const TCP_FIN: u8 = 0x01;
/// TCP SYN flag.
pub const TCP_SYN: u8 = 0x02;
/// TCP RST flag.
pub const TCP_RST: u8 = 0x04;
/// TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;

const IPPROTO_TCP: u8 = crate::wire::IPPROTO_TCP;

/// The per-worker capacity for a `total` across `workers`: `total / workers` rounded up, at least
/// [`MIN_PER_WORKER`], at most [`MAX_CAPACITY`], rounded up to a multiple of [`WAYS`] — exactly
/// the [`FlowTable::capacity`] a table built with it has. `workers = 0` counts as 1. The workers'
/// capacities may add up to a little more than `total` (rounding, the minimum).
pub fn per_worker(total: usize, workers: usize) -> usize {
    let share = total.div_ceil(workers.max(1)).max(MIN_PER_WORKER);
    round_capacity(share)
}

/// A capacity rounded up to a multiple of [`WAYS`], between [`WAYS`] and [`MAX_CAPACITY`].
fn round_capacity(capacity: usize) -> usize {
    capacity.clamp(1, MAX_CAPACITY).div_ceil(WAYS) * WAYS
}

// ---------------------------------------------------------------------------------------------
// Time

/// A coarse time: 1/16 s since an epoch the caller chose, wrapping after 2^32 ticks (8.5 years).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Tick(pub u32);

impl Tick {
    /// Ticks per second.
    pub const PER_SEC: u32 = 16;

    /// The tick of `now` relative to `epoch` (0 if `now` is before `epoch`).
    #[inline]
    pub fn since(epoch: Instant, now: Instant) -> Tick {
        Tick(duration_ticks(now.saturating_duration_since(epoch)) as u32)
    }

    /// `secs` seconds after the epoch.
    pub const fn from_secs(secs: u32) -> Tick {
        Tick(secs.wrapping_mul(Self::PER_SEC))
    }

    /// This tick plus `d` (rounded down to whole ticks), wrapping.
    pub fn after(self, d: Duration) -> Tick {
        Tick(self.0.wrapping_add(duration_ticks(d) as u32))
    }

    /// Ticks from `earlier` to `self`, modulo 2^32; 0 if `earlier` is later (more than 2^31 ticks
    /// "ago" is read as the future).
    #[inline]
    fn age_since(self, earlier: u32) -> u32 {
        let d = self.0.wrapping_sub(earlier);
        if d > i32::MAX as u32 { 0 } else { d }
    }
}

/// Whole ticks in `d` (not wrapped).
fn duration_ticks(d: Duration) -> u64 {
    (d.as_millis() * Tick::PER_SEC as u128 / 1000).min(u64::MAX as u128) as u64
}

/// A timeout in ticks: at least 1, below 2^31 (the largest age [`Tick::age_since`] reports).
fn timeout_ticks(d: Duration) -> u32 {
    duration_ticks(d).clamp(1, i32::MAX as u64 - 1) as u32
}

fn ticks_duration(t: u32) -> Duration {
    Duration::from_millis(u64::from(t) * 1000 / u64::from(Tick::PER_SEC))
}

/// Idle timeouts of [`FlowTable`] entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP, no FIN or RST seen (default 900 s).
    pub tcp: Duration,
    /// TCP after a FIN or RST from the client (default 30 s).
    pub tcp_fin: Duration,
    /// UDP and every protocol other than TCP (default 300 s).
    pub udp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { tcp: Duration::from_secs(900), tcp_fin: Duration::from_secs(30), udp: Duration::from_secs(300) }
    }
}

/// What a table counted since it was built (its worker is the only writer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableStats {
    /// Lookups that found a live entry.
    pub hits: u64,
    /// Lookups that found none (or an expired one).
    pub misses: u64,
    /// Entries created for a key that had no live one (replacing a live entry's backend is not
    /// counted).
    pub inserts: u64,
    /// Live entries dropped to make room in a full bucket (the least recently used of it).
    pub evictions: u64,
    /// Expired entries reclaimed (by a lookup, an insert needing the slot, or a sweep).
    pub timeouts: u64,
}

// ---------------------------------------------------------------------------------------------
// Keys

/// A connection as the client sends it: addresses and ports in host order, IP protocol number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FiveTuple {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl FiveTuple {
    /// This key with its [`FlowTable`] hash, computed once for a [`FlowTable::prefetch`] and the
    /// lookup (and insert) that follow it.
    #[inline]
    pub fn hashed(&self) -> HashedTuple {
        // The 13 bytes in network order, put together in a register and stored at once: byte
        // stores read back as 8-byte words by the hash would stall store forwarding.
        let word = u128::from(u32::from_le_bytes(self.src.to_be_bytes()))
            | u128::from(u32::from_le_bytes(self.dst.to_be_bytes())) << 32
            | u128::from(self.proto) << 64
            | u128::from(u16::from_le_bytes(self.sport.to_be_bytes())) << 72
            | u128::from(u16::from_le_bytes(self.dport.to_be_bytes())) << 88;
        let b = word.to_le_bytes();
        HashedTuple { key: *self, hash: xxh3_64_with_seed(&b[..13], FLOW_TABLE_SEED) }
    }

    #[cfg(test)]
    fn packed(&self) -> Packed {
        self.hashed().packed()
    }
}

/// A [`FiveTuple`] and its bucket hash ([`FiveTuple::hashed`]): the table's methods that take
/// one do not hash again. Only [`FiveTuple::hashed`] makes one, so the hash always belongs to the
/// key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashedTuple {
    key: FiveTuple,
    hash: u64,
}

impl HashedTuple {
    /// The key.
    #[inline]
    pub fn key(&self) -> &FiveTuple {
        &self.key
    }

    #[inline]
    fn packed(&self) -> Packed {
        let k = &self.key;
        Packed {
            addrs: u64::from(k.src) << 32 | u64::from(k.dst),
            ports: u32::from(k.sport) << 16 | u32::from(k.dport),
            proto: k.proto,
            hash: self.hash,
        }
    }
}

/// A fragmented datagram: addresses in host order, IP protocol number, IP identification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    pub src: u32,
    pub dst: u32,
    pub proto: u8,
    pub id: u16,
}

impl FragKey {
    #[inline]
    fn packed(&self) -> Packed {
        let mut b = [0u8; 11];
        b[0..4].copy_from_slice(&self.src.to_be_bytes());
        b[4..8].copy_from_slice(&self.dst.to_be_bytes());
        b[8] = self.proto;
        b[9..11].copy_from_slice(&self.id.to_be_bytes());
        Packed {
            addrs: u64::from(self.src) << 32 | u64::from(self.dst),
            ports: u32::from(self.id),
            proto: self.proto,
            hash: xxh3_64_with_seed(&b, FRAG_TABLE_SEED),
        }
    }
}

/// A key in the entries' form, with its hash.
#[derive(Debug, Clone, Copy)]
struct Packed {
    addrs: u64,
    ports: u32,
    proto: u8,
    hash: u64,
}

// ---------------------------------------------------------------------------------------------
// Storage

const OCCUPIED: u32 = 1 << 8;
const CLASS_SHIFT: u32 = 9;
const CLASS_MASK: u32 = 3 << CLASS_SHIFT;
const FINGERPRINT_SHIFT: u32 = 16;
/// The bits of a tag a key must match: fingerprint, occupied, protocol (not the class).
const MATCH_MASK: u32 = 0xffff_0000 | OCCUPIED | 0xff;
/// Ways per key line (a half of the bucket).
const HALF: usize = WAYS / 2;

impl Packed {
    /// The tag bits an entry of this key has under [`MATCH_MASK`].
    #[inline]
    fn tag(&self) -> u32 {
        (self.hash as u16 as u32) << FINGERPRINT_SHIFT | OCCUPIED | u32::from(self.proto)
    }

    /// The key line (half of the bucket) this key's entry goes to when it has room: 0 or 1.
    #[inline]
    fn half(&self) -> usize {
        (self.hash >> 16) as usize & 1
    }
}

/// Which timeout applies to an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Class {
    /// UDP, other protocols, fragments.
    Other = 0,
    TcpOpen = 1,
    TcpClosing = 2,
}

#[inline]
fn tag_class(tag: u32) -> usize {
    ((tag & CLASS_MASK) >> CLASS_SHIFT) as usize
}

#[inline]
fn with_class(tag: u32, class: Class) -> u32 {
    (tag & !CLASS_MASK) | (class as u32) << CLASS_SHIFT
}

/// The part of an entry in a key line; all zero when empty.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct Key {
    addrs: u64,
    ports: u32,
    backend: u32,
}

/// [`WAYS`] entries in three cache lines (layout in the module doc): line 0 holds every way's
/// tag and last use, lines 1 and 2 the keys and backends of ways 0–3 and 4–7.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
struct Bucket {
    tags: [u32; WAYS],
    last_used: [u32; WAYS],
    keys: [Key; WAYS],
}

/// One entry, copied out of its bucket (for listings).
#[derive(Debug, Clone, Copy)]
struct Entry {
    key: Key,
    tag: u32,
    last_used: u32,
}

impl Bucket {
    /// Ways whose tag matches `tag` under [`MATCH_MASK`], as a bit mask: reads line 0 only.
    #[inline]
    fn candidates(&self, tag: u32) -> u32 {
        let mut mask = 0;
        for (way, t) in self.tags.iter().enumerate() {
            mask |= u32::from(t & MATCH_MASK == tag) << way;
        }
        mask
    }

    /// The way holding `k`: its tag matches and so does its key (read only for candidates).
    #[inline]
    fn find(&self, k: &Packed) -> Option<usize> {
        let mut mask = self.candidates(k.tag());
        while mask != 0 {
            let way = mask.trailing_zeros() as usize;
            let key = &self.keys[way];
            if key.addrs == k.addrs && key.ports == k.ports {
                return Some(way);
            }
            mask &= mask - 1;
        }
        None
    }

    #[inline]
    fn store(&mut self, way: usize, k: &Packed, backend: u32, class: Class, now: Tick) {
        self.tags[way] = with_class(k.tag(), class);
        self.last_used[way] = now.0;
        self.keys[way] = Key { addrs: k.addrs, ports: k.ports, backend };
    }

    #[inline]
    fn clear(&mut self, way: usize) {
        self.tags[way] = 0;
        self.last_used[way] = 0;
        self.keys[way] = Key::default();
    }
}

/// The set-associative core shared by both tables.
#[derive(Debug)]
struct Sets {
    buckets: Box<[Bucket]>,
    /// Timeout in ticks per [`Class`] (index 3 unused).
    timeouts: [u32; 4],
    len: usize,
    /// Next bucket [`Sets::sweep`] visits.
    cursor: usize,
    stats: TableStats,
}

impl Sets {
    fn new(capacity: usize, timeouts: [u32; 4]) -> Sets {
        let n = round_capacity(capacity) / WAYS;
        let mut buckets = Vec::with_capacity(n);
        // Huge pages where the kernel allows them (advice given before the first write, so the
        // pages are faulted in huge): see "Memory" in the module doc. Refused advice changes
        // nothing but speed.
        let _ = crate::io::advise_hugepages(buckets.spare_capacity_mut());
        // Writing every entry makes every page resident here rather than on the first packets.
        buckets.resize(n, Bucket::default());
        let buckets = buckets.into_boxed_slice();
        Sets { buckets, timeouts, len: 0, cursor: 0, stats: TableStats::default() }
    }

    fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// The key's bucket: the hash's high bits scaled to the bucket count (`< buckets.len()`
    /// because `hash < 2^64`).
    #[inline]
    fn bucket_index(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.buckets.len() as u128) >> 64) as usize
    }

    /// Prefetch the two cache lines a lookup of `k` reads: the bucket's line 0 and the key line
    /// of its half.
    #[inline]
    fn prefetch(&self, k: &Packed) {
        let b = &self.buckets[self.bucket_index(k.hash)];
        crate::io::prefetch(&b.tags);
        crate::io::prefetch(&b.keys[k.half() * HALF]);
    }

    #[inline]
    fn expired(timeouts: &[u32; 4], tag: u32, last_used: u32, now: Tick) -> bool {
        now.age_since(last_used) > timeouts[tag_class(tag)]
    }

    /// The live entry for `k`: refresh it, let `on_hit` update its tag, and return its backend.
    #[inline]
    fn lookup(&mut self, k: &Packed, now: Tick, on_hit: impl FnOnce(&mut u32)) -> Option<u32> {
        let timeouts = self.timeouts;
        let i = self.bucket_index(k.hash);
        let b = &mut self.buckets[i];
        let Some(way) = b.find(k) else {
            self.stats.misses += 1;
            return None;
        };
        if Self::expired(&timeouts, b.tags[way], b.last_used[way], now) {
            b.clear(way);
            self.len -= 1;
            self.stats.timeouts += 1;
            self.stats.misses += 1;
            return None;
        }
        b.last_used[way] = now.0;
        on_hit(&mut b.tags[way]);
        self.stats.hits += 1;
        Some(b.keys[way].backend)
    }

    /// Store `k` → `backend`: over its own entry if it has one, else in an empty entry, else in an
    /// expired one, else over the bucket's least recently used entry. Among empty (or expired)
    /// entries, one in the key's own half is taken first.
    #[inline]
    fn insert(&mut self, k: &Packed, backend: u32, class: Class, now: Tick) {
        let timeouts = self.timeouts;
        let bucket = self.bucket_index(k.hash);
        let b = &mut self.buckets[bucket];
        if let Some(way) = b.find(k) {
            // The key's own entry: a new backend for a live flow, or a new flow if it expired.
            if Self::expired(&timeouts, b.tags[way], b.last_used[way], now) {
                self.stats.timeouts += 1;
                self.stats.inserts += 1;
            }
            b.store(way, k, backend, class, now);
            return;
        }
        let mut empty = None;
        let mut expired = None;
        let mut oldest = (0, 0u32); // (way, age)
        // The key's half first, so that the first free way found is in it.
        let first = k.half() * HALF;
        for n in 0..WAYS {
            let way = (first + n) % WAYS;
            let (tag, last_used) = (b.tags[way], b.last_used[way]);
            if tag & OCCUPIED == 0 {
                empty = empty.or(Some(way));
            } else if Self::expired(&timeouts, tag, last_used, now) {
                expired = expired.or(Some(way));
            } else {
                let age = now.age_since(last_used);
                // Ties go to the lowest way, whatever the half.
                if age > oldest.1 || (age == oldest.1 && way < oldest.0) {
                    oldest = (way, age);
                }
            }
        }
        let way = match (empty, expired) {
            (Some(way), _) => {
                self.len += 1;
                way
            }
            (None, Some(way)) => {
                self.stats.timeouts += 1;
                way
            }
            (None, None) => {
                self.stats.evictions += 1;
                oldest.0
            }
        };
        self.stats.inserts += 1;
        b.store(way, k, backend, class, now);
    }

    /// Reclaim the expired entries of the next `buckets` buckets (wrapping); how many. Reads and
    /// writes line 0 of each bucket (and the key lines only of the entries it clears).
    fn sweep(&mut self, now: Tick, buckets: usize) -> usize {
        let mut reclaimed = 0;
        for _ in 0..buckets.min(self.buckets.len()) {
            let timeouts = self.timeouts;
            let cursor = self.cursor;
            self.cursor = if cursor + 1 == self.buckets.len() { 0 } else { cursor + 1 };
            let b = &mut self.buckets[cursor];
            for way in 0..WAYS {
                let (tag, last_used) = (b.tags[way], b.last_used[way]);
                if tag & OCCUPIED != 0 && Self::expired(&timeouts, tag, last_used, now) {
                    b.clear(way);
                    reclaimed += 1;
                }
            }
        }
        self.len -= reclaimed;
        self.stats.timeouts += reclaimed as u64;
        reclaimed
    }

    /// Live entries, in table order: a walk over the whole table, for operators, not per packet.
    fn live(&self, now: Tick) -> impl Iterator<Item = Entry> + '_ {
        let timeouts = self.timeouts;
        self.buckets
            .iter()
            .flat_map(|b| (0..WAYS).map(move |w| Entry { key: b.keys[w], tag: b.tags[w], last_used: b.last_used[w] }))
            .filter(move |e| e.tag & OCCUPIED != 0 && !Self::expired(&timeouts, e.tag, e.last_used, now))
    }

    #[cfg(test)]
    fn count_occupied(&self) -> usize {
        self.buckets.iter().flat_map(|b| b.tags.iter()).filter(|&&t| t & OCCUPIED != 0).count()
    }
}

// ---------------------------------------------------------------------------------------------
// Flow table

/// A worker's connection table: [`FiveTuple`] → backend id. See the module doc.
#[derive(Debug)]
pub struct FlowTable {
    sets: Sets,
}

/// One live entry, as [`FlowTable::entries`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowEntry {
    pub key: FiveTuple,
    pub backend: u32,
    /// Time since the entry was last used (in whole ticks).
    pub idle: Duration,
    /// Time until it expires unless used again (its class's timeout minus `idle`).
    pub expires_in: Duration,
    /// A FIN or RST was seen: the shorter `tcp_fin` timeout applies.
    pub closing: bool,
}

impl FlowTable {
    /// A table of `capacity` entries rounded up to a multiple of [`WAYS`] (at least [`WAYS`], at
    /// most [`MAX_CAPACITY`]), all allocated and written now. Timeouts are kept in whole ticks (at
    /// least one).
    pub fn new(capacity: usize, timeouts: Timeouts) -> FlowTable {
        let t = [timeout_ticks(timeouts.udp), timeout_ticks(timeouts.tcp), timeout_ticks(timeouts.tcp_fin), 0];
        FlowTable { sets: Sets::new(capacity, t) }
    }

    /// Entries the table holds at most.
    pub fn capacity(&self) -> usize {
        self.sets.capacity()
    }

    /// Occupied entries (including expired ones not reclaimed yet).
    pub fn len(&self) -> usize {
        self.sets.len
    }

    pub fn is_empty(&self) -> bool {
        self.sets.len == 0
    }

    /// Bytes of the entries: `capacity × ENTRY_BYTES`, all the table's memory but a few words.
    pub fn memory_bytes(&self) -> usize {
        self.capacity() * ENTRY_BYTES
    }

    /// The counters.
    pub fn stats(&self) -> TableStats {
        self.sets.stats
    }

    /// Entries inserted so far (the `inserts` of [`FlowTable::stats`], without copying them all).
    #[inline]
    pub fn inserts(&self) -> u64 {
        self.sets.stats.inserts
    }

    /// Start loading `key`'s bucket into the CPU caches, so that a [`FlowTable::lookup_hashed`] of
    /// it a little later (after the other packets of a batch have been prefetched) finds it
    /// there. Changes nothing in the table; costs the hash and one prefetch instruction per cache
    /// line of the bucket.
    #[inline]
    pub fn prefetch(&self, key: &HashedTuple) {
        self.sets.prefetch(&key.packed());
    }

    /// The backend of `key`'s live entry, refreshing its last use to `now`. For TCP, `tcp_flags`
    /// (the packet's flags byte; 0 for other protocols) updates the entry's state: FIN or RST makes
    /// it closing (`tcp_fin` timeout), a SYN without ACK makes a closing entry open again. An
    /// expired entry is a miss and is reclaimed.
    #[inline]
    pub fn lookup(&mut self, key: &FiveTuple, tcp_flags: u8, now: Tick) -> Option<u32> {
        self.lookup_hashed(&key.hashed(), tcp_flags, now)
    }

    /// [`FlowTable::lookup`] of a key hashed already.
    #[inline]
    pub fn lookup_hashed(&mut self, key: &HashedTuple, tcp_flags: u8, now: Tick) -> Option<u32> {
        let proto = key.key.proto;
        self.sets.lookup(&key.packed(), now, |tag| {
            if proto == IPPROTO_TCP {
                if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                    *tag = with_class(*tag, Class::TcpClosing);
                } else if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
                    *tag = with_class(*tag, Class::TcpOpen);
                }
            }
        })
    }

    /// Remember `key` → `backend` as of `now`, replacing `key`'s entry if it has one (this is also
    /// how a flow whose backend went away gets its new one). A TCP entry starts closing if
    /// `tcp_flags` has FIN or RST. In a full bucket an expired entry is reused, else the least
    /// recently used one is evicted.
    #[inline]
    pub fn insert(&mut self, key: &FiveTuple, backend: u32, tcp_flags: u8, now: Tick) {
        self.insert_hashed(&key.hashed(), backend, tcp_flags, now);
    }

    /// [`FlowTable::insert`] of a key hashed already.
    #[inline]
    pub fn insert_hashed(&mut self, key: &HashedTuple, backend: u32, tcp_flags: u8, now: Tick) {
        let class = match (key.key.proto == IPPROTO_TCP, tcp_flags & (TCP_FIN | TCP_RST) != 0) {
            (false, _) => Class::Other,
            (true, false) => Class::TcpOpen,
            (true, true) => Class::TcpClosing,
        };
        self.sets.insert(&key.packed(), backend, class, now);
    }

    /// Reclaim the expired entries of the next `buckets` buckets (of `capacity / WAYS`, visited in
    /// turn); returns how many. Bounded work (`buckets × WAYS` entries): a worker can call it once
    /// per batch and when idle so that `len()` follows the live flows.
    pub fn sweep(&mut self, now: Tick, buckets: usize) -> usize {
        self.sets.sweep(now, buckets)
    }

    /// Up to `limit` live entries, in table order. This walks the table (up to all of it to find
    /// them): it is for operators, not for the per-packet path.
    pub fn entries(&self, now: Tick, limit: usize) -> impl Iterator<Item = FlowEntry> + '_ {
        self.sets.live(now).take(limit).map(move |e| FlowEntry {
            key: FiveTuple {
                src: (e.key.addrs >> 32) as u32,
                dst: e.key.addrs as u32,
                sport: (e.key.ports >> 16) as u16,
                dport: e.key.ports as u16,
                proto: e.tag as u8,
            },
            backend: e.key.backend,
            idle: ticks_duration(now.age_since(e.last_used)),
            expires_in: ticks_duration(self.sets.timeouts[tag_class(e.tag)].saturating_sub(now.age_since(e.last_used))),
            closing: tag_class(e.tag) == Class::TcpClosing as usize,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Fragment table

/// A worker's fragment table: [`FragKey`] → backend id of the datagram's first fragment, for
/// `timeout` after its last use. Same design as [`FlowTable`]. A later fragment that arrives
/// before the first one misses; the caller decides what to do with it.
#[derive(Debug)]
pub struct FragTable {
    sets: Sets,
}

impl FragTable {
    /// A table of `capacity` entries (rounded like [`FlowTable::new`]; [`FRAG_CAPACITY`] is the
    /// intended size) whose entries expire `timeout` after their last use.
    pub fn new(capacity: usize, timeout: Duration) -> FragTable {
        let t = timeout_ticks(timeout);
        FragTable { sets: Sets::new(capacity, [t, t, t, 0]) }
    }

    pub fn capacity(&self) -> usize {
        self.sets.capacity()
    }

    /// Occupied entries (including expired ones not reclaimed yet).
    pub fn len(&self) -> usize {
        self.sets.len
    }

    pub fn is_empty(&self) -> bool {
        self.sets.len == 0
    }

    pub fn stats(&self) -> TableStats {
        self.sets.stats
    }

    /// Remember the backend the first fragment of datagram `key` went to.
    #[inline]
    pub fn remember(&mut self, key: &FragKey, backend: u32, now: Tick) {
        self.sets.insert(&key.packed(), backend, Class::Other, now);
    }

    /// The backend of datagram `key`, refreshing its entry; an expired entry is a miss.
    #[inline]
    pub fn lookup(&mut self, key: &FragKey, now: Tick) -> Option<u32> {
        self.sets.lookup(&key.packed(), now, |_| {})
    }
}

impl FragTable {
    /// Reclaim the expired entries of the next `buckets` buckets, like [`FlowTable::sweep`].
    pub fn sweep(&mut self, now: Tick, buckets: usize) -> usize {
        self.sets.sweep(now, buckets)
    }
}

// ---------------------------------------------------------------------------------------------
// A worker's tracking state

/// Everything one worker tracks: its flow table, its fragment table, and what the data plane
/// counted while using them (the tables count their own hits, misses and the rest).
#[derive(Debug)]
pub struct Tracker {
    pub flows: FlowTable,
    pub frags: FragTable,
    /// Tracked flows whose backend was removed, went down or lost its MAC, so the flow was given
    /// a new one from the table.
    pub rechosen: u64,
    /// Non-first fragments sent to their first fragment's backend.
    pub fragments_followed: u64,
    /// Non-first fragments whose first fragment was not seen (or whose backend went away): sent
    /// by the hash of source, destination and protocol instead.
    pub fragments_untracked: u64,
}

impl Tracker {
    /// A worker's tables: `capacity` flow entries (see [`per_worker`]), [`FRAG_CAPACITY`]
    /// fragment entries.
    pub fn new(capacity: usize, timeouts: Timeouts, fragment_timeout: Duration) -> Tracker {
        Tracker {
            flows: FlowTable::new(capacity, timeouts),
            frags: FragTable::new(FRAG_CAPACITY, fragment_timeout),
            rechosen: 0,
            fragments_followed: 0,
            fragments_untracked: 0,
        }
    }

    /// Reclaim expired entries of the next `buckets` buckets of each table.
    pub fn sweep(&mut self, now: Tick, buckets: usize) {
        self.flows.sweep(now, buckets);
        self.frags.sweep(now, buckets);
    }
}
