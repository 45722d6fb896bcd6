//! Least privilege, proved on the real binary: `maglevd run` as uid/gid 65532 with nothing but
//! CAP_NET_RAW and CAP_NET_ADMIN, granted the two ways the packaging grants them:
//!
//! * **ambient capabilities** (the systemd unit `docker/maglevd.service`: `AmbientCapabilities=`,
//!   `CapabilityBoundingSet=`, `NoNewPrivileges=yes`), set up here with `setpriv`;
//! * **file capabilities** on the binary (the container image `docker/Dockerfile`:
//!   `setcap cap_net_raw,cap_net_admin=ep`, with the pod's `capabilities: {drop: [ALL], add:
//!   [NET_RAW, NET_ADMIN]}` as the bounding set), on a `setcap` copy of the binary.
//!
//! Each case runs the daemon inside a throwaway pair of network namespaces (`mlvp-<pid>-<case>-fe`
//! and `-cl`, joined by a veth pair; removed by a drop guard, also when the test fails): one-arm
//! mode on `fe0`, one backend with a static MAC (the peer's, so no ARP is needed), metrics on
//! 127.0.0.1:9109 inside the frontend namespace. A positive case asserts the process's uid/gid and
//! its exact capability sets from `/proc/PID/status`, `/healthz` 200, a TCP SYN from the peer to
//! the VIP forwarded through the TX ring, the TX socket's send buffer (`ss`: what CAP_NET_ADMIN
//! buys), and a clean exit on SIGTERM. A negative case asserts a quick non-zero exit and an error
//! that names the missing capability.
//!
//! Runs as root (it creates namespaces and changes uid); fails, never skips, without root or
//! without `ip`, `ss`, `setpriv`, `findmnt`, `curl`, `setcap`, `capsh` (tests/setup.sh installs
//! them). All traffic stays in the namespaces.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use maglevd::netns::Netns;

const UID: &str = "65532";
const VIP: &str = "10.201.0.1";
const METRICS: &str = "127.0.0.1:9109";
const FE_IP: &str = "10.99.0.1/24";
const CL_IP: &str = "10.99.0.2/24";
const BACKEND: &str = "10.99.0.2";

/// Capability bits (linux/capability.h).
const NET_ADMIN: u64 = 1 << 12;
const NET_RAW: u64 = 1 << 13;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(cmd: &[&str]) -> Output {
    Command::new(cmd[0]).args(&cmd[1..]).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn must(cmd: &[&str]) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed:\n{}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

fn require_root_and_tools() {
    assert!(
        maglevd::netns::is_root(),
        "tests/privileges.rs creates network namespaces and changes uid: it must run as root \
         (tests/run-all.sh as root)"
    );
    for tool in ["ip", "ss", "setpriv", "curl", "setcap", "capsh", "findmnt"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(found, "{tool} not found: apt-get install iproute2 util-linux curl libcap2-bin (tests/setup.sh)");
    }
}

/// Capability state and ids of a process, from `/proc/PID/status`.
#[derive(Debug)]
struct ProcStatus(BTreeMap<String, String>);

impl ProcStatus {
    fn read(pid: u32) -> Option<ProcStatus> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        Some(ProcStatus(
            s.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.to_string(), v.split_whitespace().collect::<Vec<_>>().join(" ")))
                .collect(),
        ))
    }

    fn get(&self, k: &str) -> &str {
        self.0.get(k).map_or("", String::as_str)
    }

    fn cap(&self, set: &str) -> u64 {
        u64::from_str_radix(self.get(set), 16).unwrap_or_else(|_| panic!("bad {set} in {self:?}"))
    }

    fn summary(&self) -> String {
        ["Name", "Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs"]
            .iter()
            .map(|k| format!("{k}: {}", self.get(k)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A frontend namespace and a peer namespace joined by a veth pair, plus a world-readable
/// directory with a copy of the binary and the config. Everything is removed on drop.
struct Net {
    /// Short case name, printed before every line of output (the tests run in parallel).
    case: String,
    fe: Netns,
    cl: Netns,
    dir: PathBuf,
    bin: PathBuf,
    cfg: PathBuf,
    /// Daemons started so far (numbers their log files).
    spawned: std::cell::Cell<u32>,
}

impl Net {
    fn new(case: &str) -> Net {
        require_root_and_tools();
        let base = format!("mlvp-{}-{case}", std::process::id());
        let dir = std::env::temp_dir().join(&base);
        let _ = std::fs::remove_dir_all(&dir);
        // Each namespace is deleted when `net` drops, also when a step below fails.
        let net = Net {
            case: case.to_string(),
            fe: Netns::create(&format!("{base}-fe")).expect("create the frontend namespace"),
            cl: Netns::create(&format!("{base}-cl")).expect("create the peer namespace"),
            bin: dir.join("maglevd"),
            cfg: dir.join("maglevd.toml"),
            dir,
            spawned: std::cell::Cell::new(0),
        };
        net.fe.veth("fe0", &net.cl, "cl0").expect("veth fe0 ↔ cl0");
        net.fe.addr("fe0", FE_IP).expect("address on fe0");
        net.cl.addr("cl0", CL_IP).expect("address on cl0");
        // The peer reaches the VIP through the frontend, like the router does through net1.
        net.cl.ip(&["route", "add", &format!("{VIP}/32"), "via", "10.99.0.1"]).expect("route to the VIP");
        let peer_mac = maglevd::io::iface::format_mac(&net.cl.mac("cl0").expect("MAC of cl0"));

        // uid 65532 must be able to reach, read and execute what it runs: a fresh 0755 directory
        // (CARGO_TARGET_DIR may be anywhere, e.g. under a 0700 home).
        std::fs::create_dir_all(&net.dir).expect("temp dir");
        std::fs::set_permissions(&net.dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
        std::fs::copy(env!("CARGO_BIN_EXE_maglevd"), &net.bin).expect("copy maglevd");
        std::fs::set_permissions(&net.bin, std::fs::Permissions::from_mode(0o755)).expect("chmod bin");
        let cfg = format!(
            "# tests/privileges.rs: one-arm on fe0, one backend with a static MAC (no ARP needed)\n\
             [interfaces]\ningress = \"fe0\"\negress = \"fe0\"\n\n\
             [daemon]\nworkers = 1\nmetrics = \"{METRICS}\"\n\n\
             [[service]]\nvip = \"{VIP}\"\nprotocol = \"tcp\"\nport = 80\ntable_size = 251\n\n\
             [[service.backend]]\nip = \"{BACKEND}\"\nmac = \"{}\"\n\n\
             # A second service whose backend is found by ARP and checked by dsr probes (a packet\n\
             # socket per probe): the peer does not hold the VIP, so the probes fail with no\n\
             # answer, never with a permission error; every backend down forwards to all.\n\
             [[service]]\nname = \"checked\"\nvip = \"{VIP}\"\nprotocol = \"tcp\"\nport = 81\ntable_size = 251\n\
             when_all_down = \"all\"\n\
             [service.health]\ncheck = \"dsr\"\ninterval_ms = 300\ntimeout_ms = 200\n\n\
             [[service.backend]]\nip = \"{BACKEND}\"\n",
            peer_mac.trim()
        );
        std::fs::write(&net.cfg, cfg).expect("write config");
        std::fs::set_permissions(&net.cfg, std::fs::Permissions::from_mode(0o644)).expect("chmod config");
        let bin = net.bin.to_str().expect("utf-8 path").to_string();
        let cfg = net.cfg.to_str().expect("utf-8 path").to_string();
        let access = run(&[
            "setpriv",
            "--reuid",
            UID,
            "--regid",
            UID,
            "--clear-groups",
            "--",
            "test",
            "-r",
            &cfg,
            "-a",
            "-x",
            &bin,
        ]);
        assert!(access.status.success(), "uid {UID} cannot read {cfg} or execute {bin}: check the temp dir's mode");
        net
    }

    /// Give the copied binary the image's file capabilities.
    fn setcap(&self) {
        let opts = must(&["findmnt", "-n", "-o", "OPTIONS", "-T", self.dir.to_str().expect("utf-8 path")]);
        assert!(
            !opts.split(',').any(|o| o.trim() == "nosuid"),
            "{} is on a nosuid mount ({}): the kernel ignores file capabilities there; set TMPDIR elsewhere",
            self.dir.display(),
            opts.trim()
        );
        let bin = self.bin.to_str().expect("utf-8 path");
        must(&["setcap", "cap_net_raw,cap_net_admin=ep", bin]);
        let got = must(&["getcap", bin]);
        assert!(got.contains("cap_net_admin,cap_net_raw=ep"), "getcap: {got}");
    }

    /// `maglevd run`'s arguments after the binary.
    fn daemon_args(&self) -> Vec<String> {
        let cfg = self.cfg.to_str().expect("utf-8 path");
        ["run", "-c", cfg, "--workers", "1", "--rx-slots", "64", "--tx-slots", "64"].map(String::from).to_vec()
    }

    /// Start `maglevd run` in the frontend namespace behind the privilege-setting `wrapper`
    /// (which ends by exec'ing the binary, so the child's pid is maglevd's).
    fn spawn(&self, wrapper: &[&str]) -> Daemon {
        let mut argv: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
        argv.push(self.bin.to_str().expect("utf-8 path").to_string());
        argv.extend(self.daemon_args());
        self.spawn_argv(argv)
    }

    /// Start `argv` (which must exec maglevd) in the frontend namespace; output to a log file.
    fn spawn_argv(&self, argv: Vec<String>) -> Daemon {
        let n = self.spawned.get() + 1;
        self.spawned.set(n);
        let log = self.dir.join(format!("maglevd-{n}.log"));
        let f = std::fs::File::create(&log).expect("log file");
        let child = self
            .fe
            .command(&argv[0])
            .args(&argv[1..])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log"))
            .stderr(f)
            .spawn()
            .expect("spawn ip netns exec");
        Daemon { child, log, started: Instant::now(), case: self.case.clone() }
    }

    /// GET on the metrics endpoint inside the frontend namespace: (status, body).
    fn http(&self, path: &str) -> (u16, String) {
        let out = run(&[
            "ip",
            "netns",
            "exec",
            self.fe.name(),
            "curl",
            "-s",
            "-m",
            "1",
            "-w",
            "\n%{http_code}",
            &format!("http://{METRICS}{path}"),
        ]);
        let t = text(&out.stdout);
        let (body, code) = t.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    fn metric(&self, name: &str) -> f64 {
        let (code, body) = self.http("/metrics");
        assert_eq!(code, 200, "/metrics answered {code}");
        body.lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
    }

    /// With nothing effective after start, what needs capabilities later still works, each
    /// raising them for itself: ARP resolution and `dsr` probes (a packet socket per probe) of
    /// the second service, a reload that changes the VIPs (the kernel drop filter replaced over
    /// rtnetlink: CAP_NET_ADMIN), and `maglevd status`.
    fn assert_works_without_effective_capabilities(&self, d: &mut Daemon) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let error = loop {
            let (_, body) = self.http("/metrics");
            let found = body
                .lines()
                .find(|l| l.starts_with("maglevd_backend_last_probe_error_info{service=\"checked\""))
                .map(str::to_string);
            if let Some(line) = found {
                break line;
            }
            assert!(Instant::now() < deadline, "no dsr probe failed within 10 s:\n{body}\n{}", d.log());
            std::thread::sleep(Duration::from_millis(100));
        };
        eprintln!("[{}]   dsr probe: {error}", self.case);
        assert!(error.contains("no answer"), "the dsr probe must have run (and found no VIP): {error}");
        assert!(!error.to_lowercase().contains("permit"), "a dsr probe lacked a capability: {error}");
        assert!(self.metric("maglevd_arp_macs_learned_total") >= 1.0, "ARP resolved the checked backend");
        // A reload with one more VIP: the kernel drop filter follows it.
        let generation = self.metric("maglevd_snapshot_generation");
        let current = std::fs::read_to_string(&self.cfg).expect("config");
        let more = format!(
            "{current}\n[[service]]\nname = \"more\"\nvip = \"10.201.0.2\"\nprotocol = \"tcp\"\nport = 80\ntable_size = 251\n\
             [[service.backend]]\nip = \"{BACKEND}\"\n"
        );
        std::fs::write(&self.cfg, more).expect("write config");
        let _ = run(&["kill", "-HUP", &d.pid().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.metric("maglevd_snapshot_generation") <= generation {
            assert!(Instant::now() < deadline, "the reload was not applied:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        let log = d.log();
        assert!(!log.contains("cannot update the kernel drop filter"), "{log}");
        assert_eq!(self.metric("maglevd_kernel_drop_installed"), 1.0, "{log}");
        let filters = run(&["ip", "netns", "exec", self.fe.name(), "tc", "filter", "show", "dev", "fe0", "ingress"]);
        assert!(text(&filters.stdout).contains("pref 19788"), "{}", text(&filters.stdout));
        // maglevd status reads the daemon (no capability involved, but it must answer).
        let out = run(&[
            "ip",
            "netns",
            "exec",
            self.fe.name(),
            self.bin.to_str().expect("utf-8 path"),
            "status",
            "--address",
            METRICS,
            "--interval",
            "0",
        ]);
        let report = text(&out.stdout);
        assert!(
            out.status.success() && report.contains("service more 10.201.0.2:80/tcp"),
            "{report}{}",
            text(&out.stderr)
        );
        eprintln!("[{}]   reload applied with the drop filter updated; status answers", self.case);
    }

    /// One TCP SYN (and its retransmissions within a second) from the peer to the VIP must come
    /// out of maglevd's TX ring; nobody answers it, which is fine here.
    fn assert_forwards(&self, d: &mut Daemon) {
        let before = self.metric("maglevd_forwarded_total");
        let _ = run(&[
            "ip",
            "netns",
            "exec",
            self.cl.name(),
            "curl",
            "-s",
            "-m",
            "1",
            "--connect-timeout",
            "1",
            &format!("http://{VIP}/"),
        ]);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            d.assert_alive();
            let (fwd, tx) = (self.metric("maglevd_forwarded_total"), self.metric("maglevd_tx_frames_total"));
            if fwd > before && tx >= fwd {
                assert_eq!(self.metric("maglevd_tx_errors_total"), 0.0, "TX errors:\n{}", d.log());
                eprintln!("[{}]   forwarded {fwd} frame(s) to the backend, tx_frames {tx}, tx_errors 0", self.case);
                return;
            }
            assert!(Instant::now() < deadline, "SYN to the VIP not forwarded (forwarded {fwd}, tx {tx}):\n{}", d.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The largest send buffer (`ss` skmem `tb`) among the daemon's AF_PACKET sockets: the TX
    /// ring's, sized by SO_SNDBUFFORCE (CAP_NET_ADMIN) or else SO_SNDBUF (≤ 2 × wmem_max).
    fn max_sndbuf(&self, d: &Daemon) -> u64 {
        let out = self.fe.exec(&["ss", "-0", "-a", "-m", "-p"]).expect("ss in the frontend namespace");
        let owner = format!("pid={},", d.pid());
        // One line per socket when not on a terminal; the skmem part may also wrap to the next.
        let mut ours = false;
        let mut max = 0;
        for line in out.lines() {
            let mine = line.contains(&owner);
            if let Some(i) = line.find("skmem:(")
                && (mine || ours)
            {
                let tb = line[i..]
                    .split(['(', ',', ')'])
                    .find_map(|f| f.strip_prefix("tb"))
                    .and_then(|v| v.parse::<u64>().ok());
                max = max.max(tb.unwrap_or_else(|| panic!("no tb in {line}")));
            }
            ours = mine && !line.contains("skmem:(");
        }
        assert!(max > 0, "no AF_PACKET socket of pid {} in ss output:\n{out}", d.pid());
        max
    }

    fn wmem_max(&self) -> u64 {
        let v = self.fe.exec(&["cat", "/proc/sys/net/core/wmem_max"]).expect("read wmem_max");
        v.trim().parse().expect("wmem_max")
    }
}

impl Drop for Net {
    /// The namespaces go with their [`Netns`] handles; the directory is removed here.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `maglevd`; SIGKILLed on drop if still alive.
struct Daemon {
    case: String,
    child: Child,
    log: PathBuf,
    started: Instant,
}

impl Daemon {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_alive(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("maglevd exited ({st}):\n{}", self.log());
        }
    }

    /// Wait until the exec chain has reached maglevd and `/healthz` answers 200.
    fn wait_healthy(&mut self, net: &Net) -> ProcStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.assert_alive();
            if let Some(st) = ProcStatus::read(self.pid())
                && st.get("Name") == "maglevd"
                && net.http("/healthz").0 == 200
            {
                eprintln!("[{}]   healthy after {:?}", self.case, self.started.elapsed());
                return st;
            }
            assert!(Instant::now() < deadline, "maglevd not healthy within 10 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for the process to end by itself (a negative case): its exit status and log.
    fn wait_exit(mut self, within: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                eprintln!("[{}]   exited after {:?} with {st}", self.case, self.started.elapsed());
                return (st, self.log());
            }
            assert!(Instant::now() < deadline, "maglevd still running after {within:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait (bounded) for a clean exit.
    fn stop(mut self) -> ExitStatus {
        let _ = run(&["kill", "-TERM", &self.pid().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            assert!(Instant::now() < deadline, "maglevd did not stop within 10 s of SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- maglevd log:\n{}", self.log());
        }
    }
}

/// `setpriv` arguments: uid/gid 65532, no supplementary groups, and `caps` (e.g. "+net_raw,")
/// as the inheritable, ambient and bounding sets.
fn setpriv_ambient(caps: &str) -> Vec<String> {
    let set = format!("-all{caps}");
    vec![
        "setpriv".into(),
        format!("--reuid={UID}"),
        format!("--regid={UID}"),
        "--clear-groups".into(),
        format!("--inh-caps={set}"),
        format!("--ambient-caps={set}"),
        format!("--bounding-set={set}"),
        "--".into(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Asserts ids, no supplementary groups, and the capability sets after start: `prm` permitted,
/// nothing effective, inheritable or ambient — in every thread of the process (capabilities are
/// per thread; maglevd drops them in its main thread before it starts the others).
fn assert_identity(net: &Net, st: &ProcStatus, prm: u64, pid: u32) {
    eprintln!("[{}]   /proc/PID/status: {}", net.case, st.summary());
    assert_eq!(st.get("Uid"), "65532 65532 65532 65532", "{}", st.summary());
    assert_eq!(st.get("Gid"), "65532 65532 65532 65532", "{}", st.summary());
    assert_eq!(st.get("Groups"), "", "{}", st.summary());
    assert_eq!(st.cap("CapBnd") & !prm, 0, "CapBnd wider than needed: {}", st.summary());
    let tasks: Vec<(String, ProcStatus)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("/proc/PID/task")
        .filter_map(|e| {
            let tid = e.ok()?.file_name().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
            Some((
                tid,
                ProcStatus(
                    text.lines()
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
                        .collect(),
                ),
            ))
        })
        .collect();
    assert!(tasks.len() >= 5, "main, worker, control, metrics and health threads: {}", tasks.len());
    for (tid, t) in &tasks {
        let what = format!("thread {tid} ({}): {}", t.get("Name"), t.summary());
        assert_eq!(t.cap("CapEff"), 0, "nothing effective after start: {what}");
        assert_eq!(t.cap("CapPrm"), prm, "CapPrm: {what}");
        assert_eq!((t.cap("CapInh"), t.cap("CapAmb")), (0, 0), "CapInh/CapAmb: {what}");
    }
    eprintln!("[{}]   {} threads, each CapEff 0, CapPrm {prm:#x}, CapAmb 0", net.case, tasks.len());
}

/// A refused start: exit code 1 within `max`, and the error line that names CAP_NET_RAW and how to
/// grant it (the daemon checks its capabilities before it opens any socket).
fn assert_refused_naming_net_raw(status: ExitStatus, log: &str, elapsed: Duration, max: Duration) {
    assert_eq!(status.code(), Some(1), "want exit code 1 (runtime failure), got {status}:\n{log}");
    assert!(elapsed < max, "took {elapsed:?} to fail");
    assert!(
        log.contains("error: missing capability CAP_NET_RAW: AF_PACKET sockets and rings; grant CAP_NET_RAW and CAP_NET_ADMIN, not root"),
        "the error must name CAP_NET_RAW and how to grant it:\n{log}"
    );
}

/// The systemd unit's grant without its NoNewPrivileges: ambient NET_RAW + NET_ADMIN only.
#[test]
fn ambient_net_raw_net_admin_as_uid_65532_runs_and_forwards() {
    let net = Net::new("amb");
    let wrapper = setpriv_ambient(",+net_raw,+net_admin");
    let mut d = net.spawn(&strs(&wrapper));
    let st = d.wait_healthy(&net);
    assert_identity(&net, &st, NET_RAW | NET_ADMIN, d.pid());
    assert_eq!(st.cap("CapBnd"), 0x3000, "{}", st.summary());
    assert_eq!(st.get("NoNewPrivs"), "0");
    assert!(d.log().contains("capabilities dropped: none effective"), "{}", d.log());
    // CAP_NET_ADMIN is really used: SO_SNDBUFFORCE sized the TX socket for the whole ring
    // (64 slots of at least 64 KiB), whatever net.core.wmem_max says.
    let (tb, wmem_max) = (net.max_sndbuf(&d), net.wmem_max());
    eprintln!("[{}]   TX send buffer {tb} B (net.core.wmem_max {wmem_max})", net.case);
    assert!(tb >= 2 * 64 * 65535, "SO_SNDBUFFORCE did not size the TX buffer for the ring: {tb} B");
    net.assert_forwards(&mut d);
    assert!(d.log().contains("kernel drop filter installed"), "{}", d.log());
    net.assert_works_without_effective_capabilities(&mut d);
    let exit = d.stop();
    assert!(exit.success(), "SIGTERM must stop maglevd cleanly, got {exit}");
    assert!(d_log_ok(&net), "the clean stop removed the kernel drop filter");
}

/// After a stop the ingress has no filter of maglevd's left (removing it needed CAP_NET_ADMIN).
fn d_log_ok(net: &Net) -> bool {
    let out = run(&["ip", "netns", "exec", net.fe.name(), "tc", "filter", "show", "dev", "fe0", "ingress"]);
    !text(&out.stdout).contains("pref 19788")
}

/// Exactly the unit's setting: AmbientCapabilities + CapabilityBoundingSet + NoNewPrivileges=yes.
/// no_new_privs does not get in the way of ambient capabilities (nothing is gained at exec).
#[test]
fn systemd_unit_grant_ambient_with_no_new_privs() {
    let net = Net::new("unit");
    let mut wrapper = setpriv_ambient(",+net_raw,+net_admin");
    wrapper.insert(1, "--no-new-privs".into());
    let mut d = net.spawn(&strs(&wrapper));
    let st = d.wait_healthy(&net);
    assert_identity(&net, &st, NET_RAW | NET_ADMIN, d.pid());
    assert_eq!(st.get("NoNewPrivs"), "1", "{}", st.summary());
    net.assert_forwards(&mut d);
    assert!(d.stop().success());
}

/// Without CAP_NET_RAW (no capability at all, or NET_ADMIN alone) the daemon must stop at once
/// with an error naming CAP_NET_RAW, before serving anything.
#[test]
fn without_net_raw_it_fails_fast_naming_cap_net_raw() {
    let net = Net::new("none");
    for caps in ["", ",+net_admin"] {
        eprintln!("[{}] case: ambient/bounding = -all{caps}", net.case);
        let wrapper = setpriv_ambient(caps);
        let d = net.spawn(&strs(&wrapper));
        let started = d.started;
        let (status, log) = d.wait_exit(Duration::from_secs(10));
        assert_refused_naming_net_raw(status, &log, started.elapsed(), Duration::from_secs(5));
        assert_eq!(net.http("/healthz").0, 0, "nothing may listen on the metrics port");
        eprintln!("[{}]   {}", net.case, log.lines().last().unwrap_or_default());
    }
}

/// CAP_NET_RAW alone is enough: the TX ring's send buffer falls back from SO_SNDBUFFORCE to
/// SO_SNDBUF (capped by net.core.wmem_max), and the daemon runs and forwards. Without
/// CAP_NET_ADMIN it cannot put its kernel drop filter on the ingress interface: a warning names
/// the capability and the cost, and it forwards on without.
#[test]
fn net_raw_without_net_admin_still_runs_and_forwards() {
    let net = Net::new("raw");
    let wrapper = setpriv_ambient(",+net_raw");
    let mut d = net.spawn(&strs(&wrapper));
    let st = d.wait_healthy(&net);
    assert_identity(&net, &st, NET_RAW, d.pid());
    // The fallback: SO_SNDBUF, which the kernel caps at 2 × net.core.wmem_max.
    let (tb, wmem_max) = (net.max_sndbuf(&d), net.wmem_max());
    eprintln!("[{}]   TX send buffer {tb} B (net.core.wmem_max {wmem_max})", net.case);
    assert!(tb <= 2 * wmem_max, "without CAP_NET_ADMIN the send buffer must be capped: {tb} B");
    net.assert_forwards(&mut d);
    let log = d.log();
    // (The second service's backend is down by design: its all-down line is expected.)
    let unexpected = log
        .lines()
        .filter(|l| !l.contains("every backend of the service is down"))
        .any(|l| l.contains("ERROR") || l.contains("error:"));
    assert!(!unexpected, "unexpected error:\n{log}");
    assert!(
        log.contains("cannot install the kernel drop filter (needs CAP_NET_ADMIN)")
            && log.contains("about a fifth of the receiving CPU"),
        "the missing kernel drop filter must be a warning naming CAP_NET_ADMIN and the cost:\n{log}"
    );
    assert!(d.stop().success());
}

/// The image's way: the binary carries `cap_net_raw,cap_net_admin=ep`, the process starts with
/// no inheritable or ambient capability, the pod's `drop: [ALL], add: [NET_RAW, NET_ADMIN]` is
/// the bounding set, and no_new_privs is off (`allowPrivilegeEscalation: true`).
#[test]
fn image_layout_file_capabilities_run_as_uid_65532() {
    let net = Net::new("fcap");
    net.setcap();
    let wrapper = [
        "setpriv",
        "--reuid=65532",
        "--regid=65532",
        "--clear-groups",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--bounding-set=-all,+net_raw,+net_admin",
        "--",
    ];
    let mut d = net.spawn(&wrapper);
    let st = d.wait_healthy(&net);
    assert_identity(&net, &st, NET_RAW | NET_ADMIN, d.pid());
    assert_eq!(st.get("NoNewPrivs"), "0");
    net.assert_forwards(&mut d);
    assert!(d.stop().success());
}

/// The container runtime's last step before the image's binary runs, emulated with capsh:
/// bounding set = {NET_RAW, NET_ADMIN} (`drop: [ALL], add: [NET_RAW, NET_ADMIN]`), then uid/gid
/// 65532 keeping `permitted` as the permitted set, then no_new_privs if asked
/// (`allowPrivilegeEscalation: false`), then exec of the file-capability binary.
fn spawn_as_runtime(net: &Net, permitted: &str, no_new_privs: bool) -> Daemon {
    let mut argv: Vec<String> = [
        // As root: keep only what capsh needs to change ids, and the two the pod adds.
        "setpriv",
        "--bounding-set=-all,+net_raw,+net_admin,+setuid,+setgid,+setpcap",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--",
        "capsh",
        "--keep=1",
        "--gid=65532",
        "--groups=",
        "--uid=65532",
        "--caps=cap_net_raw,cap_net_admin,cap_setpcap+ep",
        "--drop=cap_setuid,cap_setgid,cap_setpcap",
    ]
    .map(String::from)
    .to_vec();
    argv.push(format!("--caps={permitted}"));
    if no_new_privs {
        argv.push("--no-new-privs".into());
    }
    // capsh --shell=BIN -- ARGS execs BIN with ARGS (no fork).
    argv.push(format!("--shell={}", net.bin.to_str().expect("utf-8 path")));
    argv.push("--".into());
    argv.extend(net.daemon_args());
    net.spawn_argv(argv)
}

/// `allowPrivilegeEscalation: false` sets no_new_privs, and then the kernel lets an exec *gain*
/// no capability beyond the caller's permitted set. So whether the image's file capabilities
/// survive it depends on what the runtime leaves in the permitted set of the process that execs
/// the entrypoint: nothing (Docker clears it for non-root users, moby#45491) → maglevd gets no
/// capability and stops with the CAP_NET_RAW error; the added capabilities (runc applying an OCI
/// spec whose permitted set lists them) → it runs. Without no_new_privs it runs either way, which
/// is why the manifests set `allowPrivilegeEscalation: true` (docker/README.md).
#[test]
fn image_layout_file_capabilities_vs_no_new_privs() {
    let net = Net::new("nnp");
    net.setcap();

    eprintln!("[{}] case: runtime cleared the permitted set, no_new_privs (allowPrivilegeEscalation: false)", net.case);
    let d = spawn_as_runtime(&net, "=", true);
    let started = d.started;
    let (status, log) = d.wait_exit(Duration::from_secs(10));
    assert_refused_naming_net_raw(status, &log, started.elapsed(), Duration::from_secs(5));

    eprintln!("[{}] case: runtime cleared the permitted set, no no_new_privs (the manifests' setting)", net.case);
    let mut d = spawn_as_runtime(&net, "=", false);
    let st = d.wait_healthy(&net);
    assert_identity(&net, &st, NET_RAW | NET_ADMIN, d.pid());
    assert_eq!(st.get("NoNewPrivs"), "0");
    assert!(d.stop().success());

    eprintln!("[{}] case: runtime left NET_RAW,NET_ADMIN permitted, no_new_privs", net.case);
    let mut d = spawn_as_runtime(&net, "cap_net_raw,cap_net_admin+p", true);
    let st = d.wait_healthy(&net);
    assert_identity(&net, &st, NET_RAW | NET_ADMIN, d.pid());
    assert_eq!(st.get("NoNewPrivs"), "1");
    assert!(d.stop().success());
}

/// Without the pod's `capabilities.add` the bounding set lacks the file's capabilities, and the
/// kernel refuses the exec itself (EPERM): the container never starts.
#[test]
fn image_layout_file_capabilities_without_capabilities_add_cannot_exec() {
    let net = Net::new("nobnd");
    net.setcap();
    for bounding in ["-all", "-all,+net_raw"] {
        eprintln!("[{}] case: bounding set {bounding}", net.case);
        let b = format!("--bounding-set={bounding}");
        let wrapper = [
            "setpriv",
            "--reuid=65532",
            "--regid=65532",
            "--clear-groups",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            &b,
            "--",
        ];
        let (status, log) = net.spawn(&wrapper).wait_exit(Duration::from_secs(10));
        assert_eq!(status.code(), Some(126), "want setpriv's exec failure (126), got {status}:\n{log}");
        assert!(log.contains("Operation not permitted"), "{log}");
        assert!(!log.contains("starting"), "maglevd must not have started:\n{log}");
        eprintln!("[{}]   {}", net.case, log.trim());
    }
}
