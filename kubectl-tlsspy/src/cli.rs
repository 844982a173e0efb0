//! The command line, with kubectl's conventions.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::cluster::DEFAULT_IMAGE;

const EXAMPLES: &str = "\
Examples:
  # The TLS traffic of one pod, in clear text
  kubectl tlsspy pod/api-7d9c5-x2x4q

  # Every pod of a deployment, and the pods a rollout or scale-up adds later
  kubectl tlsspy deploy/api --follow

  # Pods by label in another namespace, as JSON lines, for one minute
  kubectl tlsspy -n shop -l app=checkout -o json --duration 1m

  # Run the spy pods in a namespace that allows privileged pods
  kubectl tlsspy pod/web-0 --spy-namespace tlsspy

  # Remove spy pods an earlier session left behind
  kubectl tlsspy cleanup

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

    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `kubectl tlsspy TARGET…`: spy on pods of a cluster.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// What to spy on: pod/NAME (or just NAME), deploy/NAME, sts/NAME, ds/NAME,
    /// rs/NAME or job/NAME (repeatable).
    #[arg(value_name = "TARGET")]
    pub targets: Vec<String>,

    /// Spy on the pods matching this label selector (e.g. app=api,tier!=db).
    #[arg(short = 'l', long, value_name = "SELECTOR", value_parser = parse_selector)]
    pub selector: Option<String>,

    /// Only this container of the target pods (default: all of them).
    #[arg(short = 'c', long, value_name = "NAME")]
    pub container: Option<String>,

    /// Keep watching: pods that start matching later are spied on as they
    /// start, pods that go away are let go.
    #[arg(short = 'f', long)]
    pub follow: bool,

    /// Stop after this long (e.g. 30s, 5m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub kube: KubeArgs,

    #[command(flatten)]
    pub spy: SpyArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// Which cluster, as kubectl's own flags say it (KUBECONFIG included).
#[derive(Debug, Args, Clone, Default)]
pub struct KubeArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// The kubeconfig context to use.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,

    /// The kubeconfig cluster to use.
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,

    /// The kubeconfig user to use.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// The namespace of the targets (default: the context's namespace).
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,

    /// Look for targets in every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
}

/// How the spy pods run.
#[derive(Debug, Args, Clone)]
pub struct SpyArgs {
    /// The spy image.
    #[arg(long, value_name = "IMAGE", default_value = DEFAULT_IMAGE)]
    pub image: String,

    /// Where the spy pods run (default: `tlsspy`, created when missing if
    /// you may). Needs a namespace that allows privileged pods.
    #[arg(long, value_name = "NAMESPACE")]
    pub spy_namespace: Option<String>,

    /// How long a spy pod may take to start (image pull included).
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    pub timeout: Duration,

    /// A spy that hears nothing from the plugin for this long ends itself.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_timeout, hide = true)]
    pub heartbeat_timeout: Duration,

    /// The plugin gives up on a spy that sends nothing for this long (a
    /// network cut, a stuck spy) and deletes its pod. An idle spy sends a
    /// stats record every third of --heartbeat-timeout.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_timeout, hide = true)]
    pub silence_timeout: Duration,

    /// The spy pods' activeDeadlineSeconds: the cluster stops them after this
    /// long whatever happens (default: --duration plus --timeout plus a
    /// minute, else 4h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, hide = true)]
    pub spy_deadline: Option<Duration>,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once per run")]
pub enum Command {
    /// Spy on processes of this machine (Linux, root), no cluster needed.
    #[command(after_help = EXAMPLES)]
    Local(LocalArgs),
    /// Remove spy pods that earlier sessions left behind.
    Cleanup(CleanupArgs),
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The reaper a cluster session starts (not for people): deletes the
    /// session's spy pods if the plugin dies without doing it.
    #[command(name = crate::cluster::reaper::SUBCOMMAND, hide = true)]
    Reap(ReapArgs),
}

#[derive(Debug, Args)]
pub struct ReapArgs {
    /// The session whose pods to delete.
    #[arg(long, value_name = "ID")]
    pub session: String,

    /// Where the session's spy pods run (repeatable).
    #[arg(long = "spy-namespace", value_name = "NAMESPACE", required = true)]
    pub namespaces: Vec<String>,

    #[command(flatten)]
    pub kube: KubeArgs,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Also remove spy pods that are still running (this ends live sessions).
    #[arg(long)]
    pub all: bool,

    #[command(flatten)]
    pub kube: KubeArgs,
}

#[derive(Debug, Args)]
pub struct LocalArgs {
    /// A running process to spy on (repeatable).
    #[arg(long = "pid", value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
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

    /// Body bytes kept per message, at most 16MiB (the true size is always shown).
    #[arg(long, value_name = "BYTES", default_value_t = spy_protocol::DEFAULT_MAX_BODY,
          value_parser = spy_protocol::limits::parse_max_body)]
    pub max_body: usize,

    /// Memory the spy may hold for connections and packet reassembly (e.g.
    /// 256MiB); past it the least recently used connections are forgotten,
    /// and counted. A spy pod's memory limit is this plus 96MiB.
    #[arg(long, value_name = "SIZE", default_value = DEFAULT_MEMORY_BUDGET,
          value_parser = spy_protocol::limits::parse_memory_budget)]
    pub memory_budget: u64,

    /// Show Authorization, Cookie and other secret header values.
    #[arg(long)]
    pub show_secrets: bool,

    /// No summary table at exit.
    #[arg(long)]
    pub no_summary: bool,

    /// Write the spy's own log to stderr at this level (error, warn, info, debug, trace).
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    pub log_level: String,

    /// Ring buffer between kernel and spy, in MiB (a power of two, at most
    /// 2048): raise it when the end line says events were lost.
    #[arg(long, value_name = "MIB", default_value = "32", value_parser = spy_protocol::limits::parse_ring_buffer_mib)]
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
    // Deadlines are computed from these (now + duration, a pod's
    // activeDeadlineSeconds): a bound keeps every sum representable.
    if seconds > MAX_DURATION.as_secs_f64() {
        return Err(format!(
            "`{text}` is longer than tlsspy allows ({} days at most)",
            MAX_DURATION.as_secs() / 86_400
        ));
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{text}` is not a duration like 30s or 5m"))
}

/// Bad input a person typed: printed as is, exit code 2, as clap's own.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Turns an error about what was typed into a [`UsageError`].
pub fn usage(err: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(UsageError(err.to_string()))
}

/// A label selector as kubectl takes it: `key`, `!key`, `key=value`,
/// `key==value`, `key!=value`, `key in (a,b)`, `key notin (a,b)`, joined by
/// commas. Checked here so a typo is a usage error, not an API error later.
pub fn parse_selector(text: &str) -> Result<String, String> {
    let bad = |why: String| format!("`{text}` is not a label selector like app=api,tier!=db: {why}");
    if text.trim().is_empty() {
        return Err(bad("it is empty".into()));
    }
    for requirement in split_outside_parens(text) {
        check_requirement(requirement.trim()).map_err(bad)?;
    }
    Ok(text.to_string())
}

/// Splits at commas that are not inside `( … )`.
fn split_outside_parens(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn check_requirement(req: &str) -> Result<(), String> {
    if req.is_empty() {
        return Err("an empty requirement (two commas?)".into());
    }
    if let Some(key) = req.strip_prefix('!') {
        return check_label_key(key.trim());
    }
    for op in ["==", "!=", "="] {
        if let Some((key, value)) = req.split_once(op) {
            check_label_key(key.trim())?;
            return check_label_value(value.trim());
        }
    }
    for op in [" notin ", " in "] {
        if let Some((key, set)) = req.split_once(op) {
            check_label_key(key.trim())?;
            let set = set.trim();
            let Some(inner) = set.strip_prefix('(').and_then(|s| s.strip_suffix(')')) else {
                return Err(format!("`{set}` should be a list of values in parentheses, like (a,b)"));
            };
            return inner.split(',').try_for_each(|v| check_label_value(v.trim()));
        }
    }
    check_label_key(req)
}

/// `[prefix/]name`: a DNS subdomain prefix, a name of at most 63 characters.
fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let ok = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !ok {
            return Err(format!("`{prefix}` is not a DNS name (the prefix of label key `{key}`)"));
        }
    }
    if name.is_empty() || !is_label_token(name) {
        return Err(format!("`{key}` is not a label key (letters, digits, -, _ and ., at most 63)"));
    }
    Ok(())
}

fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_token(value) {
        Ok(())
    } else {
        Err(format!("`{value}` is not a label value (letters, digits, -, _ and ., at most 63)"))
    }
}

/// At most 63 of [A-Za-z0-9-_.], starting and ending with a letter or digit.
fn is_label_token(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() <= 63
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// The longest duration any flag takes.
const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// The longest heartbeat or silence timeout: the agent takes at most a day.
const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// A timeout between a second and a day: the agent counts its heartbeat
/// timeout in whole seconds, and at most a day.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_duration(text)?;
    if timeout < Duration::from_secs(1) || timeout > MAX_TIMEOUT {
        return Err(format!("`{}` is not a timeout between 1s and 24h", text.trim()));
    }
    Ok(timeout)
}

/// `--memory-budget`'s default as `--help` shows it
/// (spy_protocol::limits::DEFAULT_MEMORY_BUDGET; a test holds them equal).
const DEFAULT_MEMORY_BUDGET: &str = "256MiB";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_flags_have_their_bounds() {
        let cli = Cli::try_parse_from(["kubectl-tlsspy", "pod/x"]).expect("defaults");
        assert_eq!(cli.cluster.output.memory_budget, spy_protocol::limits::DEFAULT_MEMORY_BUDGET);
        assert_eq!(cli.cluster.output.max_body, spy_protocol::DEFAULT_MAX_BODY);
        let err = Cli::try_parse_from(["kubectl-tlsspy", "pod/x", "--max-body", "18446744073709551615"])
            .expect_err("an uncapped body");
        assert!(err.to_string().contains("16MiB"), "{err}");
        let local = Cli::try_parse_from(["kubectl-tlsspy", "local", "--memory-budget", "64Mi", "--pid", "1"]);
        match local.expect("local").command {
            Some(Command::Local(args)) => assert_eq!(args.output.memory_budget, 64 << 20),
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["kubectl-tlsspy", "pod/x", "--memory-budget", "1MiB"]).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("5 parsecs").is_err());
        // Too large for a Duration, or for a deadline: an error, never a panic.
        for huge in ["99999999999999999999s", "1e300", "366d", "8785h", "18446744073709551616"] {
            assert!(parse_duration(huge).is_err(), "{huge}");
        }
        assert_eq!(parse_duration("8760h"), Ok(Duration::from_secs(365 * 86_400)));
        assert_eq!(parse_timeout("3s"), Ok(Duration::from_secs(3)));
        for bad in ["0s", "500ms", "25h", "99999999999999999999s"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn selectors_as_kubectl_takes_them() {
        for good in [
            "app=api",
            "app==api,tier!=db",
            "app",
            "!canary",
            "env in (prod, staging),tier notin (db)",
            "app.kubernetes.io/name=web",
            "a=",
        ] {
            assert_eq!(parse_selector(good).as_deref(), Ok(good), "{good}");
        }
        for bad in ["", "app===x", "a b", "!!!", "app=a b", "app,,tier", "env in prod", "Bad_/x=1", "x=-y-"] {
            let err = parse_selector(bad).expect_err(bad);
            assert!(err.contains("is not a label selector"), "{err}");
        }
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
    fn cluster_targets_and_kubectl_flags() {
        let cli = Cli::try_parse_from([
            "kubectl-tlsspy",
            "pod/foo",
            "deploy/bar",
            "-n",
            "shop",
            "--context",
            "prod",
            "-c",
            "app",
            "--follow",
        ])
        .expect("parse");
        assert!(cli.command.is_none());
        assert_eq!(cli.cluster.targets, ["pod/foo", "deploy/bar"]);
        assert_eq!(cli.cluster.kube.namespace.as_deref(), Some("shop"));
        assert_eq!(cli.cluster.kube.context.as_deref(), Some("prod"));
        assert_eq!(cli.cluster.container.as_deref(), Some("app"));
        assert!(cli.cluster.follow);
        assert_eq!(cli.cluster.spy.image, DEFAULT_IMAGE);
        assert!(DEFAULT_IMAGE.ends_with(&format!(":v{}", env!("CARGO_PKG_VERSION"))));

        let cli = Cli::try_parse_from(["kubectl-tlsspy", "-l", "app=api", "-A", "-o", "json"]).expect("parse");
        assert_eq!(cli.cluster.selector.as_deref(), Some("app=api"));
        assert!(cli.cluster.kube.all_namespaces);
        assert!(Cli::try_parse_from(["kubectl-tlsspy", "-A", "-n", "x", "foo"]).is_err());

        let cli = Cli::try_parse_from(["kubectl-tlsspy", "cleanup", "--kubeconfig", "/k", "-A"]).expect("parse");
        let Some(Command::Cleanup(args)) = cli.command else { panic!("not cleanup") };
        assert!(args.kube.all_namespaces);

        let cli = Cli::try_parse_from([
            "kubectl-tlsspy",
            "__reap",
            "--session",
            "abc",
            "--spy-namespace",
            "tlsspy",
            "--context",
            "prod",
        ])
        .expect("parse");
        let Some(Command::Reap(args)) = cli.command else { panic!("not the reaper") };
        assert_eq!((args.session.as_str(), args.namespaces.as_slice()), ("abc", &["tlsspy".to_string()][..]));
        assert_eq!(args.kube.context.as_deref(), Some("prod"));
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
