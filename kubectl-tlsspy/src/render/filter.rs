//! Filters people expect: method, status or class, host, path, protocol.
//! They apply to exchanges; other records pass.

#![forbid(unsafe_code)]

use anyhow::Context as _;
use regex::Regex;
use spy_protocol::record::{Exchange, Protocol, Record};

use crate::cli::FilterArgs;

#[derive(Debug, Default)]
pub struct Filter {
    methods: Vec<String>,
    statuses: Vec<StatusMatch>,
    host: Option<String>,
    path: Option<String>,
    path_regex: Option<Regex>,
    protocols: Vec<Protocol>,
    tls_only: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum StatusMatch {
    Exact(u16),
    /// 5xx: the hundreds digit.
    Class(u16),
}

impl Filter {
    pub fn new(args: &FilterArgs) -> anyhow::Result<Filter> {
        let statuses = args.statuses.iter().map(|s| parse_status(s)).collect::<anyhow::Result<_>>()?;
        let protocols = args
            .protocols
            .iter()
            .map(|p| match p.to_ascii_lowercase().as_str() {
                "http1" | "http/1" | "http/1.1" | "h1" => Ok(Protocol::Http1),
                "http2" | "http/2" | "h2" => Ok(Protocol::Http2),
                "grpc" => Ok(Protocol::Grpc),
                other => anyhow::bail!("unknown protocol `{other}`: use http1, http2 or grpc"),
            })
            .collect::<anyhow::Result<_>>()?;
        let path_regex = args
            .path_regex
            .as_deref()
            .map(Regex::new)
            .transpose()
            .context("--path-regex is not a valid regular expression")?;
        Ok(Filter {
            methods: args.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
            statuses,
            host: args.host.clone(),
            path: args.path.clone(),
            path_regex,
            protocols,
            tls_only: args.tls_only,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
            && self.statuses.is_empty()
            && self.host.is_none()
            && self.path.is_none()
            && self.path_regex.is_none()
            && self.protocols.is_empty()
    }

    pub fn accepts(&self, record: &Record) -> bool {
        if self.tls_only {
            return !matches!(record, Record::Exchange(_) | Record::Chunk(_));
        }
        match record {
            Record::Exchange(exchange) => self.accepts_exchange(exchange),
            // With an exchange filter set, raw chunks are noise.
            Record::Chunk(_) => self.is_empty(),
            _ => true,
        }
    }

    fn accepts_exchange(&self, exchange: &Exchange) -> bool {
        let request = exchange.request.as_ref();
        let method = request.map(|r| r.method.as_str()).unwrap_or("");
        let path = request.map(|r| r.path.as_str()).unwrap_or("");
        let host = request.and_then(|r| r.authority.as_deref()).unwrap_or("");
        let status = exchange.response.as_ref().map(|r| r.status);
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && (self.statuses.is_empty() || status.is_some_and(|s| self.statuses.iter().any(|m| m.matches(s))))
            && self.host.as_deref().is_none_or(|h| host.contains(h))
            && self.path.as_deref().is_none_or(|p| path.contains(p))
            && self.path_regex.as_ref().is_none_or(|r| r.is_match(path))
            && (self.protocols.is_empty() || self.protocols.contains(&exchange.protocol))
    }
}

impl StatusMatch {
    fn matches(&self, status: u16) -> bool {
        match *self {
            StatusMatch::Exact(code) => code == status,
            StatusMatch::Class(class) => status / 100 == class,
        }
    }
}

fn parse_status(text: &str) -> anyhow::Result<StatusMatch> {
    let lower = text.to_ascii_lowercase();
    if let Some(class) = lower.strip_suffix("xx") {
        if let Ok(digit @ 1..=5) = class.parse::<u16>() {
            return Ok(StatusMatch::Class(digit));
        }
    }
    match text.parse::<u16>() {
        Ok(code @ 100..=999) => Ok(StatusMatch::Exact(code)),
        _ => anyhow::bail!("--status `{text}`: use a code such as 404 or a class such as 5xx"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spy_protocol::record::{Connection, Request, Response};

    fn exchange(method: &str, path: &str, status: u16) -> Record {
        Record::Exchange(Box::new(Exchange {
            conn: Connection::default(),
            protocol: Protocol::Http1,
            stream_id: None,
            request: Some(Request {
                method: method.into(),
                path: path.into(),
                authority: Some("api.local".into()),
                ..Default::default()
            }),
            response: Some(Response { status, ..Default::default() }),
            grpc: None,
            latency_us: None,
            incomplete: None,
        }))
    }

    #[test]
    fn status_classes_and_methods() {
        let args = FilterArgs { statuses: vec!["5xx".into()], methods: vec!["get".into()], ..Default::default() };
        let filter = Filter::new(&args).expect("filter");
        assert!(filter.accepts(&exchange("GET", "/", 503)));
        assert!(!filter.accepts(&exchange("GET", "/", 200)));
        assert!(!filter.accepts(&exchange("POST", "/", 500)));
    }

    #[test]
    fn paths_hosts_and_regexes() {
        let args =
            FilterArgs { path_regex: Some("^/v[0-9]+/users".into()), host: Some("api".into()), ..Default::default() };
        let filter = Filter::new(&args).expect("filter");
        assert!(filter.accepts(&exchange("GET", "/v2/users/7", 200)));
        assert!(!filter.accepts(&exchange("GET", "/health", 200)));
    }

    #[test]
    fn tls_only_keeps_handshakes_and_drops_plaintext() {
        let filter = Filter::new(&FilterArgs { tls_only: true, ..Default::default() }).expect("filter");
        assert!(filter.accepts(&Record::Handshake(Default::default())));
        assert!(!filter.accepts(&exchange("GET", "/", 200)));
    }

    #[test]
    fn bad_filters_are_clear_errors() {
        let bad_status = FilterArgs { statuses: vec!["9xx".into()], ..Default::default() };
        assert!(Filter::new(&bad_status).unwrap_err().to_string().contains("5xx"));
        let bad_regex = FilterArgs { path_regex: Some("(".into()), ..Default::default() };
        assert!(Filter::new(&bad_regex).unwrap_err().to_string().contains("--path-regex"));
    }
}
