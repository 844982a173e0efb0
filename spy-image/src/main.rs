//! tlsspy-agent: the spy that runs in the spy pod (or on a host), printing
//! records as JSON lines on stdout and its log on stderr.

#![forbid(unsafe_code)]

use std::io::{self, BufRead as _};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "tlsspy-agent", version, about = "tlsspy's spy: TLS plaintext of target processes as JSON lines")]
struct Args {
    /// A host process to spy on (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<u32>,

    /// Speak the session protocol on stdin: wait for "go", expect heartbeats,
    /// end on EOF. Without it the agent starts at once and runs until killed
    /// or every target exited.
    #[arg(long, requires = "session_key_digest")]
    session: bool,

    /// SHA-256 (hex) of the session key: the agent takes the first stdin
    /// line that hands over a key with this digest, and from then on reads
    /// and writes only lines sealed under it (spy_protocol::seal).
    #[arg(long, value_name = "SHA256", requires = "session")]
    session_key_digest: Option<String>,

    /// End the session when no line arrives on stdin for this many seconds
    /// (at most a day: deadlines are computed from it).
    #[arg(long, value_name = "SECONDS", default_value = "15",
          value_parser = clap::value_parser!(u64).range(1..=MAX_SECONDS))]
    heartbeat_timeout: u64,

    /// Node name for the hello record.
    #[arg(long, env = "TLSSPY_NODE")]
    node: Option<String>,

    /// Body bytes kept per message (at most 16MiB).
    #[arg(long, value_name = "BYTES", default_value_t = spy_image::proto::DEFAULT_MAX_BODY,
          value_parser = spy_protocol::limits::parse_max_body)]
    max_body: usize,

    /// Memory for connections and packet reassembly (e.g. 256MiB); past it
    /// the least recently used connections are forgotten, and counted.
    #[arg(long, value_name = "SIZE", default_value = DEFAULT_MEMORY_BUDGET,
          value_parser = spy_protocol::limits::parse_memory_budget)]
    memory_budget: u64,

    /// Keep Authorization, Cookie and other secret header values.
    #[arg(long)]
    show_secrets: bool,

    /// Send a stats record this often, in seconds (0: only at the end). In a
    /// session at least every third of the heartbeat timeout: the plugin
    /// tells a silent spy from an idle one by them.
    #[arg(long, default_value = "5", value_parser = clap::value_parser!(u64).range(0..=MAX_SECONDS))]
    stats_interval: u64,

    /// No protocol parsing: plaintext as it moved, as chunk records.
    #[arg(long)]
    raw: bool,

    /// Ring buffer between the kernel and the agent, in MiB (a power of
    /// two): raise it when stats say events were lost.
    #[arg(long, value_name = "MIB", default_value_t = spy_protocol::limits::DEFAULT_RING_BUFFER_MIB,
          value_parser = spy_protocol::limits::parse_ring_buffer_mib)]
    ring_buffer_mib: u32,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .target(env_logger::Target::Stderr)
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tlsspy-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("tlsspy-agent runs on Linux only")
}

#[cfg(target_os = "linux")]
fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(agent::run(args))
}

#[cfg(target_os = "linux")]
const OUTPUT_BUFFER: usize = 64 * 1024;

/// The longest time any seconds flag takes (a day): `now + timeout` must
/// stay representable.
const MAX_SECONDS: u64 = 86_400;

/// How often a stats record goes out: `--stats-interval`, and in a session
/// at least three times per heartbeat timeout, so that the plugin hears
/// from an idle spy (a keep-alive) and can give up on a silent one.
fn stats_every(stats_interval: u64, heartbeat_timeout: Option<u64>) -> Option<Duration> {
    let asked = (stats_interval > 0).then(|| Duration::from_secs(stats_interval));
    let keep_alive = heartbeat_timeout.map(|t| (Duration::from_secs(t) / 3).max(Duration::from_millis(200)));
    match (asked, keep_alive) {
        (Some(a), Some(k)) => Some(a.min(k)),
        (a, k) => a.or(k),
    }
}

/// `--memory-budget`'s default as written in `--help`
/// (spy_protocol::limits::DEFAULT_MEMORY_BUDGET; a test holds them equal).
const DEFAULT_MEMORY_BUDGET: &str = "256MiB";

#[cfg(target_os = "linux")]
mod agent {
    use super::*;
    use spy_image::output::{QueuedOutput, FINISH_WAIT};
    use spy_image::proto::ParseOptions;
    use spy_image::spy::{Control, Spy, SpyOptions};
    use spy_protocol::seal::{Direction, Opener, SealedLines, SessionKey};
    use spy_protocol::session::{self, Command};
    use spy_protocol::sink::Sink as _;
    use tokio::sync::mpsc;

    pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
        let (control_tx, control_rx) = mpsc::channel(64);
        let (lines_tx, mut lines_rx) = mpsc::channel::<io::Result<String>>(64);
        let mut session_key = None;
        if let Some(digest) = &args.session_key_digest {
            // Blocking stdin on its own thread: tokio's stdin is a thread too,
            // and this one can be left behind at exit.
            std::thread::spawn(move || {
                for line in io::stdin().lock().lines() {
                    let end = line.is_err();
                    if lines_tx.blocking_send(line).is_err() || end {
                        return;
                    }
                }
            });
            // Nothing goes out before "go": what a container prints before
            // anyone attached is lost.
            // Start-up errors (no BTF, not privileged) come after "go" too,
            // so the plugin, attached by then, reads them on stderr.
            let key = wait_for_key(&mut lines_rx, digest, Duration::from_secs(args.heartbeat_timeout)).await?;
            let mut opener = Opener::new(&key, Direction::ToSpy);
            wait_for_go(&mut lines_rx, &mut opener, Duration::from_secs(args.heartbeat_timeout)).await?;
            session_key = Some((key, opener));
        }
        spy_image::probes::preflight()?;
        let options = SpyOptions {
            parse: ParseOptions { max_body: args.max_body, show_secrets: args.show_secrets },
            raw: args.raw,
            stats_interval: stats_every(args.stats_interval, args.session.then_some(args.heartbeat_timeout)),
            exit_when_targets_gone: !args.session,
            node: args.node.clone(),
            memory_budget: args.memory_budget,
            // At most 2048 MiB (parse_ring_buffer_mib): 2^31 bytes fits.
            load: spy_image::probes::LoadOptions { ring_buffer_bytes: args.ring_buffer_mib.saturating_mul(1 << 20) },
            ..SpyOptions::default()
        };
        let mut spy = Spy::start(options)?;
        for &pid in &args.pids {
            spy.add_process(pid, None)?;
        }

        // Records reach stdout through a bounded queue and a writer thread:
        // the session loop below never waits on stdout (spy_image::output).
        let sealing = session_key.as_ref().map(|(key, _)| key.clone());
        let mut sink = QueuedOutput::spawn(move || -> Box<dyn io::Write> {
            // Large enough that a busy batch is a few write(2) calls, not hundreds.
            let stdout = io::BufWriter::with_capacity(OUTPUT_BUFFER, io::stdout().lock());
            match sealing {
                // Sealed line by line before the buffer: still one write(2) per batch.
                Some(key) => Box::new(SealedLines::new(stdout, &key)),
                None => Box::new(stdout),
            }
        })?;
        sink.record(spy.hello())?;
        if let Some((_, opener)) = session_key {
            let timeout = Duration::from_secs(args.heartbeat_timeout);
            tokio::spawn(relay_session(lines_rx, opener, control_tx, timeout));
        } else {
            tokio::spawn(async move {
                let reason = wait_for_signal().await;
                let _ = control_tx.send(Control::Stop(reason)).await;
            });
        }
        let ran = spy.run(&mut sink, control_rx).await;
        let dropped = sink.dropped();
        let finished = sink.finish(FINISH_WAIT);
        if dropped > 0 {
            log::warn!("dropped {dropped} records: stdout did not keep up");
        }
        ran?;
        finished?;
        Ok(ExitCode::SUCCESS)
    }

    /// The session key: the first stdin line that hands over a key with our
    /// digest. Anything before it (another attacher's lines) is ignored.
    async fn wait_for_key(
        lines: &mut mpsc::Receiver<io::Result<String>>,
        digest: &str,
        timeout: Duration,
    ) -> anyhow::Result<SessionKey> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let line = tokio::time::timeout_at(deadline, lines.recv()).await.map_err(|_| {
                anyhow::anyhow!("no session key on stdin within {}s: nobody attached", timeout.as_secs())
            })?;
            match line {
                Some(Ok(line)) => match SessionKey::from_line(&line, digest) {
                    Ok(key) => return Ok(key),
                    Err(err) => log::warn!("ignored a stdin line before the session key: {err}"),
                },
                Some(Err(err)) => return Err(err.into()),
                None => anyhow::bail!("stdin closed before the session key"),
            }
        }
    }

    async fn wait_for_go(
        lines: &mut mpsc::Receiver<io::Result<String>>,
        opener: &mut Opener,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let line = tokio::time::timeout_at(deadline, lines.recv())
                .await
                .map_err(|_| anyhow::anyhow!("no \"go\" on stdin within {}s: nobody attached", timeout.as_secs()))?;
            match line {
                Some(Ok(line)) => {
                    if open_command(opener, &line) == Some(Command::Go) {
                        return Ok(());
                    }
                }
                Some(Err(err)) => return Err(err.into()),
                None => anyhow::bail!("stdin closed before \"go\""),
            }
        }
    }

    /// The command a sealed stdin line holds; None (logged) for a line that
    /// is not this session's or not a command.
    fn open_command(opener: &mut Opener, line: &str) -> Option<Command> {
        let plain = match opener.open(line) {
            Ok(plain) => plain,
            Err(err) => {
                log::warn!("dropped a stdin line: {err}");
                return None;
            }
        };
        match session::parse(&String::from_utf8_lossy(&plain)) {
            Ok(command) => Some(command),
            Err(err) => {
                log::warn!("{err}");
                None
            }
        }
    }

    async fn relay_session(
        mut lines: mpsc::Receiver<io::Result<String>>,
        mut opener: Opener,
        control: mpsc::Sender<Control>,
        timeout: Duration,
    ) {
        // Only this session's lines keep it alive: a line that does not open
        // (another attacher's) does not move the deadline.
        let mut deadline = tokio::time::Instant::now() + timeout;
        let reason = loop {
            tokio::select! {
                line = tokio::time::timeout_at(deadline, lines.recv()) => match line {
                    Err(_) => break format!("no heartbeat for {}s", timeout.as_secs()),
                    Ok(None) | Ok(Some(Err(_))) => break "stdin closed".to_string(),
                    Ok(Some(Ok(line))) => {
                        let Some(command) = open_command(&mut opener, &line) else { continue };
                        deadline = tokio::time::Instant::now() + timeout;
                        match command {
                            Command::Go | Command::Heartbeat => {}
                            Command::Stop => break "stopped by the plugin".to_string(),
                            Command::Container { id, pod_uid, pod } => {
                                let _ = control.send(Control::AddContainer { id, pod_uid, pod }).await;
                            }
                        }
                    }
                },
                reason = wait_for_signal() => break reason,
            }
        };
        let _ = control.send(Control::Stop(reason)).await;
    }

    async fn wait_for_signal() -> String {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            std::future::pending::<()>().await;
            unreachable!()
        };
        tokio::select! {
            _ = term.recv() => "terminated".to_string(),
            _ = int.recv() => "interrupted".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_shows_the_default_budget() {
        assert_eq!(
            spy_protocol::limits::parse_memory_budget(DEFAULT_MEMORY_BUDGET),
            Ok(spy_protocol::limits::DEFAULT_MEMORY_BUDGET)
        );
        let args = Args::try_parse_from(["tlsspy-agent"]).expect("defaults");
        assert_eq!(args.memory_budget, spy_protocol::limits::DEFAULT_MEMORY_BUDGET);
        assert_eq!(args.max_body, spy_image::proto::DEFAULT_MAX_BODY);
    }

    #[test]
    fn a_session_spy_sends_stats_three_times_per_heartbeat_timeout() {
        assert_eq!(stats_every(5, None), Some(Duration::from_secs(5)));
        assert_eq!(stats_every(0, None), None);
        assert_eq!(stats_every(0, Some(15)), Some(Duration::from_secs(5)));
        assert_eq!(stats_every(60, Some(3)), Some(Duration::from_secs(1)));
        assert_eq!(stats_every(1, Some(30)), Some(Duration::from_secs(1)));
        assert_eq!(stats_every(0, Some(1)), Some(Duration::from_secs(1) / 3));
    }

    #[test]
    fn seconds_flags_too_large_for_a_deadline_are_refused() {
        for flag in ["--heartbeat-timeout", "--stats-interval"] {
            let err = Args::try_parse_from(["tlsspy-agent", flag, "18446744073709551615"]).expect_err(flag);
            assert!(err.to_string().contains("86400"), "{err}");
        }
        assert!(Args::try_parse_from(["tlsspy-agent", "--heartbeat-timeout", "0"]).is_err());
    }

    #[test]
    fn a_huge_body_cap_is_refused_by_the_flag_parser() {
        let err = Args::try_parse_from(["tlsspy-agent", "--max-body", "18446744073709551615"]).expect_err("too big");
        assert!(err.to_string().contains("16MiB"), "{err}");
        assert!(Args::try_parse_from(["tlsspy-agent", "--memory-budget", "1KiB"]).is_err());
        let args =
            Args::try_parse_from(["tlsspy-agent", "--memory-budget", "64MiB", "--max-body", "1MiB"]).expect("ok");
        assert_eq!((args.memory_budget, args.max_body), (64 << 20, 1 << 20));
    }
}
