//! The summary table at exit: per host and route, count, errors, latency
//! percentiles, bytes.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};

use comfy_table::{presets, Cell, CellAlignment, ContentArrangement, Table};
use spy_protocol::record::{Connection, Exchange, Handshake};

use super::escape::field;

/// Routes kept in the table; further ones are summed into one row.
const MAX_ROUTES: usize = 200;

#[derive(Debug, Default)]
pub struct Summary {
    routes: BTreeMap<(String, String), RouteStats>,
    other: RouteStats,
}

#[derive(Debug, Default)]
struct RouteStats {
    count: u64,
    errors: u64,
    latencies_us: Vec<u64>,
    bytes: u64,
}

impl Summary {
    pub fn add(&mut self, exchange: &Exchange) {
        let request = exchange.request.as_ref();
        let host = request.and_then(|r| r.authority.clone()).unwrap_or_else(|| {
            exchange.conn.remote_name.clone().or(exchange.conn.remote.map(|a| a.to_string())).unwrap_or_default()
        });
        let route = match (request, &exchange.grpc) {
            (_, Some(grpc)) => format!("{}/{}", grpc.service, grpc.method),
            (Some(r), None) => format!("{} {}", r.method, route_of(&r.path)),
            (None, None) => "?".to_string(),
        };
        let key = (host, route);
        let stats = if self.routes.contains_key(&key) || self.routes.len() < MAX_ROUTES {
            self.routes.entry(key).or_default()
        } else {
            &mut self.other
        };
        stats.count += 1;
        let failed = match &exchange.response {
            Some(response) => {
                response.status >= 500 || exchange.grpc.as_ref().and_then(|g| g.status).is_some_and(|s| s != 0)
            }
            None => true,
        };
        if failed {
            stats.errors += 1;
        }
        if let Some(latency) = exchange.latency_us {
            stats.latencies_us.push(latency);
        }
        stats.bytes += request.map_or(0, |r| r.body.size) + exchange.response.as_ref().map_or(0, |r| r.body.size);
    }

    pub fn table(&self) -> Option<String> {
        if self.routes.is_empty() {
            return None;
        }
        let mut table = Table::new();
        table
            .load_style(presets::UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header(["host", "route", "count", "errors", "p50", "p99", "bytes"]);
        let mut rows: Vec<(&str, &str, &RouteStats)> =
            self.routes.iter().map(|((h, r), s)| (h.as_str(), r.as_str(), s)).collect();
        if self.other.count > 0 {
            rows.push(("(other)", "(other routes)", &self.other));
        }
        for (host, route, stats) in rows {
            let mut latencies = stats.latencies_us.clone();
            latencies.sort_unstable();
            table.add_row(vec![
                Cell::new(field(host)),
                Cell::new(field(route)),
                Cell::new(stats.count).set_alignment(CellAlignment::Right),
                Cell::new(stats.errors).set_alignment(CellAlignment::Right),
                Cell::new(percentile(&latencies, 50)).set_alignment(CellAlignment::Right),
                Cell::new(percentile(&latencies, 99)).set_alignment(CellAlignment::Right),
                Cell::new(stats.bytes).set_alignment(CellAlignment::Right),
            ]);
        }
        Some(table.to_string())
    }
}

/// Peers named per reason in the connections table.
const MAX_PEERS_SHOWN: usize = 5;

/// What could be decrypted, per target (pod and container, or process):
/// every TLS connection seen, decrypted or not, and why not.
#[derive(Debug, Default)]
pub struct Decryption {
    targets: BTreeMap<String, TargetConnections>,
}

#[derive(Debug, Default)]
struct TargetConnections {
    /// Connection ids whose plaintext was captured.
    decrypted: BTreeSet<String>,
    /// Connection ids only their handshake showed, by reason, with peers.
    not_decrypted: BTreeMap<String, BTreeMap<String, String>>,
}

impl Decryption {
    pub fn add_handshake(&mut self, handshake: &Handshake) {
        let target = self.targets.entry(target_of(&handshake.conn)).or_default();
        let id = handshake.conn.id.clone();
        if handshake.decrypted {
            target.decrypted.insert(id);
        } else if !target.decrypted.contains(&id) {
            let reason = handshake.reason.clone().unwrap_or_else(|| "unknown".into());
            let peer = handshake
                .sni
                .clone()
                .or_else(|| handshake.conn.remote_name.clone())
                .or_else(|| handshake.conn.remote.map(|a| a.to_string()))
                .unwrap_or_else(|| "?".into());
            target.not_decrypted.entry(reason).or_default().insert(id, peer);
        }
    }

    /// Plaintext of a connection was captured (its handshake may be unseen:
    /// it was open before the spy started).
    pub fn add_plaintext(&mut self, conn: &Connection) {
        let target = self.targets.entry(target_of(conn)).or_default();
        if target.decrypted.insert(conn.id.clone()) {
            for peers in target.not_decrypted.values_mut() {
                peers.remove(&conn.id);
            }
            target.not_decrypted.retain(|_, peers| !peers.is_empty());
        }
    }

    pub fn table(&self) -> Option<String> {
        if self.targets.is_empty() {
            return None;
        }
        let mut table = Table::new();
        table
            .load_style(presets::UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header(["target", "TLS connections", "decrypted", "not decrypted", "why not (peers)"]);
        for (name, target) in &self.targets {
            let not_decrypted: usize = target.not_decrypted.values().map(BTreeMap::len).sum();
            let why = target
                .not_decrypted
                .iter()
                .map(|(reason, peers)| {
                    let names: BTreeSet<&str> = peers.values().map(String::as_str).collect();
                    let mut shown: Vec<&str> = names.iter().copied().take(MAX_PEERS_SHOWN).collect();
                    let more = names.len().saturating_sub(MAX_PEERS_SHOWN);
                    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
                    shown.sort_unstable();
                    format!("{} ({}{more})", field(reason), field(&shown.join(", ")))
                })
                .collect::<Vec<_>>()
                .join("\n");
            table.add_row(vec![
                Cell::new(field(name)),
                Cell::new(target.decrypted.len() + not_decrypted).set_alignment(CellAlignment::Right),
                Cell::new(target.decrypted.len()).set_alignment(CellAlignment::Right),
                Cell::new(not_decrypted).set_alignment(CellAlignment::Right),
                Cell::new(if why.is_empty() { "-".to_string() } else { why }),
            ]);
        }
        Some(table.to_string())
    }
}

/// "namespace/pod/container", or "process[pid]" outside Kubernetes.
fn target_of(conn: &Connection) -> String {
    match &conn.pod {
        Some(pod) => match &pod.container {
            Some(container) => format!("{}/{}/{container}", pod.namespace, pod.name),
            None => format!("{}/{}", pod.namespace, pod.name),
        },
        None => format!("{}[{}]", conn.process, conn.pid),
    }
}

/// The path without its query string: one route for /users?id=1 and ?id=2.
fn route_of(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

/// Nearest-rank percentile of sorted microseconds, as text.
fn percentile(sorted_us: &[u64], p: usize) -> String {
    if sorted_us.is_empty() {
        return "-".to_string();
    }
    let rank = (p * sorted_us.len()).div_ceil(100).max(1);
    let us = sorted_us[rank.min(sorted_us.len()) - 1];
    if us < 1000 {
        format!("{us}µs")
    } else {
        format!("{:.1}ms", us as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spy_protocol::record::{Body, Connection, Protocol, Request, Response};

    fn exchange(path: &str, status: u16, latency_us: u64) -> Exchange {
        Exchange {
            conn: Connection::default(),
            protocol: Protocol::Http1,
            stream_id: None,
            request: Some(Request {
                method: "GET".into(),
                authority: Some("api".into()),
                path: path.into(),
                ..Default::default()
            }),
            response: Some(Response { status, body: Body { size: 10, ..Default::default() }, ..Default::default() }),
            grpc: None,
            latency_us: Some(latency_us),
            incomplete: None,
        }
    }

    #[test]
    fn decryption_per_target_says_what_and_why() {
        use spy_protocol::record::PodRef;
        let conn = |id: &str, container: &str| Connection {
            id: id.into(),
            pod: Some(PodRef { namespace: "shop".into(), name: "api-7".into(), container: Some(container.into()) }),
            ..Connection::default()
        };
        let mut d = Decryption::default();
        d.add_handshake(&Handshake { conn: conn("c1", "app"), decrypted: true, ..Default::default() });
        d.add_handshake(&Handshake {
            conn: conn("c2", "app"),
            sni: Some("db.test".into()),
            reason: Some("rustls".into()),
            ..Default::default()
        });
        // Open before the spy started: no handshake, plaintext only.
        d.add_plaintext(&conn("c3", "app"));
        d.add_handshake(&Handshake {
            conn: conn("c4", "sidecar"),
            sni: Some("x.test".into()),
            reason: Some("Java".into()),
            ..Default::default()
        });
        let table = d.table().expect("table");
        let row = |needle: &str| -> Vec<String> {
            let line = table.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle}: {table}"));
            line.split(['│', '┆']).map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect()
        };
        assert_eq!(row("shop/api-7/app"), ["shop/api-7/app", "3", "2", "1", "rustls (db.test)"], "{table}");
        assert_eq!(row("shop/api-7/sidecar"), ["shop/api-7/sidecar", "1", "0", "1", "Java (x.test)"], "{table}");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), "50µs");
        assert_eq!(percentile(&v, 99), "99µs");
        assert_eq!(percentile(&[7], 99), "7µs");
        assert_eq!(percentile(&[], 50), "-");
    }

    #[test]
    fn routes_group_by_path_without_query_and_count_errors() {
        let mut summary = Summary::default();
        summary.add(&exchange("/users?id=1", 200, 1000));
        summary.add(&exchange("/users?id=2", 503, 3000));
        let table = summary.table().expect("table");
        assert!(table.contains("GET /users"), "{table}");
        let row = table.lines().find(|l| l.contains("GET /users")).expect("row");
        let cells: Vec<&str> = row.split(['│', '┆']).map(str::trim).collect();
        assert_eq!(&cells[3..8], ["2", "1", "1.0ms", "3.0ms", "20"], "{row}");
    }
}
