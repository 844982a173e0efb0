//! What a container runs and where: command/args over the image's
//! entrypoint/cmd, `$(VAR)` expanded, the program found through the image's
//! files or PATH. Failures read as containerd's and runc's do, so a failed
//! start shows in the pod status as it would on a real node. No side
//! effects: it only looks at whether files and directories exist.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::env::{expand, DEFAULT_PATH};
use super::images::Image;

/// How containerd words a container that failed to start.
const OCI_PREFIX: &str = "failed to create containerd task: failed to create shim task: OCI runtime create failed: \
runc create failed: unable to start container process: error during container init:";

/// A start failure as containerd reports it in the container's status.
pub(super) fn oci_error(detail: &str) -> String {
    format!("{OCI_PREFIX} {detail}: unknown")
}

/// The argv a container runs: command/args over the image's entrypoint/cmd,
/// `$(VAR)` expanded, argv[0] mapped through the image's files or PATH.
pub(super) fn argv(spec: &Value, image: &Image, env: &[(String, String)]) -> Result<Vec<String>, String> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect()
    };
    let (command, args) = (strings(&spec["command"]), strings(&spec["args"]));
    let mut argv = if !command.is_empty() {
        [command, args].concat()
    } else if !args.is_empty() {
        [image.entrypoint.clone(), args].concat()
    } else {
        [image.entrypoint.clone(), image.cmd.clone()].concat()
    };
    for a in &mut argv {
        *a = expand(a, env);
    }
    let Some(first) = argv.first().cloned() else {
        return Err(oci_error("no command specified"));
    };
    let exe = if let Some((_, host)) = image.files.iter().find(|(p, _)| *p == first) {
        host.clone()
    } else if first.contains('/') {
        PathBuf::from(&first)
    } else {
        lookup_path(&first, env)
            .ok_or_else(|| oci_error(&format!("exec: {first:?}: executable file not found in $PATH")))?
    };
    if !exe.is_file() {
        return Err(oci_error(&format!("exec: {first:?}: stat {}: no such file or directory", exe.display())));
    }
    argv[0] = exe.display().to_string();
    Ok(argv)
}

/// The container's `workingDir`, `/` if unset; it must exist, as runc chdirs there.
pub(super) fn working_dir(spec: &Value) -> Result<&str, String> {
    let workdir = spec["workingDir"].as_str().filter(|s| !s.is_empty()).unwrap_or("/");
    if !Path::new(workdir).is_dir() {
        return Err(oci_error(&format!(
            "chdir to cwd ({workdir:?}) set in config.json failed: no such file or directory"
        )));
    }
    Ok(workdir)
}

/// Finds `prog` in the container's PATH (its last definition), as exec does.
fn lookup_path(prog: &str, env: &[(String, String)]) -> Option<PathBuf> {
    let path = env.iter().rev().find(|(k, _)| k == "PATH").map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    path.split(':').map(|d| Path::new(d).join(prog)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn path_env() -> Vec<(String, String)> {
        vec![("PATH".to_string(), DEFAULT_PATH.to_string())]
    }

    #[test]
    fn argv_resolution() {
        let env = path_env();
        let img = Image::host();
        let spec = json!({"command": ["sh", "-c"], "args": ["true"]});
        let a = argv(&spec, &img, &env).expect("sh resolves");
        assert!(a[0].ends_with("/sh"));
        assert_eq!(&a[1..], ["-c", "true"]);
        let err = argv(&json!({"command": ["no-such-program-x"]}), &img, &env).expect_err("missing");
        assert!(err.contains("executable file not found in $PATH"), "{err}");
    }

    #[test]
    fn command_and_args_override_entrypoint_and_cmd() {
        let env = path_env();
        let img =
            Image { entrypoint: vec!["/bin/sh".into()], cmd: vec!["-c".into(), "exit 3".into()], ..Image::default() };
        assert_eq!(argv(&json!({}), &img, &env).expect("image defaults"), ["/bin/sh", "-c", "exit 3"]);
        assert_eq!(argv(&json!({"args": ["-c", "true"]}), &img, &env).expect("args"), ["/bin/sh", "-c", "true"]);
        // A command replaces the entrypoint and drops the image's cmd.
        assert_eq!(argv(&json!({"command": ["/bin/sh"]}), &img, &env).expect("command"), ["/bin/sh"]);
    }

    #[test]
    fn image_files_and_variables_resolve() {
        let mut env = path_env();
        env.push(("TARGET".into(), "world".into()));
        let img = Image::host().with_file("/app/run", "/bin/sh");
        let spec = json!({"command": ["/app/run"], "args": ["-c", "echo $(TARGET) $$(TARGET)"]});
        assert_eq!(argv(&spec, &img, &env).expect("mapped"), ["/bin/sh", "-c", "echo world $(TARGET)"]);
    }

    #[test]
    fn start_failures_read_as_runc_words_them() {
        let env = path_env();
        let img = Image::host();
        let err = argv(&json!({}), &img, &env).expect_err("nothing to run");
        assert_eq!(err, oci_error("no command specified"));
        let err = argv(&json!({"command": ["/no/such/program"]}), &img, &env).expect_err("no file");
        assert!(err.starts_with(OCI_PREFIX), "{err}");
        assert!(
            err.ends_with("exec: \"/no/such/program\": stat /no/such/program: no such file or directory: unknown"),
            "{err}"
        );
        // A PATH the container sets is the one searched.
        let err = argv(&json!({"command": ["sh"]}), &img, &[("PATH".into(), "/nonexistent".into())])
            .expect_err("not in PATH");
        assert!(err.contains("executable file not found in $PATH"), "{err}");
    }

    #[test]
    fn working_directory_defaults_to_root_and_must_exist() {
        assert_eq!(working_dir(&json!({})), Ok("/"));
        assert_eq!(working_dir(&json!({"workingDir": ""})), Ok("/"));
        assert_eq!(working_dir(&json!({"workingDir": "/tmp"})), Ok("/tmp"));
        let err = working_dir(&json!({"workingDir": "/no/such/dir"})).expect_err("missing");
        assert!(err.contains("chdir to cwd (\"/no/such/dir\") set in config.json failed"), "{err}");
    }
}
