//! Renderers: sinks over records. Live lines for people, JSON lines for
//! machines, and a summary table at the end.

#![forbid(unsafe_code)]

mod escape;
mod filter;
mod live;
pub mod queued;
mod summary;

use std::io::{self, IsTerminal, Write};

use spy_protocol::record::{Line, MemoryStats, Record, Stats};
use spy_protocol::sink::Sink;

pub use escape::field as terminal_safe;
pub use filter::Filter;
pub use live::LiveOptions;

use crate::cli::{OutputArgs, OutputFormat};

/// The plugin's one sink: filters, then prints in the chosen format, and
/// keeps what the summary needs.
pub struct Renderer<W: Write> {
    out: W,
    format: OutputFormat,
    live: LiveOptions,
    filter: Filter,
    summary: summary::Summary,
    decryption: summary::Decryption,
}

impl Renderer<io::Stdout> {
    pub fn stdout(args: &OutputArgs) -> anyhow::Result<Self> {
        let color = io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Renderer::new(io::stdout(), args, color)
    }
}

impl<W: Write> Renderer<W> {
    pub fn new(out: W, args: &OutputArgs, color: bool) -> anyhow::Result<Self> {
        Ok(Renderer {
            out,
            format: args.format,
            live: LiveOptions { color, full: args.full },
            filter: Filter::new(&args.filter)?,
            summary: summary::Summary::default(),
            decryption: summary::Decryption::default(),
        })
    }

    /// The summary tables (routes; what was decrypted per target), when
    /// there is anything to sum up.
    pub fn summary_table(&self) -> Option<String> {
        let tables: Vec<String> = [self.summary.table(), self.decryption.table()].into_iter().flatten().collect();
        (!tables.is_empty()).then(|| tables.join("\n"))
    }
}

impl<W: Write> Sink for Renderer<W> {
    fn record(&mut self, record: Record) -> io::Result<()> {
        if !self.filter.accepts(&record) {
            return Ok(());
        }
        match &record {
            Record::Exchange(exchange) => {
                self.summary.add(exchange);
                self.decryption.add_plaintext(&exchange.conn);
            }
            Record::Chunk(chunk) => self.decryption.add_plaintext(&chunk.conn),
            Record::Handshake(handshake) => self.decryption.add_handshake(handshake),
            _ => {}
        }
        match self.format {
            OutputFormat::Json => {
                serde_json::to_writer(&mut self.out, &Line::from(record))?;
                self.out.write_all(b"\n")
            }
            OutputFormat::Live => live::write_record(&mut self.out, &record, &self.live),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// One line on what the session captured and lost.
pub fn stats_line(stats: &Stats) -> String {
    let mut line = format!(
        "tlsspy: {} TLS calls captured ({} bytes) on {} connections, {} exchanges",
        stats.calls, stats.bytes, stats.connections, stats.exchanges
    );
    let h = &stats.handshakes;
    if h.handshakes > 0 || h.not_tls_flows > 0 {
        line.push_str(&format!(
            "; {} TLS handshakes seen ({} decrypted, {} not), {} connections not TLS",
            h.handshakes,
            h.decrypted,
            h.handshakes - h.decrypted,
            h.not_tls_flows
        ));
    }
    line.push_str(&loss_part(stats));
    if stats.dropped_records > 0 {
        line.push_str(&format!(
            "; DROPPED {} records: the output did not keep up (a pipe or terminal that reads slowly, or a slow \
             network to the spies)",
            stats.dropped_records
        ));
    }
    line.push_str(&memory_part(&stats.memory));
    line
}

/// What the kernel could not deliver, every counter of it: "0 events
/// lost" only when none is above zero.
fn loss_part(stats: &Stats) -> String {
    let mut lost = Vec::new();
    if stats.lost_events > 0 || stats.lost_bytes > 0 {
        lost.push(format!("{} data events ({} bytes)", stats.lost_events, stats.lost_bytes));
    }
    if stats.lost_process_events > 0 {
        lost.push(format!("{} fork/exec/exit events (children may go unfollowed)", stats.lost_process_events));
    }
    if stats.lost_close_events > 0 {
        lost.push(format!("{} close events (those connections wait for their idle timeout)", stats.lost_close_events));
    }
    if stats.undecoded_events > 0 {
        lost.push(format!("{} kernel events the spy could not decode", stats.undecoded_events));
    }
    if stats.gaps > 0 {
        lost.push(format!(
            "{} TLS calls and {} bytes at {} places in the streams, each marked where it happened",
            stats.gap_calls, stats.gap_bytes, stats.gaps
        ));
    }
    if lost.is_empty() {
        return "; 0 events lost".to_string();
    }
    let ring_full = stats.lost_events > 0 || stats.lost_process_events > 0 || stats.lost_close_events > 0;
    let why = if ring_full {
        // The flag exists in every mode, and cluster mode hands it to its spies.
        "the kernel ring buffer was full, raise --ring-buffer-mib (default 32)"
    } else if stats.lost_bytes == 0 && stats.gaps == 0 {
        "the agent and its eBPF programs disagree on the event layout (a bug: please report it)"
    } else {
        // Bytes lost without a full ring: a call over the per-call cap, or
        // user memory the kernel could not read.
        "a TLS call larger than the 4 MiB a call may carry, or plaintext the kernel could not read"
    };
    format!("; LOST {}: {why}", lost.join(", "))
}

/// The memory budget's part of the stats line: the most held, and what was
/// let go to stay within it.
fn memory_part(memory: &MemoryStats) -> String {
    if memory.budget_bytes == 0 {
        return String::new(); // an agent older than the budget
    }
    let mut part = format!("; memory {} at most, of a {} budget", mib(memory.peak_bytes), mib(memory.budget_bytes));
    if memory.evicted_connections > 0 || memory.dropped_bytes > 0 {
        part.push_str(&format!(
            ", EVICTED {} connections and dropped {} bytes to stay within it (raise --memory-budget)",
            memory.evicted_connections, memory.dropped_bytes
        ));
    } else {
        part.push_str(", 0 connections evicted");
    }
    if memory.idle_connections > 0 {
        part.push_str(&format!("; {} idle connections forgotten", memory.idle_connections));
    }
    if memory.closed_connections > 0 {
        part.push_str(&format!("; {} closed connections forgotten at once", memory.closed_connections));
    }
    part
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// JSON output needs no escaping of ours: serde_json writes every
    /// control character as `\uXXXX`, so no wire byte reaches a terminal
    /// that shows JSON lines.
    #[test]
    fn json_lines_carry_control_characters_escaped() {
        let record =
            Record::Warning(spy_protocol::record::Warning { message: "/\x1b[2J\x1b]0;t\x07\r".into(), pid: None });
        let line = serde_json::to_string(&Line::from(record)).expect("json");
        assert!(line.contains(r"/\u001b[2J\u001b]0;t\u0007\r"), "{line}");
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }

    /// The end line says how much memory the spies held and, when they had
    /// to, what they let go of to stay within the budget.
    #[test]
    fn the_stats_line_tells_what_the_budget_cost() {
        let mib = 1024 * 1024;
        let mut stats = Stats {
            memory: MemoryStats { peak_bytes: 3 * mib, budget_bytes: 256 * mib, ..MemoryStats::default() },
            ..Stats::default()
        };
        let line = stats_line(&stats);
        assert!(line.ends_with("; memory 3.0 MiB at most, of a 256.0 MiB budget, 0 connections evicted"), "{line}");
        stats.memory.evicted_connections = 7;
        stats.memory.dropped_bytes = 4096;
        stats.memory.idle_connections = 2;
        let line = stats_line(&stats);
        assert!(line.contains("EVICTED 7 connections and dropped 4096 bytes"), "{line}");
        assert!(line.contains("raise --memory-budget"), "{line}");
        assert!(line.ends_with("; 2 idle connections forgotten"), "{line}");
        // An agent older than the budget says nothing about it.
        assert!(!stats_line(&Stats::default()).contains("memory"));
        stats.memory.closed_connections = 3;
        assert!(stats_line(&stats).ends_with("; 3 closed connections forgotten at once"), "{}", stats_line(&stats));
    }

    /// Every loss counter makes the line say LOST, with the flag that helps;
    /// "0 events lost" only when there is none.
    #[test]
    fn the_stats_line_tells_every_loss() {
        assert!(stats_line(&Stats::default()).contains("; 0 events lost"));
        let cases: [(Stats, &str); 6] = [
            (Stats { lost_events: 2, lost_bytes: 300, ..Stats::default() }, "2 data events (300 bytes)"),
            (Stats { lost_process_events: 4, ..Stats::default() }, "4 fork/exec/exit events"),
            (Stats { lost_close_events: 5, ..Stats::default() }, "5 close events"),
            (
                Stats { gaps: 1, gap_calls: 6, gap_bytes: 700, ..Stats::default() },
                "6 TLS calls and 700 bytes at 1 places",
            ),
            (Stats { lost_bytes: 9, ..Stats::default() }, "0 data events (9 bytes)"),
            (Stats { undecoded_events: 3, ..Stats::default() }, "3 kernel events the spy could not decode"),
        ];
        for (stats, says) in cases {
            let line = stats_line(&stats);
            assert!(line.contains("; LOST ") && line.contains(says), "{line}");
            assert!(!line.contains("0 events lost"), "{line}");
        }
        let ring = stats_line(&Stats { lost_process_events: 1, ..Stats::default() });
        assert!(ring.contains("raise --ring-buffer-mib"), "{ring}");
        let cap = stats_line(&Stats { lost_bytes: 9, ..Stats::default() });
        assert!(!cap.contains("--ring-buffer-mib") && cap.contains("4 MiB"), "{cap}");
    }

    /// The flag the hint names is one the plugin takes, in local and
    /// cluster mode alike.
    #[test]
    fn the_ring_buffer_hint_names_a_real_flag() {
        use clap::Parser as _;
        for mode in [&["kubectl-tlsspy", "pod/x"][..], &["kubectl-tlsspy", "local", "--pid", "1"][..]] {
            let mut args = mode.to_vec();
            args.extend(["--ring-buffer-mib", "64"]);
            crate::cli::Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
    }

    #[test]
    fn dropped_records_are_told() {
        assert!(!stats_line(&Stats::default()).contains("DROPPED"));
        let line = stats_line(&Stats { dropped_records: 12, ..Stats::default() });
        assert!(line.contains("; DROPPED 12 records: the output did not keep up"), "{line}");
    }
}
