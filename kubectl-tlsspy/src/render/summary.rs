//! The summary table at exit: per host and route, count, errors, latency
//! percentiles, bytes.

use std::collections::BTreeMap;

use comfy_table::{presets, Cell, CellAlignment, ContentArrangement, Table};
use spy_image::record::Exchange;

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
                response.status >= 500
                    || exchange.grpc.as_ref().and_then(|g| g.status).is_some_and(|s| s != 0)
            }
            None => true,
        };
        if failed {
            stats.errors += 1;
        }
        if let Some(latency) = exchange.latency_us {
            stats.latencies_us.push(latency);
        }
        stats.bytes += request.map_or(0, |r| r.body.size)
            + exchange.response.as_ref().map_or(0, |r| r.body.size);
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
                Cell::new(host),
                Cell::new(route),
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
    use spy_image::record::{Body, Connection, Protocol, Request, Response};

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
            response: Some(Response {
                status,
                body: Body { size: 10, ..Default::default() },
                ..Default::default()
            }),
            grpc: None,
            latency_us: Some(latency_us),
            incomplete: None,
        }
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
