//! maglevd — a userspace Maglev L4 load balancer (direct server return).
pub mod config;
pub mod dataplane;
pub mod maglev;
pub mod wire;
