//! Times the Go binary analysis on real files and prints what it found;
//! with `--attach` (root), also the uprobe attach, as the spy does it.
//!
//! ```text
//! cargo run --release -p spy-image --example go_analysis_bench -- BINARY…
//! sudo cargo run --release -p spy-image --example go_analysis_bench -- --attach BINARY…
//! ```
//!
//! Per binary: size, time to read + analyse (first run, and best of a few
//! runs once the page cache is warm), the analysis alone on bytes already in
//! memory, where the symbols came from, RET counts, offsets source.
//! With `--attach`: the eBPF programs are loaded once (timed on its own),
//! then per binary the spy's own path is timed from the start to probes
//! live: read + detect the TLS stack (Go analysis), then attach the entry
//! and RET uprobes of `crypto/tls.(*Conn).Read`/`Write`.
//! A benchmark to read, not a test: it asserts nothing.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use spy_image::targets::go::{analyze, analyze_bytes, GoBinary, GoFunctionProbe};

const RUNS: usize = 5;

fn main() -> ExitCode {
    let mut attach = false;
    let paths: Vec<PathBuf> = std::env::args_os()
        .skip(1)
        .filter(|arg| {
            let flag = arg == "--attach";
            attach |= flag;
            !flag
        })
        .map(PathBuf::from)
        .collect();
    if paths.is_empty() {
        eprintln!("usage: go_analysis_bench [--attach] BINARY…");
        return ExitCode::from(2);
    }
    if attach {
        #[cfg(target_os = "linux")]
        return attach_bench(&paths);
        #[cfg(not(target_os = "linux"))]
        {
            eprintln!("--attach needs Linux");
            return ExitCode::from(2);
        }
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

/// Start to probes live, per binary, through the spy's own calls.
#[cfg(target_os = "linux")]
fn attach_bench(paths: &[PathBuf]) -> ExitCode {
    use spy_image::probes::{LoadOptions, Probes};
    use spy_image::targets::process::FileId;
    use spy_image::targets::tls_stack::{detect, DetectedStack};

    let start = Instant::now();
    let mut probes = match Probes::load_programs(&LoadOptions::default(), false) {
        Ok(probes) => probes,
        Err(e) => {
            eprintln!("cannot load the eBPF programs: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("eBPF programs loaded in {:.1} ms (once per spy)", ms(start.elapsed()));
    let mut failed = false;
    for path in paths {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let start = Instant::now();
        let detected = detect(path, true);
        let analysed = start.elapsed();
        let bin = match detected {
            Ok(Some(DetectedStack::Go(bin))) => bin,
            other => {
                failed = true;
                println!("{}: not a Go binary we probe: {other:?}", path.display());
                continue;
            }
        };
        let file = match FileId::of(path) {
            Ok(file) => file,
            Err(e) => {
                failed = true;
                println!("{}: {e}", path.display());
                continue;
            }
        };
        let before_attach = Instant::now();
        let attached = probes.attach_go(file, path, path, &bin);
        let attach = before_attach.elapsed();
        let uprobes = 2 + bin.write.ret_file_offsets.len() + bin.read.ret_file_offsets.len();
        match attached {
            Ok(()) => println!(
                "{}: {:.1} MiB {}{}{}: analysis {:.1} ms + attach {:.1} ms ({uprobes} uprobes) = {:.1} ms to probes live",
                path.display(),
                size as f64 / (1024.0 * 1024.0),
                bin.go_version,
                if bin.pie { " pie" } else { "" },
                if bin.stripped { " stripped" } else { "" },
                ms(analysed),
                ms(attach),
                ms(analysed + attach),
            ),
            Err(e) => {
                failed = true;
                println!("{}: attach failed: {e}", path.display());
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(target_os = "linux")]
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
