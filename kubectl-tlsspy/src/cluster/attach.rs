//! Talking to an attached spy: stdin carries the session protocol (go,
//! container commands, heartbeats, EOF), stdout the records, stderr the
//! agent's log. Both stdin and stdout are sealed under the pod's session key
//! (spy_protocol::seal): the first stdin line hands the key over, and every
//! line after it, either way, is sealed; stdout lines that do not open are
//! not this session's and are dropped.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::time::Duration;

use indicatif::ProgressBar;
use k8s_openapi::api::core::v1::Pod;
use kube::api::AttachParams;
use kube::Api;
use spy_protocol::record::{Line, Record};
use spy_protocol::seal::{Direction, Opener, Sealer, SessionKey};
use spy_protocol::session::Command;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::{mpsc, watch};

use super::spy_pod::CONTAINER;
use super::{SpyEvent, SpyFailure};

/// The plugin's heartbeat period (at most; shorter when the spy's timeout is short).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// After stdin EOF, how long the spy gets to send its last records (bye).
const DRAIN_AFTER_STOP: Duration = Duration::from_secs(5);
/// After stdout ends, how long stderr gets to deliver the agent's last words.
const STDERR_TAIL: Duration = Duration::from_millis(500);
/// Agent log lines kept to explain an unexpected end.
const KEPT_ERRORS: usize = 20;

pub enum StreamEnd {
    /// The plugin stopped the spy (stdin EOF).
    Stopped { reason: String },
    /// The agent ended on its own.
    AgentEnded { errors: Vec<String>, bye: Option<String> },
    /// Nothing came from the spy for this long: a network cut, or a spy
    /// that is stuck. The plugin gives up on it.
    Silent { after: Duration },
}

fn heartbeat_period(spy_timeout: Duration) -> Duration {
    // Three beats per timeout: one lost or late beat never ends a session.
    HEARTBEAT_EVERY.min(spy_timeout / 3).max(Duration::from_millis(100))
}

/// How long the spy may stay silent: until its first record it is still
/// starting (loading its probes) and gets the start-up timeout; after it,
/// it sends at least a stats record every third of its heartbeat timeout.
fn silence_allowed(heard_from_it: bool, startup: Duration, silence: Duration) -> Duration {
    if heard_from_it {
        silence
    } else {
        startup.max(silence)
    }
}

/// How long one spy may take: its start-up and its silences.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// The spy ends itself when it hears nothing from us for this long.
    pub heartbeat: Duration,
    /// How long the spy may take to send its first record.
    pub startup: Duration,
    /// We give up on a spy that sends nothing for this long.
    pub silence: Duration,
}

/// Streams one attached spy until it ends, we stop it, or it goes silent.
///
/// Three parts that never wait on each other: a task that reads the spy's
/// stdout (records, forwarded to the session, whose rendering never
/// blocks), a task that writes stdin (commands and heartbeats), and this
/// loop, which reads stderr and decides when it is over. kube's attach
/// moves stdin and stdout in one loop: an unread stdout would stop our
/// heartbeats too, so stdout is always read.
#[allow(clippy::too_many_arguments, reason = "one call site; the streams of one spy")]
pub async fn stream(
    api: &Api<Pod>,
    name: &str,
    node: &str,
    key: &SessionKey,
    timeouts: Timeouts,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    stop: &mut watch::Receiver<bool>,
    events: &mpsc::Sender<SpyEvent>,
    progress: &ProgressBar,
) -> Result<StreamEnd, SpyFailure> {
    let failure = |message: String| SpyFailure { message, fatal: false };
    let params = AttachParams::default().container(CONTAINER).stdin(true).stdout(true).stderr(true);
    let mut attached = api.attach(name, &params).await.map_err(|err| match err {
        kube::Error::Api(status) if status.code == 403 => {
            SpyFailure { message: format!("not allowed to attach to the spy pod: {}", status.message), fatal: true }
        }
        other => failure(format!("cannot attach to the spy pod {name} on node {node}: {other}")),
    })?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) = (attached.stdin(), attached.stdout(), attached.stderr()) else {
        return Err(failure("the attach session has no stdin/stdout/stderr".into()));
    };
    let mut err_lines = BufReader::new(stderr).lines();
    let lost = |err: std::io::Error| failure(format!("lost the connection to the spy on node {node}: {err}"));

    let mut sealer = Sealer::new(key, Direction::ToSpy);
    let opener = Opener::new(key, Direction::ToPlugin);
    // The key first, in clear: stdin is ours alone to write first (the
    // agent takes the first key line that matches its digest).
    stdin.write_all(key.line().as_bytes()).await.map_err(lost)?;
    // Nothing comes out of the agent before this line: we are listening now.
    stdin.write_all(sealed(&mut sealer, &Command::Go).as_bytes()).await.map_err(lost)?;
    progress.finish_and_clear();
    let _ = events.send(SpyEvent::Attached { node: node.to_string(), pod: name.to_string() }).await;

    let mut reader = tokio::spawn(read_records(stdout, opener, node.to_string(), events.clone(), timeouts));
    let (to_stdin, stdin_rx) = mpsc::unbounded_channel();
    let mut writer = tokio::spawn(write_stdin(stdin, sealer, stdin_rx, heartbeat_period(timeouts.heartbeat)));
    let mut to_stdin = Some(to_stdin);
    let mut errors: VecDeque<String> = VecDeque::new();
    let mut stopping: Option<(tokio::time::Instant, String)> = None;
    let mut stderr_open = true;
    let mut writer_done = false;
    let end = loop {
        let drain_until = stopping.as_ref().map(|(t, _)| *t);
        tokio::select! {
            read = &mut reader => break match read {
                Ok((ReadEnd::Closed, bye)) => match stopping.take() {
                    Some((_, reason)) => Ok(StreamEnd::Stopped { reason }),
                    None => Ok(StreamEnd::AgentEnded { errors: Vec::new(), bye }),
                },
                Ok((ReadEnd::Silent(after), _)) => Ok(StreamEnd::Silent { after }),
                Err(err) => Err(failure(format!("the reader of the spy on node {node} failed: {err}"))),
            },
            written = &mut writer, if !writer_done => {
                writer_done = true;
                match written {
                    // Stdin closed as asked (stop): the spy says bye on stdout.
                    Ok(Ok(())) => {}
                    Ok(Err(err)) if stopping.is_none() => break Err(lost(err)),
                    Ok(Err(err)) => log::debug!("{node}: closing stdin: {err}"),
                    Err(err) => break Err(failure(format!("the writer to the spy on node {node} failed: {err}"))),
                }
            }
            line = err_lines.next_line(), if stderr_open => match line {
                Ok(Some(line)) => keep_log(&mut errors, node, line, events).await,
                Ok(None) | Err(_) => stderr_open = false,
            },
            command = commands.recv(), if stopping.is_none() => {
                if let (Some(command), Some(to_stdin)) = (command, &to_stdin) {
                    let _ = to_stdin.send(command);
                }
            }
            () = stopped(stop), if stopping.is_none() => {
                // The writer closes stdin (EOF) once its channel is gone.
                to_stdin = None;
                stopping = Some((tokio::time::Instant::now() + DRAIN_AFTER_STOP, "stopped by the plugin".into()));
            }
            _ = sleep_until(drain_until) => break Ok(StreamEnd::Stopped { reason: stopping.take().map(|(_, r)| r).unwrap_or_default() }),
        }
    };
    drop(to_stdin);
    // The agent's last words come on stderr, maybe just after stdout ended.
    if stderr_open && !matches!(end, Ok(StreamEnd::Silent { .. })) {
        let tail_until = tokio::time::Instant::now() + STDERR_TAIL;
        while let Ok(Ok(Some(line))) = tokio::time::timeout_at(tail_until, err_lines.next_line()).await {
            keep_log(&mut errors, node, line, events).await;
        }
    }
    reader.abort();
    writer.abort();
    attached.abort();
    match end? {
        StreamEnd::AgentEnded { bye, .. } => Ok(StreamEnd::AgentEnded { errors: errors.into(), bye }),
        other => Ok(other),
    }
}

/// Why the reader of a spy's stdout stopped.
#[derive(Debug, PartialEq, Eq)]
enum ReadEnd {
    /// Stdout ended (or broke).
    Closed,
    /// Nothing from the spy for this long.
    Silent(Duration),
}

/// Reads the spy's stdout: opens each line, forwards its record. Only
/// lines that open (this session's) count as hearing from the spy. Returns
/// the bye's reason, if one came.
async fn read_records(
    stdout: impl tokio::io::AsyncRead + Unpin,
    mut opener: Opener,
    node: String,
    events: mpsc::Sender<SpyEvent>,
    timeouts: Timeouts,
) -> (ReadEnd, Option<String>) {
    let mut lines = BufReader::new(stdout).lines();
    let mut bye = None;
    let mut allowed = silence_allowed(false, timeouts.startup, timeouts.silence);
    let mut deadline = tokio::time::Instant::now() + allowed;
    loop {
        let line = match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Err(_) => return (ReadEnd::Silent(allowed), bye),
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None) | Err(_)) => return (ReadEnd::Closed, bye),
        };
        if line.trim().is_empty() {
            continue;
        }
        let bytes = line.len();
        let line = match opener.open(&line) {
            Ok(plain) => plain,
            Err(err) => {
                log::debug!("{node}: dropped a stdout line: {err}");
                continue;
            }
        };
        allowed = silence_allowed(true, timeouts.startup, timeouts.silence);
        deadline = tokio::time::Instant::now() + allowed;
        match serde_json::from_slice::<Line>(&line) {
            Ok(Line { record, .. }) => {
                if let Record::Bye(b) = &record {
                    bye = Some(b.reason.clone());
                }
                let _ = events.send(SpyEvent::Record { node: node.clone(), record: Box::new(record), bytes }).await;
            }
            // A newer agent's record kinds are skipped, not fatal.
            Err(err) => log::debug!("{node}: skipped a record line ({err})"),
        }
    }
}

/// Writes the spy's stdin: commands as they come, a heartbeat every
/// `period`; closes stdin (the spy's cue to say bye) when `commands` closes.
async fn write_stdin(
    mut stdin: impl tokio::io::AsyncWrite + Unpin,
    mut sealer: Sealer,
    mut commands: mpsc::UnboundedReceiver<Command>,
    period: Duration,
) -> std::io::Result<()> {
    let mut heartbeat = tokio::time::interval(period);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let command = tokio::select! {
            command = commands.recv() => match command {
                Some(command) => command,
                // kube sends stdin EOF on shutdown only, not on drop.
                None => return stdin.shutdown().await,
            },
            _ = heartbeat.tick() => Command::Heartbeat,
        };
        stdin.write_all(sealed(&mut sealer, &command).as_bytes()).await?;
    }
}

/// The command's line, sealed. Commands are checked before they are queued
/// (`Session::add`), so one that cannot be sent is only logged here.
fn sealed(sealer: &mut Sealer, command: &Command) -> String {
    match command.line() {
        Ok(line) => sealer.seal(line.trim_end().as_bytes()),
        Err(err) => {
            log::warn!("{err}");
            String::new()
        }
    }
}

async fn keep_log(errors: &mut VecDeque<String>, node: &str, line: String, events: &mpsc::Sender<SpyEvent>) {
    if errors.len() == KEPT_ERRORS {
        errors.pop_front();
    }
    errors.push_back(line.clone());
    let _ = events.send(SpyEvent::Log { node: node.to_string(), line }).await;
}

/// Resolves once the session asks its spies to stop (or is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard wait_for returns is not Send: drop it here.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_starting_spy_gets_the_startup_timeout_then_the_silence_one() {
        let (startup, silence) = (Duration::from_secs(120), Duration::from_secs(30));
        assert_eq!(silence_allowed(false, startup, silence), startup);
        assert_eq!(silence_allowed(true, startup, silence), silence);
        assert_eq!(silence_allowed(false, Duration::from_secs(1), silence), silence);
    }

    /// A spy that sends nothing is given up after the silence timeout,
    /// even while its stdout stays open (a network cut, a stopped process).
    #[tokio::test]
    async fn a_silent_spy_is_given_up() {
        let key = SessionKey::generate().expect("key");
        let (mut spy_side, ours) = tokio::io::duplex(1024);
        let (events, mut events_rx) = mpsc::channel(8);
        let silence = Duration::from_millis(300);
        let timeouts = Timeouts { heartbeat: Duration::from_secs(3), startup: Duration::from_secs(2), silence };
        let opener = Opener::new(&key, Direction::ToPlugin);
        let reader = tokio::spawn(read_records(ours, opener, "n".into(), events, timeouts));
        // Still starting: a pause longer than the silence timeout is fine.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut sealer = Sealer::new(&key, Direction::ToPlugin);
        let hello = r#"{"v":1,"kind":"warning","message":"hi"}"#;
        spy_side.write_all(sealer.seal(hello.as_bytes()).as_bytes()).await.expect("write");
        let heard = std::time::Instant::now();
        assert!(matches!(events_rx.recv().await, Some(SpyEvent::Record { .. })));
        let (end, bye) = reader.await.expect("reader");
        assert_eq!(end, ReadEnd::Silent(silence));
        assert_eq!(bye, None);
        let waited = heard.elapsed();
        assert!(waited >= silence && waited < silence * 4, "{waited:?}");
        drop(spy_side);
    }

    #[test]
    fn heartbeats_come_three_times_per_timeout() {
        assert_eq!(heartbeat_period(Duration::from_secs(10)), Duration::from_secs(2));
        assert_eq!(heartbeat_period(Duration::from_secs(3)), Duration::from_secs(1));
    }
}
