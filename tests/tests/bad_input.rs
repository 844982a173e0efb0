//! Bad input, run against the real binaries: every row is a usage error
//! (exit code 2) with a message that says what is wrong, and nothing
//! panics. None of them gets as far as a cluster or the kernel: the
//! kubeconfig points nowhere, so a row that slipped past the checks would
//! fail on it (exit 1) and be caught here.

use std::process::{Command, Stdio};

use tlsspy_tests::support::workspace_bin;

/// (arguments, what stderr must say).
const PLUGIN: &[(&[&str], &str)] = &[
    // Durations too large for a Duration, or for a deadline computed from one.
    (&["pod/x", "--duration", "99999999999999999999s"], "longer than tlsspy allows (365 days at most)"),
    (&["pod/x", "--duration", "366d"], "unknown unit `d`"),
    (&["pod/x", "--duration", "1e300"], "unknown unit `e300`"),
    (&["pod/x", "--duration", "5parsecs"], "unknown unit `parsecs`"),
    (&["pod/x", "--duration", "-5s"], "unexpected argument '-5'"),
    (&["pod/x", "--timeout", "99999999999999999999s"], "365 days at most"),
    (&["pod/x", "--spy-deadline", "8785h"], "365 days at most"),
    (&["pod/x", "--heartbeat-timeout", "0s"], "not a timeout between 1s and 24h"),
    (&["pod/x", "--heartbeat-timeout", "25h"], "not a timeout between 1s and 24h"),
    (&["pod/x", "--silence-timeout", "500ms"], "not a timeout between 1s and 24h"),
    (&["local", "--duration", "99999999999999999999s", "--", "true"], "365 days at most"),
    // Sizes.
    (&["pod/x", "--max-body", "18446744073709551616"], "is not a size like"),
    (&["pod/x", "--max-body", "17MiB"], "over the largest body tlsspy keeps, 16MiB"),
    (&["pod/x", "--memory-budget", "1KiB"], "below the smallest memory budget, 16MiB"),
    (&["pod/x", "--memory-budget", "lots"], "unknown unit `lots`"),
    (&["local", "--pid", "1", "--ring-buffer-mib", "3"], "is not a power of two from 1 to 2048"),
    // Selectors, targets, namespaces.
    (&["-l", "app===x"], "is not a label selector like app=api,tier!=db"),
    (&["-l", "a b"], "`a b` is not a label key"),
    (&["-l", "!!!"], "is not a label selector"),
    (&["-l", "env in prod"], "a list of values in parentheses"),
    (&["-l", "app,,tier"], "an empty requirement"),
    (&["bogus/x"], "tlsspy cannot spy on a `bogus`"),
    (&["pod/Bad_Name"], "`Bad_Name` is not a valid Kubernetes object name"),
    (&["pod/"], "is not a valid Kubernetes object name"),
    (&["-A", "pod/x"], "a pod cannot be named across all namespaces"),
    (&["-A", "-n", "x", "pod/x"], "cannot be used with"),
    // Output and filters.
    (&["pod/x", "-o", "yaml"], "possible values: live, json"),
    (&["pod/x", "--status", "9xx"], "use a code such as 404 or a class such as 5xx"),
    (&["pod/x", "--protocol", "http9"], "unknown protocol `http9`"),
    (&["pod/x", "--path-regex", "("], "--path-regex is not a valid regular expression"),
    (&["local", "--status", "99", "--", "true"], "--status `99`"),
    // Unknown flags and missing pieces.
    (&["pod/x", "--nope"], "unexpected argument '--nope'"),
    (&["local", "--nope"], "unexpected argument '--nope'"),
    (&["local"], "nothing to spy on"),
    (&["local", "--pid", "1", "--", "true"], "either --pid or a command"),
    (&["local", "--pid", "0"], "0 is not in 1.."),
    (&["local", "--pid", "-1"], "unexpected argument '-1'"),
    (&["completion", "tcsh"], "invalid value 'tcsh'"),
];

const AGENT: &[(&[&str], &str)] = &[
    (&["--heartbeat-timeout", "18446744073709551615"], "is not in 1..=86400"),
    (&["--heartbeat-timeout", "0"], "is not in 1..=86400"),
    (&["--stats-interval", "99999999999"], "is not in 0..=86400"),
    (&["--max-body", "99GiB"], "over the largest body tlsspy keeps"),
    (&["--memory-budget", "1KiB"], "below the smallest memory budget"),
    (&["--session"], "--session-key-digest"),
    (&["--pid", "x"], "invalid digit"),
];

/// Runs every row; returns the rows that went wrong, each with why.
fn failures(binary: &str, table: &[(&[&str], &str)]) -> Vec<String> {
    let home = tempfile::tempdir().expect("temp dir");
    let mut failed = Vec::new();
    for (args, says) in table {
        let out = Command::new(workspace_bin(binary))
            .args(*args)
            .env("KUBECONFIG", home.path().join("no-such-kubeconfig"))
            .env("HOME", home.path())
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        let mut wrong = Vec::new();
        if code != Some(2) {
            wrong.push(format!("exit {code:?}, not 2"));
        }
        if !stderr.contains(says) {
            wrong.push(format!("stderr does not say {says:?}"));
        }
        if stderr.contains("panicked") || stderr.contains("RUST_BACKTRACE") {
            wrong.push("it panicked".into());
        }
        if !stderr.starts_with("error: ") {
            wrong.push("stderr does not start with `error: `".into());
        }
        if !wrong.is_empty() {
            failed.push(format!("{binary} {}: {}\n    stderr: {}", args.join(" "), wrong.join("; "), stderr.trim()));
        }
    }
    failed
}

#[test]
fn bad_input_to_the_plugin_is_a_usage_error_never_a_panic() {
    let failed = failures("kubectl-tlsspy", PLUGIN);
    assert!(failed.is_empty(), "{} of {} rows:\n{}", failed.len(), PLUGIN.len(), failed.join("\n"));
}

#[test]
fn bad_input_to_the_agent_is_a_usage_error_never_a_panic() {
    let failed = failures("tlsspy-agent", AGENT);
    assert!(failed.is_empty(), "{} of {} rows:\n{}", failed.len(), AGENT.len(), failed.join("\n"));
}
