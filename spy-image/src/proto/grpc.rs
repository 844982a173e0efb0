//! gRPC over HTTP/2: which requests are gRPC, service and method, the
//! length-prefixed messages each way, and the final status.

use spy_protocol::record::Header;

/// Message sizes kept per direction; the count goes on past it.
pub(crate) const MAX_GRPC_SIZES: usize = 256;

/// Compressed flag (1 byte) + message length (u32, big-endian).
const PREFIX_LEN: usize = 5;

/// `application/grpc`, `application/grpc+proto`, `application/grpc;…`, but
/// not `application/grpc-web` (its own framing).
pub(crate) fn is_grpc(content_type: &str) -> bool {
    let ct = content_type.trim().to_ascii_lowercase();
    match ct.strip_prefix("application/grpc") {
        Some(rest) => rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'),
        None => false,
    }
}

/// `/pkg.Service/Method` → (`pkg.Service`, `Method`).
pub(crate) fn split_path(path: &str) -> (String, String) {
    let path = path.strip_prefix('/').unwrap_or(path);
    match path.rsplit_once('/') {
        Some((service, method)) => (service.to_owned(), method.to_owned()),
        None => (path.to_owned(), String::new()),
    }
}

/// grpc-status and grpc-message (percent-decoded) from a header list.
pub(crate) fn status(headers: &[Header]) -> (Option<u32>, Option<String>) {
    let find = |name: &str| headers.iter().find(|h| !h.unknown && h.name.eq_ignore_ascii_case(name));
    let code = find("grpc-status").and_then(|h| h.value.trim().parse().ok());
    let message = find("grpc-message").map(|h| percent_decode(&h.value));
    (code, message)
}

/// grpc-message is percent-encoded UTF-8 (gRPC's PROTOCOL-HTTP2 spec). A
/// `%` without two hex digits after it stays as it is; bytes that are not
/// UTF-8 once decoded show as U+FFFD, since a peer may send anything.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Counts length-prefixed messages in one direction of a stream, fed in
/// pieces as DATA frames arrive.
#[derive(Clone, Debug, Default)]
pub(crate) struct MessageCounter {
    prefix: [u8; PREFIX_LEN],
    prefix_len: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
    pub(crate) count: u32,
    pub(crate) sizes: Vec<u32>,
    /// Bytes were lost: message boundaries are unknown from here on.
    lost: bool,
}

impl MessageCounter {
    pub(crate) fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.lost {
            if self.remaining > 0 {
                let n = data.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = data.len().min(PREFIX_LEN - self.prefix_len);
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
            self.prefix_len += n;
            data = &data[n..];
            if self.prefix_len == PREFIX_LEN {
                let len = u32::from_be_bytes([self.prefix[1], self.prefix[2], self.prefix[3], self.prefix[4]]);
                self.count = self.count.saturating_add(1);
                if self.sizes.len() < MAX_GRPC_SIZES {
                    self.sizes.push(len);
                }
                self.remaining = u64::from(len);
                self.prefix_len = 0;
            }
        }
    }

    pub(crate) fn skip(&mut self) {
        self.lost = true;
    }
}

impl MessageCounter {
    /// Memory held on the heap (for the agent's budget).
    pub(crate) fn held_bytes(&self) -> usize {
        self.sizes.capacity() * std::mem::size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: u32) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len as usize));
        m
    }

    #[test]
    fn content_types() {
        assert!(is_grpc("application/grpc"));
        assert!(is_grpc("application/grpc+proto"));
        assert!(is_grpc("Application/GRPC; charset=utf-8"));
        assert!(!is_grpc("application/grpc-web"));
        assert!(!is_grpc("application/json"));
    }

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(split_path("/helloworld.Greeter/SayHello"), ("helloworld.Greeter".into(), "SayHello".into()));
        assert_eq!(split_path("/odd"), ("odd".into(), String::new()));
    }

    #[test]
    fn messages_are_counted_at_any_split() {
        let mut wire = message(3);
        wire.extend(message(0));
        wire.extend(message(300));
        for split in 0..=wire.len() {
            let mut c = MessageCounter::default();
            c.push(&wire[..split]);
            c.push(&wire[split..]);
            assert_eq!((c.count, c.sizes.as_slice()), (3, &[3, 0, 300][..]), "split {split}");
        }
    }

    #[test]
    fn size_list_is_capped_but_count_is_not() {
        let mut c = MessageCounter::default();
        for _ in 0..MAX_GRPC_SIZES + 10 {
            c.push(&message(1));
        }
        assert_eq!(c.count as usize, MAX_GRPC_SIZES + 10);
        assert_eq!(c.sizes.len(), MAX_GRPC_SIZES);
    }

    #[test]
    fn status_and_percent_decoded_message() {
        let h = |n: &str, v: &str| Header { name: n.into(), value: v.into(), redacted: false, unknown: false };
        let (code, msg) = status(&[h("grpc-status", "5"), h("grpc-message", "not%20found%3A%20x%zz")]);
        assert_eq!(code, Some(5));
        assert_eq!(msg.as_deref(), Some("not found: x%zz"));
        assert_eq!(status(&[]), (None, None));
    }

    #[test]
    fn messages_that_are_not_utf8_or_cut_short_do_not_panic() {
        assert_eq!(percent_decode("%ff%C3%A9"), "\u{fffd}\u{e9}");
        assert_eq!(percent_decode("%C3"), "\u{fffd}");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%+a%é"), "%+a%é");
        assert_eq!(percent_decode(""), "");
    }
}
