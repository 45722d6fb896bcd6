//! The container image, built and run as the frontend pods run it.
//!
//! 1. Builds the image from the binary under test with `docker/build-local.sh` (docker/Dockerfile,
//!    Podman, a Debian base made by debootstrap and cached between runs; no registry).
//! 2. Builds the namespace lab (tests/lab/lab.sh) and routes the VIP to fe1 only. The pod's
//!    sysctls are set on fe1's namespace, which plays the pod sandbox.
//! 3. Writes the ConfigMap volume as the kubelet does: `..<timestamp>/maglevd.toml`,
//!    `..data -> ..<timestamp>`, `maglevd.toml -> ..data/maglevd.toml`.
//! 4. Starts the image with `podman run` joined to fe1's network namespace, with what the pod spec
//!    says: user and group, capabilities (drop ALL, add NET_RAW and NET_ADMIN), privilege
//!    escalation, read-only root, seccomp, environment, arguments, CPU and memory limits, the
//!    ConfigMap volume mounted read-only.
//! 5. Checks the process (uid, capability sets, no_new_privs, read-only mounts), the probes as the
//!    manifest defines them (path and named port, from a node's side), traffic through the VIP
//!    reaching every backend, a ConfigMap update by the kubelet's atomic `..data` swap that drains
//!    one backend (applied by maglevd's periodic file check: no new flow reaches it), a ConfigMap
//!    that drains every backend (the readiness probe must fail, saying why, while the liveness
//!    probe keeps passing: a frontend without backends is unready, not restarted), the ConfigMap
//!    as shipped again (ready, every backend reached and healthy by the ConfigMap's health
//!    check, which ran in the container all along), and `podman stop` (SIGTERM) ending maglevd
//!    with exit code 0 within the pod's terminationGracePeriodSeconds. Prints the image's size;
//!    the release image must stay under 40 MB.
//!
//! Everything the pod spec says is read from docker/k8s/frontend.yaml (the Deployment of fe1) and
//! docker/k8s/configmap.yaml with a YAML parser, never repeated here, so a manifest change that
//! would break the pod breaks this test; a field this test cannot reproduce with Podman fails it
//! with a message rather than being ignored.
//!
//! Podman (runc) stands in for the kubelet and its runtime. Where they differ: Podman also puts the
//! added capabilities in the inheritable set (containerd and CRI-O leave it empty; maglevd's
//! capabilities come from the binary's file capabilities either way, which this test sees), the
//! probes are sent from the router's namespace to the pod's net1 address (a kubelet would use the
//! pod IP on eth0, which the lab has not), and RLIMIT_NOFILE/NPROC are set to 1024 (Podman's
//! default is above this machine's hard limit).
//!
//! Runs as root; fails, never skips, without podman, runc, debootstrap or the lab's tools
//! (tests/setup.sh installs them). All traffic stays in the lab's namespaces.
//!
//! Release profile only (`cargo test --release --test container`; marked ignored in the debug
//! profile, with the reason): the image ships the release binary and its size is checked against
//! the goal, and one image build and run is enough. tests/run-all.sh runs every test in debug
//! and then in release, so it runs this one exactly once.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde::Deserialize;
use support::lab::{Lab, http_get, repo, text};

/// The lab namespace that runs the container, and the frontend whose Deployment it runs.
const FRONTEND: &str = "fe1";
/// Pod template label naming a frontend in docker/k8s/frontend.yaml.
const FRONTEND_LABEL: &str = "maglevd/frontend";
const NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";
/// The goal for the shipped image (this test runs in the release profile only).
const MAX_IMAGE_BYTES: u64 = 40_000_000;
/// What the runtime root may add to the binary (libraries, identity files, configuration).
const MAX_BASE_BYTES: u64 = 8_000_000;
/// The capabilities the image's binary carries as file capabilities (docker/rootfs.sh).
const FILE_CAPS: [&str; 2] = ["NET_ADMIN", "NET_RAW"];

// ---------------------------------------------------------------------------------------------
// The manifests: only the fields a pod's run depends on. Unknown fields are ignored here (the
// manifests are schema-checked by docker/validate.sh); fields this test cannot reproduce are
// refused where they are used.

#[derive(Debug, Deserialize)]
struct Deployment {
    kind: String,
    spec: DeploymentSpec,
}

#[derive(Debug, Deserialize)]
struct DeploymentSpec {
    template: PodTemplate,
}

#[derive(Debug, Deserialize)]
struct PodTemplate {
    metadata: Metadata,
    spec: PodSpec,
}

#[derive(Debug, Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    /// Kubernetes' default is 30 s.
    termination_grace_period_seconds: Option<u64>,
    #[serde(default)]
    security_context: SecurityContext,
    containers: Vec<Container>,
    #[serde(default)]
    volumes: Vec<Volume>,
}

/// The pod's and the container's securityContext (the container's fields override the pod's).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecurityContext {
    run_as_user: Option<u32>,
    run_as_group: Option<u32>,
    run_as_non_root: Option<bool>,
    privileged: Option<bool>,
    allow_privilege_escalation: Option<bool>,
    read_only_root_filesystem: Option<bool>,
    capabilities: Option<Capabilities>,
    seccomp_profile: Option<SeccompProfile>,
    #[serde(default)]
    sysctls: Vec<NameValue>,
}

#[derive(Debug, Default, Deserialize)]
struct Capabilities {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    drop: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct SeccompProfile {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NameValue {
    name: String,
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    name: String,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<NameValue>,
    #[serde(default)]
    ports: Vec<ContainerPort>,
    #[serde(default)]
    security_context: SecurityContext,
    startup_probe: Option<Probe>,
    readiness_probe: Option<Probe>,
    liveness_probe: Option<Probe>,
    #[serde(default)]
    resources: Resources,
    #[serde(default)]
    volume_mounts: Vec<VolumeMount>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerPort {
    name: Option<String>,
    container_port: u16,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    http_get: Option<HttpGet>,
    #[serde(default)]
    initial_delay_seconds: u64,
    period_seconds: Option<u64>,
    timeout_seconds: Option<u64>,
    failure_threshold: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct HttpGet {
    path: Option<String>,
    port: PortRef,
    scheme: Option<String>,
}

/// A probe's port: a number or the name of a container port.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PortRef {
    Number(u16),
    Name(String),
}

/// A resource quantity: YAML may give `2` or `"2"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Quantity {
    Number(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
struct Resources {
    #[serde(default)]
    limits: BTreeMap<String, Quantity>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VolumeMount {
    name: String,
    mount_path: String,
    sub_path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Volume {
    name: String,
    config_map: Option<ConfigMapVolumeSource>,
    host_path: Option<HostPathVolumeSource>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HostPathVolumeSource {
    path: String,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigMapVolumeSource {
    name: String,
    items: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
struct ConfigMap {
    metadata: Metadata,
    #[serde(default)]
    data: BTreeMap<String, String>,
}

/// Every YAML document of a file in docker/k8s/ that deserializes as `T` and passes `keep`.
fn documents<T: for<'de> Deserialize<'de>>(file: &str, keep: impl Fn(&T) -> bool) -> Vec<T> {
    let path = repo().join("docker/k8s").join(file);
    let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&yaml) {
        let v = serde_yaml_ng::Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if v.is_null() {
            continue;
        }
        match serde_yaml_ng::from_value::<T>(v) {
            Ok(t) if keep(&t) => out.push(t),
            Ok(_) => {}
            Err(e) => panic!("{}: a document does not read as {}: {e}", path.display(), std::any::type_name::<T>()),
        }
    }
    out
}

/// The frontend's pod as the manifests define it, with the container-over-pod precedence resolved.
struct Pod {
    spec: PodSpec,
    annotations: BTreeMap<String, String>,
    config_map: ConfigMap,
}

impl Pod {
    fn load(frontend: &str) -> Pod {
        let mut deployments = documents::<Deployment>("frontend.yaml", |d| {
            d.kind == "Deployment"
                && d.spec.template.metadata.labels.get(FRONTEND_LABEL).map(String::as_str) == Some(frontend)
        });
        assert_eq!(deployments.len(), 1, "docker/k8s/frontend.yaml: one Deployment with {FRONTEND_LABEL}: {frontend}");
        let template = deployments.remove(0).spec.template;
        // maglevd first; the others are sidecars (BIRD), which this test does not run: the BGP
        // lab runs the same bird.conf with Debian's bird2 (tests/bgp_e2e.rs).
        assert_eq!(template.spec.containers[0].name, "maglevd", "the frontend pod's first container is maglevd");
        let sidecars: Vec<&str> = template.spec.containers[1..].iter().map(|c| c.name.as_str()).collect();
        assert!(sidecars.iter().all(|n| *n == "bird"), "unexpected containers in the frontend pod: {sidecars:?}");
        let cm_names: Vec<&str> =
            template.spec.volumes.iter().filter_map(|v| v.config_map.as_ref()).map(|c| c.name.as_str()).collect();
        let mut maps = documents::<ConfigMap>("configmap.yaml", |c| cm_names.contains(&c.metadata.name.as_str()));
        assert_eq!(maps.len(), 1, "docker/k8s/configmap.yaml: the ConfigMap of the pod's volumes {cm_names:?}");
        Pod { spec: template.spec, annotations: template.metadata.annotations, config_map: maps.remove(0) }
    }

    fn container(&self) -> &Container {
        &self.spec.containers[0]
    }

    /// Is volume `name` a device from the host (a CharDevice hostPath)?
    fn is_device(&self, name: &str) -> bool {
        self.spec.volumes.iter().any(|v| v.name == name && v.host_path.is_some())
    }

    fn user(&self) -> (u32, u32) {
        let (c, p) = (&self.container().security_context, &self.spec.security_context);
        let uid = c.run_as_user.or(p.run_as_user).expect("runAsUser: the image's USER would do, but the pod sets it");
        let gid = c.run_as_group.or(p.run_as_group).unwrap_or(uid);
        if c.run_as_non_root.or(p.run_as_non_root) == Some(true) {
            assert_ne!(uid, 0, "runAsNonRoot with runAsUser 0: the kubelet refuses to start the container");
        }
        (uid, gid)
    }

    fn capabilities(&self) -> &Capabilities {
        self.container().security_context.capabilities.as_ref().expect("the container's capabilities")
    }

    fn grace(&self) -> Duration {
        Duration::from_secs(self.spec.termination_grace_period_seconds.unwrap_or(30))
    }

    /// A container port by name or number.
    fn port(&self, p: &PortRef) -> u16 {
        match p {
            PortRef::Number(n) => *n,
            PortRef::Name(name) => {
                self.container()
                    .ports
                    .iter()
                    .find(|c| c.name.as_deref() == Some(name.as_str()))
                    .unwrap_or_else(|| panic!("a probe names port {name:?}, which the container does not declare"))
                    .container_port
            }
        }
    }

    /// The pod's address on the Multus network whose interface is `ifname`.
    fn address(&self, ifname: &str) -> Ipv4Addr {
        let raw = self.annotations.get(NETWORKS_ANNOTATION).expect("the pod's Multus networks annotation");
        let nets: Vec<serde_json::Value> = serde_json::from_str(raw).expect("the networks annotation is JSON");
        let net = nets.iter().find(|n| n["interface"] == ifname).unwrap_or_else(|| panic!("no {ifname} in {raw}"));
        let cidr = net["ips"][0].as_str().expect("the network's first address");
        cidr.split('/').next().unwrap().parse().expect("an IPv4 address")
    }

    /// The configuration maglevd reads: the ConfigMap key mounted at the path `args` give to `-c`,
    /// and its text.
    fn config_file(&self) -> (&str, &str) {
        let args = &self.container().args;
        let path = args.iter().position(|a| a == "-c" || a == "--config").map(|i| &args[i + 1]).expect("-c in args");
        let (dir, key) = path.rsplit_once('/').expect("an absolute path");
        let mount = self.container().volume_mounts.iter().find(|m| m.mount_path == dir).unwrap_or_else(|| {
            panic!("{path} is not in a mounted volume: the image's own example would run, not the ConfigMap")
        });
        let volume = self.spec.volumes.iter().find(|v| v.name == mount.name).expect("the mount's volume");
        assert!(volume.config_map.is_some(), "volume {} is not a ConfigMap", volume.name);
        (key, self.config_map.data.get(key).unwrap_or_else(|| panic!("ConfigMap has no key {key}")))
    }

    /// `podman run` options for the container: what the kubelet would ask its runtime for.
    fn podman_options(&self, netns: &Path, volume_dir: &Path) -> Vec<String> {
        let c = self.container();
        let sc = &c.security_context;
        let pod_sc = &self.spec.security_context;
        let mut o: Vec<String> = Vec::new();
        let mut add = |a: &[&str]| o.extend(a.iter().map(|s| s.to_string()));
        add(&["--network", &format!("ns:{}", netns.display())]);
        let (uid, gid) = self.user();
        add(&["--user", &format!("{uid}:{gid}")]);
        if sc.privileged == Some(true) {
            add(&["--privileged"]);
        }
        let caps = self.capabilities();
        assert_eq!(caps.drop, ["ALL"], "this test models capabilities.drop: [ALL] (the runtime's defaults otherwise)");
        add(&["--cap-drop", "ALL"]);
        for cap in &caps.add {
            add(&["--cap-add", cap]);
        }
        // Kubernetes' default is true (no no_new_privs).
        if sc.allow_privilege_escalation == Some(false) {
            add(&["--security-opt", "no-new-privileges"]);
        }
        if sc.read_only_root_filesystem == Some(true) {
            // Kubernetes mounts nothing writable of its own; Podman would add tmpfs /tmp, /run.
            add(&["--read-only", "--read-only-tmpfs=false"]);
        }
        match sc.seccomp_profile.as_ref().or(pod_sc.seccomp_profile.as_ref()).map(|s| s.kind.as_str()) {
            // Podman's default profile is its RuntimeDefault.
            Some("RuntimeDefault") => {}
            Some("Unconfined") | None => add(&["--security-opt", "seccomp=unconfined"]),
            Some(other) => panic!("seccompProfile {other}: not reproduced by this test"),
        }
        for e in &c.env {
            let v = e.value.as_deref().unwrap_or_else(|| panic!("env {}: valueFrom is not reproduced", e.name));
            add(&["--env", &format!("{}={v}", e.name)]);
        }
        for (name, q) in &c.resources.limits {
            let q = match q {
                Quantity::Number(n) => n.to_string(),
                Quantity::Text(t) => t.clone(),
            };
            match name.as_str() {
                "cpu" => add(&["--cpus", &cpus(&q).to_string()]),
                "memory" => add(&["--memory", &bytes(&q).to_string()]),
                other => panic!("resource limit {other}: not reproduced by this test"),
            }
        }
        for m in &c.volume_mounts {
            assert!(m.sub_path.is_none(), "volumeMount {} uses subPath, which never sees ConfigMap updates", m.name);
            let v = self.spec.volumes.iter().find(|v| v.name == m.name).expect("the mount's volume");
            if let Some(h) = &v.host_path {
                // A device from the host (/dev/net/tun): the runtime creates the node and allows it.
                assert_eq!(h.kind.as_deref(), Some("CharDevice"), "volume {}: only CharDevice hostPaths", v.name);
                add(&["--device", &format!("{}:{}", h.path, m.mount_path)]);
                continue;
            }
            let cm =
                v.config_map.as_ref().unwrap_or_else(|| panic!("volume {}: only ConfigMaps are reproduced", v.name));
            assert!(cm.items.is_none(), "volume {}: items are not reproduced", v.name);
            assert_eq!(cm.name, self.config_map.metadata.name);
            // ConfigMap volumes are read-only whatever the mount's readOnly says (Kubernetes 1.9.4+).
            add(&["--volume", &format!("{}:{}:ro", volume_dir.display(), m.mount_path)]);
        }
        if !c.command.is_empty() {
            let json = serde_json::to_string(&c.command).unwrap();
            add(&["--entrypoint", &json]);
        }
        o
    }
}

/// CPU quantity ("2", "1500m") in CPUs.
fn cpus(q: &str) -> f64 {
    match q.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().expect("millicpu") / 1000.0,
        None => q.parse().expect("a CPU quantity"),
    }
}

/// Memory quantity ("256Mi", "1G", "1000000") in bytes.
fn bytes(q: &str) -> u64 {
    let units =
        [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("k", 1_000), ("M", 1_000_000), ("G", 1_000_000_000)];
    for (suffix, unit) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().expect("a memory quantity") * unit;
        }
    }
    q.parse().expect("a memory quantity")
}

/// Capability bits by name (linux/capability.h order).
fn cap_mask(names: &[impl AsRef<str>]) -> u64 {
    const ALL: [&str; 41] = [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    names.iter().fold(0, |m, n| {
        let n = n.as_ref().trim_start_matches("CAP_");
        let bit = ALL.iter().position(|c| *c == n).unwrap_or_else(|| panic!("unknown capability {n}"));
        m | 1 << bit
    })
}

// ---------------------------------------------------------------------------------------------
// Podman.

fn podman(args: &[&str]) -> Output {
    // Bounded: a hung engine fails the test instead of holding CI.
    Command::new("timeout")
        .args(["120", "podman", "--cgroup-manager=cgroupfs"])
        .args(args)
        .output()
        .expect("run podman (tests/setup.sh installs it)")
}

fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(out.status.success(), "podman {args:?} failed:\n{}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

/// The image under test, removed when dropped.
struct Image {
    tag: String,
}

impl Image {
    /// `docker/build-local.sh` with the binary under test.
    fn build(tag: &str) -> Image {
        for tool in ["podman", "runc", "debootstrap"] {
            let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output();
            assert!(
                found.is_ok_and(|o| o.status.success()),
                "{tool} is not installed: run tests/setup.sh (installs podman, runc, debootstrap)"
            );
        }
        let image = Image { tag: tag.to_string() };
        let t0 = Instant::now();
        let out = Command::new("timeout")
            .args(["900", "docker/build-local.sh", "--binary", env!("CARGO_BIN_EXE_maglevd"), "--tag", tag])
            .current_dir(repo())
            .output()
            .expect("run docker/build-local.sh");
        eprintln!("{}", text(&out.stdout).trim_end());
        assert!(out.status.success(), "docker/build-local.sh failed:\n{}", text(&out.stderr));
        eprintln!("image built in {:.1} s", t0.elapsed().as_secs_f64());
        image
    }

    fn size(&self) -> u64 {
        podman_ok(&["image", "inspect", "--format", "{{.Size}}", &self.tag]).parse().expect("image size")
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = podman(&["rmi", "--force", &self.tag]);
    }
}

/// A container started by this test, removed (with its log printed on a failure) when dropped.
struct Running {
    name: String,
}

impl Running {
    fn start(name: &str, options: &[String], image: &Image, pod: &Pod) -> Running {
        let c = pod.container();
        let mut args: Vec<&str> = vec!["run", "--detach", "--name", name];
        // The machine's limits (see the module doc); not part of the pod spec.
        args.extend(["--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]);
        args.extend(options.iter().map(String::as_str));
        args.push(&image.tag);
        args.extend(c.args.iter().map(String::as_str));
        eprintln!("container {}: podman {}", c.name, args.join(" "));
        let running = Running { name: name.to_string() };
        podman_ok(&args);
        running
    }

    fn log(&self) -> String {
        let out = podman(&["logs", &self.name]);
        format!("{}{}", text(&out.stdout), text(&out.stderr))
    }

    fn state(&self, field: &str) -> String {
        podman_ok(&["inspect", "--format", &format!("{{{{.State.{field}}}}}"), &self.name])
    }

    fn assert_running(&self) {
        assert_eq!(self.state("Status"), "running", "the container stopped:\n{}", self.log());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- container {} log:\n{}", self.name, self.log());
        }
        let _ = podman(&["rm", "--force", "--time", "0", &self.name]);
    }
}

// ---------------------------------------------------------------------------------------------
// The ConfigMap volume, written the way the kubelet's atomic writer does.

struct ConfigMapVolume {
    dir: PathBuf,
    current: String,
}

impl ConfigMapVolume {
    /// `dir/..<timestamp>/KEY`, `dir/..data -> ..<timestamp>`, `dir/KEY -> ..data/KEY`.
    fn create(dir: PathBuf, data: &BTreeMap<String, String>) -> ConfigMapVolume {
        std::fs::create_dir_all(&dir).expect("volume dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let current = Self::write_version(&dir, data);
        std::os::unix::fs::symlink(&current, dir.join("..data")).expect("..data");
        for key in data.keys() {
            std::os::unix::fs::symlink(format!("..data/{key}"), dir.join(key)).expect("key symlink");
        }
        ConfigMapVolume { dir, current }
    }

    /// A new version: a new timestamped directory, a `..data_tmp` symlink to it renamed over
    /// `..data` (one atomic rename), then the old directory removed.
    fn update(&mut self, data: &BTreeMap<String, String>) {
        let next = Self::write_version(&self.dir, data);
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&next, &tmp).expect("..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("rename ..data_tmp over ..data");
        std::fs::remove_dir_all(self.dir.join(&self.current)).expect("remove the old version");
        self.current = next;
    }

    fn write_version(dir: &Path, data: &BTreeMap<String, String>) -> String {
        // The kubelet's name: ..YYYY_MM_DD_HH_MM_SS.NNNNNNNNN (UTC).
        let stamp = Command::new("date").args(["-u", "+%Y_%m_%d_%H_%M_%S.%N"]).output().expect("date");
        let name = format!("..{}", text(&stamp.stdout).trim());
        let d = dir.join(&name);
        assert!(!d.exists(), "{} exists already", d.display());
        std::fs::create_dir(&d).expect("version dir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for (key, value) in data {
            std::fs::write(d.join(key), value).expect("write key");
            std::fs::set_permissions(d.join(key), std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        name
    }
}

// ---------------------------------------------------------------------------------------------
// The pod from outside: probes, metrics, traffic.

/// GET from a namespace with curl; (status, body); status 0 if nothing answered in time.
fn curl(lab: &Lab, from: &str, url: &str, timeout_secs: u64) -> (u16, String) {
    let out = lab.exec(from, &["curl", "-s", "-m", &timeout_secs.to_string(), "-w", "\n%{http_code}", url]);
    let t = text(&out.stdout);
    let (body, code) = t.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A probe as the kubelet sends it (HTTP GET, success = 200..=399 within timeoutSeconds), from
/// the router's namespace to the pod's address: (URL, status, body).
fn probe(lab: &Lab, pod: &Pod, addr: Ipv4Addr, p: &Probe) -> (String, u16, String) {
    let get = p.http_get.as_ref().expect("an httpGet probe (exec and tcpSocket probes are not reproduced)");
    assert!(matches!(get.scheme.as_deref(), None | Some("HTTP")), "probe scheme {:?}", get.scheme);
    let url = format!("http://{addr}:{}{}", pod.port(&get.port), get.path.as_deref().unwrap_or("/"));
    let (code, body) = curl(lab, "router", &url, p.timeout_seconds.unwrap_or(1));
    (url, code, body)
}

fn probe_ok(code: u16) -> bool {
    (200..400).contains(&code)
}

/// maglevd's /metrics, on the container port that serves it.
fn metrics(lab: &Lab, url: &str) -> BTreeMap<String, f64> {
    let (code, body) = curl(lab, "router", url, 2);
    assert_eq!(code, 200, "{url} answered {code}:\n{body}");
    support::lab::parse_metrics(&body)
}

/// New connections from the client to the VIP; the backends' answers (nginx: its namespace's
/// short name), counted.
fn spread(lab: &Lab, vip: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let bodies = lab
        .in_ns("client", move || (0..n).map(|_| http_get(vip, "/").map(|b| b.trim().to_string())).collect::<Vec<_>>());
    let mut seen = BTreeMap::new();
    for b in bodies {
        let b = b.unwrap_or_else(|e| panic!("a request to the VIP {vip} failed: {e}"));
        *seen.entry(b).or_insert(0) += 1;
    }
    seen
}

/// The lab's backend namespace holding `ip`.
fn backend_ns(lab: &Lab, ip: &str) -> String {
    for be in ["be1", "be2", "be3"] {
        if lab.sh(be, &["ip", "-o", "-4", "addr", "show"]).contains(&format!(" {ip}/")) {
            return be.to_string();
        }
    }
    panic!("no lab backend holds {ip}: the lab and the ConfigMap disagree")
}

/// A per-backend metric of the backend with real IP `ip` (a maglev backend is labelled by its IP).
fn backend_metric(m: &BTreeMap<String, f64>, family: &str, ip: &str) -> Option<f64> {
    let exact = format!("backend=\"{ip}\"");
    m.iter()
        .find(|(k, _)| k.strip_prefix(family).is_some_and(|l| l.starts_with('{')) && k.contains(&exact))
        .map(|e| *e.1)
}

/// A `/proc/PID/status` field.
fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/PID/status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Mount options of the mount at `target` in `/proc/PID/mountinfo` (the last one mounted there).
fn mount_options(mountinfo: &str, target: &str) -> String {
    mountinfo
        .lines()
        .rev()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(4) == Some(&target)).then(|| f[5].to_string())
        })
        .unwrap_or_else(|| panic!("nothing mounted at {target}:\n{mountinfo}"))
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> (T, Duration) {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return (v, t0.elapsed());
        }
        assert!(t0.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "the image ships the release binary: cargo test --release --test container (tests/run-all.sh runs it there)"
)]
fn the_image_runs_as_the_frontend_pod_runs_it() {
    support::lab::require_root();
    let pod = Pod::load(FRONTEND);
    let id = std::process::id() % 1_000_000;

    // 1. The image.
    let image = Image::build(&format!("localhost/maglevd-test:{id}"));
    let size = image.size();
    let binary = std::fs::metadata(env!("CARGO_BIN_EXE_maglevd")).expect("the binary").len();
    eprintln!(
        "image {}: {size} bytes ({:.1} MB), of which the binary {binary} bytes ({:.1} MB)",
        image.tag,
        size as f64 / 1e6,
        binary as f64 / 1e6
    );
    assert!(size <= binary + MAX_BASE_BYTES, "the runtime root adds {} bytes to the binary", size - binary);
    assert!(size < MAX_IMAGE_BYTES, "the release image is {size} bytes, the goal is under {MAX_IMAGE_BYTES}");

    // 2. The lab: the VIP to this frontend only; the pod's sysctls on its namespace.
    let lab = Lab::up(&format!("ct{id}"));
    let pod_ip = pod.address("net1");
    assert!(
        lab.sh(FRONTEND, &["ip", "-o", "-4", "addr", "show"]).contains(&format!(" {pod_ip}/")),
        "the lab's {FRONTEND} has no {pod_ip} (the manifest's net1 address)"
    );
    let (config_key, config_text) = pod.config_file();
    let cfg: toml::Table = config_text.parse().expect("the ConfigMap's maglevd.toml is TOML");
    let service = &cfg["service"].as_array().expect("[[service]]")[0];
    assert_eq!(service["protocol"].as_str(), Some("tcp"), "the first service must be TCP for HTTP requests");
    let vip: Ipv4Addr = service["vip"].as_str().unwrap().parse().unwrap();
    let vip = SocketAddr::from((vip, service["port"].as_integer().expect("a port number") as u16));
    lab.sh("router", &["ip", "route", "replace", &format!("{}/32", vip.ip()), "via", &pod_ip.to_string()]);
    for s in &pod.spec.security_context.sysctls {
        lab.sh(FRONTEND, &["sysctl", "-q", "-w", &format!("{}={}", s.name, s.value.as_deref().unwrap_or(""))]);
    }

    // 3. The ConfigMap volume.
    let mut volume = ConfigMapVolume::create(lab.dir().join("configmap"), &pod.config_map.data);

    // 4. The container.
    let options = pod.podman_options(&lab.ns_path(FRONTEND), &volume.dir);
    let t_start = Instant::now();
    let running = Running::start(&format!("maglevd-test-{id}"), &options, &image, &pod);

    // 5a. Probes, from a node's side, as the manifest defines them.
    let c = pod.container();
    let (startup, readiness, liveness) = (&c.startup_probe, &c.readiness_probe, &c.liveness_probe);
    let ((), ready_after) = wait_for("the readiness probe", Duration::from_secs(30), || {
        running.assert_running();
        let p = readiness.as_ref().expect("a readinessProbe");
        probe_ok(probe(&lab, &pod, pod_ip, p).1).then_some(())
    });
    let started_after = t_start.elapsed();
    for (kind, p) in [("startup", startup), ("readiness", readiness), ("liveness", liveness)] {
        let Some(p) = p else { continue };
        let (url, code, _) = probe(&lab, &pod, pod_ip, p);
        eprintln!("{kind} probe GET {url}: {code}");
        assert!(probe_ok(code), "{kind} probe GET {url} answered {code}");
        if kind != "readiness" {
            // The kubelet restarts the container once this many probes failed after the delay.
            let budget = p.initial_delay_seconds + p.period_seconds.unwrap_or(10) * p.failure_threshold.unwrap_or(3);
            assert!(started_after < Duration::from_secs(budget), "{kind} probe passing only after {started_after:?}");
        }
    }
    eprintln!("ready (readiness probe passing) {:.1} s after podman run", ready_after.as_secs_f64());

    // 5b. The process, as the pod spec shaped it.
    let pid = running.state("Pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let (uid, gid) = pod.user();
    let caps = pod.capabilities();
    let shown: Vec<String> = ["Uid", "Gid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"]
        .iter()
        .map(|f| format!("{f} {}", status_field(&status, f)))
        .collect();
    eprintln!("maglevd in the container (host pid {pid}): {}", shown.join(", "));
    assert_eq!(status_field(&status, "Uid"), format!("{uid} {uid} {uid} {uid}"));
    assert_eq!(status_field(&status, "Gid"), format!("{gid} {gid} {gid} {gid}"));
    let hex = |field: &str| u64::from_str_radix(&status_field(&status, field), 16).expect("a capability set");
    assert_eq!(hex("CapBnd"), cap_mask(&caps.add), "the bounding set is the pod's capabilities.add");
    // File capabilities ∩ bounding set: exactly what the binary carries, nothing more, and after
    // start only permitted: maglevd raises them for a moment when it opens a socket again.
    assert_eq!(hex("CapPrm"), cap_mask(&FILE_CAPS) & cap_mask(&caps.add), "permitted capabilities");
    assert_eq!(hex("CapEff"), 0, "nothing effective after start");
    assert_eq!(hex("CapAmb"), 0);
    let no_new_privs = c.security_context.allow_privilege_escalation == Some(false);
    assert_eq!(status_field(&status, "NoNewPrivs"), if no_new_privs { "1" } else { "0" });
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("/proc/PID/mountinfo");
    let root_opts = mount_options(&mountinfo, "/");
    eprintln!("mounts: / {root_opts}");
    if c.security_context.read_only_root_filesystem == Some(true) {
        assert!(root_opts.split(',').any(|o| o == "ro"), "readOnlyRootFilesystem, but / is mounted {root_opts}");
    }
    for m in c.volume_mounts.iter().filter(|m| !pod.is_device(&m.name)) {
        let opts = mount_options(&mountinfo, &m.mount_path);
        eprintln!("mounts: {} {opts}", m.mount_path);
        assert!(opts.split(',').any(|o| o == "ro"), "{} is mounted {opts}", m.mount_path);
    }

    // 5c. Traffic through the VIP reaches every backend.
    let metrics_port = c.ports.iter().find(|p| p.name.as_deref() == Some("metrics")).expect("port metrics");
    let metrics_url = format!("http://{pod_ip}:{}/metrics", metrics_port.container_port);
    let backends: Vec<String> = service["backend"]
        .as_array()
        .expect("[[service.backend]]")
        .iter()
        .map(|b| b["ip"].as_str().expect("backend ip").to_string())
        .collect();
    let names: BTreeMap<String, String> = backends.iter().map(|ip| (backend_ns(&lab, ip), ip.clone())).collect();
    let seen = spread(&lab, vip, 60);
    eprintln!("60 new connections to {vip}: {seen:?}");
    assert_eq!(seen.keys().collect::<BTreeSet<_>>(), names.keys().collect(), "every backend answers through the VIP");

    // 5d. The ConfigMap changes: the last backend drained (weight 0). The kubelet swaps ..data;
    // maglevd notices on its periodic check of the file (daemon.config_check_secs).
    let drained = backends.last().unwrap().clone();
    let mut next = cfg.clone();
    let svc = &mut next["service"].as_array_mut().unwrap()[0];
    let last = svc["backend"].as_array_mut().unwrap().last_mut().unwrap();
    last.as_table_mut().unwrap().insert("weight".into(), toml::Value::Integer(0));
    let mut data = pod.config_map.data.clone();
    data.insert(config_key.to_string(), toml::to_string(&next).expect("serialize the new configuration"));
    let check_secs = cfg.get("daemon").and_then(|d| d.get("config_check_secs")).and_then(|v| v.as_integer());
    let check_secs = check_secs.unwrap_or(5);
    assert!(check_secs > 0, "the ConfigMap turns the file check off: a ConfigMap update would never be applied");
    let before = metrics(&lab, &metrics_url);
    let generation = before["maglevd_snapshot_generation"];
    let slots = |m: &BTreeMap<String, f64>, ip: &str| backend_metric(m, "maglevd_backend_slots", ip);
    let backend_lines = |m: &BTreeMap<String, f64>| {
        m.iter()
            .filter(|(k, _)| k.starts_with("maglevd_backend"))
            .map(|(k, v)| format!("{k} {v}\n"))
            .collect::<String>()
    };
    assert!(
        slots(&before, &drained).unwrap_or(0.0) > 0.0,
        "{drained} owns no slots before the update:\n{}{}",
        backend_lines(&before),
        running.log()
    );
    volume.update(&data);
    let (after, took) = wait_for("the drained configuration", Duration::from_secs(3 * check_secs as u64 + 5), || {
        running.assert_running();
        let m = metrics(&lab, &metrics_url);
        (m["maglevd_snapshot_generation"] > generation && slots(&m, &drained) == Some(0.0)).then_some(m)
    });
    eprintln!(
        "ConfigMap swapped to {}: applied after {:.1} s (config_check_secs = {check_secs}); snapshot generation {generation} -> {}",
        volume.current,
        took.as_secs_f64(),
        after["maglevd_snapshot_generation"]
    );
    assert_eq!(after.get("maglevd_reload_failures_total").copied().unwrap_or(0.0), 0.0);
    let seen = spread(&lab, vip, 60);
    eprintln!("60 new connections to {vip} after draining {drained}: {seen:?}");
    let drained_ns = names.iter().find(|(_, ip)| **ip == drained).unwrap().0;
    assert!(!seen.contains_key(drained_ns), "{drained} ({drained_ns}) is drained but got new flows: {seen:?}");
    assert_eq!(seen.len(), names.len() - 1, "the other backends still answer: {seen:?}");
    for (kind, p) in [("readiness", readiness), ("liveness", liveness)] {
        let (url, code, _) = probe(&lab, &pod, pod_ip, p.as_ref().unwrap());
        assert!(probe_ok(code), "after the update, the {kind} probe GET {url} answered {code}");
    }
    let log = running.log();
    assert!(log.contains("configuration file changed") && log.contains("configuration reloaded"), "{log}");

    // 5e. Every backend lost (a ConfigMap with every weight 0): the readiness probe fails, saying
    // why, while the liveness probe keeps passing, so the kubelet marks the frontend unready and
    // does not restart it. A readiness probe that cannot fail (e.g. on /live or /metrics) or a
    // liveness probe that fails without backends (e.g. on /ready) fails this test.
    let readiness = readiness.as_ref().expect("a readinessProbe");
    let liveness = liveness.as_ref().expect("a livenessProbe");
    let mut none = cfg.clone();
    for b in none["service"].as_array_mut().unwrap()[0]["backend"].as_array_mut().unwrap() {
        b.as_table_mut().unwrap().insert("weight".into(), toml::Value::Integer(0));
    }
    data.insert(config_key.to_string(), toml::to_string(&none).expect("serialize the new configuration"));
    let generation = after["maglevd_snapshot_generation"];
    volume.update(&data);
    let mut live_ok = 0;
    let assert_live = |live_ok: &mut u32, when: &str| {
        let (url, code, body) = probe(&lab, &pod, pod_ip, liveness);
        assert!(probe_ok(code), "liveness probe GET {url} answered {code} {when}: {body}");
        *live_ok += 1;
    };
    let ((url, code, body), took) = wait_for(
        "the readiness probe failing without backends",
        Duration::from_secs(3 * check_secs as u64 + 5),
        || {
            running.assert_running();
            assert_live(&mut live_ok, "while the backends were drained (the kubelet would restart the frontend)");
            let (url, code, body) = probe(&lab, &pod, pod_ip, readiness);
            (!probe_ok(code)).then_some((url, code, body))
        },
    );
    let m = metrics(&lab, &metrics_url);
    assert!(m["maglevd_snapshot_generation"] > generation, "the readiness probe failed before the reload: {body}");
    assert!(body.contains("no usable backend"), "readiness probe GET {url} answered {code} but says: {body}");
    // The kubelet acts on failureThreshold consecutive results: keep probing liveness a little.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(400));
        assert_live(&mut live_ok, "with every backend drained");
    }
    eprintln!(
        "every backend drained: readiness probe GET {url} answered {code} ({}) after {:.1} s; liveness probe passed {live_ok} times meanwhile",
        body.trim(),
        took.as_secs_f64()
    );

    // 5f. The ConfigMap as shipped again: ready again, and every backend gets new flows.
    volume.update(&pod.config_map.data);
    let ((), took) =
        wait_for("the readiness probe passing again", Duration::from_secs(3 * check_secs as u64 + 5), || {
            running.assert_running();
            probe_ok(probe(&lab, &pod, pod_ip, readiness).1).then_some(())
        });
    let seen = spread(&lab, vip, 60);
    eprintln!("ConfigMap restored: ready after {:.1} s; 60 new connections to {vip}: {seen:?}", took.as_secs_f64());
    assert_eq!(seen.keys().collect::<BTreeSet<_>>(), names.keys().collect(), "every backend answers again");
    assert_live(&mut live_ok, "after the ConfigMap was restored");
    // The ConfigMap's health checks ran in the container all along (a dsr check sends its SYN
    // through a raw socket): every backend is still healthy.
    let m = metrics(&lab, &metrics_url);
    for ip in &backends {
        let healthy = backend_metric(&m, "maglevd_backend_healthy", ip);
        assert_eq!(healthy, Some(1.0), "backend {ip} is not healthy:\n{}{}", backend_lines(&m), running.log());
    }

    // 5g. The ConfigMap's [announce]: the VIP announced, its route on maglevd0 in the pod's table
    // (what the BIRD sidecar learns): the TUN device from the hostPath works in the container.
    let table = cfg["announce"]["table"].as_integer().expect("announce.table in the ConfigMap");
    let announced = format!("maglevd_vip_announced{{vip=\"{}\"}}", vip.ip());
    let ((), took) = wait_for("the VIP announced", Duration::from_secs(20), || {
        (metrics(&lab, &metrics_url).get(&announced) == Some(&1.0)).then_some(())
    });
    let routes = lab.sh(FRONTEND, &["ip", "route", "show", "table", &table.to_string()]);
    eprintln!("announced (after {:.1} s more); table {table}: {}", took.as_secs_f64(), routes.trim());
    assert!(routes.contains(&format!("{} dev maglevd0 proto 240", vip.ip())), "table {table}: {routes}");

    // 5h. SIGTERM (the image's STOPSIGNAL) from podman stop, SIGKILL after the grace period.
    let grace = pod.grace();
    let t0 = Instant::now();
    let sent = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64() % 86_400.0;
    podman_ok(&["stop", "--time", &grace.as_secs().to_string(), &running.name]);
    let stopped_in = t0.elapsed();
    let code = running.state("ExitCode");
    eprintln!(
        "podman stop: exited with code {code} after {:.2} s (terminationGracePeriodSeconds {})",
        stopped_in.as_secs_f64(),
        grace.as_secs()
    );
    assert_eq!(code, "0", "maglevd's exit code after SIGTERM:\n{}", running.log());
    assert!(stopped_in < grace, "podman stop took {stopped_in:?}, the grace period is {grace:?}");
    let log = running.log();
    let last = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(last.contains("stopped"), "the log does not end with maglevd's stop line:\n{log}");
    assert!(log.contains("VIP withdrawn"), "SIGTERM withdraws the VIP first:\n{log}");
    let link = lab.exec(FRONTEND, &["ip", "link", "show", "maglevd0"]);
    assert!(!link.status.success(), "maglevd0 outlived the container");
    eprintln!("last log line: {last}");
    // maglevd's own part of the stop (podman's includes tearing the container down).
    if let Some(at) = log_seconds_of_day(last) {
        eprintln!(
            "maglevd logged its stop line {:.2} s after podman stop was called",
            (at - sent).rem_euclid(86_400.0)
        );
    }
}

/// UTC seconds since midnight of a log line's RFC 3339 timestamp (`2026-01-02T03:04:05.123456Z …`).
fn log_seconds_of_day(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split_once('T')?.1.strip_suffix('Z')?;
    let mut f = time.split(':').map(|x| x.parse::<f64>().ok());
    Some(f.next()?? * 3600.0 + f.next()?? * 60.0 + f.next()??)
}
