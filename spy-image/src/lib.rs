//! tlsspy's spy: finds the TLS stacks of target processes, probes them with
//! eBPF, and turns the plaintext into records.
//!
//! Data flows one way: `probes` (kernel events) → `conn` (ordered bytes per
//! connection) → `proto` (exchanges) → records (`spy_protocol`, the format
//! both binaries share) → a sink. `proto` and `conn` are pure and build on
//! every platform; everything that touches the kernel is Linux-only.

pub mod capture;
pub mod conn;
pub mod error;
pub mod memory;
pub mod output;
pub mod proto;
pub mod targets;

#[cfg(target_os = "linux")]
pub mod probes;
#[cfg(target_os = "linux")]
pub mod spy;

pub use spy_protocol::VERSION;
