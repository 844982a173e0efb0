//! Removing spy pods: a session's own at its end, and the ones earlier
//! sessions left behind (a plugin killed outright, a dropped network).

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;

use super::spy_pod;
use super::{connect, MANAGED_BY, MANAGED_BY_LABEL, SESSION_LABEL};
use crate::cli::CleanupArgs;

/// A spy pod still Pending after this long belongs to no live session: a
/// session gives up on a spy long before (--timeout).
const STALE_PENDING: Duration = Duration::from_secs(15 * 60);

fn managed() -> ListParams {
    ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"))
}

/// A spy pod no live session uses: it ended (its spy heard no heartbeat,
/// or hit its deadline), or it never started.
pub fn is_left_behind(pod: &Pod) -> bool {
    let status = pod.status.clone().unwrap_or_default();
    match status.phase.as_deref() {
        Some("Succeeded" | "Failed") => true,
        Some("Pending") | None => pod
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| {
                let created = std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.0.as_second()).ok()?);
                std::time::SystemTime::now().duration_since(created).ok()
            })
            .is_some_and(|age| age > STALE_PENDING),
        _ => false,
    }
}

/// Removes the left-behind spy pods of `namespace`; returns how many.
pub async fn remove_stale(api: &Api<Pod>) -> kube::Result<usize> {
    let pods = api.list(&managed()).await?;
    let mut removed = 0;
    for pod in pods.items.iter().filter(|p| is_left_behind(p)) {
        if let Some(name) = &pod.metadata.name {
            spy_pod::delete(api, name).await;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes every pod of one session (the safety net after its spies ended).
pub async fn remove_session(api: &Api<Pod>, session: &str) -> kube::Result<usize> {
    let params = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY},{SESSION_LABEL}={session}"));
    let pods = api.list(&params).await?;
    for name in pods.items.iter().filter_map(|p| p.metadata.name.as_deref()) {
        spy_pod::delete(api, name).await;
    }
    Ok(pods.items.len())
}

/// `kubectl tlsspy cleanup`.
pub async fn run(args: CleanupArgs) -> anyhow::Result<ExitCode> {
    // Spy pods live in the spy namespace, not the context's: -n names
    // another one (a session run with --spy-namespace).
    let (client, _context_ns) = connect(&args.kube).await?;
    let namespace = args.kube.namespace.clone().unwrap_or_else(|| super::rbac::DEFAULT_SPY_NAMESPACE.to_string());
    let api: Api<Pod> =
        if args.kube.all_namespaces { Api::all(client.clone()) } else { Api::namespaced(client.clone(), &namespace) };
    let pods = api.list(&managed()).await.map_err(|err| anyhow::anyhow!("cannot list spy pods: {err}"))?;
    let (mut removed, mut running) = (0, 0);
    for pod in &pods.items {
        let (Some(name), Some(ns)) = (pod.metadata.name.as_deref(), pod.metadata.namespace.as_deref()) else {
            continue;
        };
        if !args.all && !is_left_behind(pod) {
            running += 1;
            continue;
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        spy_pod::delete(&api, name).await;
        if args.kube.all_namespaces {
            println!("pod/{name} deleted (namespace {ns})");
        } else {
            println!("pod/{name} deleted");
        }
        removed += 1;
    }
    let scope =
        if args.kube.all_namespaces { "in any namespace".to_string() } else { format!("in namespace \"{namespace}\"") };
    if removed == 0 {
        eprintln!("tlsspy: no spy pods left behind {scope}");
    }
    if running > 0 {
        eprintln!(
            "tlsspy: {running} spy pod(s) {scope} still run: live sessions, or spies about to notice their plugin \
             is gone; --all removes them too"
        );
    }
    Ok(ExitCode::SUCCESS)
}
