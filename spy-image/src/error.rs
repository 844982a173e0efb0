//! Error text for records and logs.
//!
//! Our error types keep their source out of their message (the message
//! names what failed and where; the cause is `source()`), so that an anyhow
//! `{:#}` chain shows each cause once. But where an error becomes one
//! string, a warning record, a target's reason or a log line,
//! `to_string()` would drop the cause: [`chain`] puts it back.

#![forbid(unsafe_code)]

use std::error::Error;

/// `err`'s message and every source under it, joined by ": ".
///
/// A source whose text its parent's message already holds is not repeated:
/// some errors from other crates still print their source themselves.
pub fn chain(err: &(dyn Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut parent = text.clone();
    let mut source = err.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !parent.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        parent = message;
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}")]
    struct Read {
        path: &'static str,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot examine the target")]
    struct Examine(#[source] Read);

    /// An error that prints its source and also exposes it.
    #[derive(Debug, thiserror::Error)]
    #[error("parse error: {0}")]
    struct Loud(#[source] std::io::Error);

    #[test]
    fn every_cause_is_shown_once_in_order() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let read = Read { path: "/x", source: io() };
        assert_eq!(chain(&read), "cannot read /x: no such file");
        let examine = Examine(Read { path: "/x", source: io() });
        assert_eq!(chain(&examine), "cannot examine the target: cannot read /x: no such file");
        assert_eq!(chain(&Loud(io())), "parse error: no such file");
        assert_eq!(chain(&io()), "no such file");
    }
}
