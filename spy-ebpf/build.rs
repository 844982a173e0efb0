//! Compiles `bpf/tlsspy.bpf.c` with clang into one eBPF object per build.
//!
//! The object is CO-RE: it carries BTF relocations that the loader resolves
//! against the running kernel, so one build runs on every kernel with BTF.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const SOURCES: &[&str] = &["bpf/tlsspy.bpf.c", "bpf/floor.bpf.c", "bpf/tlsspy.h", "bpf/kernel_types.h"];

/// (source, object) pairs: the spy's programs, and the benchmark's no-op floor.
const OBJECTS: &[(&str, &str)] = &[("bpf/tlsspy.bpf.c", "tlsspy.bpf.o"), ("bpf/floor.bpf.c", "floor.bpf.o")];

fn main() {
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
    }
    println!("cargo:rerun-if-env-changed=TLSSPY_CLANG");
    println!("cargo:rerun-if-env-changed=TLSSPY_BPF_INCLUDE");

    // Only Linux loads eBPF. spy-ebpf is a Linux-only dependency of
    // spy-image, but `cargo build --workspace` on macOS or Windows still
    // builds it: there, no clang or libbpf headers are needed.
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        for (_, object) in OBJECTS {
            write_object(object, &[]);
        }
        return;
    }

    // The object targets the architecture we build for, which is where the
    // uprobes run: pt_regs differs between x86 and arm64.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let target_arch = match arch.as_str() {
        "x86_64" => "x86",
        "aarch64" => "arm64",
        other => {
            // The probes exist only where we can run them. An empty object
            // makes loading fail clearly.
            println!("cargo:warning=tlsspy eBPF programs are not built for {other}");
            for (_, object) in OBJECTS {
                write_object(object, &[]);
            }
            return;
        }
    };

    let clang = env::var("TLSSPY_CLANG").unwrap_or_else(|_| find_clang());
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for (source, object) in OBJECTS {
        compile(&clang, target_arch, source, &out_dir.join(object));
    }
}

fn compile(clang: &str, target_arch: &str, source: &str, out: &std::path::Path) {
    let mut cmd = Command::new(clang);
    cmd.args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-D__TARGET_ARCH_{target_arch}"))
        // BTF line info names the sources: relative to the crate, not to the
        // machine that built it, so the object is the same wherever it is built.
        .arg(format!("-ffile-prefix-map={}=.", env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")))
        .arg("-c")
        .arg(source)
        .arg("-o")
        .arg(out);
    if let Ok(include) = env::var("TLSSPY_BPF_INCLUDE") {
        cmd.arg(format!("-I{include}"));
    }
    let status = match cmd.status() {
        Ok(status) => status,
        Err(err) => panic!(
            "cannot run `{clang}` to build the eBPF programs: {err}.\n\
             Install clang and the libbpf headers: `apt-get install clang-19 libbpf-dev` \
             (or set TLSSPY_CLANG to a clang that targets bpf)."
        ),
    };
    if !status.success() {
        panic!(
            "`{clang}` failed to build {source} ({status}). If it says a bpf/*.h \
             header is missing, install the libbpf headers: `apt-get install libbpf-dev`."
        );
    }
}

fn find_clang() -> String {
    for candidate in ["clang-19", "clang"] {
        if Command::new(candidate).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return candidate.to_string();
        }
    }
    "clang-19".to_string()
}

fn write_object(name: &str, bytes: &[u8]) {
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join(name);
    std::fs::write(out, bytes).expect("write empty eBPF object");
}
