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
    if stats.lost_events > 0 || stats.lost_bytes > 0 {
        line.push_str(&format!(
            "; LOST {} events ({} bytes): the kernel ring buffer was full, raise --ring-buffer-mib",
            stats.lost_events, stats.lost_bytes
        ));
    } else {
        line.push_str("; 0 events lost");
    }
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
    part
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(!stats_line(&Stats::default()).contains("DROPPED"));
        let line = stats_line(&Stats { dropped_records: 12, ..Stats::default() });
        assert!(line.contains("; DROPPED 12 records: the output did not keep up"), "{line}");
    }
}
