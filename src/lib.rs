//! maglevd — a userspace Maglev L4 load balancer (direct server return).
pub mod io;
