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
}

fn heartbeat_period(spy_timeout: Duration) -> Duration {
    // Three beats per timeout: one lost or late beat never ends a session.
    HEARTBEAT_EVERY.min(spy_timeout / 3).max(Duration::from_millis(100))
}

#[allow(clippy::too_many_arguments, reason = "one call site; the streams of one spy")]
pub async fn stream(
    api: &Api<Pod>,
    name: &str,
    node: &str,
    key: &SessionKey,
    spy_timeout: Duration,
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
    let mut out_lines = BufReader::new(stdout).lines();
    let mut err_lines = BufReader::new(stderr).lines();
    let lost = |err: std::io::Error| failure(format!("lost the connection to the spy on node {node}: {err}"));

    let mut sealer = Sealer::new(key, Direction::ToSpy);
    let mut opener = Opener::new(key, Direction::ToPlugin);
    // The key first, in clear: stdin is ours alone to write first (the
    // agent takes the first key line that matches its digest).
    stdin.write_all(key.line().as_bytes()).await.map_err(lost)?;
    // Nothing comes out of the agent before this line: we are listening now.
    stdin.write_all(sealed(&mut sealer, &Command::Go).as_bytes()).await.map_err(lost)?;
    progress.finish_and_clear();
    let _ = events.send(SpyEvent::Attached { node: node.to_string(), pod: name.to_string() }).await;

    let mut heartbeat = tokio::time::interval(heartbeat_period(spy_timeout));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut errors: VecDeque<String> = VecDeque::new();
    let mut bye = None;
    let mut stopping: Option<(tokio::time::Instant, String)> = None;
    let mut stderr_open = true;
    let stopped_at = loop {
        let drain_until = stopping.as_ref().map(|(t, _)| *t);
        tokio::select! {
            line = out_lines.next_line() => match line {
                Ok(Some(line)) => {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let line = match opener.open(&line) {
                        Ok(plain) => plain,
                        Err(err) => {
                            log::debug!("{node}: dropped a stdout line: {err}");
                            continue;
                        }
                    };
                    match serde_json::from_slice::<Line>(&line) {
                        Ok(Line { record, .. }) => {
                            if let Record::Bye(b) = &record {
                                bye = Some(b.reason.clone());
                            }
                            let _ = events.send(SpyEvent::Record { node: node.to_string(), record: Box::new(record) }).await;
                        }
                        // A newer agent's record kinds are skipped, not fatal.
                        Err(err) => log::debug!("{node}: skipped a record line ({err})"),
                    }
                }
                Ok(None) | Err(_) => break stopping.take(),
            },
            line = err_lines.next_line(), if stderr_open => match line {
                Ok(Some(line)) => keep_log(&mut errors, node, line, events).await,
                Ok(None) | Err(_) => stderr_open = false,
            },
            command = commands.recv(), if stopping.is_none() => {
                if let Some(command) = command {
                    stdin.write_all(sealed(&mut sealer, &command).as_bytes()).await.map_err(lost)?;
                }
            }
            _ = heartbeat.tick(), if stopping.is_none() => {
                stdin.write_all(sealed(&mut sealer, &Command::Heartbeat).as_bytes()).await.map_err(lost)?;
            }
            () = stopped(stop), if stopping.is_none() => {
                // kube sends stdin EOF on shutdown only, not on drop.
                let _ = stdin.shutdown().await;
                stopping = Some((tokio::time::Instant::now() + DRAIN_AFTER_STOP, "stopped by the plugin".into()));
            }
            _ = sleep_until(drain_until) => break stopping.take(),
        }
    };
    // The agent's last words come on stderr, maybe just after stdout ended.
    let tail_until = tokio::time::Instant::now() + STDERR_TAIL;
    if stderr_open {
        while let Ok(Ok(Some(line))) = tokio::time::timeout_at(tail_until, err_lines.next_line()).await {
            keep_log(&mut errors, node, line, events).await;
        }
    }
    attached.abort();
    match stopped_at {
        Some((_, reason)) => Ok(StreamEnd::Stopped { reason }),
        None => Ok(StreamEnd::AgentEnded { errors: errors.into(), bye }),
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
    fn heartbeats_come_three_times_per_timeout() {
        assert_eq!(heartbeat_period(Duration::from_secs(10)), Duration::from_secs(2));
        assert_eq!(heartbeat_period(Duration::from_secs(3)), Duration::from_secs(1));
    }
}
