//! Protocol parsers: a connection's two ordered byte streams in, exchanges out.
//!
//! Pure code, no I/O, nothing about pids or eBPF. The connection layer feeds
//! each direction's bytes in order; a parser answers with finished exchanges
//! and hands back whatever it does not claim, so nothing captured is dropped.

use crate::record::{Direction, Exchange};

/// Limits and choices that shape parsing.
#[derive(Clone, Debug)]
pub struct ParseOptions {
    /// Body bytes kept per message; the true size is always reported.
    pub max_body: usize,
    /// Keep Authorization, Cookie and similar header values.
    pub show_secrets: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions { max_body: 64 * 1024, show_secrets: false }
    }
}

/// What parsing one connection produced.
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed {
    /// A request with its response. `conn` is left default: the caller fills it.
    Exchange(Box<Exchange>),
    /// Bytes no parser claimed, to be shown as a chunk.
    /// `offset` is where `data` starts in that direction's stream.
    Unclaimed { direction: Direction, ts_ns: u64, offset: u64, data: Vec<u8> },
    /// The parser gave up on a stream or on the connection (bad framing);
    /// counted in stats.
    Error { message: String },
}

/// Parses one connection. Created when the connection is first seen.
#[derive(Debug)]
pub struct ConnectionParser {
    #[allow(dead_code, reason = "used once the HTTP parsers land")]
    options: ParseOptions,
    /// Bytes seen so far per direction: [send, recv].
    offsets: [u64; 2],
}

impl ConnectionParser {
    pub fn new(options: ParseOptions) -> Self {
        ConnectionParser { options, offsets: [0, 0] }
    }

    /// Bytes that moved in `direction`, in order, at `ts_ns`.
    pub fn feed(&mut self, direction: Direction, ts_ns: u64, data: &[u8], out: &mut Vec<Parsed>) {
        let offset = &mut self.offsets[direction as usize];
        out.push(Parsed::Unclaimed { direction, ts_ns, offset: *offset, data: data.to_vec() });
        *offset += data.len() as u64;
    }

    /// `len` bytes in `direction` were lost (the kernel dropped events): the
    /// stream cannot be trusted past this point.
    pub fn gap(&mut self, direction: Direction, len: u64, _out: &mut Vec<Parsed>) {
        self.offsets[direction as usize] += len;
    }

    /// The connection ended (or the session did): flush what is pending.
    pub fn finish(&mut self, _reason: &str, _out: &mut Vec<Parsed>) {}
}
