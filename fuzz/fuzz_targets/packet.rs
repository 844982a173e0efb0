#![no_main]
//! IPv4/IPv6 + TCP headers of a captured packet: a target's packets are
//! whatever it sends. The first two bytes are the packet's length on the
//! wire (as the capture reports it), the rest the captured bytes.
use spy_image::capture::packet;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((wire, bytes)) = data.split_first_chunk::<2>() else { return };
    let wire_len = usize::from(u16::from_be_bytes(*wire));
    if let Ok(segment) = packet::parse(bytes, wire_len) {
        // The payload is a slice of what was captured, never more.
        assert!(segment.payload.len() <= bytes.len());
        let _ = segment.truncated();
    }
});
