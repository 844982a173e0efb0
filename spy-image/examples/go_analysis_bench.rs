//! Times the Go binary analysis on real files and prints what it found.
//!
//! ```text
//! cargo run --release -p spy-image --example go_analysis_bench -- BINARY…
//! ```
//!
//! Per binary: size, time to read + analyse (first run, and best of a few
//! runs once the page cache is warm), the analysis alone on bytes already in
//! memory, where the symbols came from, RET counts, offsets source.
//! A benchmark to read, not a test: it asserts nothing.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use spy_image::targets::go::{analyze, analyze_bytes, GoBinary, GoFunctionProbe};

const RUNS: usize = 5;

fn main() -> ExitCode {
    let paths: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if paths.is_empty() {
        eprintln!("usage: go_analysis_bench BINARY…");
        return ExitCode::from(2);
    }
    let mut failed = false;
    for path in &paths {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let mut best = Duration::MAX;
        let mut first = Duration::ZERO;
        let mut result = None;
        for run in 0..RUNS {
            let start = Instant::now();
            let outcome = analyze(path);
            let took = start.elapsed();
            if run == 0 {
                first = took;
            }
            best = best.min(took);
            result = Some(outcome);
        }
        // The same analysis on bytes already in memory: the share of the
        // time that is parsing rather than reading the file.
        let mut in_memory = Duration::MAX;
        if let Ok(data) = std::fs::read(path) {
            for _ in 0..RUNS {
                let start = Instant::now();
                let _ = analyze_bytes(&data);
                in_memory = in_memory.min(start.elapsed());
            }
        }
        print!(
            "{}: {:.1} MiB, read+analyse first {:.1} ms, best of {RUNS} {:.1} ms (in memory {:.1} ms): ",
            path.display(),
            size as f64 / (1024.0 * 1024.0),
            first.as_secs_f64() * 1e3,
            best.as_secs_f64() * 1e3,
            in_memory.as_secs_f64() * 1e3
        );
        match result {
            Some(Ok(bin)) => println!("{}", summary(&bin)),
            Some(Err(e)) => {
                failed = true;
                println!("error: {e}");
            }
            None => {}
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn summary(bin: &GoBinary) -> String {
    let probe = |p: &GoFunctionProbe| {
        format!(
            "{} @{:#x} ({} bytes, {:?}) entry +{:#x}, {} RETs",
            p.symbol,
            p.address,
            p.size,
            p.source,
            p.entry_file_offset,
            p.ret_file_offsets.len()
        )
    };
    format!(
        "{} {} {:?}{}{} | {} | {} | goid@{} via {:?}",
        bin.go_version,
        bin.arch,
        bin.abi,
        if bin.pie { " pie" } else { "" },
        if bin.stripped { " stripped" } else { "" },
        probe(&bin.write),
        probe(&bin.read),
        bin.offsets.g_goid,
        bin.offsets_source
    )
}
