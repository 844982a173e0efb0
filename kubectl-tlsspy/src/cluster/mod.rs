//! Cluster mode: resolve the targets, run one spy pod per node, feed their
//! records to the renderer, and remove the spy pods however the session ends.
//!
//! ```text
//! targets (list, then watch) ──▶ Session ──▶ spy task per node (spy_pod: create, wait, attach)
//!                                   ▲                         │
//!                                   └──── SpyEvent ◀──────────┘ records, log lines, end
//! ```

#![deny(unsafe_code)]

mod attach;
pub mod cleanup;
mod detach;
pub mod rbac;
pub mod reaper;
mod spy_pod;
mod targets;

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use futures::StreamExt as _;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use k8s_openapi::api::core::v1::Pod;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use spy_protocol::record::{PodRef, Record, Stats};
use spy_protocol::session::Command;
use tokio::sync::{mpsc, watch};

use crate::cli::{usage, ClusterArgs, KubeArgs, OutputFormat};
use crate::names::{self, NamesScope, SharedPeerNames};
use crate::render::queued::{QueuedRenderer, QUEUE_BYTES, QUEUE_RECORDS};
use crate::render::{stats_line, Renderer};
use spy_pod::SpyConfig;
pub use spy_pod::DEFAULT_IMAGE;
use targets::{PodState, PodTarget, Query, TargetEvent, TargetRef};

/// Every spy pod carries this label…
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "kubectl-tlsspy";
/// …and its session's id under this one.
pub const SESSION_LABEL: &str = "tlsspy.io/session";

/// activeDeadlineSeconds when the session has no --duration: the cluster
/// ends a spy after this long whatever happens (a plugin that vanished
/// with its reaper; a spy that lost its plugin ends itself much sooner).
const DEFAULT_DEADLINE: Duration = Duration::from_secs(4 * 3600);
/// With --duration: the deadline is the duration plus start-up plus this.
const DEADLINE_MARGIN: Duration = Duration::from_secs(60);
/// How long the end of a session waits for spies to say bye.
const STOP_WAIT: Duration = Duration::from_secs(10);
/// After Ctrl-C or SIGTERM (the pods already deleted), how long the last
/// records may take to reach a stdout that does not read.
const OUTPUT_WAIT_AFTER_SIGNAL: Duration = Duration::from_secs(2);

/// The spy pods' activeDeadlineSeconds: as asked, else --duration plus the
/// start-up timeout plus a margin, else a bounded default.
fn spy_deadline(asked: Option<Duration>, duration: Option<Duration>, startup: Duration) -> Duration {
    asked.unwrap_or_else(|| match duration {
        // Flags are bounded (cli::MAX_DURATION): the sum cannot overflow.
        Some(duration) => duration.saturating_add(startup).saturating_add(DEADLINE_MARGIN),
        None => DEFAULT_DEADLINE,
    })
}

/// What a spy task reports.
#[derive(Debug)]
pub enum SpyEvent {
    Attached {
        node: String,
        pod: String,
    },
    Record {
        node: String,
        record: Box<Record>,
        /// Its size on the wire: what it costs to hold until rendered.
        bytes: usize,
    },
    /// One line of the agent's log (stderr).
    Log {
        node: String,
        line: String,
    },
    /// The spy is over and its pod deleted. `Ok`: why it stopped.
    Ended {
        node: String,
        pod: Option<String>,
        outcome: Result<String, SpyFailure>,
    },
}

#[derive(Debug, Clone)]
pub struct SpyFailure {
    pub message: String,
    /// Every other spy would fail the same way (Pod Security, RBAC): end the session.
    pub fatal: bool,
}

/// A client as kubectl would make it: --kubeconfig, else $KUBECONFIG
/// (merged), else ~/.kube/config, else in-cluster; --context, --cluster and
/// --user pick within it. Returns the context's namespace too.
pub async fn connect(args: &KubeArgs) -> anyhow::Result<(Client, String)> {
    // kube's TLS needs one process-wide crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let options =
        KubeConfigOptions { context: args.context.clone(), cluster: args.cluster.clone(), user: args.user.clone() };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await.context("invalid kubeconfig")?
        }
        None => match Kubeconfig::read() {
            Ok(kubeconfig) => {
                Config::from_custom_kubeconfig(kubeconfig, &options).await.context("invalid kubeconfig")?
            }
            Err(read_err) => Config::incluster().map_err(|_| {
                anyhow::Error::new(read_err).context(
                    "no kubeconfig: set KUBECONFIG, pass --kubeconfig, or create ~/.kube/config (and not in a cluster)",
                )
            })?,
        },
    };
    let namespace = config.default_namespace.clone();
    let client = Client::try_from(config).context("cannot make a Kubernetes client")?;
    Ok((client, namespace))
}

fn session_id() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    hasher.write_u32(std::process::id());
    format!("{:012x}", hasher.finish() & 0xffff_ffff_ffff)
}

/// `kubectl tlsspy TARGET… [-l SELECTOR] [--follow]`.
pub async fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    let refs =
        args.targets.iter().map(|t| targets::parse_target(t).map_err(usage)).collect::<anyhow::Result<Vec<_>>>()?;
    if args.kube.all_namespaces && refs.iter().any(|r| matches!(r, TargetRef::Pod(_))) {
        return Err(usage("a pod cannot be named across all namespaces (-A): give -n NAMESPACE, or select with -l"));
    }
    let (client, context_ns) = connect(&args.kube).await?;
    let namespace = args.kube.namespace.clone().unwrap_or(context_ns);
    let target_ns = (!args.kube.all_namespaces).then(|| namespace.clone());
    let spy_ns = args.spy.spy_namespace.clone().unwrap_or_else(|| rbac::DEFAULT_SPY_NAMESPACE.to_string());
    let kinds: Vec<_> = refs
        .iter()
        .filter_map(|r| match r {
            TargetRef::Workload(kind, _) => Some(*kind),
            TargetRef::Pod(_) => None,
        })
        .collect();
    rbac::preflight(&client, target_ns.as_deref(), &spy_ns, &kinds).await?;
    let query =
        Query::resolve(&client, target_ns.as_deref(), &refs, args.selector.as_deref(), args.container.clone()).await?;
    let initial = query.initial(&client, args.follow).await?;
    // Before any spy pod exists: only targets whose memory the user could
    // read anyway go on.
    let mut access = rbac::TargetAccess::new(client.clone(), args.follow);
    let found = initial.len();
    let (initial, refused) = access.screen_initial(initial).await;
    for line in &refused {
        eprintln!("tlsspy: {line}");
    }
    if found > 0 && initial.is_empty() {
        bail!("tlsspy may not show any of the {found} target pod(s) to you (each is named above)");
    }
    rbac::ensure_spy_namespace(&client, &spy_ns, args.spy.spy_namespace.is_some()).await?;

    let spy_api: Api<Pod> = Api::namespaced(client.clone(), &spy_ns);
    match cleanup::remove_stale(&spy_api).await {
        Ok(0) => {}
        Ok(n) => eprintln!("tlsspy: removed {n} spy pod(s) left behind by earlier sessions"),
        Err(err) => log::debug!("cannot look for left-behind spy pods: {err}"),
    }

    let deadline = spy_deadline(args.spy.spy_deadline, args.duration, args.spy.timeout);
    let agent_args = agent_args(&args.output);
    let session_id = session_id();
    let names = SharedPeerNames::default();
    // Started before the first spy pod exists: from here on, whatever ends
    // this process, the session's pods go.
    let reaper = reaper::Reaper::spawn(&args.kube, std::slice::from_ref(&spy_ns), &session_id);
    let config = Arc::new(SpyConfig {
        image: args.spy.image.clone(),
        namespace: spy_ns.clone(),
        session: session_id,
        startup_timeout: args.spy.timeout,
        heartbeat_timeout: args.spy.heartbeat_timeout,
        silence_timeout: args.spy.silence_timeout,
        deadline,
        agent_args,
        memory_budget: args.output.memory_budget,
        ring_buffer_mib: args.output.ring_buffer_mib,
        log_level: args.output.log_level.clone(),
    });
    let mut renderer = QueuedRenderer::spawn(Renderer::stdout(&args.output)?, QUEUE_RECORDS, QUEUE_BYTES)?;
    // Peer names stay current for the whole session (pods come and go with --follow).
    let (notices_tx, mut notices) = mpsc::unbounded_channel();
    let names_watch = tokio::spawn(names::keep_current(
        client.clone(),
        Arc::clone(&names),
        NamesScope { fallback: target_ns.clone() },
        notices_tx,
    ));
    let mut session = Session::new(client.clone(), config.clone(), args.follow, names);
    for pod in &initial {
        session.add(pod);
    }
    if initial.is_empty() {
        session.say("tlsspy: no target pod runs yet; waiting for one (--follow)".to_string());
    }

    let mut changes = query.watch(&client).boxed();
    let stop_after = sleep_or_never(args.duration);
    tokio::pin!(stop_after);
    let signal = stop_signal();
    tokio::pin!(signal);
    let mut output_error = None;
    let mut signalled = false;
    let reason = loop {
        tokio::select! {
            Some(event) = session.events_rx.recv() => if let Err(err) = session.handle(event, &mut renderer) {
                output_error = Some(err);
                break "the output closed".to_string();
            },
            Some(change) = changes.next() => match access.screen(change).await {
                rbac::Screened::Pass(change) => session.target_changed(change),
                rbac::Screened::Refused(line) => session.say(line),
                rbac::Screened::Quiet => {}
            },
            Some(notice) = notices.recv() => session.say(notice),
            reason = &mut signal => {
                signalled = true;
                break reason;
            }
            () = &mut stop_after => break "--duration elapsed".to_string(),
        }
        if let Some(reason) = session.over() {
            break reason;
        }
    };
    log::info!("ending the session: {reason}");
    session.stop(&mut renderer).await;
    names_watch.abort();
    match cleanup::remove_session(&spy_api, &config.session).await {
        // Without "done" the reaper tries once more when this process ends.
        Ok(_) => {
            if let Some(reaper) = reaper {
                reaper.done();
            }
        }
        Err(err) => eprintln!("tlsspy: cannot remove the spy pods ({err}); run `kubectl tlsspy cleanup -n {spy_ns}`"),
    }
    let dropped = renderer.dropped();
    // The pods are gone: what is left is our own output. A signal's end
    // does not wait long for a stdout that nobody reads.
    let wait = signalled.then_some(OUTPUT_WAIT_AFTER_SIGNAL);
    let finished = tokio::task::spawn_blocking(move || renderer.finish(wait)).await.ok().flatten();
    if let Some(err) = output_error {
        return Err(anyhow::Error::new(err).context("cannot write the records"));
    }
    let mut stdout = std::io::stdout();
    match finished {
        Some((renderer, written)) => {
            written.context("cannot write the records")?;
            if !args.output.no_summary && args.output.format == OutputFormat::Live {
                if let Some(table) = renderer.summary_table() {
                    writeln!(stdout, "{table}").context("cannot write the summary")?;
                }
            }
        }
        None => session.say("tlsspy: stdout did not take the last records; left them".into()),
    }
    if !session.node_stats.is_empty() || dropped > 0 {
        let mut stats = session.stats();
        stats.dropped_records += dropped;
        let _ = writeln!(std::io::stderr(), "{}", stats_line(&stats));
    }
    Ok(if session.failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// The flags each spy pod's agent gets from the plugin's output options.
fn agent_args(output: &crate::cli::OutputArgs) -> Vec<String> {
    let mut agent_args = vec!["--max-body".to_string(), output.max_body.to_string()];
    if output.show_secrets {
        agent_args.push("--show-secrets".into());
    }
    if output.raw {
        agent_args.push("--raw".into());
    }
    // The end line's loss hint names this flag: it must reach the spies.
    agent_args.extend(["--ring-buffer-mib".to_string(), output.ring_buffer_mib.to_string()]);
    agent_args
}

async fn sleep_or_never(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}

/// Ctrl-C, or SIGTERM where there is one.
async fn stop_signal() -> String {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                _ = tokio::signal::ctrl_c() => "interrupted".to_string(),
                _ = term.recv() => "terminated".to_string(),
            };
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    "interrupted".to_string()
}

/// One node's spy, as the session sees it.
struct NodeSpy {
    commands: mpsc::UnboundedSender<Command>,
    attached: bool,
    ended: bool,
    /// "spying on …" lines to show once the spy is attached.
    announcements: Vec<String>,
}

struct Session {
    client: Client,
    config: Arc<SpyConfig>,
    follow: bool,
    spies: HashMap<String, NodeSpy>,
    events_tx: mpsc::Sender<SpyEvent>,
    events_rx: mpsc::Receiver<SpyEvent>,
    stop_tx: watch::Sender<bool>,
    /// (pod uid, container id) already handed to a spy.
    sent: HashSet<(String, String)>,
    /// Target pods in the session (uid → ns/name).
    live: HashMap<String, String>,
    progress: MultiProgress,
    /// Last stats (or bye stats) per node.
    node_stats: HashMap<String, Stats>,
    /// Names the peers of every record on its way to the renderer.
    names: SharedPeerNames,
    failed: bool,
    fatal: Option<String>,
}

impl Session {
    fn new(client: Client, config: Arc<SpyConfig>, follow: bool, names: SharedPeerNames) -> Session {
        let (events_tx, events_rx) = mpsc::channel(256);
        let (stop_tx, _) = watch::channel(false);
        let progress = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        Session {
            client,
            config,
            follow,
            spies: HashMap::new(),
            events_tx,
            events_rx,
            stop_tx,
            sent: HashSet::new(),
            live: HashMap::new(),
            progress,
            node_stats: HashMap::new(),
            names,
            failed: false,
            fatal: None,
        }
    }

    /// A line on stderr that does not tear the progress spinners.
    fn say(&self, line: String) {
        if self.progress.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.progress.println(line);
        }
    }

    fn start_spy(&mut self, node: &str) -> &mut NodeSpy {
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let bar = self.progress.add(ProgressBar::new_spinner());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        tokio::spawn(spy_pod::run(
            self.client.clone(),
            self.config.clone(),
            node.to_string(),
            commands_rx,
            self.stop_tx.subscribe(),
            self.events_tx.clone(),
            bar,
        ));
        self.spies.entry(node.to_string()).or_insert(NodeSpy {
            commands,
            attached: false,
            ended: false,
            announcements: Vec::new(),
        })
    }

    /// Hands a running target pod's new containers to its node's spy,
    /// starting that spy if the node has none.
    fn add(&mut self, pod: &PodTarget) {
        self.live.insert(pod.uid.clone(), format!("{}/{}", pod.namespace, pod.name));
        for (container, id) in &pod.containers {
            if !self.sent.insert((pod.uid.clone(), id.clone())) {
                continue;
            }
            let command = Command::Container {
                id: id.clone(),
                pod_uid: pod.uid.clone(),
                pod: PodRef {
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                    container: Some(container.clone()),
                },
            };
            if let Err(err) = command.line() {
                self.say(format!(
                    "tlsspy: cannot spy on {}/{} (container {container}): {err}",
                    pod.namespace, pod.name
                ));
                continue;
            }
            if !self.spies.contains_key(&pod.node) {
                self.start_spy(&pod.node);
            }
            let Some(spy) = self.spies.get_mut(&pod.node) else { continue };
            if spy.ended || spy.commands.send(command).is_err() {
                let message = format!(
                    "tlsspy: cannot spy on {}/{} (container {container}): the spy on node {} has ended",
                    pod.namespace, pod.name, pod.node
                );
                self.say(message);
                continue;
            }
            let message = format!(
                "tlsspy: spying on {}/{} (container {container}) on node {}",
                pod.namespace, pod.name, pod.node
            );
            if spy.attached {
                self.say(message);
            } else {
                spy.announcements.push(message);
            }
        }
    }

    fn target_changed(&mut self, change: TargetEvent) {
        match change {
            TargetEvent::Changed(PodState::Ready(pod), uid) => {
                // Without --follow only the first pods count (their restarts too).
                if self.follow || self.live.contains_key(&uid) {
                    self.add(&pod);
                }
            }
            TargetEvent::Changed(PodState::Waiting(why), uid) => {
                if why != "being deleted" && !why.starts_with("Succeeded") && !why.starts_with("Failed") {
                    return;
                }
                self.let_go(&uid);
            }
            TargetEvent::Changed(PodState::Unsuitable(_), _) => {}
            TargetEvent::Gone(uid) => self.let_go(&uid),
            TargetEvent::Trouble(err) => log::warn!("watching the targets: {err}"),
        }
    }

    /// A target pod went away: its processes are gone, and so is the spy's
    /// interest in them.
    fn let_go(&mut self, uid: &str) {
        if let Some(name) = self.live.remove(uid) {
            self.sent.retain(|(u, _)| u != uid);
            self.say(format!("tlsspy: {name} is gone"));
        }
    }

    /// Takes one spy event; never waits on our stdout (the renderer drops
    /// what it cannot take). Err: our stdout is closed.
    fn handle<W: std::io::Write + Send>(
        &mut self,
        event: SpyEvent,
        renderer: &mut QueuedRenderer<W>,
    ) -> std::io::Result<()> {
        match event {
            SpyEvent::Attached { node, pod } => {
                self.say(format!("tlsspy: spy {}/{pod} attached on node {node}", self.config.namespace));
                let announcements = match self.spies.get_mut(&node) {
                    Some(spy) => {
                        spy.attached = true;
                        std::mem::take(&mut spy.announcements)
                    }
                    None => Vec::new(),
                };
                for line in announcements {
                    self.say(line);
                }
            }
            SpyEvent::Record { node, mut record, bytes } => {
                self.names.read().unwrap_or_else(|poisoned| poisoned.into_inner()).enrich(&mut record);
                match &*record {
                    Record::Stats(stats) => {
                        self.node_stats.insert(node, stats.clone());
                    }
                    Record::Bye(bye) => {
                        self.node_stats.insert(node, bye.stats.clone());
                    }
                    _ => {}
                }
                renderer.record(*record, bytes)?;
            }
            SpyEvent::Log { node, line } => {
                // The agent's fatal error ("tlsspy-agent: …") becomes the spy's
                // failure message: not shown twice.
                let fatal = line.starts_with("tlsspy-agent:");
                let important = line.contains("ERROR") || line.contains("WARN");
                if !fatal && (important || log::log_enabled!(log::Level::Info)) {
                    // Agent logs may quote process names and wire data.
                    self.say(format!("{node}: {}", crate::render::terminal_safe(&line)));
                }
            }
            SpyEvent::Ended { node, pod, outcome } => {
                if let Some(spy) = self.spies.get_mut(&node) {
                    spy.ended = true;
                }
                match outcome {
                    Ok(reason) => log::info!("spy on node {node} ({}) ended: {reason}", pod.unwrap_or_default()),
                    Err(failure) => {
                        self.failed = true;
                        self.say(format!("error: {}", crate::render::terminal_safe(&failure.message)));
                        if failure.fatal {
                            self.fatal = Some(failure.message);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Why the session should end now, if it should.
    fn over(&self) -> Option<String> {
        if self.fatal.is_some() {
            return Some("a spy cannot run here".into());
        }
        if !self.spies.is_empty() && self.spies.values().all(|s| s.ended) {
            return Some("no spy is left".into());
        }
        if !self.follow && self.live.is_empty() {
            return Some("every target pod is gone".into());
        }
        None
    }

    /// Asks every spy to stop (stdin EOF), shows their last records, and
    /// waits for their pods to be deleted. A second Ctrl-C cuts the wait short.
    async fn stop<W: std::io::Write + Send>(&mut self, renderer: &mut QueuedRenderer<W>) {
        let _ = self.stop_tx.send(true);
        let until = tokio::time::Instant::now() + STOP_WAIT;
        let signal = stop_signal();
        tokio::pin!(signal);
        while self.spies.values().any(|s| !s.ended) {
            tokio::select! {
                event = self.events_rx.recv() => match event {
                    // A closed stdout: the spies still go (the caller reports it).
                    Some(event) => if self.handle(event, renderer).is_err() {
                        continue;
                    },
                    None => break,
                },
                () = tokio::time::sleep_until(until) => break,
                _ = &mut signal => break,
            }
        }
        if let Some(fatal) = &self.fatal {
            // Said already; the exit code carries it.
            log::debug!("session ended on: {fatal}");
        }
    }

    /// The session's counters: the last ones of every spy, summed.
    fn stats(&self) -> Stats {
        self.node_stats.values().sum()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.stop_tx.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the loss hint tells people to raise reaches the spies.
    #[test]
    fn the_ring_buffer_size_reaches_the_agent() {
        use clap::Parser as _;
        let cli = crate::cli::Cli::try_parse_from(["kubectl-tlsspy", "pod/x", "--ring-buffer-mib", "128", "--raw"])
            .expect("parse");
        let args = agent_args(&cli.cluster.output);
        let at = args.iter().position(|a| a == "--ring-buffer-mib").expect("passed");
        assert_eq!(args[at + 1], "128");
        assert!(args.contains(&"--raw".to_string()));
        let cli = crate::cli::Cli::try_parse_from(["kubectl-tlsspy", "pod/x"]).expect("parse");
        assert!(agent_args(&cli.cluster.output).windows(2).any(|w| w == ["--ring-buffer-mib", "32"]));
        assert!(crate::cli::Cli::try_parse_from(["kubectl-tlsspy", "pod/x", "--ring-buffer-mib", "3"]).is_err());
    }

    #[test]
    fn spy_pods_have_a_deadline_that_fits_the_session() {
        let (m, startup) = (|s: u64| Duration::from_secs(s * 60), Duration::from_secs(120));
        // --duration 10m: ten minutes, the start-up timeout, one minute.
        assert_eq!(spy_deadline(None, Some(m(10)), startup), m(13));
        assert_eq!(spy_deadline(None, None, startup), Duration::from_secs(4 * 3600));
        assert_eq!(spy_deadline(Some(m(1)), Some(m(10)), startup), m(1));
        assert_eq!(spy_deadline(None, Some(Duration::MAX), startup), Duration::MAX);
    }

    #[test]
    fn session_ids_are_label_values() {
        let id = session_id();
        assert_eq!(id.len(), 12);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
