//! The command line, with kubectl's conventions.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  # Spy on a local process (no cluster needed; root)
  sudo kubectl-tlsspy local --pid 1234

  # Start a command and spy on it from its first byte
  sudo kubectl-tlsspy local -- curl -s https://example.com/

  # The same, as JSON lines
  sudo kubectl-tlsspy local -o json -- python3 client.py
";

#[derive(Debug, Parser)]
#[command(
    name = "kubectl-tlsspy",
    bin_name = "kubectl tlsspy",
    version,
    about = "Show the TLS traffic of Kubernetes pods (or local processes) in clear text",
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true,
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once per run")]
pub enum Command {
    /// Spy on processes of this machine (Linux, root), no cluster needed.
    #[command(after_help = EXAMPLES)]
    Local(LocalArgs),
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct LocalArgs {
    /// A running process to spy on (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Do not follow the processes that targets start.
    #[arg(long)]
    pub no_follow_children: bool,

    /// A command to start and spy on from its first TLS call. With -o json
    /// its standard output goes to standard error, keeping the record stream clean.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,

    /// Stop after this long (e.g. 30s, 5m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Live lines for people.
    Live,
    /// The record stream, one JSON object per line.
    Json,
}

#[derive(Debug, Args, Clone)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "live")]
    pub format: OutputFormat,

    /// Show payloads in full instead of folding long ones.
    #[arg(long)]
    pub full: bool,

    /// No protocol parsing: show the plaintext exactly as it moved, as chunks.
    #[arg(long)]
    pub raw: bool,

    /// Body bytes kept per message (the true size is always shown).
    #[arg(long, value_name = "BYTES", default_value = "65536")]
    pub max_body: usize,

    /// Show Authorization, Cookie and other secret header values.
    #[arg(long)]
    pub show_secrets: bool,

    /// No summary table at exit.
    #[arg(long)]
    pub no_summary: bool,

    /// Write the spy's own log to stderr at this level (error, warn, info, debug, trace).
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    pub log_level: String,

    /// Ring buffer between kernel and spy, in MiB (a power of two).
    #[arg(long, value_name = "MIB", default_value = "16", hide = true)]
    pub ring_buffer_mib: u32,

    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Debug, Args, Clone, Default)]
pub struct FilterArgs {
    /// Only exchanges with this method (repeatable), e.g. GET.
    #[arg(long = "method", value_name = "METHOD")]
    pub methods: Vec<String>,
    /// Only exchanges with this status or class (repeatable): 404, 5xx.
    #[arg(long = "status", value_name = "STATUS")]
    pub statuses: Vec<String>,
    /// Only exchanges whose host (authority) contains this text.
    #[arg(long, value_name = "TEXT")]
    pub host: Option<String>,
    /// Only exchanges whose path contains this text.
    #[arg(long, value_name = "TEXT")]
    pub path: Option<String>,
    /// Only exchanges whose path matches this regular expression.
    #[arg(long, value_name = "REGEX")]
    pub path_regex: Option<String>,
    /// Only this protocol (repeatable): http1, http2, grpc.
    #[arg(long = "protocol", value_name = "PROTOCOL")]
    pub protocols: Vec<String>,
    /// Only TLS handshakes: every TLS connection, decrypted (open lock) or
    /// not (closed lock, with the reason), without its plaintext.
    #[arg(long)]
    pub tls_only: bool,
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("`{text}` is not a duration like 30s or 5m"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (use ms, s, m or h)")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("`{text}` is not a duration like 30s or 5m"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn local_takes_a_command_after_double_dash() {
        let cli = Cli::try_parse_from(["kubectl-tlsspy", "local", "-o", "json", "--", "curl", "-s", "https://x/"])
            .expect("parse");
        let Some(Command::Local(args)) = cli.command else { panic!("not local") };
        assert_eq!(args.command, ["curl", "-s", "https://x/"]);
        assert_eq!(args.output.format, OutputFormat::Json);
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
