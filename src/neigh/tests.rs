use super::*;

fn mac(last: u8) -> MacAddr {
    MacAddr([0xc2, 0xb0, 0x57, 0x49, 0x47, last])
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 158, 200, last)
}

const VIP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);

fn request(from_mac: MacAddr, from_ip: Ipv4Addr, target: Ipv4Addr) -> Arp {
    Arp { request: true, sender_mac: from_mac, sender_ip: from_ip, target_mac: MacAddr::ZERO, target_ip: target }
}

#[test]
fn build_and_parse_round_trip() {
    let a = request(mac(1), ip(1), ip(2));
    let f = build_arp(MacAddr::BROADCAST, &a);
    assert_eq!(&f[..6], &[0xff; 6]);
    assert_eq!(&f[12..14], &[0x08, 0x06]);
    assert_eq!(parse_arp(&f), Some(a));
    // With Ethernet padding to 60 bytes it still parses.
    let mut padded = f.to_vec();
    padded.resize(60, 0);
    assert_eq!(parse_arp(&padded), Some(a));
}

#[test]
fn parse_rejects_garbage() {
    let f = build_arp(MacAddr::BROADCAST, &request(mac(1), ip(1), ip(2)));
    assert_eq!(parse_arp(&f[..41]), None, "truncated");
    let mut g = f;
    g[12] = 0x08;
    g[13] = 0x00;
    assert_eq!(parse_arp(&g), None, "not ARP");
    let mut g = f;
    g[21] = 9;
    assert_eq!(parse_arp(&g), None, "unknown operation");
    let mut g = f;
    g[16] = 0x86;
    g[17] = 0xdd;
    assert_eq!(parse_arp(&g), None, "not IPv4");
    assert_eq!(parse_arp(&[]), None);
}

#[test]
fn responder_answers_for_its_ip_only_and_never_for_a_vip() {
    let me = Ipv4Addr::new(10, 158, 100, 2);
    let r = Responder::new(mac(0xf1), vec![me, VIP], vec![VIP]);
    let router = (mac(0xfe), Ipv4Addr::new(10, 158, 100, 254));
    match r.handle(&request(router.0, router.1, me)) {
        Answer::Reply(f) => {
            let a = parse_arp(&f).unwrap();
            assert_eq!(&f[..6], &router.0.0, "unicast to the asker");
            assert_eq!(&f[6..12], &mac(0xf1).0);
            assert_eq!(
                a,
                Arp { request: false, sender_mac: mac(0xf1), sender_ip: me, target_mac: router.0, target_ip: router.1 }
            );
        }
        other => panic!("expected a reply, got {other:?}"),
    }
    // Listed as ours, but a VIP: refused.
    assert_eq!(r.handle(&request(router.0, router.1, VIP)), Answer::RefusedVip);
    assert_eq!(r.handle(&request(router.0, router.1, Ipv4Addr::new(10, 158, 100, 3))), Answer::NotOurs);
    // Replies are never answered.
    let mut reply = request(router.0, router.1, me);
    reply.request = false;
    assert_eq!(r.handle(&reply), Answer::NotOurs);
}

fn table(now: Instant) -> NeighTable {
    let mut t = NeighTable::new(mac(0xf2), ip(2), NeighTimers::default());
    t.set_targets([ip(251), ip(252)], now);
    t
}

fn probes(t: &mut NeighTable, now: Instant) -> (Vec<Probe>, bool) {
    let mut out = Vec::new();
    let lost = t.poll(now, |p| out.push(p));
    (out, lost)
}

fn reply_from(last: u8, m: MacAddr) -> Arp {
    Arp { request: false, sender_mac: m, sender_ip: ip(last), target_mac: mac(0xf2), target_ip: ip(2) }
}

#[test]
fn resolves_with_broadcast_then_learns_the_reply() {
    let t0 = Instant::now();
    let mut t = table(t0);
    assert_eq!(t.mac(ip(251)), None);
    let (p, _) = probes(&mut t, t0);
    assert_eq!(p, vec![Probe { target: ip(251), unicast: None }, Probe { target: ip(252), unicast: None }]);
    let frame = t.probe_frame(&p[0]);
    let arp = parse_arp(&frame).unwrap();
    assert_eq!(&frame[..6], &[0xff; 6]);
    assert_eq!((arp.request, arp.sender_ip, arp.sender_mac, arp.target_ip), (true, ip(2), mac(0xf2), ip(251)));
    // Nothing more is due until the probe interval passed.
    assert!(probes(&mut t, t0 + Duration::from_millis(500)).0.is_empty());
    assert!(t.on_arp(&reply_from(251, mac(0xa1)), t0 + Duration::from_millis(600)));
    assert_eq!(t.mac(ip(251)), Some(mac(0xa1)));
    // The same reply again changes nothing.
    assert!(!t.on_arp(&reply_from(251, mac(0xa1)), t0 + Duration::from_millis(700)));
    // .252 is probed again after a second; .251 is not.
    let (p, _) = probes(&mut t, t0 + Duration::from_secs(1));
    assert_eq!(p, vec![Probe { target: ip(252), unicast: None }]);
}

#[test]
fn retries_then_slows_down() {
    let t0 = Instant::now();
    let mut t = NeighTable::new(mac(0xf2), ip(2), NeighTimers::default());
    t.set_targets([ip(251)], t0);
    let mut sent = Vec::new();
    for ms in (0..20_000).step_by(100) {
        let now = t0 + Duration::from_millis(ms);
        if !probes(&mut t, now).0.is_empty() {
            sent.push(ms);
        }
    }
    // 3 fast probes one second apart, then one every 5 s.
    assert_eq!(sent, vec![0, 1000, 2000, 7000, 12000, 17000]);
}

#[test]
fn refreshes_by_unicast_and_expires_when_unanswered() {
    let t0 = Instant::now();
    let mut t = table(t0);
    t.on_arp(&reply_from(251, mac(0xa1)), t0);
    // Before refresh_after: nothing for .251.
    let (p, _) = probes(&mut t, t0 + Duration::from_secs(14));
    assert!(p.iter().all(|p| p.target != ip(251)));
    // At 15 s a unicast refresh goes to the known MAC.
    let (p, lost) = probes(&mut t, t0 + Duration::from_secs(15));
    assert!(p.contains(&Probe { target: ip(251), unicast: Some(mac(0xa1)) }));
    assert!(!lost);
    let frame = t.probe_frame(&Probe { target: ip(251), unicast: Some(mac(0xa1)) });
    assert_eq!(&frame[..6], &mac(0xa1).0);
    // A reply renews the entry.
    t.on_arp(&reply_from(251, mac(0xa1)), t0 + Duration::from_secs(16));
    let (_, lost) = probes(&mut t, t0 + Duration::from_secs(40));
    assert!(!lost, "confirmed at 16 s, so still valid at 40 s");
    assert_eq!(t.mac(ip(251)), Some(mac(0xa1)));
    // No answer to any refresh: forgotten 30 s after the last confirmation.
    let (p, lost) = probes(&mut t, t0 + Duration::from_secs(46));
    assert!(lost);
    assert_eq!(t.mac(ip(251)), None);
    assert!(p.contains(&Probe { target: ip(251), unicast: None }), "broadcast again at once");
}

#[test]
fn learns_gratuitous_arp_only_from_targets() {
    let t0 = Instant::now();
    let mut t = table(t0);
    // A gratuitous announcement resolves an unresolved backend.
    let garp =
        Arp { request: true, sender_mac: mac(0xb1), sender_ip: ip(251), target_mac: MacAddr::ZERO, target_ip: ip(251) };
    assert!(t.on_arp(&garp, t0));
    assert_eq!(t.mac(ip(251)), Some(mac(0xb1)));
    // A reply to someone else is not learned; neither is an untracked sender, nor a broadcast MAC.
    let other = Arp { target_ip: ip(9), ..reply_from(252, mac(0xa2)) };
    assert!(!t.on_arp(&other, t0));
    assert!(!t.on_arp(&reply_from(77, mac(0xa7)), t0));
    assert!(!t.on_arp(&reply_from(252, MacAddr::BROADCAST), t0));
    assert_eq!(t.mac(ip(252)), None);
}

#[test]
fn our_own_macs_are_never_learned() {
    let t0 = Instant::now();
    let mut t = table(t0);
    t.set_own_macs(&[mac(0xf1), mac(0xf2)]);
    assert!(!t.on_arp(&reply_from(251, mac(0xf1)), t0));
    assert!(!t.on_arp(&reply_from(252, mac(0xf2)), t0));
    assert_eq!((t.mac(ip(251)), t.mac(ip(252))), (None, None));
    assert_eq!(t.stats().own_mac_refused, 2);
}

#[test]
fn one_unsolicited_reply_cannot_take_a_backend_over() {
    let t0 = Instant::now();
    let mut t = table(t0);
    t.on_arp(&reply_from(251, mac(0xa1)), t0);
    // Someone claims .251 with another MAC: not used yet, confirmed by a broadcast request.
    assert!(!t.on_arp(&reply_from(251, mac(0xee)), t0 + Duration::from_millis(10)));
    assert_eq!(t.mac(ip(251)), Some(mac(0xa1)));
    let (p, changed) = probes(&mut t, t0 + Duration::from_millis(20));
    assert!(p.contains(&Probe { target: ip(251), unicast: None }), "a broadcast request confirms: {p:?}");
    assert!(!changed);
    // The real backend answers it (and so does the impostor): the known MAC stays.
    assert!(!t.on_arp(&reply_from(251, mac(0xee)), t0 + Duration::from_millis(30)));
    assert!(!t.on_arp(&reply_from(251, mac(0xa1)), t0 + Duration::from_millis(31)));
    let (_, changed) = probes(&mut t, t0 + Duration::from_secs(2));
    assert!(!changed);
    assert_eq!(t.mac(ip(251)), Some(mac(0xa1)));
    assert_eq!((t.stats().challenges, t.stats().conflicts_kept, t.stats().changes_confirmed), (1, 1, 0));
}

#[test]
fn a_real_mac_change_is_confirmed_then_used() {
    let t0 = Instant::now();
    let mut t = table(t0);
    t.on_arp(&reply_from(251, mac(0xa1)), t0);
    // The backend moved (new pod, same IP) and announces itself.
    let garp =
        Arp { request: true, sender_mac: mac(0xb1), sender_ip: ip(251), target_mac: MacAddr::ZERO, target_ip: ip(251) };
    assert!(!t.on_arp(&garp, t0 + Duration::from_millis(5)));
    let (p, _) = probes(&mut t, t0 + Duration::from_millis(10));
    assert!(p.contains(&Probe { target: ip(251), unicast: None }));
    // Only the new MAC answers the broadcast request.
    assert!(!t.on_arp(&reply_from(251, mac(0xb1)), t0 + Duration::from_millis(20)));
    assert_eq!(t.mac(ip(251)), Some(mac(0xa1)), "not before the confirmation window ends");
    let (_, changed) = probes(&mut t, t0 + Duration::from_millis(1100));
    assert!(changed);
    assert_eq!(t.mac(ip(251)), Some(mac(0xb1)));
    assert_eq!((t.stats().challenges, t.stats().changes_confirmed), (1, 1));
    // A claim nobody confirms is dropped after the window.
    assert!(!t.on_arp(&reply_from(251, mac(0xc1)), t0 + Duration::from_secs(2)));
    probes(&mut t, t0 + Duration::from_millis(2010));
    let (_, changed) = probes(&mut t, t0 + Duration::from_secs(4));
    assert!(!changed);
    assert_eq!(t.mac(ip(251)), Some(mac(0xb1)));
}

#[test]
fn set_targets_keeps_state_and_reports_lost_macs() {
    let t0 = Instant::now();
    let mut t = table(t0);
    t.on_arp(&reply_from(251, mac(0xa1)), t0);
    assert!(!t.set_targets([ip(251), ip(252), ip(253)], t0));
    assert_eq!(t.mac(ip(251)), Some(mac(0xa1)));
    assert_eq!(t.entries().count(), 3);
    assert!(t.set_targets([ip(252)], t0), "dropping a resolved backend loses a MAC");
    assert_eq!(t.entries().count(), 1);
    assert!(t.next_deadline().is_some());
}
