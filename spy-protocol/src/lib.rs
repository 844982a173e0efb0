//! The contract between tlsspy's two binaries: what the agent
//! (`tlsspy-agent`, in the spy pod or in local mode) says to the plugin
//! (`kubectl-tlsspy`), and what the plugin says back.
//!
//! - [`record`]: the records, one JSON object per line on the agent's
//!   stdout, and the plugin's `-o json`.
//! - [`sink`]: where records go; the agent's JSON-lines writer is one sink,
//!   the plugin's renderers are others.
//! - [`session`]: the commands on the agent's stdin, parsed by the agent and
//!   written by the plugin from the same type.
//! - [`limits`]: the agent's memory budget and body cap, parsed alike by
//!   both binaries.
//! - [`seal`]: the session's key, and the sealing of every line after it,
//!   so that a session answers only to the plugin that started it.
//!
//! Like kube-core, this crate has types and their text forms and no I/O of
//! its own, so the plugin builds for every platform without the agent.

#![forbid(unsafe_code)]

pub mod limits;
pub mod record;
pub mod seal;
pub mod session;
pub mod sink;

/// The version of both binaries (one workspace version), also the spy
/// image's tag that the plugin asks for.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Body bytes the agent keeps per message unless told otherwise (its
/// `--max-body`, and the plugin's). Every kept byte is copied and
/// JSON-escaped once more; 16 KiB shows any API payload a person reads, and
/// the true size is always reported.
pub const DEFAULT_MAX_BODY: usize = 16 * 1024;
