//! Bit-exact reproduction of the Linux kernel's IPVS `mh` (Maglev hashing) scheduler.
//!
//! maglevd's `ipvs-mh` compatibility mode must build the *same* lookup table as the kernel's
//! `net/netfilter/ipvs/ip_vs_mh.c` and pick the *same* real server for every new flow, so that a
//! fleet can move frontends from IPVS to maglevd one host at a time behind one ECMP router without
//! reshuffling new connections. The algorithm in numbered parts, which the rest of this module
//! and [`crate::ipvs_import`] refer to as §1…§9:
//!
//! * §1 parameters: table size `M = primes[tab_index − 8]` ([`table_size`], default index 12 →
//!   M = 4093), `TAB_BITS = tab_index / 2` ([`tab_bits`]), the fixed keys [`K1`] and [`K2`] and the
//!   service flags `mh-fallback` / `mh-port` ([`MhFlags`]).
//! * §2 the hash: on 64-bit kernels `hsiphash` is SipHash-1-3 truncated to 32 bits over the 4
//!   little-endian bytes of `v` ([`hsiphash_u32`]; the general [`hsiphash`] passes the kernel's
//!   self-test vectors).
//! * §3 [`fold`] and [`hashkey`]: `H(key, offset + port + fold(addr))` with wrapping adds, so
//!   collisions such as (10.0.0.1, 81) = (10.0.0.2, 80) are reproduced on purpose.
//! * §4 per-dest `offset`/`skip` ([`dest_permutation`]), §5 weights → turns ([`WeightScale`]),
//!   §6 table population ([`build`]), §7 lookup ([`MhTable::lookup`], [`MhTable::lookup_by`];
//!   bounded as described below).
//! * §9 `last_weight` versus current `weight` ([`MhDest::edit_weight`]): slots follow
//!   `last_weight`, availability follows `weight` and the overload flag.
//!
//! # Kernel list order (§8)
//!
//! [`build`] takes the destinations in **kernel list order**. `ipvsadm -a` (and keepalived over
//! netlink) inserts at the list *head*, so kernel order is the **reverse of the `ipvsadm -a`
//! order**: the most recently added dest is index 0. `ipvsadm -e` does not move a dest;
//! `ipvsadm -d` followed by `-a` puts it at the head again. `ipvsadm -Ln --nosort` (or a netlink
//! dump) shows the true order; plain `ipvsadm -Ln` and `ipvsadm-save` sort by address and do not.
//! Every index returned by this module (table slots, lookups) is an index into that slice.
//!
//! # Kernels that cannot be matched (§2)
//!
//! Only 64-bit little-endian kernels (x86_64, arm64) are reproduced. 32-bit kernels run real
//! HalfSipHash-1-3 with 32-bit keys, and big-endian 64-bit kernels (s390x, ppc64 BE) hash `v`
//! byte-swapped; both give different tables.
//!
//! # Behaviour at the edges
//!
//! * No dest with `last_weight > 0` (including no dests at all): the table is empty (every slot
//!   [`NO_DEST`]) and every lookup finds no destination.
//! * More dests than `M`: the kernel refuses to rebuild (`-EINVAL`) and keeps its old table;
//!   [`build`] returns [`MhError::TooManyDests`] and the caller should keep its previous table.
//! * Negative `last_weight` cannot exist in IPVS (`-ERANGE` at configuration time), so [`build`]
//!   rejects it rather than guessing.
//! * Mixed address families (tunnel dests of the other family) fold as the kernel's
//!   `union nf_inet_addr` memory would: see [`fold`].
//!
//! The lookup path ([`MhTable::lookup_by`]) does not allocate and never panics;
//! [`MhTable::lookup`] is the convenience that prepares the dests' state on every call.
//!
//! # Bounded lookup cost: the one place maglevd departs from the kernel
//!
//! With `mh-fallback`, the kernel rehashes a client whose slot owner is unavailable up to M times
//! (§7). When no dest is available, or almost none, that is up to M = 131071 SipHash evaluations
//! for *every* packet: ≈ 2.6 ms per frame on one worker, at start-up before ARP resolves, with
//! everything drained, or in an outage. maglevd bounds a lookup to at most
//! `1 + FALLBACK_PROBES` ([`FALLBACK_PROBES`] = 32) evaluations of [`hashkey`] in every state, with
//! this rule, evaluated against an [`MhAvailability`] prepared once per table and backend state
//! (O(M), at snapshot build):
//!
//! 1. No slot is owned by an available dest: no destination, with **no** hash evaluated. The
//!    kernel gives the same answer after its walk, so this is not a departure.
//! 2. Otherwise the primary slot `hashkey(client, port, K1, 0) mod M` decides as in the kernel: an
//!    available owner is the answer; without `mh-fallback` an unavailable one is no destination.
//! 3. With `mh-fallback` the kernel's walk runs for its first [`FALLBACK_PROBES`] steps, unchanged
//!    (offsets `r = ihash, ihash + 1, …`). An available owner found there is the kernel's answer.
//! 4. **Only** when those steps all land on unavailable owners does maglevd stop walking and
//!    answer the owner of the first slot at or after the primary slot (wrapping at M) whose owner
//!    is available. The kernel would keep walking and usually pick another dest.
//!
//! So maglevd and the kernel agree on every lookup except those that miss 1 + 32 times in a row,
//! which needs most of the table to be unavailable: with a fraction `a` of the slots owned by
//! available dests, a client whose primary owner is unavailable departs with probability
//! `(1 − a)^32` (a = 5/6: 10⁻²⁵; a = 1/8: 1.4 %). The departure is still deterministic and a pure
//! function of the configuration and backend state, so every maglevd frontend picks the same
//! dest.

mod hsiphash;

pub use hsiphash::{HsipKey, hsiphash, hsiphash_u32};

use std::net::IpAddr;
use thiserror::Error;

/// First compiled-in key of `ip_vs_mh.c` (`generate_hash_secret`): offsets and lookups (§1).
pub const K1: HsipKey = (2_654_435_761, 2_654_435_761);
/// Second compiled-in key: per-dest skips (§1).
pub const K2: HsipKey = (2_654_446_892, 2_654_446_892);

/// The kernel's `primes[]`: table sizes for `CONFIG_IP_VS_MH_TAB_INDEX` 8..=17 (§1).
pub const PRIMES: [u32; 10] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131_071];
/// Smallest `CONFIG_IP_VS_MH_TAB_INDEX` Kconfig allows.
pub const MIN_TAB_INDEX: u8 = 8;
/// Largest `CONFIG_IP_VS_MH_TAB_INDEX` Kconfig allows.
pub const MAX_TAB_INDEX: u8 = 17;
/// The Kconfig default `CONFIG_IP_VS_MH_TAB_INDEX` (M = 4093).
pub const DEFAULT_TAB_INDEX: u8 = 12;
/// Slot value meaning "no destination".
pub const NO_DEST: u32 = u32::MAX;
/// Rehashes an `mh-fallback` lookup makes, as the kernel does, before it takes the
/// precomputed fallback instead (see "Bounded lookup cost" in the module docs).
pub const FALLBACK_PROBES: u32 = 32;

/// `IP_VS_SVC_F_SCHED1`, i.e. `mh-fallback`.
pub const IP_VS_SVC_F_SCHED_MH_FALLBACK: u32 = 0x0008;
/// `IP_VS_SVC_F_SCHED2`, i.e. `mh-port`.
pub const IP_VS_SVC_F_SCHED_MH_PORT: u32 = 0x0010;

/// Errors of this module. Each corresponds to a state the kernel refuses.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MhError {
    /// `CONFIG_IP_VS_MH_TAB_INDEX` outside 8..=17.
    #[error("IPVS mh table index {0} is out of range: CONFIG_IP_VS_MH_TAB_INDEX must be 8..=17")]
    InvalidTabIndex(u8),
    /// More destinations than table slots: the kernel returns `-EINVAL` and keeps its old table.
    #[error(
        "{dests} destinations exceed the IPVS mh table size {size}; the kernel refuses to rebuild \
         (EINVAL) and keeps its previous table"
    )]
    TooManyDests {
        /// Number of destinations given.
        dests: usize,
        /// Table size M.
        size: u32,
    },
    /// A negative `last_weight`, which IPVS never stores (it rejects negative weights).
    #[error(
        "destination #{index} has negative last_weight {last_weight}; IPVS rejects negative \
         weights (ERANGE)"
    )]
    NegativeWeight {
        /// Index of the dest in kernel list order.
        index: usize,
        /// The offending value.
        last_weight: i32,
    },
}

/// Address family of the *service*; it decides how every address is folded (§3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `AF_INET` service.
    Inet,
    /// `AF_INET6` service.
    Inet6,
}

impl Family {
    /// The family of an address (use the *service* address).
    #[must_use]
    pub const fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::Inet,
            IpAddr::V6(_) => Self::Inet6,
        }
    }
}

/// `ntohl(addr_fold)` of `ip_vs_mh_hashkey` for a service of `family` (§3).
///
/// * `Inet` service, IPv4 address: the address as a big-endian u32 (10.0.0.1 → 0x0A000001).
/// * `Inet6` service, IPv6 address: XOR of the four big-endian u32 words
///   (2001:db8::1 → 0x20010db9).
///
/// Mixed families only occur for tunnel dests; the kernel then folds the dest's
/// `union nf_inet_addr` by the *service* family. An IPv4 dest of an `Inet6` service has zeroed
/// upper words (the dest struct is `kzalloc`ed), so it folds to its IPv4 value; an IPv6 dest of an
/// `Inet` service folds to its first 32-bit word (`addr->ip`).
#[must_use]
pub const fn fold(family: Family, addr: IpAddr) -> u32 {
    match addr {
        IpAddr::V4(a) => a.to_bits(),
        IpAddr::V6(a) => {
            let o = a.octets();
            let w0 = u32::from_be_bytes([o[0], o[1], o[2], o[3]]);
            match family {
                Family::Inet => w0,
                Family::Inet6 => {
                    w0 ^ u32::from_be_bytes([o[4], o[5], o[6], o[7]])
                        ^ u32::from_be_bytes([o[8], o[9], o[10], o[11]])
                        ^ u32::from_be_bytes([o[12], o[13], o[14], o[15]])
                }
            }
        }
    }
}

/// `ip_vs_mh_hashkey`: `H(key, (offset + port + fold) mod 2^32)` (§3). `port` is the plain number.
#[inline]
#[must_use]
pub const fn hashkey(fold: u32, port: u16, key: HsipKey, offset: u32) -> u32 {
    hsiphash_u32(key, offset.wrapping_add(port as u32).wrapping_add(fold))
}

/// Table size M for `CONFIG_IP_VS_MH_TAB_INDEX` (§1).
///
/// # Errors
/// [`MhError::InvalidTabIndex`] outside 8..=17.
pub const fn table_size(tab_index: u8) -> Result<u32, MhError> {
    if tab_index < MIN_TAB_INDEX || tab_index > MAX_TAB_INDEX {
        return Err(MhError::InvalidTabIndex(tab_index));
    }
    Ok(PRIMES[(tab_index - MIN_TAB_INDEX) as usize])
}

/// `IP_VS_MH_TAB_BITS = CONFIG_IP_VS_MH_TAB_INDEX / 2`, used only for weight scaling (§1, §5).
#[must_use]
pub const fn tab_bits(tab_index: u8) -> u32 {
    tab_index as u32 / 2
}

/// `(offset, skip)` for M = `size` ≥ 2 (§4). Private: `size` always comes from [`PRIMES`].
#[inline]
const fn permutation_in(fold: u32, port: u16, size: u32) -> (u32, u32) {
    let offset = hashkey(fold, port, K1, 0) % size;
    let skip = hashkey(fold, port, K2, 0) % (size - 1) + 1;
    (offset, skip)
}

/// A dest's `(offset, skip)` for table index `tab_index` (§4); `fold` from [`fold`].
///
/// # Errors
/// [`MhError::InvalidTabIndex`] outside 8..=17.
pub const fn dest_permutation(fold: u32, port: u16, tab_index: u8) -> Result<(u32, u32), MhError> {
    match table_size(tab_index) {
        Ok(m) => Ok(permutation_in(fold, port, m)),
        Err(e) => Err(e),
    }
}

/// One real server as the scheduler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MhDest {
    /// Stored dest address.
    pub addr: IpAddr,
    /// Stored dest port (for `-g`/`-i` on a non-fwmark service ipvsadm forces the service port;
    /// fwmark services without a port give 0; see §8.3).
    pub port: u16,
    /// Current weight: decides availability (`≤ 0` is unavailable).
    pub weight: i32,
    /// Weight the table is built from (§9): set on add, and on edit only when non-zero.
    pub last_weight: i32,
    /// The kernel's `IP_VS_DEST_F_OVERLOAD` flag (connection count at the `-x` threshold).
    pub overloaded: bool,
}

impl MhDest {
    /// A dest as after `ipvsadm -a … -w weight`: `last_weight = weight`, not overloaded.
    #[must_use]
    pub const fn new(addr: IpAddr, port: u16, weight: i32) -> Self {
        Self { addr, port, weight, last_weight: weight, overloaded: false }
    }

    /// Apply `ipvsadm -e … -w weight` (`__ip_vs_update_dest` with add = 0): the current weight
    /// always changes, `last_weight` only when `weight ≠ 0`. So `-w 0` drains without moving slots.
    pub const fn edit_weight(&mut self, weight: i32) {
        self.weight = weight;
        if weight != 0 {
            self.last_weight = weight;
        }
    }

    /// `!is_unavailable(dest)`: current weight > 0 and not overloaded (§7).
    #[inline]
    #[must_use]
    pub const fn is_available(&self) -> bool {
        self.weight > 0 && !self.overloaded
    }
}

/// The service's gcd and rshift (§5), from which each dest's turns follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightScale {
    gcd: u32,
    rshift: u32,
}

const fn gcd_u32(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a
}

impl WeightScale {
    /// `ip_vs_mh_gcd_weight` and `ip_vs_mh_shift_weight` over the `last_weight`s in list order.
    /// `Ok(None)` when no `last_weight` is > 0: the kernel then empties the table.
    ///
    /// # Errors
    /// [`MhError::NegativeWeight`] for a negative `last_weight`.
    pub fn new(last_weights: impl IntoIterator<Item = i32>, tab_index: u8) -> Result<Option<Self>, MhError> {
        let mut g = 0u32;
        let mut max = 0u32;
        for (index, lw) in last_weights.into_iter().enumerate() {
            let Ok(w) = u32::try_from(lw) else {
                return Err(MhError::NegativeWeight { index, last_weight: lw });
            };
            if w > 0 {
                g = if g > 0 { gcd_u32(w, g) } else { w };
                max = max.max(w);
            }
        }
        if g == 0 {
            return Ok(None);
        }
        let mw = max / g;
        let bitlength = u32::BITS - mw.leading_zeros(); // the kernel's fls()
        Ok(Some(Self { gcd: g, rshift: bitlength.saturating_sub(tab_bits(tab_index)) }))
    }

    /// gcd of all positive `last_weight`s (≥ 1).
    #[must_use]
    pub const fn gcd(&self) -> u32 {
        self.gcd
    }

    /// Right shift applied to `last_weight / gcd`.
    #[must_use]
    pub const fn rshift(&self) -> u32 {
        self.rshift
    }

    /// `((lw / gcd) >> rshift) ?: (lw != 0)`; 0 for `lw ≤ 0`.
    #[must_use]
    pub const fn turns(&self, last_weight: i32) -> u32 {
        if last_weight <= 0 || self.gcd == 0 {
            return 0;
        }
        let t = match (last_weight as u32 / self.gcd).checked_shr(self.rshift) {
            Some(t) => t,
            None => 0,
        };
        if t == 0 { 1 } else { t }
    }
}

/// Service scheduler flags that affect the lookup (§1, §7). They never affect the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct MhFlags {
    /// `mh-port` (`IP_VS_SVC_F_SCHED2`): hash the client's source port too (TCP/UDP/SCTP only).
    pub mh_port: bool,
    /// `mh-fallback` (`IP_VS_SVC_F_SCHED1`): rehash past unavailable dests.
    pub mh_fallback: bool,
}

impl MhFlags {
    /// From the service's IPVS flag word (`IP_VS_SVC_F_*`); other bits are ignored.
    #[must_use]
    pub const fn from_svc_flags(flags: u32) -> Self {
        Self {
            mh_port: flags & IP_VS_SVC_F_SCHED_MH_PORT != 0,
            mh_fallback: flags & IP_VS_SVC_F_SCHED_MH_FALLBACK != 0,
        }
    }

    /// Back to the IPVS flag bits.
    #[must_use]
    pub const fn to_svc_flags(self) -> u32 {
        (if self.mh_port { IP_VS_SVC_F_SCHED_MH_PORT } else { 0 })
            | (if self.mh_fallback { IP_VS_SVC_F_SCHED_MH_FALLBACK } else { 0 })
    }
}

/// A built lookup table: slot → dest index (kernel list order) or [`NO_DEST`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MhTable {
    family: Family,
    tab_index: u8,
    size: u32,
    slots: Vec<u32>,
    scale: Option<WeightScale>,
}

/// The dests' current availability, prepared for the lookups of one [`MhTable`]
/// ([`MhTable::availability`]): what makes every lookup's cost bounded (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MhAvailability {
    /// Per dest index: usable now.
    available: Box<[bool]>,
    /// Some slot is owned by an available dest.
    any: bool,
    /// Per slot: the owner of the first slot at or after it (wrapping) whose owner is
    /// available; empty when `any` is false.
    fallback: Box<[u32]>,
}

impl MhAvailability {
    /// Is dest `dest` usable now? An index beyond the dests is not.
    #[inline]
    #[must_use]
    pub fn is_available(&self, dest: usize) -> bool {
        self.available.get(dest).copied().unwrap_or(false)
    }

    /// Does some slot of the table belong to an available dest? If not, every lookup finds no
    /// destination, with or without `mh-fallback`, exactly as in the kernel.
    #[inline]
    #[must_use]
    pub const fn any_available(&self) -> bool {
        self.any
    }

    /// The dest a lookup whose primary slot is `slot` ends with after [`FALLBACK_PROBES`]
    /// unsuccessful rehashes: the owner of the first slot at or after `slot`, wrapping at M,
    /// whose owner is available.
    #[inline]
    #[must_use]
    pub fn fallback_at(&self, slot: u32) -> Option<usize> {
        match self.fallback.get(slot as usize) {
            Some(&d) if d != NO_DEST => Some(d as usize),
            _ => None,
        }
    }
}

/// Build the table exactly as `ip_vs_mh_reassign` does (§4–§6).
///
/// `dests` must be in kernel list order (head first = most recently added). Slots are assigned
/// by `last_weight`; the current `weight` and `overloaded` are ignored here.
///
/// # Errors
/// * [`MhError::InvalidTabIndex`] for `tab_index` outside 8..=17;
/// * [`MhError::TooManyDests`] when `dests.len() > M` (keep the previous table, as the kernel does);
/// * [`MhError::NegativeWeight`] for a negative `last_weight`.
pub fn build(family: Family, dests: &[MhDest], tab_index: u8) -> Result<MhTable, MhError> {
    let size = table_size(tab_index)?;
    if dests.len() > size as usize {
        return Err(MhError::TooManyDests { dests: dests.len(), size });
    }
    let scale = WeightScale::new(dests.iter().map(|d| d.last_weight), tab_index)?;
    let mut slots = vec![NO_DEST; size as usize];
    let Some(sc) = scale else {
        return Ok(MhTable { family, tab_index, size, slots, scale });
    };

    // Per-dest setup (ip_vs_mh_permutate); dests with 0 turns are skipped by every round, so
    // keep only the others, with their list index.
    struct Setup {
        index: u32,
        next: u32,
        skip: u32,
        turns: u32,
    }
    let mut setup: Vec<Setup> = dests
        .iter()
        .zip(0u32..)
        .filter_map(|(d, index)| {
            let turns = sc.turns(d.last_weight);
            (turns > 0).then(|| {
                let (offset, skip) = permutation_in(fold(family, d.addr), d.port, size);
                Setup { index, next: offset, skip, turns }
            })
        })
        .collect();

    // ip_vs_mh_populate: rounds over the list, `turns` consecutive claims per dest, stopping the
    // moment n reaches M. `setup` is non-empty (gcd ≥ 1 ⇒ some turns ≥ 1), and a claim always
    // finds a free slot (skip ∈ [1, M−1] with M prime walks every slot), so this terminates.
    let mut n = 0u32;
    'fill: loop {
        for ds in &mut setup {
            for _ in 0..ds.turns {
                let mut c = ds.next;
                while slots[c as usize] != NO_DEST {
                    c += ds.skip;
                    if c >= size {
                        c -= size;
                    }
                }
                ds.next = c;
                slots[c as usize] = ds.index;
                n += 1;
                if n == size {
                    break 'fill;
                }
            }
        }
    }
    Ok(MhTable { family, tab_index, size, slots, scale })
}

impl MhTable {
    /// Table size M.
    #[must_use]
    pub const fn size(&self) -> u32 {
        self.size
    }

    /// `CONFIG_IP_VS_MH_TAB_INDEX` the table was built for.
    #[must_use]
    pub const fn tab_index(&self) -> u8 {
        self.tab_index
    }

    /// Service family used for folding.
    #[must_use]
    pub const fn family(&self) -> Family {
        self.family
    }

    /// Slot → dest index in kernel list order, or [`NO_DEST`].
    #[must_use]
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// The kernel's `s->gcd` (0 for an empty table).
    #[must_use]
    pub fn gcd(&self) -> u32 {
        self.scale.map_or(0, |s| s.gcd())
    }

    /// The kernel's `s->rshift` (0 for an empty table).
    #[must_use]
    pub fn rshift(&self) -> u32 {
        self.scale.map_or(0, |s| s.rshift())
    }

    /// Weight scaling, `None` when the table is empty.
    #[must_use]
    pub const fn weight_scale(&self) -> Option<WeightScale> {
        self.scale
    }

    /// True when every slot is [`NO_DEST`] (no dest had `last_weight > 0`).
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.scale.is_none()
    }

    /// The slot a client key hashes to: `hashkey(fold(client), port, K1, 0) mod M`.
    #[inline]
    #[must_use]
    pub const fn slot_of(&self, client: IpAddr, port: u16) -> u32 {
        hashkey(fold(self.family, client), port, K1, 0) % self.size
    }

    /// The dests' availability as the lookups of this table need it. `available(i)` reports
    /// whether dest `i` is usable now (current weight > 0 and not overloaded; callers may add
    /// their own conditions). O(M): build it once per table and backend state, not per lookup.
    #[must_use]
    pub fn availability(&self, available: impl Fn(usize) -> bool) -> MhAvailability {
        let n = self.slots.iter().filter(|&&d| d != NO_DEST).map(|&d| d as usize + 1).max().unwrap_or(0);
        let available: Box<[bool]> = (0..n).map(available).collect();
        let usable = |d: u32| d != NO_DEST && available.get(d as usize).copied().unwrap_or(false);
        // `fallback[s]` = owner of the first usable slot in s, s+1, …, M−1, 0, …: one backward
        // sweep, starting with the first usable slot from 0 for the positions after the last.
        let Some(&first) = self.slots.iter().find(|&&d| usable(d)) else {
            return MhAvailability { available, any: false, fallback: Box::new([]) };
        };
        let mut fallback = vec![NO_DEST; self.slots.len()];
        let mut next = first;
        for (f, &d) in fallback.iter_mut().zip(self.slots.iter()).rev() {
            if usable(d) {
                next = d;
            }
            *f = next;
        }
        MhAvailability { available, any: true, fallback: fallback.into() }
    }

    /// `ip_vs_mh_schedule` for a new flow (§7). Returns the dest index in `dests`, or `None` for
    /// "no destination" (IPVS then sends ICMP port-unreachable and drops).
    ///
    /// `client`/`client_port` are the packet's source (for an ICMP error, the embedded packet's
    /// destination). The port is hashed only with `mh_port` *and* `proto_has_ports`
    /// (TCP/UDP/SCTP); otherwise 0. `dests` must be the list the table was built from (current
    /// weights and overload flags may have changed since); an index beyond it counts as
    /// unavailable.
    ///
    /// This convenience builds the [`MhAvailability`] on every call; for repeated lookups build
    /// it once with [`MhTable::availability`] and call [`MhTable::lookup_by`].
    #[must_use]
    pub fn lookup(
        &self,
        dests: &[MhDest],
        client: IpAddr,
        client_port: u16,
        flags: MhFlags,
        proto_has_ports: bool,
    ) -> Option<usize> {
        let port = if flags.mh_port && proto_has_ports { client_port } else { 0 };
        let state = self.availability(|i| dests.get(i).is_some_and(MhDest::is_available));
        self.lookup_by(fold(self.family, client), port, flags.mh_fallback, &state)
    }

    /// Core of the lookup with the client already folded and the port already chosen (0 unless
    /// `mh-port` applies), against the dests' state `state` (from [`MhTable::availability`]).
    #[inline]
    #[must_use]
    pub fn lookup_by(&self, client_fold: u32, port: u16, fallback: bool, state: &MhAvailability) -> Option<usize> {
        self.lookup_counted(client_fold, port, fallback, state).0
    }

    /// [`MhTable::lookup_by`] that also returns how many times it evaluated [`hashkey`]: the
    /// measure of a lookup's cost, for tests and benchmarks. At most `1 + FALLBACK_PROBES`, and 0
    /// when no dest is available.
    #[must_use]
    pub fn lookup_counted(
        &self,
        client_fold: u32,
        port: u16,
        fallback: bool,
        state: &MhAvailability,
    ) -> (Option<usize>, u32) {
        // Nothing available: the kernel's answer is "no destination" whatever the walk does.
        if self.scale.is_none() || self.size == 0 || !state.any_available() {
            return (None, 0);
        }
        let m = self.size;
        let ihash = hashkey(client_fold, port, K1, 0) % m;
        let mut evaluations = 1;
        let Some(d) = self.dest_at(ihash) else { return (None, evaluations) };
        if state.is_available(d) {
            return (Some(d), evaluations);
        }
        if !fallback {
            return (None, evaluations);
        }
        // ip_vs_mh_get_fallback, its first FALLBACK_PROBES steps: r = (ihash + o) mod M is added
        // into v; the first retry uses r = ihash, not 0. An empty slot ends the search.
        for o in 0..FALLBACK_PROBES {
            let r = (ihash + o) % m; // < 2M ≤ 2^18: no overflow
            evaluations += 1;
            let Some(d) = self.dest_at(hashkey(client_fold, port, K1, r) % m) else {
                return (None, evaluations);
            };
            if state.is_available(d) {
                return (Some(d), evaluations);
            }
        }
        // Where maglevd departs from the kernel (module docs): the precomputed owner.
        (state.fallback_at(ihash), evaluations)
    }

    #[inline]
    fn dest_at(&self, slot: u32) -> Option<usize> {
        match self.slots.get(slot as usize) {
            Some(&d) if d != NO_DEST => Some(d as usize),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn mh_hash_vectors() {
        // 0x0A000053 = 10.0.0.3 + port 80.
        assert_eq!(hsiphash_u32(K1, 0x0A00_0053), 0x2cdf_0afa);
        assert_eq!(hsiphash_u32(K2, 0x0A00_0053), 0xedeb_33d0);
        assert_eq!(hashkey(fold(Family::Inet, v4(10, 0, 0, 3)), 80, K1, 0), 0x2cdf_0afa);
        assert_eq!(hsiphash(K1, &0x0A00_0053u32.to_le_bytes()), 0x2cdf_0afa);
    }

    #[test]
    fn offset_skip_examples() {
        let f = |a| fold(Family::Inet, a);
        assert_eq!(dest_permutation(f(v4(10, 0, 0, 3)), 80, 12), Ok((1631, 3453)));
        assert_eq!(dest_permutation(f(v4(10, 200, 0, 248)), 80, 12), Ok((263, 2640)));
        assert_eq!(dest_permutation(0, 0, 7), Err(MhError::InvalidTabIndex(7)));
    }

    #[test]
    fn ipv6_fold() {
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(fold(Family::Inet6, a), 0x2001_0db9);
        // Hashes the same as the IPv4 address 32.1.13.185.
        assert_eq!(fold(Family::Inet, v4(32, 1, 13, 185)), 0x2001_0db9);
        assert_eq!(
            hashkey(fold(Family::Inet6, a), 80, K1, 0),
            hashkey(fold(Family::Inet, v4(32, 1, 13, 185)), 80, K1, 0)
        );
    }

    #[test]
    fn mixed_family_fold_follows_kernel_memory_layout() {
        // IPv4 dest of an IPv6 service: upper words are zero, XOR leaves the IPv4 value.
        assert_eq!(fold(Family::Inet6, v4(10, 0, 0, 1)), 0x0A00_0001);
        // IPv6 dest of an IPv4 service: the kernel reads addr->ip, the first word.
        let a = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        assert_eq!(fold(Family::Inet, a), 0x2001_0db8);
        assert_eq!(Family::of(a), Family::Inet6);
        assert_eq!(Family::of(v4(1, 2, 3, 4)), Family::Inet);
    }

    #[test]
    fn addr_port_collision_is_reproduced() {
        let f1 = fold(Family::Inet, v4(10, 0, 0, 1));
        let f2 = fold(Family::Inet, v4(10, 0, 0, 2));
        assert_eq!(hashkey(f1, 81, K1, 0), hashkey(f2, 80, K1, 0));
        assert_eq!(hashkey(f1, 81, K2, 0), hashkey(f2, 80, K2, 0));
        assert_eq!(dest_permutation(f1, 81, 12), dest_permutation(f2, 80, 12));
    }

    #[test]
    fn hashkey_wraps() {
        // 255.255.255.255 + 65535 wraps to 65534; an offset wraps too.
        assert_eq!(hashkey(u32::MAX, 65535, K1, 0), hsiphash_u32(K1, 65534));
        assert_eq!(hashkey(u32::MAX, 65535, K1, 2), hsiphash_u32(K1, 65536));
        assert_eq!(hashkey(u32::MAX, 65535, K1, 0xFFFF_0002), hsiphash_u32(K1, 0));
        assert_eq!(hashkey(0, 0, K1, 0), hsiphash_u32(K1, 0));
    }

    #[test]
    fn table_sizes() {
        let got: Vec<u32> = (8..=17).map(|i| table_size(i).unwrap()).collect();
        assert_eq!(got, PRIMES);
        assert_eq!(table_size(DEFAULT_TAB_INDEX), Ok(4093));
        for bad in [0u8, 7, 18, 255] {
            assert_eq!(table_size(bad), Err(MhError::InvalidTabIndex(bad)));
        }
        assert_eq!(tab_bits(12), 6);
        assert_eq!(tab_bits(8), 4);
        assert_eq!(tab_bits(17), 8);
    }

    fn turns_of(w: &[i32], tab_index: u8) -> (u32, u32, Vec<u32>) {
        let s = WeightScale::new(w.iter().copied(), tab_index).unwrap().unwrap();
        (s.gcd(), s.rshift(), w.iter().map(|&x| s.turns(x)).collect())
    }

    #[test]
    fn weights_to_turns() {
        // Spec §5: 65535/3000/1000/1 → bitlength(65535) = 16, rshift 16 − 6 = 10, turns 63/2/1/1.
        assert_eq!(turns_of(&[65535, 3000, 1000, 1], 12), (1, 10, vec![63, 2, 1, 1]));
        assert_eq!(turns_of(&[1, 1, 1], 12), (1, 0, vec![1, 1, 1]));
        // gcd 2, mw 3: turns 1/2/3; a weight-0 dest gets 0 turns.
        assert_eq!(turns_of(&[2, 4, 6, 0], 12), (2, 0, vec![1, 2, 3, 0]));
        // mw = 63 has bitlength 6 = TAB_BITS: no shift; 64 has 7: shift 1.
        assert_eq!(turns_of(&[63, 1], 12), (1, 0, vec![63, 1]));
        assert_eq!(turns_of(&[64, 1], 12), (1, 1, vec![32, 1]));
        // Index 8 has TAB_BITS 4: 100 (bitlength 7) → rshift 3 → 12; 1 → 0 → 1.
        assert_eq!(turns_of(&[100, 1], 8), (1, 3, vec![12, 1]));
        // Largest weight IPVS accepts.
        assert_eq!(turns_of(&[i32::MAX, 1], 12), (1, 25, vec![63, 1]));
        assert_eq!(WeightScale::new([0, 0], 12), Ok(None));
        assert_eq!(WeightScale::new([], 12), Ok(None));
        assert_eq!(WeightScale::new([1, -2], 12), Err(MhError::NegativeWeight { index: 1, last_weight: -2 }));
    }

    fn three() -> Vec<MhDest> {
        // Configuration A: added .1, .2, .3 → kernel order [.3, .2, .1].
        [3u8, 2, 1].iter().map(|&i| MhDest::new(v4(10, 0, 0, i), 80, 1)).collect()
    }

    #[test]
    fn every_slot_filled_and_shares_are_fair() {
        let dests = three();
        let t = build(Family::Inet, &dests, 12).unwrap();
        assert_eq!(t.size(), 4093);
        assert_eq!((t.gcd(), t.rshift()), (1, 0));
        assert!(!t.is_empty());
        let mut counts = [0u32; 3];
        for &s in t.slots() {
            counts[s as usize] += 1;
        }
        assert_eq!(counts.iter().sum::<u32>(), 4093);
        for c in counts {
            assert!((1300..=1430).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn all_last_weights_zero_gives_empty_table() {
        let mut dests = three();
        for d in &mut dests {
            d.weight = 0;
            d.last_weight = 0;
        }
        for ds in [&dests[..], &[]] {
            let t = build(Family::Inet, ds, 12).unwrap();
            assert!(t.is_empty());
            assert_eq!((t.gcd(), t.rshift()), (0, 0));
            assert_eq!(t.slots().len(), 4093);
            assert!(t.slots().iter().all(|&s| s == NO_DEST));
            let all = MhFlags { mh_port: true, mh_fallback: true };
            assert_eq!(t.lookup(ds, v4(1, 2, 3, 4), 5, all, true), None);
        }
    }

    #[test]
    fn dest_added_with_zero_weight_gets_no_slots() {
        let mut dests = three();
        dests.insert(0, MhDest::new(v4(10, 0, 0, 9), 80, 0));
        let t = build(Family::Inet, &dests, 12).unwrap();
        assert!(t.slots().iter().all(|&s| s != 0 && s != NO_DEST));
        // Editing it to non-zero gives it slots.
        dests[0].edit_weight(1);
        let t = build(Family::Inet, &dests, 12).unwrap();
        assert!(t.slots().contains(&0));
    }

    #[test]
    fn more_dests_than_slots_refused() {
        let dests: Vec<MhDest> = (0..252u32).map(|i| MhDest::new(IpAddr::V4(Ipv4Addr::from_bits(i)), 1, 1)).collect();
        assert_eq!(build(Family::Inet, &dests, 8), Err(MhError::TooManyDests { dests: 252, size: 251 }));
        // Exactly M dests is accepted: each gets exactly one slot.
        let t = build(Family::Inet, &dests[..251], 8).unwrap();
        let mut seen = [false; 251];
        for &s in t.slots() {
            assert!(!seen[s as usize]);
            seen[s as usize] = true;
        }
        let e = build(Family::Inet, &dests, 8).unwrap_err().to_string();
        assert!(e.contains("252") && e.contains("251"), "{e}");
    }

    #[test]
    fn negative_last_weight_and_bad_index_refused() {
        let mut dests = three();
        dests[2].last_weight = -1;
        assert_eq!(build(Family::Inet, &dests, 12), Err(MhError::NegativeWeight { index: 2, last_weight: -1 }));
        assert_eq!(build(Family::Inet, &three(), 18), Err(MhError::InvalidTabIndex(18)));
    }

    #[test]
    fn edit_weight_rule() {
        let mut d = MhDest::new(v4(10, 0, 0, 1), 80, 5);
        assert_eq!((d.weight, d.last_weight), (5, 5));
        d.edit_weight(0);
        assert_eq!((d.weight, d.last_weight), (0, 5));
        assert!(!d.is_available());
        d.edit_weight(7);
        assert_eq!((d.weight, d.last_weight), (7, 7));
        assert!(d.is_available());
        d.overloaded = true;
        assert!(!d.is_available());
    }

    #[test]
    fn flags_round_trip() {
        assert_eq!(MhFlags::from_svc_flags(0x0018), MhFlags { mh_port: true, mh_fallback: true });
        assert_eq!(MhFlags::from_svc_flags(0x0010), MhFlags { mh_port: true, mh_fallback: false });
        assert_eq!(MhFlags::from_svc_flags(0x0008), MhFlags { mh_port: false, mh_fallback: true });
        assert_eq!(MhFlags::from_svc_flags(0x0007), MhFlags::default());
        assert_eq!(MhFlags { mh_port: true, mh_fallback: true }.to_svc_flags(), 0x0018);
    }

    #[test]
    fn lookup_port_only_with_mh_port_and_ports() {
        let dests = three();
        let t = build(Family::Inet, &dests, 12).unwrap();
        let c = v4(192, 0, 2, 7);
        let port = MhFlags { mh_port: true, mh_fallback: false };
        let want_noport = t.slots()[t.slot_of(c, 0) as usize] as usize;
        let want_port = t.slots()[t.slot_of(c, 4321) as usize] as usize;
        assert_eq!(t.lookup(&dests, c, 4321, MhFlags::default(), true), Some(want_noport));
        assert_eq!(t.lookup(&dests, c, 4321, port, false), Some(want_noport));
        assert_eq!(t.lookup(&dests, c, 4321, port, true), Some(want_port));
    }

    #[test]
    fn lookup_with_overload_and_fallback() {
        let mut dests = three();
        let t = build(Family::Inet, &dests, 12).unwrap();
        let c = v4(198, 51, 100, 1);
        let primary = t.lookup(&dests, c, 0, MhFlags::default(), true).unwrap();
        dests[primary].overloaded = true;
        assert_eq!(t.lookup(&dests, c, 0, MhFlags::default(), true), None);
        let fb = MhFlags { mh_port: false, mh_fallback: true };
        let other = t.lookup(&dests, c, 0, fb, true).unwrap();
        assert_ne!(other, primary);
        // All unavailable: no destination, and no hash evaluated.
        for d in &mut dests {
            d.weight = 0;
        }
        assert_eq!(t.lookup(&dests, c, 0, fb, true), None);
        let state = t.availability(|i| dests[i].is_available());
        assert!(!state.any_available());
        assert_eq!(t.lookup_counted(fold(Family::Inet, c), 0, true, &state), (None, 0));
    }

    #[test]
    fn precomputed_fallback_is_the_next_available_slot_owner() {
        let dests: Vec<MhDest> = (1..=8).map(|i| MhDest::new(v4(10, 0, 1, i), 80, 1)).collect();
        let t = build(Family::Inet, &dests, 8).unwrap();
        let m = t.size() as usize;
        for mask in [0b1u8, 0b1000_0000, 0b0101_0000, 0b1111_1110] {
            let ok = |i: usize| mask & (1 << i) != 0;
            let state = t.availability(ok);
            assert!(state.any_available());
            for s in 0..m {
                // Naive: walk forward from s, wrapping, to the first slot with an available owner.
                let want = (0..m).map(|k| t.slots()[(s + k) % m] as usize).find(|&d| ok(d));
                assert_eq!(state.fallback_at(s as u32), want, "mask {mask:#b} slot {s}");
            }
            assert_eq!(state.fallback_at(m as u32), None, "beyond the table");
        }
    }

    #[test]
    fn lookup_with_wrong_dest_slice_does_not_panic() {
        let t = build(Family::Inet, &three(), 12).unwrap();
        let fb = MhFlags { mh_port: true, mh_fallback: true };
        for i in 0..200u32 {
            let c = IpAddr::V4(Ipv4Addr::from_bits(i.wrapping_mul(0x9E37_79B1)));
            assert_eq!(t.lookup(&[], c, 1, fb, true), None);
        }
        // IPv6 client on an IPv4 table folds its first word; still no panic.
        let _ = t.lookup(&three(), "2001:db8::1".parse().unwrap(), 1, fb, true);
    }
}
