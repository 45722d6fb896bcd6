//! Network namespaces for the live benchmark (`maglevd bench live`) and the tests: create a
//! namespace, join namespaces with veth pairs, run commands and closures inside them, and remove
//! them again when the handle is dropped (on success, on error and on panic).
//!
//! Not part of what the daemon itself needs: `maglevd run` never creates a namespace. It lives in
//! the library because the benchmark uses it; the integration tests use the same code so that
//! there is one way to build a throwaway topology. The seed-like ten-namespace lab of the
//! end-to-end tests and the demo is `tests/lab/lab.sh`; [`Netns::attach`] reaches its namespaces.
//!
//! Namespaces are managed with iproute2 (`ip netns add`, `ip -n NS link add … netns OTHER`) rather
//! than raw `unshare`/netlink calls: every link is created inside a namespace, so nothing outside
//! them is touched, and the names appear in `ip netns list` for anyone debugging a failed run.
//! Closures run on a thread that `setns()`es into the namespace ([`crate::io::enter_netns`]); the
//! other threads of the process stay where they are.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;

/// What went wrong, naming the command or namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A command ran and failed.
    #[error("{cmd}: {stderr}")]
    Command { cmd: String, stderr: String },
    /// A command could not be started.
    #[error("{cmd}: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    /// `setns()` into the namespace failed.
    #[error("setns into {ns}: {source}")]
    Enter { ns: String, source: std::io::Error },
    /// A thread could not be started.
    #[error("starting a thread for namespace {ns}: {source}")]
    Thread { ns: String, source: std::io::Error },
    /// The environment cannot build namespaces (not root, no iproute2).
    #[error("{0}")]
    Env(String),
}

/// Runs a command; its stdout as text, or an error naming the command and its stderr.
pub fn run(cmd: &mut Command) -> Result<String, NetnsError> {
    let shown = format!("{cmd:?}").replace('"', "");
    match cmd.stdin(Stdio::null()).output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(NetnsError::Command {
            cmd: shown,
            stderr: format!("{} ({})", String::from_utf8_lossy(&o.stderr).trim(), o.status),
        }),
        Err(source) => Err(NetnsError::Spawn { cmd: shown, source }),
    }
}

/// Is the effective user root? (Namespaces, veths and AF_PACKET need it.)
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1));
    euid == Some("0")
}

/// Checks that namespaces can be built here: root and iproute2. `who` names the caller in the
/// error (e.g. "bench live").
pub fn preflight(who: &str) -> Result<(), NetnsError> {
    if !is_root() {
        return Err(NetnsError::Env(format!("{who} creates network namespaces and AF_PACKET sockets: run it as root")));
    }
    run(Command::new("ip").arg("-V")).map_err(|e| NetnsError::Env(format!("{who} needs iproute2 (`ip`): {e}")))?;
    Ok(())
}

/// Names of existing namespaces that start with `prefix` (to check cleanup).
pub fn list(prefix: &str) -> Vec<String> {
    run(Command::new("ip").args(["netns", "list"]))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// A named network namespace. One made by [`Netns::create`] is deleted (with its links and the
/// veth peers of those links) when dropped; one reached with [`Netns::attach`] is left alone.
#[derive(Debug)]
pub struct Netns {
    name: String,
    owned: bool,
}

impl Netns {
    /// Creates namespace `name` with `lo` up, IPv6 off, and `ip_forward` and `rp_filter` set
    /// explicitly to 0 (a new namespace would otherwise inherit the host's defaults). A stale
    /// namespace of the same name (from a killed run) is removed first.
    pub fn create(name: &str) -> Result<Netns, NetnsError> {
        if std::path::Path::new("/run/netns").join(name).exists() {
            run(Command::new("ip").args(["netns", "del", name]))?;
        }
        run(Command::new("ip").args(["netns", "add", name]))?;
        // From here on the handle exists: an error below still removes the namespace.
        let ns = Netns { name: name.to_string(), owned: true };
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.sysctls(&[
            ("net.ipv4.ip_forward", "0"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv6.conf.all.disable_ipv6", "1"),
            ("net.ipv6.conf.default.disable_ipv6", "1"),
        ])?;
        Ok(ns)
    }

    /// A handle on an existing namespace someone else manages (e.g. the lab of `tests/lab/lab.sh`);
    /// dropping it does not delete the namespace.
    pub fn attach(name: &str) -> Netns {
        Netns { name: name.to_string(), owned: false }
    }

    /// The namespace's name (as in `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, the file `setns()` opens.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// `ip -n NAME ARGS…`.
    pub fn ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A [`Command`] that runs `program` inside the namespace (`ip netns exec`, which also mounts
    /// the namespace's own /sys); add arguments, stdio and spawn it as usual.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `argv` inside the namespace; its stdout.
    pub fn exec(&self, argv: &[&str]) -> Result<String, NetnsError> {
        let (program, args) = argv.split_first().ok_or_else(|| NetnsError::Env("exec: empty argv".into()))?;
        run(self.command(program).args(args))
    }

    /// Runs a shell snippet inside the namespace; its stdout.
    pub fn sh(&self, script: &str) -> Result<String, NetnsError> {
        self.exec(&["sh", "-c", script])
    }

    /// Sets sysctls inside the namespace (keys with dots: `net.ipv4.ip_forward`).
    pub fn sysctls(&self, kv: &[(&str, &str)]) -> Result<(), NetnsError> {
        let args: Vec<String> = kv.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut argv = vec!["sysctl", "-q", "-w"];
        argv.extend(args.iter().map(String::as_str));
        self.exec(&argv).map(|_| ())
    }

    /// Sets one sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), NetnsError> {
        self.sysctls(&[(key, value)])
    }

    /// A veth pair: `ifname` here, `peer_ifname` in `peer` (which may be `self`); both up.
    pub fn veth(&self, ifname: &str, peer: &Netns, peer_ifname: &str) -> Result<(), NetnsError> {
        self.ip(&["link", "add", ifname, "type", "veth", "peer", "name", peer_ifname, "netns", &peer.name])?;
        self.ip(&["link", "set", ifname, "up"])?;
        peer.ip(&["link", "set", peer_ifname, "up"])?;
        Ok(())
    }

    /// Adds `cidr` (e.g. `10.99.0.1/24`) to `ifname`.
    pub fn addr(&self, ifname: &str, cidr: &str) -> Result<(), NetnsError> {
        self.ip(&["addr", "add", cidr, "dev", ifname]).map(|_| ())
    }

    /// The MAC address of `ifname`.
    pub fn mac(&self, ifname: &str) -> Result<[u8; 6], NetnsError> {
        let text = self.exec(&["cat", &format!("/sys/class/net/{ifname}/address")])?;
        let bytes: Vec<u8> = text.trim().split(':').filter_map(|h| u8::from_str_radix(h, 16).ok()).collect();
        bytes.try_into().map_err(|_| NetnsError::Command {
            cmd: format!("{}: /sys/class/net/{ifname}/address", self.name),
            stderr: format!("not a MAC address: {}", text.trim()),
        })
    }

    /// Moves the **calling thread** into the namespace.
    pub fn enter(&self) -> Result<(), NetnsError> {
        crate::io::enter_netns(&self.path()).map_err(|source| NetnsError::Enter { ns: self.name.clone(), source })
    }

    /// Runs `f` on a new thread inside the namespace and returns its result; `f` may borrow from
    /// the caller. A panic in `f` is passed on to the caller.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        std::thread::scope(|s| {
            let h = std::thread::Builder::new()
                .name(format!("netns-{}", self.name))
                .spawn_scoped(s, || self.enter().map(|()| f()))
                .map_err(|source| NetnsError::Thread { ns: self.name.clone(), source })?;
            h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Starts `f` on a new thread inside the namespace and returns at once.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<JoinHandle<Result<T, NetnsError>>, NetnsError> {
        let (name, path) = (self.name.clone(), self.path());
        std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(move || {
                crate::io::enter_netns(&path).map_err(|source| NetnsError::Enter { ns: name, source })?;
                Ok(f())
            })
            .map_err(|source| NetnsError::Thread { ns: self.name.clone(), source })
    }

    /// Deletes the namespace now if this handle made it (idempotent).
    pub fn delete(&mut self) {
        if std::mem::take(&mut self.owned) {
            let _ = run(Command::new("ip").args(["netns", "del", &self.name]));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}
