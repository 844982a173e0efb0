#![no_main]
//! HTTP/2: the client's stream starts with the preface; the rest is frames.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    spy_image_fuzz::run(data, [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b""]);
});
