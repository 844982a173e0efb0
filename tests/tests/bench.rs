//! The overhead benchmark must not rot: one short run of the real thing
//! (`tlsspy_tests::bench::run`, what `tlsspy-bench` runs) for a small nginx
//! case and the Go case, checked for the structural truths every run must
//! show whatever the machine's speed. Root and eBPF (the floor and the spy
//! attach for real); the Go server is built with the local Go toolchain.
//!
//! This is the slow test of the crate: about 1 s per mode and case (6 s of
//! load), the probe hit-cost measurement, six agent starts, and the Go build
//! (links only when `go_capture`'s build cache under $CARGO_TARGET_TMPDIR is
//! warm; a cold cache adds about 25 s here).

use std::path::PathBuf;
use std::time::Duration;

use tlsspy_tests::bench::{self, Case, Mode, Options, Server, Summary};
use tlsspy_tests::support::*;

/// How far the floor's and the spy's probe hits per request may differ:
/// both count TLS call entries on the same functions, but a round's last
/// calls (a Read parked until the connection closes) land on either side
/// of the count.
const HIT_TOLERANCE: f64 = 0.25;

#[test]
fn a_short_benchmark_run_of_nginx_and_go_is_complete_and_consistent() {
    if !require_root("a_short_benchmark_run_of_nginx_and_go_is_complete_and_consistent") {
        return;
    }
    // The Go server is needed: CI installs golang-1.23-go (.ci/install-deps).
    if tlsspy_tests::go::Toolchain::find(&go_work()).is_none() {
        assert!(!in_ci(), "CI=true but no Go toolchain in /usr/lib/go-1.*: run .ci/install-deps");
        eprintln!("SKIP: no Go toolchain (install golang-1.23-go); benchmark smoke test not run");
        return;
    }
    let options = Options {
        cases: vec![
            Case { name: "nginx, 1 KiB".into(), server: Server::Nginx, body_bytes: 1024 },
            Case { name: "Go, 1 KiB".into(), server: Server::Go, body_bytes: 1024 },
        ],
        rounds: 1,
        duration: Duration::from_secs(1),
        connections: 4,
        agent: workspace_bin("tlsspy-agent"),
        baseline_agent: None,
        go_work: go_work(),
    };
    let (hit_cost, reports) = bench::run(&options).expect("benchmark run");
    let table = bench::render(&hit_cost, &reports, &options);
    eprintln!("{table}");

    assert!(hit_cost.entry_ns > hit_cost.bare_ns, "a probed call must cost more than a bare one: {hit_cost:?}");
    assert_eq!(reports.len(), 2);
    for report in &reports {
        let name = &report.case.name;
        let [none, floor, spy] = Mode::ALL.map(|mode| Summary::of(report, mode));
        for (mode, s) in Mode::ALL.iter().zip([&none, &floor, &spy]) {
            assert!(s.requests > 0, "[{name}] {}: no request completed", mode.name());
            assert_eq!(s.errors, 0, "[{name}] {}: load errors", mode.name());
        }
        assert!(none.probe_hits.is_none(), "[{name}] none must have no probes");
        let floor_hits = floor.per_request(floor.probe_hits).expect("floor counts its hits");
        let spy_hits = spy.per_request(spy.probe_hits).expect("the spy reports probe_hits");
        assert!(floor_hits > 0.0 && spy_hits > 0.0, "[{name}] probe hits/request: floor {floor_hits}, spy {spy_hits}");
        assert!(
            (floor_hits - spy_hits).abs() <= HIT_TOLERANCE * floor_hits.max(spy_hits),
            "[{name}] the floor ({floor_hits:.2}/req) and the spy ({spy_hits:.2}/req) must probe the same points"
        );
        // Every call the floor enters it also leaves (at a uretprobe, or at a RET for Go).
        let floor_returns = floor.per_request(floor.return_hits).expect("floor counts its returns");
        assert!(
            (floor_returns - floor_hits).abs() <= HIT_TOLERANCE * floor_hits,
            "[{name}] floor: {floor_hits:.2} entries but {floor_returns:.2} returns per request"
        );
        assert_eq!(
            spy.exchanges,
            Some(spy.requests),
            "[{name}] the spy must capture every exchange (completeness 100%)"
        );
        assert_eq!(spy.lost_events, Some(0), "[{name}] the spy lost events");
    }
    assert!(table.contains("| spy |") && table.contains("(100.00%)"), "rendered:\n{table}");
}

/// Shared with `go_capture`'s builds: one Go build cache per target dir.
fn go_work() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go-capture")
}
