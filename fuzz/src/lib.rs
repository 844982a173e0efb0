//! Turns a fuzz input into calls on a [`ConnectionParser`].
//!
//! Input: records of `[control][len_hi][len_lo][len bytes]`. Control bit 0
//! picks the direction (0 = Send, 1 = Recv); bit 1 makes the record a gap
//! of `len` lost bytes instead of data. A short tail is fed as data.

#![forbid(unsafe_code)]

use spy_image::proto::{ConnectionParser, ParseOptions, Parsed};
use spy_protocol::record::Direction;

/// Runs one input. `prefixes` are fed first in each direction (so a target
/// can hold the parser in one protocol), then the records, then finish.
pub fn run(data: &[u8], prefixes: [&[u8]; 2]) {
    // A small body cap so that capping paths are exercised.
    let options = ParseOptions { max_body: 256, show_secrets: data.first().is_some_and(|b| b & 0x80 != 0) };
    let mut parser = ConnectionParser::new(options);
    let mut out = Vec::new();
    let mut fed = [0u64; 2];
    let mut prefixed = [false; 2];
    let mut rest = data;
    let mut ts = 0u64;
    while !rest.is_empty() {
        let control = rest[0];
        let (len, body) = match rest.get(1..3) {
            Some(l) => (usize::from(u16::from_be_bytes([l[0], l[1]])), &rest[3..]),
            None => (rest.len() - 1, &rest[1..]),
        };
        let dir = if control & 1 == 0 { Direction::Send } else { Direction::Recv };
        let d = dir as usize;
        if !prefixed[d] && !prefixes[d].is_empty() {
            parser.feed(dir, ts, prefixes[d], &mut out);
            fed[d] += prefixes[d].len() as u64;
        }
        prefixed[d] = true;
        ts += 1000;
        if control & 2 != 0 {
            parser.gap(dir, len as u64, &mut out);
            fed[d] += len as u64;
            rest = body;
        } else {
            let n = len.min(body.len());
            parser.feed(dir, ts, &body[..n], &mut out);
            fed[d] += n as u64;
            rest = &body[n..];
        }
    }
    parser.finish("fuzz", &mut out);
    check(&out, fed);
}

/// What must hold for any input: unclaimed bytes stay within what was fed.
fn check(out: &[Parsed], fed: [u64; 2]) {
    for item in out {
        if let Parsed::Unclaimed { direction, offset, data, .. } = item {
            assert!(offset + data.len() as u64 <= fed[*direction as usize], "unclaimed bytes past the stream");
        }
    }
}
