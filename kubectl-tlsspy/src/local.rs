//! `kubectl tlsspy local`: the spy on this machine, no cluster.

#![allow(unsafe_code, reason = "local mode forks, execs behind a gate and reads its pipe with libc")]

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use spy_image::probes::LoadOptions;
use spy_image::proto::ParseOptions;
use spy_image::spy::{Control, Spy, SpyOptions};
use spy_protocol::sink::Sink;
use tokio::sync::{mpsc, oneshot};

use crate::cli::{usage, LocalArgs};
use crate::render::queued::{QueuedRenderer, QUEUE_BYTES, QUEUE_RECORDS};
use crate::render::{stats_line, Renderer};
use spy_protocol::record::{Body, Payload, Record};

pub async fn run(args: LocalArgs) -> anyhow::Result<ExitCode> {
    if args.pids.is_empty() && args.command.is_empty() {
        return Err(usage(
            "nothing to spy on: give --pid PID, or a command after `--` (kubectl tlsspy local -- curl https://…)",
        ));
    }
    if !args.pids.is_empty() && !args.command.is_empty() {
        return Err(usage("give either --pid or a command after `--`, not both"));
    }
    for &pid in &args.pids {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            bail!("no process with pid {pid} on this machine");
        }
    }
    let ring_bytes = args
        .output
        .ring_buffer_mib
        .checked_mul(1024 * 1024)
        .filter(|b| b.is_power_of_two())
        .context("--ring-buffer-mib must be a power of two, at most 2048")?;

    let options = SpyOptions {
        follow_children: !args.no_follow_children,
        parse: ParseOptions { max_body: args.output.max_body, show_secrets: args.output.show_secrets },
        raw: args.output.raw,
        load: LoadOptions { ring_buffer_bytes: ring_bytes },
        exit_when_targets_gone: true,
        memory_budget: args.output.memory_budget,
        ..SpyOptions::default()
    };
    let mut spy = Spy::start(options)?;
    let mut renderer = QueuedRenderer::spawn(Renderer::stdout(&args.output)?, QUEUE_RECORDS, QUEUE_BYTES)?;
    let hello = spy.hello();
    let bytes = record_bytes(&hello);
    renderer.record(hello, bytes)?;

    let (control_tx, control_rx) = mpsc::channel(16);
    let mut child = None;
    if args.command.is_empty() {
        for &pid in &args.pids {
            spy.add_process(pid, None)?;
        }
        if let Some(why) = spy.nothing_to_probe() {
            bail!("nothing tlsspy can probe: {why}");
        }
    } else {
        // Probe every TLS stack the command could use before it starts, so
        // its first TLS call is seen: the libssl copies the dynamic linker
        // knows, and the executable itself (a static OpenSSL, or Go).
        let program = resolve_program(&args.command[0])?;
        for library in libssl_candidates() {
            spy.attach_library(&library, false)?;
        }
        spy.attach_library(&program, true)?;
        // With -o json our stdout is the record stream: the command's own
        // output goes to stderr so the stream stays parseable.
        let to_stderr = args.output.format == crate::cli::OutputFormat::Json;
        let started = start_gated(&program, &args.command, to_stderr)?;
        spy.add_starting_process(started.pid, &program)?;
        child = Some(started.release()?);
    }

    // Stop on Ctrl-C, SIGTERM, --duration, or when the command exits.
    let stopper = control_tx.clone();
    let signalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let signal_seen = signalled.clone();
    tokio::spawn(async move {
        let reason = wait_for_stop_signal().await;
        signal_seen.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = stopper.send(Control::Stop(reason)).await;
    });
    if let Some(duration) = args.duration {
        let stopper = control_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            let _ = stopper.send(Control::Stop("--duration elapsed".into())).await;
        });
    }
    let mut exit_code = ExitCode::SUCCESS;
    let child_status = child.map(|child| {
        let (end_tx, end_rx) = oneshot::channel();
        (tokio::spawn(watch_child(child, control_tx.clone(), end_rx)), end_tx)
    });
    drop(control_tx);

    let ran = spy.run(&mut Queued(&mut renderer), control_rx).await;
    // However the session ended (--duration, a signal, a closed stdout),
    // the command does not outlive it.
    if let Some((waiter, end)) = child_status {
        let _ = end.send(());
        if let Ok(Ok(ChildEnd::Exited(status))) = waiter.await {
            exit_code = ExitCode::from(status.code().map_or(1, |c| u8::try_from(c).unwrap_or(1)));
        }
    }
    let mut stats = ran.map_err(|err| anyhow::Error::new(err).context("the spy stopped"))?;
    stats.dropped_records += renderer.dropped();
    // The spy has stopped: what is left is our own output, as long as the
    // reader of our stdout takes (a signal's end waits a little only).
    let wait = signalled.load(std::sync::atomic::Ordering::Relaxed).then_some(OUTPUT_WAIT_AFTER_SIGNAL);
    let finished = tokio::task::spawn_blocking(move || renderer.finish(wait)).await.ok().flatten();
    match finished {
        Some((renderer, written)) => {
            written.context("cannot write the records")?;
            if !args.output.no_summary && args.output.format == crate::cli::OutputFormat::Live {
                if let Some(table) = renderer.summary_table() {
                    // `| head` may have closed stdout: main takes that as a normal end.
                    writeln!(std::io::stdout(), "{table}").context("cannot write the summary")?;
                }
            }
        }
        None => eprintln!("tlsspy: stdout did not take the last records; left them"),
    }
    let _ = writeln!(std::io::stderr(), "{}", stats_line(&stats));
    Ok(exit_code)
}

/// How long a command tlsspy ends (the session is over, it is not) has
/// between SIGTERM and SIGKILL.
const CHILD_GRACE: Duration = Duration::from_secs(2);

/// How the command ended.
#[derive(Debug)]
enum ChildEnd {
    /// By itself: its status is tlsspy's exit code.
    Exited(std::process::ExitStatus),
    /// tlsspy ended it because the session was over.
    Ended,
}

/// Waits for the command: when it exits first, stops the session; when
/// the session ends first (`end`), ends the command.
async fn watch_child(
    mut child: tokio::process::Child,
    stopper: mpsc::Sender<Control>,
    end: oneshot::Receiver<()>,
) -> std::io::Result<ChildEnd> {
    tokio::select! {
        status = child.wait() => {
            let status = status?;
            // Let the last events reach the ring before stopping.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = stopper.send(Control::Stop("command exited".into())).await;
            Ok(ChildEnd::Exited(status))
        }
        _ = end => {
            end_child(&mut child, CHILD_GRACE).await?;
            Ok(ChildEnd::Ended)
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`: the command gets to clean up, but
/// not for ever.
async fn end_child(child: &mut tokio::process::Child, grace: Duration) -> std::io::Result<()> {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        // SAFETY: kill(2) on our own child, which we have not reaped (its
        // id is Some), so the pid is still its own.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        child.start_kill()?;
        child.wait().await?;
    }
    Ok(())
}

async fn wait_for_stop_signal() -> String {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "interrupted".into();
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted".into(),
        _ = term.recv() => "terminated".into(),
    }
}

/// The program a command names, through PATH as the shell would.
fn resolve_program(name: &str) -> anyhow::Result<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        if path.is_file() {
            return Ok(path);
        }
        bail!("cannot run `{name}`: no such file");
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("cannot run `{name}`: not found in PATH"))
}

/// libssl files the dynamic linker knows about (`ldconfig -p`).
fn libssl_candidates() -> Vec<PathBuf> {
    let output = std::process::Command::new("ldconfig").arg("-p").output();
    let Ok(output) = output else { return Vec::new() };
    parse_ldconfig(&String::from_utf8_lossy(&output.stdout))
}

fn parse_ldconfig(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter(|line| line.trim_start().starts_with("libssl.so"))
        .filter_map(|line| line.split_once("=> ").map(|(_, path)| PathBuf::from(path.trim())))
        .collect()
}

/// The environment variable that turns a `kubectl-tlsspy` process into an
/// exec gate: it waits for one byte on the fd it names, then execs its
/// arguments in place (same pid). `spawn` returns only after an exec, so
/// the gate is an exec of ourselves rather than a wait before exec.
const GATE_ENV: &str = "TLSSPY_EXEC_GATE_FD";

/// A started command held at the gate until released, so the kernel filter
/// and probes are in place before the command's first instruction.
struct Gated {
    pid: u32,
    child: tokio::process::Child,
    release: std::io::PipeWriter,
}

impl Gated {
    /// Lets the command exec; returns it to be waited for.
    fn release(mut self) -> anyhow::Result<tokio::process::Child> {
        std::io::Write::write_all(&mut self.release, b"g").context("cannot start the command")?;
        Ok(self.child)
    }
}

fn start_gated(program: &Path, command: &[String], stdout_to_stderr: bool) -> anyhow::Result<Gated> {
    let (gate, release) = std::io::pipe().context("cannot create a pipe")?;
    let gate_fd = std::os::fd::AsRawFd::as_raw_fd(&gate);
    let me = std::env::current_exe().context("cannot find tlsspy's own executable")?;
    let mut cmd = std::process::Command::new(me);
    cmd.env(GATE_ENV, gate_fd.to_string()).arg(program).args(&command[1..]);
    if stdout_to_stderr {
        let stderr = std::os::fd::AsFd::as_fd(&std::io::stderr()).try_clone_to_owned()?;
        cmd.stdout(stderr);
    }
    // SAFETY: runs in the forked child before exec; fcntl is
    // async-signal-safe and the closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Keep the gate's read end open across the exec.
            if libc::fcntl(gate_fd, libc::F_SETFD, 0) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let child = tokio::process::Command::from(cmd).spawn().with_context(|| format!("cannot start `{}`", command[0]))?;
    drop(gate);
    let pid = child.id().context("the command exited before it started")?;
    Ok(Gated { pid, child, release })
}

/// When this process was started as an exec gate: wait, then become the
/// command. Returns only on failure.
pub fn exec_gate_if_asked() -> Option<anyhow::Error> {
    let fd: i32 = std::env::var(GATE_ENV).ok()?.parse().ok()?;
    // SAFETY: removing our own variable before any thread is started.
    unsafe { std::env::remove_var(GATE_ENV) };
    let mut args = std::env::args_os().skip(1);
    let program = args.next()?;
    let mut byte = 0u8;
    // SAFETY: reads one byte from the inherited pipe fd into a local.
    let n = unsafe { libc::read(fd, (&raw mut byte).cast(), 1) };
    if n != 1 {
        return Some(anyhow::anyhow!("tlsspy stopped before the command could start"));
    }
    // SAFETY: closing the gate fd we own; nothing else uses it.
    unsafe { libc::close(fd) };
    let err = std::process::Command::new(&program).args(args).exec();
    Some(anyhow::Error::new(err).context(format!("cannot run `{}`", program.to_string_lossy())))
}

/// How long the end waits for a stdout nobody reads after a signal.
const OUTPUT_WAIT_AFTER_SIGNAL: Duration = Duration::from_secs(2);

/// The spy's records go to the render thread's queue: a stdout that does
/// not keep up (`| less`, Ctrl-S) costs records, counted in the end line,
/// never the spy's pace (the kernel would lose events meanwhile) nor its
/// ending on time.
struct Queued<'a>(&'a mut QueuedRenderer<std::io::Stdout>);

impl Sink for Queued<'_> {
    fn record(&mut self, record: Record) -> std::io::Result<()> {
        let bytes = record_bytes(&record);
        self.0.record(record, bytes)
    }
}

/// About what a record takes in the queue: its captured bytes, and a
/// little for the rest (what the byte bound of the queue is about).
fn record_bytes(record: &Record) -> usize {
    let payload = |p: &Payload| match p {
        Payload::Text(text) | Payload::Base64(text) => text.len(),
    };
    let body = |b: &Body| b.data.as_ref().map_or(0, payload);
    256 + match record {
        Record::Chunk(chunk) => payload(&chunk.data),
        Record::Exchange(exchange) => {
            exchange.request.as_ref().map_or(0, |r| body(&r.body) + 64 * r.headers.len())
                + exchange.response.as_ref().map_or(0, |r| body(&r.body) + 64 * r.headers.len())
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldconfig_lines() {
        let text = "\t1234 libs found in cache `/etc/ld.so.cache'
\tlibssl.so.3 (libc6,x86-64) => /lib/x86_64-linux-gnu/libssl.so.3
\tlibssl3.so (libc6,x86-64) => /lib/x86_64-linux-gnu/libssl3.so
\tlibc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6
";
        // libssl3.so is NSS's library, not OpenSSL's: it has no SSL_write.
        assert_eq!(parse_ldconfig(text), [PathBuf::from("/lib/x86_64-linux-gnu/libssl.so.3")]);
    }

    /// A command that ignores SIGTERM is killed after the grace period; one
    /// that takes it ends at once.
    #[tokio::test]
    async fn a_command_the_session_outlives_is_ended() {
        let started = std::time::Instant::now();
        let mut child = tokio::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        end_child(&mut child, Duration::from_secs(5)).await.expect("ended");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

        let mut stubborn =
            tokio::process::Command::new("sh").args(["-c", "trap '' TERM; exec sleep 30"]).spawn().expect("sh");
        tokio::time::sleep(Duration::from_millis(200)).await; // the trap is set
        let started = std::time::Instant::now();
        end_child(&mut stubborn, Duration::from_millis(500)).await.expect("killed");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(500) && took < Duration::from_secs(3), "{took:?}");
    }

    #[test]
    fn programs_resolve_through_path() {
        assert!(resolve_program("sh").expect("sh").ends_with("sh"));
        assert!(resolve_program("no-such-program-tlsspy").unwrap_err().to_string().contains("not found in PATH"));
    }
}
