#![no_main]
//! TLS hellos: the first byte splits the input into pieces fed in turn (as
//! TCP segments would bring them); every hello found is fingerprinted and
//! described, so JA4 and the record fields are fuzzed too.
use spy_image::proto::tls_handshake::{HelloEvent, HelloReader};
use spy_protocol::record::Handshake;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let mut reader = HelloReader::new();
    let mut out = Vec::new();
    for piece in rest.chunks(usize::from(split).max(1)) {
        reader.feed(piece, &mut out);
    }
    let mut record = Handshake::default();
    for event in &out {
        match event {
            HelloEvent::Client(hello) => {
                hello.describe(&mut record);
                let _ = (hello.ja4_raw(), hello.ja4_original());
            }
            HelloEvent::Server(hello) => hello.describe(&mut record),
            HelloEvent::NotTls(_) | HelloEvent::Malformed(_) => {}
        }
    }
});
