//! Message bodies: keep at most `max_body` bytes, count them all, and
//! content-decode (gzip, deflate) what was kept for display.

use std::io::Read;

use flate2::read::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};

use spy_protocol::record::{Body, Payload};

/// Read size while decoding; output beyond the cap stops the decoder, so a
/// decompression bomb costs at most `max_body` plus one step.
const DECODE_STEP: usize = 8 * 1024;

/// A body being received.
#[derive(Clone, Debug, Default)]
pub(crate) struct BodyBuf {
    /// Bytes on the wire, kept or not.
    size: u64,
    kept: Vec<u8>,
    /// Some bytes never reached us (a gap): the kept bytes are not the
    /// body's prefix any more, so they are not decoded.
    lost: bool,
}

impl BodyBuf {
    pub(crate) fn push(&mut self, data: &[u8], max_body: usize) {
        self.size = self.size.saturating_add(data.len() as u64);
        let room = max_body.saturating_sub(self.kept.len());
        if !self.lost {
            self.kept.extend_from_slice(&data[..data.len().min(room)]);
        }
    }

    /// `len` bytes of the body were lost in capture.
    pub(crate) fn skip(&mut self, len: u64) {
        self.size = self.size.saturating_add(len);
        self.lost = true;
    }

    /// The record form; `content_encoding` is the message's Content-Encoding.
    pub(crate) fn finish(self, content_encoding: Option<&str>, max_body: usize) -> Body {
        let truncated = self.size > self.kept.len() as u64;
        let mut body = Body {
            size: self.size,
            data: None,
            truncated,
            content_encoding: content_encoding.map(str::to_owned),
            decoded: false,
        };
        if self.kept.is_empty() {
            return body;
        }
        let codec = content_encoding.and_then(Codec::parse);
        if let (Some(codec), false) = (codec, self.lost) {
            if let Some((decoded, complete)) = decode(codec, &self.kept, max_body, truncated) {
                let cut = truncated || !complete;
                body.data = Some(Payload::from_vec(decoded, cut));
                body.decoded = true;
                body.truncated = cut;
                return body;
            }
        }
        body.data = Some(Payload::from_vec(self.kept, truncated));
        body
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Codec {
    Gzip,
    Deflate,
}

impl Codec {
    /// Only a single coding is decoded; "gzip, br" and friends stay raw.
    pub(crate) fn parse(content_encoding: &str) -> Option<Codec> {
        match content_encoding.trim().to_ascii_lowercase().as_str() {
            "gzip" | "x-gzip" => Some(Codec::Gzip),
            "deflate" => Some(Codec::Deflate),
            _ => None,
        }
    }
}

/// Decodes `input`, keeping at most `max` bytes. Answers the output and
/// whether it is all of it; `None` when the input does not decode (then the
/// raw bytes are shown). A truncated input may still give a useful prefix.
pub(crate) fn decode(codec: Codec, input: &[u8], max: usize, input_truncated: bool) -> Option<(Vec<u8>, bool)> {
    let mut reader: Box<dyn Read + '_> = match codec {
        Codec::Gzip => Box::new(MultiGzDecoder::new(input)),
        // RFC 9110 says "deflate" is zlib-wrapped; some servers send raw
        // deflate anyway. The zlib header is self-checking (a multiple of 31).
        Codec::Deflate if looks_like_zlib(input) => Box::new(ZlibDecoder::new(input)),
        Codec::Deflate => Box::new(DeflateDecoder::new(input)),
    };
    let mut out = Vec::new();
    let mut step = vec![0u8; DECODE_STEP];
    loop {
        match reader.read(&mut step) {
            Ok(0) => return Some((out, true)),
            Ok(n) => {
                out.extend_from_slice(&step[..n]);
                if out.len() > max {
                    out.truncate(max);
                    return Some((out, false));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) if input_truncated && !out.is_empty() => return Some((out, false)),
            Err(_) => return None,
        }
    }
}

fn looks_like_zlib(input: &[u8]) -> bool {
    match input {
        [cmf, flg, ..] => cmf & 0x0f == 8 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0,
        _ => false,
    }
}

impl BodyBuf {
    /// Memory held (for the agent's budget).
    pub(crate) fn held_bytes(&self) -> usize {
        self.kept.capacity()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_character_cut_by_the_limit_keeps_the_rest_text() {
        let mut body = BodyBuf::default();
        body.push("héllo wörld".as_bytes(), 8); // "héllo w" is 8 bytes: no cut char
        let text = |b: &Body| match &b.data {
            Some(Payload::Text(t)) => Some(t.clone()),
            _ => None,
        };
        assert_eq!(text(&body.clone().finish(None, 8)).as_deref(), Some("héllo w"));
        let mut body = BodyBuf::default();
        body.push("wörld".as_bytes(), 2); // "w" and half of "ö"
        let finished = body.finish(None, 2);
        assert!(finished.truncated);
        assert_eq!(text(&finished).as_deref(), Some("w"));
        // Not cut: invalid bytes stay base64.
        let mut body = BodyBuf::default();
        body.push(&[0x77, 0xc3], 16);
        assert!(matches!(body.finish(None, 16).data, Some(Payload::Base64(_))));
    }

    use std::io::Write;

    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::Compression;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(data).expect("write");
        enc.finish().expect("finish")
    }

    #[test]
    fn keeps_at_most_max_and_counts_all() {
        let mut body = BodyBuf::default();
        body.push(b"hello ", 8);
        body.push(b"world", 8);
        let body = body.finish(None, 8);
        assert_eq!(body.size, 11);
        assert!(body.truncated);
        assert_eq!(body.data, Some(Payload::Text("hello wo".into())));
        assert!(!body.decoded);
    }

    #[test]
    fn empty_body_has_no_data() {
        let body = BodyBuf::default().finish(Some("gzip"), 8);
        assert_eq!(body.size, 0);
        assert_eq!(body.data, None);
        assert_eq!(body.content_encoding.as_deref(), Some("gzip"));
    }

    #[test]
    fn gzip_is_decoded_and_the_output_capped() {
        let plain = b"abcdefghij".repeat(100);
        let wire = gzip(&plain);
        let mut body = BodyBuf::default();
        body.push(&wire, 1 << 20);
        let whole = body.clone().finish(Some("gzip"), 1 << 20);
        assert!(whole.decoded);
        assert!(!whole.truncated);
        assert_eq!(whole.size, wire.len() as u64);
        assert_eq!(whole.data.expect("data").to_bytes(), plain);

        let capped = body.finish(Some("GZIP"), 50);
        assert!(capped.decoded && capped.truncated);
        assert_eq!(capped.data.expect("data").to_bytes(), &plain[..50]);
    }

    #[test]
    fn zlib_and_raw_deflate_both_decode() {
        let plain = b"deflate me please, deflate me".to_vec();
        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(&plain).expect("write");
        let mut r = DeflateEncoder::new(Vec::new(), Compression::default());
        r.write_all(&plain).expect("write");
        for wire in [z.finish().expect("zlib"), r.finish().expect("raw")] {
            let mut body = BodyBuf::default();
            body.push(&wire, 1024);
            let body = body.finish(Some("deflate"), 1024);
            assert!(body.decoded);
            assert_eq!(body.data.expect("data").to_bytes(), plain);
        }
    }

    #[test]
    fn a_bad_gzip_body_stays_raw() {
        let mut body = BodyBuf::default();
        body.push(b"\x1f\x8bnot really gzip", 1024);
        let body = body.finish(Some("gzip"), 1024);
        assert!(!body.decoded);
        assert_eq!(body.data.expect("data").to_bytes(), b"\x1f\x8bnot really gzip");
    }

    #[test]
    fn a_truncated_gzip_body_shows_the_decoded_prefix() {
        let plain: Vec<u8> = (0..20_000u32).flat_map(|i| i.to_string().into_bytes()).collect();
        let wire = gzip(&plain);
        let mut body = BodyBuf::default();
        body.push(&wire, wire.len() / 2);
        let body = body.finish(Some("gzip"), 1 << 20);
        assert!(body.decoded && body.truncated);
        let shown = body.data.expect("data").to_bytes();
        assert!(!shown.is_empty() && plain.starts_with(&shown));
    }

    #[test]
    fn a_gzip_bomb_costs_at_most_the_cap() {
        let wire = gzip(&vec![0u8; 50 << 20]);
        let (out, complete) = decode(Codec::Gzip, &wire, 4096, false).expect("decodes");
        assert_eq!(out.len(), 4096);
        assert!(!complete);
    }

    #[test]
    fn lost_bytes_mark_truncated_and_skip_decoding() {
        let mut body = BodyBuf::default();
        body.push(&gzip(b"x"), 1024);
        body.skip(10);
        let body = body.finish(Some("gzip"), 1024);
        assert!(body.truncated && !body.decoded);
    }
}
