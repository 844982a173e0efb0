//! The agent's record output: a bounded queue drained by a writer thread.
//!
//! The spy loop (ring buffer, heartbeat deadline, stdin commands) must never
//! wait on stdout: a plugin whose own output is held up (`| less`, Ctrl-S),
//! or a slow network between the two, would otherwise freeze it, heartbeat
//! timeout included. So records go into a queue of [`QUEUE_RECORDS`]; a
//! thread owns the (sealed) stdout writer and writes them in order, one
//! flush per batch. The queue is bounded in bytes too ([`QUEUE_BYTES`]): a
//! record is a JSON line by the time it is queued, and bodies can be large.
//! When the queue is full a record is dropped and counted;
//! every `stats` and `bye` record that goes out carries the count so far in
//! `dropped_records`.

#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use spy_protocol::record::Record;
use spy_protocol::sink::{JsonLines, Sink};

/// Records queued for stdout at most. At a few hundred bytes each this is a
/// few MiB: seconds of a busy target, bounded.
pub const QUEUE_RECORDS: usize = 4096;

/// Bytes queued for stdout at most (beyond one record, which always fits an
/// empty queue): part of the spy pod's fixed memory overhead.
pub const QUEUE_BYTES: usize = 32 << 20;

/// How long the end of the agent waits for the writer to send what is
/// queued (the bye among it) before it exits anyway.
pub const FINISH_WAIT: Duration = Duration::from_secs(5);

/// A [`Sink`] that never blocks: see the module comment.
pub struct QueuedOutput {
    queue: Option<SyncSender<Vec<u8>>>,
    dropped: Arc<AtomicU64>,
    /// Bytes in the queue (the writer subtracts what it wrote).
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
    writer: Option<JoinHandle<io::Result<()>>>,
    done: mpsc::Receiver<()>,
}

impl QueuedOutput {
    /// Starts the writer thread over the writer `open` makes there (stdout
    /// locks are not `Send`, so the writer is made on its own thread).
    pub fn spawn<W, F>(open: F) -> io::Result<QueuedOutput>
    where
        W: Write,
        F: FnOnce() -> W + Send + 'static,
    {
        QueuedOutput::with_capacity(QUEUE_RECORDS, QUEUE_BYTES, open)
    }

    pub fn with_capacity<W, F>(records: usize, max_bytes: usize, open: F) -> io::Result<QueuedOutput>
    where
        W: Write,
        F: FnOnce() -> W + Send + 'static,
    {
        let (queue, lines) = mpsc::sync_channel::<Vec<u8>>(records);
        let (done_tx, done) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let written = queued.clone();
        let writer = std::thread::Builder::new().name("tlsspy-output".into()).spawn(move || {
            let result = write_all(lines, open(), &written);
            let _ = done_tx.send(());
            result
        })?;
        Ok(QueuedOutput {
            queue: Some(queue),
            dropped: Arc::new(AtomicU64::new(0)),
            queued,
            max_bytes,
            writer: Some(writer),
            done,
        })
    }

    /// Records dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Closes the queue and waits, at most `wait`, for the writer to send
    /// what it holds. A writer still stuck after that (nobody reads our
    /// stdout) is left behind: the process is about to exit.
    pub fn finish(mut self, wait: Duration) -> io::Result<()> {
        self.queue = None;
        match self.done.recv_timeout(wait) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => self.join(),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                log::warn!("stdout took more than {}s to take the last records: leaving them", wait.as_secs());
                Ok(())
            }
        }
    }

    /// The writer's own error, once it has stopped.
    fn join(&mut self) -> io::Result<()> {
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the record writer thread panicked")),
            None => Ok(()),
        }
    }
}

impl Sink for QueuedOutput {
    fn record(&mut self, mut record: Record) -> io::Result<()> {
        let dropped = self.dropped();
        match &mut record {
            Record::Stats(stats) => stats.dropped_records = dropped,
            Record::Bye(bye) => bye.stats.dropped_records = dropped,
            _ => {}
        }
        let Some(queue) = &self.queue else { return Err(io::Error::other("the record output is closed")) };
        // The bye is the session's last word and the end is near: it may
        // wait a little for room, never for ever.
        let patience = if matches!(record, Record::Bye(_)) { FINISH_WAIT } else { Duration::ZERO };
        // Serialized here, sealed by the writer: the queue's bytes are known.
        let mut line = Vec::new();
        JsonLines::new(&mut line).record(record)?;
        let sent = send_within(queue, line, patience, &self.queued, self.max_bytes);
        if sent == Ok(false) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        match sent {
            Ok(_) => Ok(()),
            // The writer stopped: its error (a closed stdout) is the one to report.
            Err(()) => {
                self.queue = None;
                Err(self.join().err().unwrap_or_else(|| io::Error::other("the record writer stopped")))
            }
        }
    }
}

/// Queues `line`, waiting at most `patience` for room (in records and in
/// bytes). Ok(false): the queue stayed full and the line is dropped; Err:
/// the writer is gone.
fn send_within(
    queue: &SyncSender<Vec<u8>>,
    mut line: Vec<u8>,
    patience: Duration,
    queued: &AtomicUsize,
    max_bytes: usize,
) -> Result<bool, ()> {
    let until = std::time::Instant::now() + patience;
    loop {
        let held = queued.load(Ordering::Acquire);
        // One line always fits an empty queue, however large.
        let room = held == 0 || held.saturating_add(line.len()) <= max_bytes;
        let size = line.len();
        let result = if room {
            queued.fetch_add(size, Ordering::AcqRel);
            queue.try_send(line).inspect_err(|_| {
                queued.fetch_sub(size, Ordering::AcqRel);
            })
        } else {
            Err(TrySendError::Full(line))
        };
        match result {
            Ok(()) => return Ok(true),
            Err(TrySendError::Disconnected(_)) => return Err(()),
            Err(TrySendError::Full(back)) if std::time::Instant::now() < until => {
                line = back;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(TrySendError::Full(_)) => return Ok(false),
        }
    }
}

/// The writer thread: every queued record in order, flushed whenever the
/// queue runs empty (one write(2) per batch, not per record).
fn write_all<W: Write>(lines: mpsc::Receiver<Vec<u8>>, mut out: W, queued: &AtomicUsize) -> io::Result<()> {
    while let Ok(line) = lines.recv() {
        out.write_all(&line)?;
        queued.fetch_sub(line.len(), Ordering::AcqRel);
        while let Ok(line) = lines.try_recv() {
            out.write_all(&line)?;
            queued.fetch_sub(line.len(), Ordering::AcqRel);
        }
        out.flush()?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use spy_protocol::record::{Bye, Line, Stats, Warning};
    use std::sync::Mutex;

    /// A writer that blocks until the test opens its gate, then keeps bytes.
    #[derive(Clone, Default)]
    struct Gated {
        open: Arc<(Mutex<bool>, std::sync::Condvar)>,
        bytes: Arc<Mutex<Vec<u8>>>,
    }

    impl Gated {
        fn open(&self) {
            let (lock, cvar) = &*self.open;
            *lock.lock().expect("lock") = true;
            cvar.notify_all();
        }

        fn records(&self) -> Vec<Record> {
            let bytes = self.bytes.lock().expect("lock").clone();
            String::from_utf8(bytes)
                .expect("utf-8")
                .lines()
                .map(|l| serde_json::from_str::<Line>(l).expect("a record line").record)
                .collect()
        }
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (lock, cvar) = &*self.open;
            let mut open = lock.lock().expect("lock");
            while !*open {
                open = cvar.wait(open).expect("wait");
            }
            self.bytes.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn warning(n: usize) -> Record {
        Record::Warning(Warning { message: format!("record {n}"), pid: None })
    }

    /// A stuck stdout costs records, counted, and never the caller's time;
    /// what was queued goes out in order once stdout moves again.
    #[test]
    fn a_stuck_writer_drops_and_counts_but_never_blocks() {
        let out = Gated::default();
        let writer = out.clone();
        let mut sink = QueuedOutput::with_capacity(8, QUEUE_BYTES, move || writer).expect("thread");
        let started = std::time::Instant::now();
        for n in 0..100 {
            sink.record(warning(n)).expect("queued or dropped");
        }
        assert!(started.elapsed() < Duration::from_secs(5), "record() waited on stdout");
        // The writer holds one record (blocked in write), the queue 8 more.
        let dropped = sink.dropped();
        assert!((91..=92).contains(&dropped), "{dropped}");
        sink.record(Record::Stats(Stats::default())).expect("stats");
        out.open();
        sink.record(Record::Bye(Bye { reason: "done".into(), stats: Stats::default() })).expect("bye");
        sink.finish(FINISH_WAIT).expect("finish");

        let records = out.records();
        let messages: Vec<String> = records
            .iter()
            .filter_map(|r| match r {
                Record::Warning(w) => Some(w.message.clone()),
                _ => None,
            })
            .collect();
        // In order, the first ones kept (which later ones got in depends on
        // when the writer took its first record).
        let numbers: Vec<usize> =
            messages.iter().map(|m| m.trim_start_matches("record ").parse().expect("a number")).collect();
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
        assert_eq!(numbers[..8], [0, 1, 2, 3, 4, 5, 6, 7], "{numbers:?}");
        assert_eq!(numbers.len() as u64 + dropped, 100, "{numbers:?}");
        let Some(Record::Bye(bye)) = records.last() else { panic!("no bye last: {records:?}") };
        assert!(bye.stats.dropped_records >= dropped, "{bye:?}");
    }

    /// Large records fill the queue by bytes long before its record count.
    #[test]
    fn the_queue_is_bounded_in_bytes_too() {
        let out = Gated::default();
        let writer = out.clone();
        let mut sink = QueuedOutput::with_capacity(1000, 10_000, move || writer).expect("thread");
        let big = |n: usize| Record::Warning(Warning { message: format!("{n}{}", "x".repeat(3000)), pid: None });
        for n in 0..20 {
            sink.record(big(n)).expect("queued or dropped");
        }
        // One in the blocked writer, then three of ~3 KB in 10 KB.
        assert!((16..=17).contains(&sink.dropped()), "{}", sink.dropped());
        out.open();
        sink.finish(FINISH_WAIT).expect("finish");
        // A record larger than the whole bound still goes through an empty queue.
        let out = Gated::default();
        out.open();
        let writer = out.clone();
        let mut sink = QueuedOutput::with_capacity(1000, 100, move || writer).expect("thread");
        sink.record(big(0)).expect("queued");
        sink.finish(FINISH_WAIT).expect("finish");
        assert_eq!(sink_records(&out), 1);
    }

    fn sink_records(out: &Gated) -> usize {
        out.records().len()
    }

    #[test]
    fn a_closed_stdout_is_reported_with_its_error() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut sink = QueuedOutput::with_capacity(4, QUEUE_BYTES, || Closed).expect("thread");
        let err = (0..1000).find_map(|n| {
            std::thread::sleep(Duration::from_millis(1));
            sink.record(warning(n)).err()
        });
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::BrokenPipe));
    }

    #[test]
    fn finish_does_not_wait_forever_for_a_stuck_stdout() {
        let out = Gated::default();
        let writer = out.clone();
        let mut sink = QueuedOutput::with_capacity(8, QUEUE_BYTES, move || writer).expect("thread");
        sink.record(warning(0)).expect("queued");
        let started = std::time::Instant::now();
        sink.finish(Duration::from_millis(200)).expect("left behind, not an error");
        assert!(started.elapsed() < Duration::from_secs(2));
        out.open();
    }
}
