//! tlsspy-bench: what spying costs a TLS server, against the floor.
//! Needs root. See docs/BENCHMARKS.md.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tlsspy_tests::bench::{self, Case, Options, Server};

/// The nginx cases of a run that names none.
const DEFAULT_NGINX_BODIES: [usize; 2] = [1024, 65536];

#[derive(Debug, Parser)]
#[command(about = "Side-by-side overhead benchmark: none, floor (no-op probes) and the spy")]
struct Args {
    /// Response body sizes to serve from nginx (bytes), one case each
    /// (default, when no --go-body is given either: 1024 and 65536).
    #[arg(long = "body")]
    bodies: Vec<usize>,
    /// Response body sizes to serve from a Go net/http server built here
    /// with the local Go toolchain (bytes), one case each; none by default.
    #[arg(long = "go-body")]
    go_bodies: Vec<usize>,
    /// Rounds per case; each round runs none, floor and spy once.
    #[arg(long, default_value = "3")]
    rounds: usize,
    /// Seconds of load per mode and round.
    #[arg(long, default_value = "5")]
    seconds: u64,
    /// Keep-alive connections of the load generator.
    #[arg(long, default_value = "16")]
    connections: usize,
    /// The agent binary (default: next to this one).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Another agent binary, run as a fourth mode in the same rounds (an
    /// agent built before a change, to show the change side by side).
    #[arg(long)]
    baseline_agent: Option<PathBuf>,
    /// Go build cache and the built Go server (default: tlsspy-bench-go in
    /// the temp dir, kept so the next run only links).
    #[arg(long)]
    go_work: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let agent = match args.agent {
        Some(agent) => agent,
        None => std::env::current_exe()?.with_file_name("tlsspy-agent"),
    };
    let nginx_bodies =
        if args.bodies.is_empty() && args.go_bodies.is_empty() { DEFAULT_NGINX_BODIES.to_vec() } else { args.bodies };
    let options = Options {
        cases: nginx_bodies
            .iter()
            .map(|&b| Case { name: format!("nginx, {} responses", human(b)), server: Server::Nginx, body_bytes: b })
            .chain(args.go_bodies.iter().map(|&b| Case {
                name: format!("Go net/http, {} responses", human(b)),
                server: Server::Go,
                body_bytes: b,
            }))
            .collect(),
        rounds: args.rounds,
        duration: Duration::from_secs(args.seconds),
        connections: args.connections,
        agent,
        baseline_agent: args.baseline_agent,
        go_work: args.go_work.unwrap_or_else(|| std::env::temp_dir().join("tlsspy-bench-go")),
    };
    let (hit_cost, reports) = bench::run(&options)?;
    print!("{}", bench::render(&hit_cost, &reports, &options));
    Ok(())
}

fn human(bytes: usize) -> String {
    if bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}
