//! Runs the test API server standalone: prints its URL, writes a kubeconfig,
//! and serves until Ctrl-C. Handy for poking at it with kubectl.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use tlsspy_tests::apiserver::{ApiServer, Image, Rule};

#[derive(Parser)]
#[command(about = "A test Kubernetes API server whose kubelet runs pods as local processes")]
struct Args {
    /// Where to write the admin kubeconfig.
    #[arg(long, default_value = "tlsspy-test.kubeconfig")]
    kubeconfig: PathBuf,
    /// Image mappings, NAME=EXECUTABLE (the image's entrypoint), or NAME=host
    /// (containers name host programs in their command). Repeatable.
    #[arg(long = "image", value_name = "NAME=EXECUTABLE")]
    images: Vec<String>,
    /// Extra nodes (there is always at least one).
    #[arg(long = "node")]
    nodes: Vec<String>,
    /// Namespaces to create, NAME or NAME=LEVEL with LEVEL the enforced Pod Security level.
    #[arg(long = "namespace")]
    namespaces: Vec<String>,
    /// Users allowed only to read pods, for trying RBAC denials; a kubeconfig
    /// `<kubeconfig>.<user>` is written for each.
    #[arg(long = "viewer")]
    viewers: Vec<String>,
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut b = ApiServer::builder();
    for spec in &args.images {
        let (name, exe) = spec.split_once('=').with_context(|| format!("--image {spec}: expected NAME=EXECUTABLE"))?;
        b = b.image(name, if exe == "host" { Image::host() } else { Image::executable(exe) });
    }
    for n in &args.nodes {
        b = b.node(n);
    }
    for ns in &args.namespaces {
        b = match ns.split_once('=') {
            Some((name, level)) => b.namespace(name, &[("pod-security.kubernetes.io/enforce", level)]),
            None => b.namespace(ns, &[]),
        };
    }
    for v in &args.viewers {
        b = b.user(v, &[Rule::new(&["get", "list", "watch"], &["pods", "pods/log"])]);
    }
    let server = b.start().context("starting the test API server")?;
    server.write_kubeconfig("admin", &args.kubeconfig).context("writing the kubeconfig")?;
    for v in &args.viewers {
        let path = PathBuf::from(format!("{}.{v}", args.kubeconfig.display()));
        server.write_kubeconfig(v, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("serving {} (kubeconfig {})", server.url(), args.kubeconfig.display());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(tokio::signal::ctrl_c()).context("waiting for Ctrl-C")?;
    drop(server);
    Ok(())
}

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
