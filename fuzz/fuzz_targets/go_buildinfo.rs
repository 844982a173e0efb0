#![no_main]
//! Go binary analysis, .go.buildinfo blobs (both layouts): any bytes give an answer, never a panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    spy_image::targets::go::fuzzing::buildinfo(data);
});
