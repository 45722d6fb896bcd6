use super::policy::ipvsadm_cmp_dests;
use super::render::{comment, toml_str};
use super::*;

#[test]
fn endpoints() {
    let v4: IpAddr = "10.0.0.1".parse().unwrap();
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    assert_eq!(parse_endpoint("10.0.0.1:80", true), Ok((v4, Some(80))));
    assert_eq!(parse_endpoint("[2001:db8::1]:443", true), Ok((v6, Some(443))));
    assert_eq!(parse_endpoint("10.0.0.1", false), Ok((v4, None)));
    assert_eq!(parse_endpoint("2001:db8::1", false), Ok((v6, None)));
    for bad in
        ["10.0.0.1", "2001:db8::1", "[2001:db8::1]", "[2001:db8::1:80", "10.0.0:80", "10.0.0.1:", "1.2.3.4:65536", ""]
    {
        assert!(parse_endpoint(bad, true).is_err(), "{bad}");
    }
    assert!(parse_endpoint("www.example.com:http", true).unwrap_err().contains("-n"));
    assert!(parse_endpoint("10.0.0.1:http", true).unwrap_err().contains("-n"));
}

#[test]
fn weights() {
    assert_eq!(parse_weight("0"), Ok(0));
    assert_eq!(parse_weight("2147483647"), Ok(MAX_WEIGHT));
    assert!(parse_weight("2147483648").is_err());
    assert!(parse_weight("-1").is_err());
    assert!(parse_weight("x").is_err());
}

#[test]
fn flags() {
    let both = MhFlags { mh_port: true, mh_fallback: true };
    assert_eq!(sched_flags("mh", "mh-fallback,mh-port", true), Ok((both, None)));
    assert_eq!(sched_flags("mh", "flag-1,flag-2", true), Ok((both, None)));
    assert!(sched_flags("mh", "flag-3", true).unwrap().1.is_some());
    assert!(sched_flags("mh", "sh-port", true).is_err());
    assert!(sched_flags("rr", "mh-port", true).is_err());
    assert!(sched_flags("mh", "bogus", false).is_err());
    assert_eq!(sched_flags("sh", "sh-fallback,sh-port", true), Ok((MhFlags::default(), None)));
    assert_eq!(sched_flags("wlc", "whatever", false), Ok((MhFlags::default(), None)));
}

#[test]
fn ipvsadm_comparator_wraps_like_c() {
    let d = |a: &str, port| ImportedDest {
        addr: a.parse().unwrap(),
        port,
        weight: 1,
        last_weight: 1,
        last_weight_known: true,
        forward: Forward::Route,
        line: 1,
        warnings: Vec::new(),
    };
    assert!(ipvsadm_cmp_dests(&d("10.0.0.1", 80), &d("10.0.0.2", 80)) < 0);
    assert!(ipvsadm_cmp_dests(&d("10.0.0.1", 81), &d("10.0.0.1", 80)) > 0);
    // 10.x − 200.x wraps to a positive int in C: "sorted" is not ascending there.
    assert!(ipvsadm_cmp_dests(&d("10.0.0.1", 80), &d("200.0.0.1", 80)) > 0);
    assert!(ipvsadm_cmp_dests(&d("2001:db8::1", 80), &d("2001:db8::2", 80)) < 0);
}

#[test]
fn comments_are_wrapped_and_clean() {
    let mut out = String::new();
    comment(&mut out, "# ", "#   ", &format!("{} bad\u{7}char", "word ".repeat(40)));
    assert!(out.lines().all(|l| l.starts_with('#') && l.chars().count() <= COMMENT_WIDTH));
    assert!(out.contains("bad?char"));
    assert_eq!(toml_str("a\"b\\c\u{1}"), "\"a\\\"b\\\\c\\u0001\"");
}
