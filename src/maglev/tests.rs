use super::*;

fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

fn equal(n: usize) -> Vec<TableBackend> {
    (0..n).map(|i| TableBackend { ip: Ipv4Addr::from(0x0a00_0000 + 1 + i as u32), weight: 1 }).collect()
}

fn ips(b: &[TableBackend]) -> Vec<Ipv4Addr> {
    b.iter().map(|b| b.ip).collect()
}

#[test]
fn key_constants_are_the_documented_ascii() {
    let le =
        |s: &[u8; 16]| (u64::from_le_bytes(s[..8].try_into().unwrap()), u64::from_le_bytes(s[8..].try_into().unwrap()));
    assert_eq!(K_OFFSET, le(b"maglevd-offset-1"));
    assert_eq!(K_SKIP, le(b"maglevd-skip-v01"));
}

#[test]
fn primes() {
    let small: Vec<u32> = (0..60).filter(|&n| is_prime(n)).collect();
    assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59]);
    assert!(is_prime(65537));
    assert!(is_prime(4093));
    assert!(is_prime(MAX_TABLE_SIZE));
    assert!(!is_prime(65535));
    assert!(!is_prime(65539 * 3));
}

#[test]
fn size_checks() {
    assert_eq!(check_size(65536, 3), Err(TableError::NotPrime(65536)));
    assert_eq!(check_size(2, 0), Err(TableError::SizeOutOfRange { size: 2 }));
    assert_eq!(check_size(MAX_TABLE_SIZE + 2, 1), Err(TableError::SizeOutOfRange { size: MAX_TABLE_SIZE + 2 }));
    assert_eq!(check_size(251, 26), Err(TableError::TooSmall { size: 251, backends: 26, min: 260 }));
    assert_eq!(check_size(251, 25), Ok(()));
}

#[test]
fn empty_and_all_drained_tables_miss() {
    let t = build(&[], 251).unwrap();
    assert!(t.is_empty());
    assert_eq!(t.lookup(12345), None);
    let drained: Vec<_> = equal(3).into_iter().map(|b| TableBackend { weight: 0, ..b }).collect();
    let t = build(&drained, 251).unwrap();
    assert!(t.is_empty());
    assert_eq!(t.lookup(0), None);
    assert_eq!(t.lookup(u64::MAX), None);
}

#[test]
fn single_backend_owns_everything() {
    let t = build(&[TableBackend { ip: ip(10, 0, 0, 1), weight: 7 }], 65537).unwrap();
    assert_eq!(t.shares(1), vec![65537]);
    assert_eq!(t.lookup(0), Some(0));
    assert_eq!(t.lookup(u64::MAX), Some(0));
}

#[test]
fn every_slot_is_filled_and_lookup_covers_the_range() {
    let b = equal(7);
    let t = build(&b, 1021).unwrap();
    assert!(t.slots().iter().all(|&s| (s as usize) < b.len()));
    // Lemire reduction: hash 0 → slot 0, max hash → last slot.
    assert_eq!(t.lookup(0), Some(t.slots()[0]));
    assert_eq!(t.lookup(u32::MAX as u64), Some(t.slots()[1020]));
    // Only the low 32 bits count.
    assert_eq!(t.lookup(0xffff_ffff_0000_0000), Some(t.slots()[0]));
}

#[test]
fn permutations_cover_all_slots() {
    for &size in &[251u32, 4093, 65537] {
        for b in equal(20) {
            let (offset, skip) = permutation(b.ip, size);
            assert!(offset < size);
            assert!((1..size).contains(&skip));
        }
    }
}

#[test]
fn equal_weights_give_floor_or_ceil() {
    for &(n, m) in &[(3usize, 65537u32), (7, 65537), (100, 65537), (1000, 65537), (5, 251)] {
        let t = build(&equal(n), m).unwrap();
        let lo = m as u64 / n as u64;
        let hi = lo + u64::from(!(m as u64).is_multiple_of(n as u64));
        for (i, s) in t.shares(n).iter().enumerate() {
            assert!((lo..=hi).contains(s), "n={n} m={m} backend {i} has {s} slots, want {lo}..={hi}");
        }
    }
}

#[test]
fn weighted_shares_within_one_percent() {
    let cases: &[&[u32]] = &[&[1, 2, 3, 4], &[1, 1, 1, 10], &[100, 200, 300], &[5, 0, 5, 1], &[7, 13, 29, 31, 64]];
    for &weights in cases {
        let b: Vec<_> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| TableBackend { ip: Ipv4Addr::from(0xc0a8_0000 + i as u32 * 7 + 3), weight: w })
            .collect();
        let t = build(&b, 65537).unwrap();
        let total: u64 = weights.iter().map(|&w| w as u64).sum();
        for (i, &got) in t.shares(b.len()).iter().enumerate() {
            let want = 65537.0 * weights[i] as f64 / total as f64;
            if weights[i] == 0 {
                assert_eq!(got, 0, "weight 0 must own no slot");
            } else {
                let rel = (got as f64 - want).abs() / want;
                assert!(rel < 0.01, "weights {weights:?}: backend {i} has {got} slots, want {want:.1} ({rel:.4})");
            }
        }
    }
}

#[test]
fn config_order_does_not_matter() {
    let b = equal(50);
    let mut rev = b.clone();
    rev.reverse();
    let t1 = build(&b, 65537).unwrap();
    let t2 = build(&rev, 65537).unwrap();
    // Same slot → same IP, although the indices differ.
    let (ip1, ip2) = (ips(&b), ips(&rev));
    for (s1, s2) in t1.slots().iter().zip(t2.slots()) {
        assert_eq!(ip1[*s1 as usize], ip2[*s2 as usize]);
    }
}

#[test]
fn duplicate_backend_is_refused() {
    let mut b = equal(3);
    b.push(b[1]);
    assert_eq!(build(&b, 251), Err(TableError::DuplicateBackend(b[1].ip)));
}

#[test]
fn weight_out_of_range_is_refused() {
    let b = [TableBackend { ip: ip(10, 0, 0, 1), weight: MAX_WEIGHT + 1 }];
    assert!(matches!(build(&b, 251), Err(TableError::WeightOutOfRange { .. })));
}

/// Slots that changed owner although the backend owning them before stayed: the churn beyond the
/// unavoidable 1/N of the removed backend.
fn disruption_after_removing(n: usize, m: u32, removed: usize) -> (u64, u64) {
    let before = equal(n);
    let mut after = before.clone();
    let gone = after.remove(removed).ip;
    let t1 = build(&before, m).unwrap();
    let t2 = build(&after, m).unwrap();
    let (ip1, ip2) = (ips(&before), ips(&after));
    let mut needless = 0;
    for s in 0..m as usize {
        let a = ip1[t1.slots()[s] as usize];
        let b = ip2[t2.slots()[s] as usize];
        if a != gone && a != b {
            needless += 1;
        }
    }
    let not_owned = t1.shares(n).iter().enumerate().filter(|&(i, _)| i != removed).map(|(_, &c)| c).sum();
    (needless, not_owned)
}

#[test]
fn removing_one_of_100_moves_little() {
    for removed in [0, 37, 99] {
        let (moved, base) = disruption_after_removing(100, 65537, removed);
        let frac = moved as f64 / base as f64;
        assert!(frac <= 0.015, "N=100: {moved} of {base} slots moved ({:.3}%)", frac * 100.0);
    }
}

#[test]
fn removing_one_of_1000_moves_little() {
    for removed in [0, 500] {
        let (moved, base) = disruption_after_removing(1000, 65537, removed);
        let frac = moved as f64 / base as f64;
        assert!(frac <= 0.015, "N=1000: {moved} of {base} slots moved ({:.3}%)", frac * 100.0);
    }
}

/// FNV-1a over every slot's backend IP: pins the whole table.
fn checksum(t: &Table, ips: &[Ipv4Addr]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &s in t.slots() {
        for byte in ips[s as usize].octets() {
            h ^= byte as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The golden table: the seed's three backends at M = 65537. If this fails, the hash, a key or the
/// algorithm changed, and every frontend upgraded to this build would send existing flows to other
/// backends than frontends still on the previous build. Change the pinned value only on purpose.
#[test]
fn golden_seed_table() {
    let b: Vec<_> = [251, 252, 253].iter().map(|&d| TableBackend { ip: ip(10, 158, 200, d), weight: 1 }).collect();
    let t = build(&b, 65537).unwrap();
    assert_eq!(permutation(b[0].ip, 65537), GOLDEN_PERM_251);
    assert_eq!(&t.slots()[..12], &GOLDEN_FIRST_SLOTS);
    assert_eq!(checksum(&t, &ips(&b)), GOLDEN_CHECKSUM);
}

// Computed by tests/ref/maglev_ref.py, an independent Python implementation written from the module
// docs: `python3 tests/ref/maglev_ref.py 65537 10.158.200.251 10.158.200.252 10.158.200.253`.
const GOLDEN_PERM_251: (u32, u32) = (8950, 26890);
const GOLDEN_FIRST_SLOTS: [u32; 12] = [1, 0, 0, 2, 2, 2, 2, 0, 2, 0, 0, 1];
const GOLDEN_CHECKSUM: u64 = 0x693b_7263_5d69_b7de;

/// A weighted golden table, with the backends deliberately out of IP order and one drained, from
/// `python3 tests/ref/maglev_ref.py 4093 10.0.0.9:4 10.0.0.1:1 192.168.1.1:2 10.0.0.10:3 10.0.0.2:0`.
#[test]
fn golden_weighted_table() {
    let b = [
        TableBackend { ip: ip(10, 0, 0, 9), weight: 4 },
        TableBackend { ip: ip(10, 0, 0, 1), weight: 1 },
        TableBackend { ip: ip(192, 168, 1, 1), weight: 2 },
        TableBackend { ip: ip(10, 0, 0, 10), weight: 3 },
        TableBackend { ip: ip(10, 0, 0, 2), weight: 0 },
    ];
    let t = build(&b, 4093).unwrap();
    assert_eq!(&t.slots()[..12], &GOLDEN_W_FIRST_SLOTS);
    assert_eq!(checksum(&t, &ips(&b)), GOLDEN_W_CHECKSUM);
}
const GOLDEN_W_FIRST_SLOTS: [u32; 12] = [2, 3, 2, 1, 2, 3, 2, 3, 2, 3, 0, 3];
const GOLDEN_W_CHECKSUM: u64 = 0x618b_97c0_70cf_e03c;
