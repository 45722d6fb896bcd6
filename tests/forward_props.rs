//! Property tests for `forward()`: over arbitrary bytes and over mutated or truncated valid frames
//! it never panics; on `Forward` the output differs from the input only in the 12 MAC bytes (and
//! those hold the backend's and the egress MACs); on `Pass` and `Drop` the frame is unchanged.

mod common;

use common::*;
use maglevd::dataplane::{FrameMeta, PassReason, Snapshot, Verdict, forward, forward_frame};
use proptest::prelude::*;
use std::sync::LazyLock;

/// Built once: building five 65537-slot tables per case would dominate the run time.
static SNAPSHOT: LazyLock<Snapshot> = LazyLock::new(snapshot);

fn check_invariants(snap: &Snapshot, input: &[u8]) -> Result<(), TestCaseError> {
    let mut frame = input.to_vec();
    let verdict = forward(&mut frame, snap);
    prop_assert_eq!(frame.len(), input.len());
    match verdict {
        Verdict::Forward { service, backend } => {
            let mac = snap.backend_mac(service, backend);
            prop_assert!(mac.is_some(), "forwarded to a backend without MAC");
            prop_assert_eq!(&frame[..6], &mac.unwrap().0[..]);
            prop_assert_eq!(&frame[6..12], &EGRESS_MAC[..]);
            prop_assert_eq!(&frame[12..], &input[12..], "bytes beyond the MACs changed");
            // Deterministic: the same input gives the same verdict again.
            let mut again = input.to_vec();
            prop_assert_eq!(forward(&mut again, snap), verdict);
        }
        Verdict::Pass(_) | Verdict::Drop(_) => prop_assert_eq!(&frame[..], input, "frame changed on {:?}", verdict),
    }
    Ok(())
}

/// Valid frames of every kind the fixtures use, as seeds for mutation.
fn seeds() -> Vec<Vec<u8>> {
    let quoted = {
        let mut q = ip_packet(&tcp("10.201.0.1", 80, "192.168.100.1", 40000, &[0; 8]));
        q.truncate(28);
        q
    };
    let mut frag = tcp("192.168.100.1", 1, "10.201.0.1", 80, &[0; 40]);
    make_fragment(&mut frag, 0, true);
    vec![
        tcp("192.168.100.1", 40000, "10.201.0.1", 80, b"GET / HTTP/1.1\r\n\r\n"),
        udp("192.168.100.5", 5353, "10.201.0.2", 53, b"query"),
        icmp("10.0.0.9", "10.201.0.1", 3, 4, [0, 0, 5, 220], &quoted),
        frag,
        tcp("192.168.100.1", 40000, "10.201.0.4", 80, &[]),
        tcp("192.168.100.1", 40000, "10.158.100.2", 22, &[]),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, xor: u8 },
    Set { at: usize, value: u8 },
    Truncate(usize),
    Extend(Vec<u8>),
    FixChecksum,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0usize..128, 1u8..=255).prop_map(|(at, xor)| Mutation::Flip { at, xor }),
        (0usize..64, any::<u8>()).prop_map(|(at, value)| Mutation::Set { at, value }),
        (0usize..128).prop_map(Mutation::Truncate),
        proptest::collection::vec(any::<u8>(), 1..32).prop_map(Mutation::Extend),
        Just(Mutation::FixChecksum),
    ]
}

fn apply(frame: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::Flip { at, xor } => {
            if let Some(b) = frame.get_mut(*at) {
                *b ^= xor;
            }
        }
        Mutation::Set { at, value } => {
            if let Some(b) = frame.get_mut(*at) {
                *b = *value;
            }
        }
        Mutation::Truncate(n) => frame.truncate(*n),
        Mutation::Extend(bytes) => frame.extend_from_slice(bytes),
        // Keeps mutated headers past the checksum check, so deeper checks get exercised.
        Mutation::FixChecksum => {
            if frame.len() >= 34 && (frame[14] & 0x0f) >= 5 && frame.len() >= 14 + (frame[14] & 0x0f) as usize * 4 {
                fix_ip_checksum(frame)
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
        check_invariants(&SNAPSHOT, &bytes)?;
    }

    /// Arbitrary bytes behind a valid Ethernet header addressed to us, so the IPv4 checks run.
    #[test]
    fn arbitrary_ipv4_payload(bytes in proptest::collection::vec(any::<u8>(), 0..200), vip in 0u8..6) {
        let mut frame = tcp("192.168.100.1", 1, "10.201.0.1", 80, &[])[..14].to_vec();
        let mut payload = bytes;
        if payload.len() >= 20 {
            payload[0] = 0x45;
            payload[16..20].copy_from_slice(&[10, 201, 0, vip]);
        }
        frame.extend_from_slice(&payload);
        check_invariants(&SNAPSHOT, &frame)?;
    }

    #[test]
    fn mutated_valid_frames(seed in 0usize..6, muts in proptest::collection::vec(mutation(), 1..6)) {
        let mut frame = seeds()[seed].clone();
        for m in &muts {
            apply(&mut frame, m);
        }
        check_invariants(&SNAPSHOT, &frame)?;
    }

    /// With receive metadata and an egress MTU: the same invariants; a foreign VLAN is always
    /// passed; a forwarded non-GSO frame fits the MTU; and the frame is unchanged unless forwarded.
    #[test]
    fn valid_and_mutated_frames_with_metadata(
        seed in 0usize..6,
        muts in proptest::collection::vec(mutation(), 0..3),
        tci in proptest::option::of(any::<u16>()),
        gso in any::<bool>(),
        mtu in proptest::option::of(0u32..2000),
    ) {
        let mut input = seeds()[seed].clone();
        input.resize(input.len() + 40 * seed, 0); // some frames above a small MTU
        for m in &muts {
            apply(&mut input, m);
        }
        let meta = FrameMeta { vlan_tci: tci, gso, egress_mtu: mtu };
        let mut frame = input.clone();
        let verdict = forward_frame(&mut frame, &meta, &SNAPSHOT);
        if meta.foreign_vlan() {
            prop_assert_eq!(verdict, Verdict::Pass(PassReason::ForeignVlan));
        }
        match verdict {
            Verdict::Forward { .. } => {
                prop_assert_eq!(&frame[12..], &input[12..]);
                if let (false, Some(mtu)) = (gso, mtu) {
                    // (The frame, trailer included, is what the kernel checks.)
                    prop_assert!(frame.len() <= 14 + mtu as usize, "{} bytes over MTU {}", frame.len(), mtu);
                }
                // Without metadata the same frame gets the same backend.
                let mut plain = input.clone();
                prop_assert_eq!(forward(&mut plain, &SNAPSHOT), verdict);
            }
            _ => prop_assert_eq!(&frame[..], &input[..], "frame changed on {:?}", verdict),
        }
    }

    #[test]
    fn every_truncation_of_valid_frames(seed in 0usize..6, cut in 0usize..200) {
        let mut frame = seeds()[seed].clone();
        frame.truncate(cut);
        check_invariants(&SNAPSHOT, &frame)?;
    }
}
