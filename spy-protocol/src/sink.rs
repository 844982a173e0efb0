//! Where records go. The agent writes JSON lines; the plugin's renderers are
//! sinks too (live lines, the summary table, `-o json`).

#![forbid(unsafe_code)]

use std::io::{self, Write};

use crate::record::{Line, Record};

pub trait Sink {
    fn record(&mut self, record: Record) -> io::Result<()>;
    /// Called after each batch of events, and at the end.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One JSON object per line.
pub struct JsonLines<W: Write> {
    out: W,
}

impl<W: Write> JsonLines<W> {
    pub fn new(out: W) -> Self {
        JsonLines { out }
    }
}

impl<W: Write> Sink for JsonLines<W> {
    fn record(&mut self, record: Record) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, &Line::from(record))?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
