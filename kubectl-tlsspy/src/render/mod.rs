//! Renderers: sinks over records. Live lines for people, JSON lines for
//! machines, and a summary table at the end.

#![forbid(unsafe_code)]

mod escape;
mod filter;
mod live;
mod summary;

use std::io::{self, IsTerminal, Write};

use spy_protocol::record::{Line, Record, Stats};
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
    line
}
