//! The session protocol on the agent's stdin: the plugin says "go" when it
//! is attached and listening, then sends a heartbeat every few seconds; the
//! agent ends on EOF, on "stop", or when heartbeats stop.
//!
//! One command per line:
//!   go                      start emitting records
//!   hb                      heartbeat
//!   stop                    end the session
//!   container <ID> <POD-UID> <NS>/<POD>/<CONTAINER>
//!                           spy on the processes of a container; the
//!                           agent checks that their cgroup names both
//!                           the pod UID and the container id
//!
//! There is no command for an arbitrary host process: the plugin never
//! needs one, and a session may only see the containers it named.
//!
//! The agent reads lines with [`parse`]; the plugin writes them with
//! [`Command::line`], so neither side spells a command by hand.

#![forbid(unsafe_code)]

use std::fmt;

use crate::record::PodRef;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Go,
    Heartbeat,
    Stop,
    /// `pod_uid` is the pod's `metadata.uid`, which the kubelet writes
    /// into the container's cgroup path.
    Container {
        id: String,
        pod_uid: String,
        pod: PodRef,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad session command `{line}`: {why}")]
pub struct ParseError {
    pub line: String,
    pub why: &'static str,
}

/// A command that has no line form: a word of it holds white space (or,
/// in a pod reference, a `/`), which would split it differently when read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot send `{word}` in a session command: {why}")]
pub struct UnsendableError {
    pub word: String,
    pub why: &'static str,
}

impl Command {
    /// The command as one line, newline included, that [`parse`] reads back
    /// as the same command.
    pub fn line(&self) -> Result<String, UnsendableError> {
        if let Command::Container { id, pod_uid, pod } = self {
            check_word(id, false)?;
            if !is_pod_uid(pod_uid) {
                return Err(UnsendableError {
                    word: pod_uid.chars().take(80).collect(),
                    why: "a pod UID is 1 to 64 hex digits and dashes",
                });
            }
            check_word(&pod.namespace, true)?;
            check_word(&pod.name, true)?;
            check_word(pod.container.as_deref().unwrap_or_default(), true)?;
        }
        Ok(format!("{self}\n"))
    }
}

fn check_word(word: &str, in_pod_ref: bool) -> Result<(), UnsendableError> {
    let bad = |why| Err(UnsendableError { word: word.chars().take(80).collect(), why });
    if word.is_empty() {
        return bad("it is empty");
    }
    if word.chars().any(char::is_whitespace) {
        return bad("it holds white space");
    }
    if in_pod_ref && word.contains('/') {
        return bad("a namespace, pod or container name holds no `/`");
    }
    Ok(())
}

/// The line form, without the newline. A container without a name is
/// written with an empty one, which [`Command::line`] refuses.
impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Go => f.write_str("go"),
            Command::Heartbeat => f.write_str("hb"),
            Command::Stop => f.write_str("stop"),
            Command::Container { id, pod_uid, pod } => write!(
                f,
                "container {id} {pod_uid} {}/{}/{}",
                pod.namespace,
                pod.name,
                pod.container.as_deref().unwrap_or_default()
            ),
        }
    }
}

pub fn parse(line: &str) -> Result<Command, ParseError> {
    let line = line.trim();
    let err = |why| ParseError { line: line.chars().take(80).collect(), why };
    let mut words = line.split_whitespace();
    let command = match words.next() {
        Some("go") => Command::Go,
        Some("hb") => Command::Heartbeat,
        Some("stop") => Command::Stop,
        Some("container") => {
            let id = words.next().ok_or(err("expected a container id"))?.to_string();
            let pod_uid = words.next().filter(|w| is_pod_uid(w)).ok_or(err("expected a pod UID"))?.to_string();
            let pod = words.next().ok_or(err("expected <namespace>/<pod>/<container>"))?;
            let mut parts = pod.splitn(3, '/');
            let (Some(namespace), Some(name), Some(container)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(err("expected <namespace>/<pod>/<container>"));
            };
            if namespace.is_empty() || name.is_empty() || container.is_empty() || container.contains('/') {
                return Err(err("expected <namespace>/<pod>/<container>"));
            }
            Command::Container {
                id,
                pod_uid,
                pod: PodRef {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    container: Some(container.to_string()),
                },
            }
        }
        _ => return Err(err("unknown command")),
    };
    if words.next().is_some() {
        return Err(err("unexpected words at the end"));
    }
    Ok(command)
}

/// A pod UID as the API server makes them (a UUID): hex digits and dashes.
/// Anything else cannot appear in a kubelet's cgroup path.
fn is_pod_uid(word: &str) -> bool {
    (1..=64).contains(&word.len()) && word.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commands() {
        assert_eq!(parse("go\n"), Ok(Command::Go));
        assert_eq!(parse("hb"), Ok(Command::Heartbeat));
        let Ok(Command::Container { id, pod_uid, pod }) = parse("container abc 0b1c-2d ns/web-1/nginx") else {
            panic!()
        };
        assert_eq!(id, "abc");
        assert_eq!(pod_uid, "0b1c-2d");
        assert_eq!(pod.container.as_deref(), Some("nginx"));
    }

    #[test]
    fn bad_lines_are_errors() {
        // The agent spies on containers only: no command names a host pid.
        assert!(parse("pid 42").is_err());
        assert!(parse("container abc ns/web/nginx").is_err(), "no pod UID");
        assert!(parse("container abc ../etc ns/web/nginx").is_err(), "not a UID");
        assert!(parse("container abc 0b1c ns/web").is_err());
        assert!(parse("container abc 0b1c ns//nginx").is_err());
        assert!(parse("container abc 0b1c ns/web/a/b").is_err());
        assert!(parse("launch").is_err());
        assert!(parse("go now").is_err());
    }

    #[test]
    fn lines_are_what_the_agent_reads() {
        assert_eq!(Command::Go.line(), Ok("go\n".into()));
        assert_eq!(Command::Heartbeat.line(), Ok("hb\n".into()));
        assert_eq!(Command::Stop.line(), Ok("stop\n".into()));
        let pod = PodRef { namespace: "ns".into(), name: "web-1".into(), container: Some("nginx".into()) };
        let container = Command::Container { id: "abc".into(), pod_uid: "0b1c".into(), pod };
        assert_eq!(container.line(), Ok("container abc 0b1c ns/web-1/nginx\n".into()));
    }

    #[test]
    fn a_command_that_would_read_back_differently_is_refused() {
        let pod = |name: &str, container: Option<&str>| PodRef {
            namespace: "ns".into(),
            name: name.into(),
            container: container.map(Into::into),
        };
        let refused =
            |id: &str, pod: PodRef| Command::Container { id: id.into(), pod_uid: "0b1c".into(), pod }.line().is_err();
        assert!(refused("a b", pod("web", Some("c"))));
        assert!(refused("abc", pod("we b", Some("c"))));
        assert!(refused("abc", pod("web/x", Some("c"))));
        assert!(refused("abc", pod("web", None)));
        assert!(refused("", pod("web", Some("c"))));
        let no_uid = Command::Container { id: "abc".into(), pod_uid: String::new(), pod: pod("web", Some("c")) };
        assert!(no_uid.line().is_err());
    }

    proptest! {
        /// Whatever the plugin can send, the agent reads as sent.
        #[test]
        fn every_sendable_command_reads_back_as_itself(
            pod_uid in "[0-9a-f-]{1,64}",
            id in "[^\\s]{1,70}",
            namespace in "[a-z0-9-]{1,63}",
            name in "[a-z0-9.-]{1,63}",
            container in "[a-z0-9-]{1,63}",
            junk in "\\PC{0,40}",
        ) {
            let pod = PodRef { namespace, name, container: Some(container) };
            for command in [Command::Go, Command::Heartbeat, Command::Stop, Command::Container { id, pod_uid, pod }] {
                let line = command.line().expect("sendable");
                prop_assert_eq!(parse(&line), Ok(command));
            }
            // Anything else is an answer, never a panic.
            let _ = parse(&junk);
            if let Ok(command) = parse(&junk) {
                if let Ok(line) = command.line() {
                    prop_assert_eq!(parse(&line), Ok(command));
                }
            }
        }
    }
}
