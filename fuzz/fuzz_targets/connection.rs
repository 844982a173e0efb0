#![no_main]
//! The dispatcher: detection from the first bytes, then whichever parser.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    spy_image_fuzz::run(data, [b"", b""]);
});
