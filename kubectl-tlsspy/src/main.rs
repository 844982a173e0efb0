//! kubectl-tlsspy: show the TLS traffic of Kubernetes pods in clear text.

// Unsafe code is allowed only where the module says why (local mode, the
// reaper's detach); every other module forbids it.
#![deny(unsafe_code)]

mod cli;
mod cluster;
#[cfg(target_os = "linux")]
mod local;
mod names;
mod render;

use std::io::Write as _;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use cli::{Cli, Command};

fn main() -> ExitCode {
    #[cfg(target_os = "linux")]
    if let Some(err) = local::exec_gate_if_asked() {
        let _ = writeln!(std::io::stderr(), "error: {err:#}");
        return ExitCode::from(127);
    }
    let cli = Cli::parse();
    let log_level = match &cli.command {
        Some(Command::Local(args)) => args.output.log_level.clone(),
        None => cli.cluster.output.log_level.clone(),
        _ => "warn".to_string(),
    };
    env_logger::Builder::new().parse_filters(&log_level).format_timestamp(None).init();
    if let Err(err) = check_filters(&cli) {
        return usage_exit(&format!("{err:#}"));
    }
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            // A closed pipe (| head) is a normal end.
            if err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            if let Some(usage) = err.chain().find_map(|e| e.downcast_ref::<cli::UsageError>()) {
                return usage_exit(&usage.0);
            }
            let mut message = format!("error: {err}");
            for cause in err.chain().skip(1) {
                message.push_str(&format!("\n  caused by: {cause}"));
            }
            let _ = writeln!(std::io::stderr(), "{message}");
            ExitCode::FAILURE
        }
    }
}

/// Bad input: said once, with where to read more, exit code 2 (as clap does).
fn usage_exit(message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "error: {message}\n\nFor more information, try '--help'.");
    ExitCode::from(2)
}

/// The output filters, checked before anything connects or starts.
fn check_filters(cli: &Cli) -> anyhow::Result<()> {
    let output = match &cli.command {
        Some(Command::Local(args)) => &args.output,
        None => &cli.cluster.output,
        _ => return Ok(()),
    };
    render::Filter::new(&output.filter).map(drop)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Some(Command::Local(args)) => run_local(args),
        Some(Command::Cleanup(args)) => run_async(cluster::cleanup::run(args)),
        Some(Command::Reap(args)) => cluster::reaper::run(args),
        Some(Command::Completion { shell }) => {
            clap_complete::generate(shell, &mut Cli::command(), "kubectl-tlsspy", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        None if cli.cluster.targets.is_empty() && cli.cluster.selector.is_none() => {
            Cli::command().print_help()?;
            Ok(ExitCode::from(2))
        }
        None => run_async(cluster::run(cli.cluster)),
    }
}

fn run_async(future: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(future)
}

#[cfg(target_os = "linux")]
fn run_local(args: cli::LocalArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(local::run(args))
}

#[cfg(not(target_os = "linux"))]
fn run_local(_args: cli::LocalArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`kubectl tlsspy local` needs Linux (eBPF); on this system spy on pods in a cluster instead")
}
