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
        assert!(parse("launch").is_err());
        assert!(parse("go now").is_err());
    }
}
