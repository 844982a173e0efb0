//! Target discovery: which processes to spy on, and which TLS stacks they use.

#![forbid(unsafe_code)]

#[cfg(target_os = "linux")]
pub mod container;
pub mod go;
#[cfg(target_os = "linux")]
pub mod host;
#[cfg(target_os = "linux")]
pub mod lifecycle;
#[cfg(target_os = "linux")]
pub mod process;
pub mod tls_stack;
#[cfg(target_os = "linux")]
pub mod unprobed;
