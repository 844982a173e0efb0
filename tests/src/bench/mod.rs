//! The overhead benchmark: what spying costs a TLS server, side by side in
//! one run, against the floor every uprobe-based tool pays.
//!
//! Servers: nginx (OpenSSL) and a Go net/http server built here (crypto/tls).
//! For each case, rounds alternate three modes on the same running server:
//!   none   no probes;
//!   floor  no-op probes on exactly the spy's probe points: entry and
//!          return for OpenSSL, entry and every RET for Go (the
//!          unavoidable trap cost);
//!   spy    the real tlsspy-agent, producing exchanges.
//! See docs/BENCHMARKS.md for the commands and the figures.

pub mod floor;
pub mod load;
pub mod server;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context as _;
use spy_protocol::record::{Line, Record, Stats};

pub use server::Server;
use server::{GoProgram, Running};

use crate::support::Certificate;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    None,
    Floor,
    Spy,
    /// Another agent build (`--baseline-agent`), in the same rounds: an
    /// optimisation is shown against it side by side, not across runs.
    Baseline,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::None, Mode::Floor, Mode::Spy];
    pub fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Floor => "floor",
            Mode::Spy => "spy",
            Mode::Baseline => "baseline",
        }
    }

    /// The modes of a run: the three, and the baseline when there is one.
    pub fn of(options: &Options) -> Vec<Mode> {
        let mut modes = Mode::ALL.to_vec();
        if options.baseline_agent.is_some() {
            modes.push(Mode::Baseline);
        }
        modes
    }
}

/// A server and what the load asks of it.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub server: Server,
    pub body_bytes: usize,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub cases: Vec<Case>,
    pub rounds: usize,
    pub duration: Duration,
    pub connections: usize,
    pub agent: PathBuf,
    /// An agent to compare `agent` with (a build from before a change).
    pub baseline_agent: Option<PathBuf>,
    /// The Go toolchain's build cache and the built Go server (kept between
    /// runs: a second build only links).
    pub go_work: PathBuf,
}

/// One round of one mode.
#[derive(Clone, Debug, Default)]
pub struct Round {
    pub load: load::LoadResult,
    /// TLS call entries probed during the round (floor: its counter; spy: its stats).
    pub probe_hits: Option<u64>,
    /// The floor's return hits: its uretprobe (OpenSSL) or its RET-site
    /// probes (Go).
    pub return_hits: Option<u64>,
    pub exchanges: Option<u64>,
    pub lost_events: Option<u64>,
    pub lost_bytes: Option<u64>,
    /// The agent's user + system CPU, microseconds.
    pub spy_cpu_us: Option<f64>,
    /// Run time of the spy's eBPF programs during the round, microseconds.
    pub bpf_us: Option<f64>,
    pub peak_rss_kib: Option<u64>,
    /// From starting the agent to its `target` record: probes are live.
    pub attach: Option<Duration>,
}

pub struct CaseReport {
    pub case: Case,
    /// The toolchain that built the server, when we built it (Go).
    pub built_with: Option<String>,
    pub rounds: Vec<(Mode, Round)>,
}

pub fn run(options: &Options) -> anyhow::Result<(floor::HitCost, Vec<CaseReport>)> {
    // Kernel accounting of eBPF run time, for as long as this fd lives.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enable BPF run-time stats")?;
    let hit_cost = floor::measure_hit_cost()?;
    let cert = Certificate::signed_by_ca();
    let tls = load::client_config(pem_to_der(&std::fs::read_to_string(cert.ca())?)?)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;

    let go = if options.cases.iter().any(|c| c.server == Server::Go) {
        Some(GoProgram::build(&options.go_work)?)
    } else {
        None
    };

    let mut reports = Vec::new();
    for case in &options.cases {
        let server = Running::start(case.server, &cert, case.body_bytes, go.as_ref())?;
        let addr = server.addr();
        let path = format!("/bytes/{}", case.body_bytes);
        // Warm the server and the page cache.
        let warm =
            runtime.block_on(load::run(addr, &path, options.connections, Duration::from_millis(500), tls.clone()));
        anyhow::ensure!(warm.requests > 0, "[{}] the server answered no request while warming up", case.name);

        let mut rounds = Vec::new();
        for round in 0..options.rounds {
            for mode in Mode::of(options) {
                eprintln!("[{}] round {}/{}: {}", case.name, round + 1, options.rounds, mode.name());
                let run_load =
                    || runtime.block_on(load::run(addr, &path, options.connections, options.duration, tls.clone()));
                let result = match mode {
                    Mode::None => Round { load: run_load(), ..Round::default() },
                    Mode::Floor => {
                        let mut floor = server.floor()?;
                        let load = run_load();
                        let (entries, returns) = floor.hits();
                        Round { load, probe_hits: Some(entries), return_hits: Some(returns), ..Round::default() }
                    }
                    Mode::Spy => spy_round(&options.agent, server.tls_pid(), run_load)?,
                    Mode::Baseline => match &options.baseline_agent {
                        Some(agent) => spy_round(agent, server.tls_pid(), run_load)?,
                        None => continue,
                    },
                };
                rounds.push((mode, result));
            }
        }
        reports.push(CaseReport { case: case.clone(), built_with: server.built_with(), rounds });
    }
    Ok((hit_cost, reports))
}

fn spy_round(agent: &Path, pid: u32, run_load: impl FnOnce() -> load::LoadResult) -> anyhow::Result<Round> {
    let started = std::time::Instant::now();
    let mut child = Command::new(agent)
        .args(["--pid", &pid.to_string(), "--stats-interval", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("start {}", agent.display()))?;
    let stdout = child.stdout.take().context("agent stdout")?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut exchanges = 0u64;
        let mut last: Option<Stats> = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            match serde_json::from_str::<Line>(&line).map(|l| l.record) {
                Ok(Record::Exchange(_)) => exchanges += 1,
                Ok(Record::Target(_)) => {
                    let _ = ready_tx.send(());
                }
                Ok(Record::Bye(bye)) => last = Some(bye.stats),
                _ => {}
            }
        }
        (exchanges, last)
    });
    ready_rx.recv_timeout(Duration::from_secs(30)).context("the agent did not report its target")?;
    let attach = started.elapsed();

    let bpf_before = spy_bpf_time(child.id());
    let load = run_load();
    // Let the last events reach user space before reading the counters.
    std::thread::sleep(Duration::from_millis(300));
    let bpf_after = spy_bpf_time(child.id());
    let (cpu_us, rss) = (process_cpu_us(child.id()), peak_rss_kib(child.id()));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
    let (exchanges, stats) = reader.join().map_err(|_| anyhow::anyhow!("reader thread panicked"))?;
    let stats = stats.context("the agent ended without a bye record")?;
    Ok(Round {
        load,
        probe_hits: Some(stats.probe_hits),
        // The spy's records carry entry hits only.
        return_hits: None,
        exchanges: Some(exchanges),
        lost_events: Some(stats.lost_events),
        lost_bytes: Some(stats.lost_bytes),
        spy_cpu_us: cpu_us,
        bpf_us: Some(bpf_after.saturating_sub(bpf_before).as_secs_f64() * 1e6),
        peak_rss_kib: rss,
        attach: Some(attach),
    })
}

/// Summed run time of the eBPF programs the agent `pid` holds, from the
/// kernel's BPF stats in /proc/PID/fdinfo. By process, not by program name:
/// another spy on the machine (a concurrent test run) loads programs of the
/// same names.
fn spy_bpf_time(pid: u32) -> Duration {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return Duration::ZERO };
    // Several fds may hold one program: count each program once.
    let mut run_time_ns = std::collections::BTreeMap::new();
    for fd in fds.flatten() {
        let Ok(info) = std::fs::read_to_string(fd.path()) else { continue };
        let field =
            |name: &str| -> Option<u64> { info.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()) };
        if let (Some(id), Some(ns)) = (field("prog_id:"), field("run_time_ns:")) {
            run_time_ns.insert(id, ns);
        }
    }
    Duration::from_nanos(run_time_ns.values().sum())
}

fn process_cpu_us(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After ") ": state(0) ppid(1) … utime(11) stime(12), in clock ticks.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 * 1e6 / hz)
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn pem_to_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(body)?)
}

/// One mode of one case, over all its rounds: what the table shows.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub median_rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub requests: u64,
    pub errors: u64,
    pub probe_hits: Option<u64>,
    pub return_hits: Option<u64>,
    pub exchanges: Option<u64>,
    pub lost_events: Option<u64>,
    pub lost_bytes: Option<u64>,
    pub spy_cpu_us: Option<f64>,
    pub bpf_us: Option<f64>,
    pub peak_rss_kib: Option<u64>,
    pub attach: Option<Duration>,
}

impl Summary {
    pub fn of(report: &CaseReport, mode: Mode) -> Summary {
        let rounds: Vec<&Round> = report.rounds.iter().filter(|(m, _)| *m == mode).map(|(_, r)| r).collect();
        let mut rps: Vec<f64> = rounds.iter().map(|r| r.load.rps()).collect();
        rps.sort_by(f64::total_cmp);
        let latencies: Vec<u32> = rounds.iter().flat_map(|r| r.load.latencies_us.iter().copied()).collect();
        let sum = |f: fn(&Round) -> Option<u64>| -> Option<u64> { rounds.iter().map(|r| f(r)).sum() };
        Summary {
            median_rps: rps.get(rps.len() / 2).copied().unwrap_or(0.0),
            p50_us: load::percentile(&latencies, 50.0),
            p99_us: load::percentile(&latencies, 99.0),
            requests: rounds.iter().map(|r| r.load.requests).sum(),
            errors: rounds.iter().map(|r| r.load.errors).sum(),
            probe_hits: sum(|r| r.probe_hits),
            return_hits: sum(|r| r.return_hits),
            exchanges: sum(|r| r.exchanges),
            lost_events: sum(|r| r.lost_events),
            lost_bytes: sum(|r| r.lost_bytes),
            spy_cpu_us: rounds.iter().map(|r| r.spy_cpu_us).sum(),
            bpf_us: rounds.iter().map(|r| r.bpf_us).sum(),
            peak_rss_kib: rounds.iter().filter_map(|r| r.peak_rss_kib).max(),
            attach: rounds.iter().filter_map(|r| r.attach).max(),
        }
    }

    pub fn per_request(&self, count: Option<u64>) -> Option<f64> {
        count.map(|c| c as f64 / self.requests.max(1) as f64)
    }
}

/// The report, as Markdown.
pub fn render(hit_cost: &floor::HitCost, reports: &[CaseReport], options: &Options) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Probe hit cost on this machine: {:.0} ns per call under a no-op entry probe, {:.0} ns under entry + return (bare call {:.1} ns).\n\n",
        hit_cost.entry_ns - hit_cost.bare_ns,
        hit_cost.entry_and_return_ns - hit_cost.bare_ns,
        hit_cost.bare_ns
    ));
    for report in reports {
        let built_with = report.built_with.as_ref().map_or(String::new(), |v| format!(", built with {v}"));
        out.push_str(&format!(
            "### {} ({} keep-alive connections, {} rounds × {:?} per mode{built_with})\n\n",
            report.case.name, options.connections, options.rounds, options.duration
        ));
        out.push_str("| mode | req/s (median) | p50 | p99 | probe hits/req | exchanges/requests | lost events (bytes) | spy CPU µs/exchange (user+sys / BPF) | spy peak RSS |\n");
        out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        let [none, floor, spy] = Mode::ALL.map(|mode| Summary::of(report, mode));
        let baseline = options.baseline_agent.as_ref().map(|_| Summary::of(report, Mode::Baseline));
        let mut rows = vec![(Mode::None, &none), (Mode::Floor, &floor), (Mode::Spy, &spy)];
        rows.extend(baseline.as_ref().map(|b| (Mode::Baseline, b)));
        for (mode, s) in rows {
            let requests = s.requests;
            let hits = s.per_request(s.probe_hits).map_or("-".into(), |h| format!("{h:.2}"));
            let completeness = s
                .exchanges
                .map_or("-".into(), |x| format!("{x}/{requests} ({:.2}%)", 100.0 * x as f64 / requests.max(1) as f64));
            let lost = match (s.lost_events, s.lost_bytes) {
                (Some(e), Some(b)) => format!("{e} ({b})"),
                _ => "-".into(),
            };
            let cpu = match (s.spy_cpu_us, s.bpf_us, s.exchanges) {
                (Some(c), Some(b), Some(x)) if x > 0 => format!("{:.1} / {:.1}", c / x as f64, b / x as f64),
                _ => "-".into(),
            };
            let rss = s.peak_rss_kib.map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
            let errors = if s.errors > 0 { format!(" ({} errors)", s.errors) } else { String::new() };
            out.push_str(&format!(
                "| {} | {:.0}{errors} | {:.0} µs | {:.0} µs | {hits} | {completeness} | {lost} | {cpu} | {rss} |\n",
                mode.name(),
                s.median_rps,
                s.p50_us,
                s.p99_us,
            ));
        }
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let floor_returns = floor.per_request(floor.return_hits).map_or("-".into(), |h| format!("{h:.2}"));
        out.push_str(&format!(
            "\nspy/none {:.3} · spy/floor {:.3} · floor/none {:.3} · floor return hits/req {floor_returns} · agent start to probes live: {} (slowest round)\n\n",
            ratio(spy.median_rps, none.median_rps),
            ratio(spy.median_rps, floor.median_rps),
            ratio(floor.median_rps, none.median_rps),
            spy.attach.map_or("-".into(), |a| format!("{} ms", a.as_millis()))
        ));
        if let Some(b) = &baseline {
            let per_exchange = |s: &Summary| match (s.spy_cpu_us, s.exchanges) {
                (Some(c), Some(x)) if x > 0 => c / x as f64,
                _ => 0.0,
            };
            out.push_str(&format!(
                "Against the baseline agent: spy/baseline throughput {:.3} · agent CPU per exchange spy/baseline {:.3}\n\n",
                ratio(spy.median_rps, b.median_rps),
                ratio(per_exchange(&spy), per_exchange(b)),
            ));
        }
    }
    out
}
