//! The session protocol on the agent's stdin: the plugin says "go" when it
//! is attached and listening, then sends a heartbeat every few seconds; the
//! agent ends on EOF, on "stop", or when heartbeats stop.
//!
//! One command per line:
//!   go                      start emitting records
//!   hb                      heartbeat
//!   stop                    end the session
//!   pid <PID>               spy on one more host process
//!   container <ID> <NS>/<POD>/<CONTAINER>
//!                           spy on the processes of a container
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
    Pid(u32),
    Container { id: String, pod: PodRef },
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
        if let Command::Container { id, pod } = self {
            check_word(id, false)?;
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
            Command::Pid(pid) => write!(f, "pid {pid}"),
            Command::Container { id, pod } => write!(
                f,
                "container {id} {}/{}/{}",
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
        Some("pid") => {
            let pid = words.next().and_then(|w| w.parse().ok()).ok_or(err("expected `pid <PID>`"))?;
            Command::Pid(pid)
        }
        Some("container") => {
            let id = words.next().ok_or(err("expected a container id"))?.to_string();
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commands() {
        assert_eq!(parse("go\n"), Ok(Command::Go));
        assert_eq!(parse("hb"), Ok(Command::Heartbeat));
        assert_eq!(parse("pid 42"), Ok(Command::Pid(42)));
        let Ok(Command::Container { id, pod }) = parse("container abc ns/web-1/nginx") else { panic!() };
        assert_eq!(id, "abc");
        assert_eq!(pod.container.as_deref(), Some("nginx"));
    }

    #[test]
    fn bad_lines_are_errors() {
        assert!(parse("pid x").is_err());
        assert!(parse("container abc ns/web").is_err());
        assert!(parse("container abc ns//nginx").is_err());
        assert!(parse("container abc ns/web/a/b").is_err());
        assert!(parse("launch").is_err());
        assert!(parse("go now").is_err());
    }

    #[test]
    fn lines_are_what_the_agent_reads() {
        assert_eq!(Command::Go.line(), Ok("go\n".into()));
        assert_eq!(Command::Heartbeat.line(), Ok("hb\n".into()));
        assert_eq!(Command::Stop.line(), Ok("stop\n".into()));
        assert_eq!(Command::Pid(7).line(), Ok("pid 7\n".into()));
        let pod = PodRef { namespace: "ns".into(), name: "web-1".into(), container: Some("nginx".into()) };
        let container = Command::Container { id: "abc".into(), pod };
        assert_eq!(container.line(), Ok("container abc ns/web-1/nginx\n".into()));
    }

    #[test]
    fn a_command_that_would_read_back_differently_is_refused() {
        let pod = |name: &str, container: Option<&str>| PodRef {
            namespace: "ns".into(),
            name: name.into(),
            container: container.map(Into::into),
        };
        let refused = |id: &str, pod: PodRef| Command::Container { id: id.into(), pod }.line().is_err();
        assert!(refused("a b", pod("web", Some("c"))));
        assert!(refused("abc", pod("we b", Some("c"))));
        assert!(refused("abc", pod("web/x", Some("c"))));
        assert!(refused("abc", pod("web", None)));
        assert!(refused("", pod("web", Some("c"))));
    }

    proptest! {
        /// Whatever the plugin can send, the agent reads as sent.
        #[test]
        fn every_sendable_command_reads_back_as_itself(
            pid in any::<u32>(),
            id in "[^\\s]{1,70}",
            namespace in "[a-z0-9-]{1,63}",
            name in "[a-z0-9.-]{1,63}",
            container in "[a-z0-9-]{1,63}",
            junk in "\\PC{0,40}",
        ) {
            let pod = PodRef { namespace, name, container: Some(container) };
            for command in [Command::Go, Command::Heartbeat, Command::Stop, Command::Pid(pid), Command::Container { id, pod }] {
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
