//! maglevd — a userspace Maglev L4 load balancer for direct server return (DSR), replacing IPVS
//! (`ipvsadm -s mh`, direct routing) on frontends behind an ECMP router.
//!
//! # Layers (each depends only on the ones above it)
//!
//! | module | role | state / I/O |
//! |---|---|---|
//! | [`wire`] | typed views over Ethernet/IPv4 bytes, MAC addresses | none |
//! | [`maglev`] | the Maglev lookup table: a pure function of (backends, weights, size) | none |
//! | [`flow`] | connection tracking: per-worker flow and fragment tables (set-associative, fixed capacity, idle timeouts, bounded work per packet) | none (time passed in) |
//! | [`ipvs_mh`] | the kernel's `ip_vs_mh` table and lookup, bit for bit (compatibility mode) | none |
//! | [`ipvs_import`] | `ipvsadm -Ln --nosort` / `ipvsadm-save` text → `ipvs-mh` services and their TOML: `list` (`-Ln` parsing), `save` (`ipvsadm-save` replay), `policy` (what is imported, warnings), `render` (TOML) | none |
//! | [`config`] | TOML file types and validation into runtime types | reads the file |
//! | [`table`] | a service's table under either algorithm; the `ipvs-mh` dests' availability, prepared per snapshot so each lookup is bounded | none |
//! | [`dataplane`] | the immutable [`dataplane::Snapshot`] and the hot path `forward(frame, snapshot)` | none |
//! | [`report`] | `check`/`table` reports; `lookup` asks [`dataplane::forward`] itself (IPv6 `ipvs-mh`: the kernel table) | none |
//! | [`neigh`] | ARP: answering for our own address (never a VIP), resolving backend MACs, confirming MAC changes | none (time passed in) |
//! | [`metrics`] | per-worker counters (one writer each) and their Prometheus exposition | none |
//! | [`io`] | AF_PACKET rings, packet sockets, the classic BPF VIP filter, interface facts; all `unsafe` in `io::sys` | syscalls |
//! | [`netns`] | throwaway network namespaces and veths for `bench live` and the tests (not used by `run`) | runs `ip` |
//! | [`health`] | backend health checks (`tcp`, `http`, `dsr` through the VIP), the rise/fall state machine (time passed in), the prober threads | sockets, threads |
//! | [`daemon`] | `maglevd run`: [`daemon::prepare`] (the one path to a snapshot for check, start-up and reload), workers, the snapshot builder thread, the control thread (ARP, reload, interface changes), `/metrics` and `/healthz` | threads, sockets |
//! | [`bench`] | `maglevd bench`: table builds, `forward()` in memory, live forwarding vs the kernel in namespaces | namespaces, rings |
//!
//! The hot path ([`dataplane::forward`]) allocates nothing, takes no lock and makes no syscall; it
//! returns a [`dataplane::Verdict`] and the caller counts it.
//!
//! # Determinism
//! Every hash that decides a backend is a specified algorithm with fixed, documented keys: the
//! table permutations use SipHash-1-3 ([`maglev::K_OFFSET`], [`maglev::K_SKIP`]), the flow hash
//! XXH3-64 ([`dataplane::FLOW_SEED`]). Frontends with the same configuration pick the same backend
//! for the same packet, on every run, machine and build.
pub mod announce;
pub mod bench;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod flow;
pub mod health;
pub mod io;
pub mod ipvs_import;
pub mod ipvs_mh;
pub mod maglev;
pub mod metrics;
pub mod neigh;
pub mod netns;
pub mod privs;
pub mod reconcile;
pub mod report;
pub mod status;
pub mod table;
pub mod wire;
