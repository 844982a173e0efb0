//! The renderer on a thread of its own, behind a bounded queue.
//!
//! A cluster session must keep reading its spies and sending their
//! heartbeats whatever our own stdout does (`| less`, Ctrl-S, a slow
//! pipe): kube's attach moves stdin and stdout in one loop, so a spy whose
//! records we stop reading stops hearing our heartbeats too. So rendering
//! never blocks the session: records queue for the render thread, and when
//! the queue is full (in records, or in bytes: bodies can be large) they
//! are dropped and counted (the end line says so).

#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use spy_protocol::record::Record;
use spy_protocol::sink::Sink;

use super::Renderer;

/// Records waiting for the render thread at most.
pub const QUEUE_RECORDS: usize = 4096;
/// Their bytes (as they came from the spy) at most, beyond one record.
pub const QUEUE_BYTES: usize = 64 << 20;

type Finished<W> = (Renderer<W>, io::Result<()>);

pub struct QueuedRenderer<W: Write + Send + 'static> {
    queue: Option<SyncSender<(Record, usize)>>,
    /// Bytes queued (the render thread subtracts what it rendered).
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
    dropped: u64,
    thread: Option<JoinHandle<Finished<W>>>,
    /// The renderer, once its thread has stopped on an error.
    stopped: Option<Renderer<W>>,
}

impl<W: Write + Send + 'static> QueuedRenderer<W> {
    pub fn spawn(renderer: Renderer<W>, records: usize, max_bytes: usize) -> io::Result<QueuedRenderer<W>> {
        let (queue, rx) = mpsc::sync_channel(records);
        let queued = Arc::new(AtomicUsize::new(0));
        let rendered = queued.clone();
        let thread =
            std::thread::Builder::new().name("tlsspy-render".into()).spawn(move || render(renderer, rx, &rendered))?;
        Ok(QueuedRenderer { queue: Some(queue), queued, max_bytes, dropped: 0, thread: Some(thread), stopped: None })
    }

    /// Queues a record of about `bytes`, or drops and counts it when the
    /// queue is full. Never waits. Err: the renderer has stopped, on this
    /// error (a closed stdout: `| head`).
    pub fn record(&mut self, record: Record, bytes: usize) -> io::Result<()> {
        let Some(queue) = &self.queue else { return Err(io::Error::other("the output is closed")) };
        let held = self.queued.load(Ordering::Acquire);
        // One record always fits an empty queue, however large.
        if held > 0 && held.saturating_add(bytes) > self.max_bytes {
            self.dropped += 1;
            return Ok(());
        }
        self.queued.fetch_add(bytes, Ordering::AcqRel);
        let sent = queue.try_send((record, bytes));
        if sent.is_err() {
            self.queued.fetch_sub(bytes, Ordering::AcqRel);
        }
        match sent {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.dropped += 1;
                Ok(())
            }
            Err(TrySendError::Disconnected(_)) => {
                self.queue = None;
                // The thread has ended: joining it does not wait.
                let (renderer, result) = join(self.thread.take())?;
                self.stopped = Some(renderer);
                Err(result.err().unwrap_or_else(|| io::Error::other("the renderer stopped")))
            }
        }
    }

    /// Records dropped because the output did not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Closes the queue and waits for the renderer to write what it holds,
    /// at most `wait` (None: as long as it takes, the reader of our stdout
    /// decides). Returns the renderer for the summary, unless it is still
    /// stuck.
    pub fn finish(mut self, wait: Option<Duration>) -> Option<Finished<W>> {
        self.queue = None;
        if let Some(renderer) = self.stopped.take() {
            return Some((renderer, Ok(())));
        }
        let thread = self.thread.take()?;
        if let Some(wait) = wait {
            let until = std::time::Instant::now() + wait;
            while !thread.is_finished() {
                if std::time::Instant::now() >= until {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        join(Some(thread)).ok()
    }
}

fn join<W: Write + Send + 'static>(thread: Option<JoinHandle<Finished<W>>>) -> io::Result<Finished<W>> {
    match thread.map(JoinHandle::join) {
        Some(Ok(finished)) => Ok(finished),
        _ => Err(io::Error::other("the render thread panicked")),
    }
}

/// The render thread: every record in order, one flush whenever the queue
/// runs empty.
fn render<W: Write>(
    mut renderer: Renderer<W>,
    records: mpsc::Receiver<(Record, usize)>,
    queued: &AtomicUsize,
) -> Finished<W> {
    let mut batch = || -> io::Result<()> {
        while let Ok((record, bytes)) = records.recv() {
            renderer.record(record)?;
            queued.fetch_sub(bytes, Ordering::AcqRel);
            while let Ok((record, bytes)) = records.try_recv() {
                renderer.record(record)?;
                queued.fetch_sub(bytes, Ordering::AcqRel);
            }
            renderer.flush()?;
        }
        renderer.flush()
    };
    let result = batch();
    (renderer, result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser as _;
    use spy_protocol::record::Warning;
    use std::sync::{Condvar, Mutex};

    /// A stdout that blocks until opened.
    #[derive(Clone, Default)]
    struct Held(Arc<(Mutex<bool>, Condvar)>, Arc<Mutex<Vec<u8>>>);

    impl Write for Held {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (lock, cvar) = &*self.0;
            let mut open = lock.lock().expect("lock");
            while !*open {
                open = cvar.wait(open).expect("wait");
            }
            self.1.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn json_renderer<W: Write>(out: W) -> Renderer<W> {
        let cli = Cli::try_parse_from(["kubectl-tlsspy", "local", "-o", "json", "--pid", "1"]).expect("args");
        let Some(Command::Local(args)) = cli.command else { panic!("local") };
        Renderer::new(out, &args.output, false).expect("renderer")
    }

    fn warning(n: usize) -> Record {
        Record::Warning(Warning { message: format!("w{n}"), pid: None })
    }

    #[test]
    fn a_held_stdout_drops_and_counts_and_never_blocks() {
        let out = Held::default();
        let mut queued = QueuedRenderer::spawn(json_renderer(out.clone()), 4, QUEUE_BYTES).expect("thread");
        let started = std::time::Instant::now();
        for n in 0..50 {
            queued.record(warning(n), 10).expect("queued or dropped");
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!((45..=46).contains(&queued.dropped()), "{}", queued.dropped());
        // Still held: a bounded finish gives up.
        let queued = match queued.finish(Some(Duration::from_millis(100))) {
            None => {
                let (lock, cvar) = &*out.0;
                *lock.lock().expect("lock") = true;
                cvar.notify_all();
                None::<()>
            }
            Some(_) => panic!("finished with a held stdout"),
        };
        assert!(queued.is_none());
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_too() {
        let out = Held::default();
        let mut queued = QueuedRenderer::spawn(json_renderer(out.clone()), 100, 1000).expect("thread");
        for n in 0..10 {
            queued.record(warning(n), 400).expect("queued or dropped");
        }
        // One in the held writer (maybe), two more in 1000 bytes.
        assert!((7..=8).contains(&queued.dropped()), "{}", queued.dropped());
        let (lock, cvar) = &*out.0;
        *lock.lock().expect("lock") = true;
        cvar.notify_all();
        assert!(queued.finish(None).is_some());
    }

    #[test]
    fn a_closed_stdout_stops_the_renderer_with_its_error() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut queued = QueuedRenderer::spawn(json_renderer(Closed), 4, QUEUE_BYTES).expect("thread");
        let err = (0..1000).find_map(|n| {
            std::thread::sleep(Duration::from_millis(1));
            queued.record(warning(n), 10).err()
        });
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::BrokenPipe));
        assert!(queued.finish(None).is_some(), "the renderer comes back for the summary");
    }
}
