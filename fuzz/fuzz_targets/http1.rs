#![no_main]
//! HTTP/1.x: the client's stream starts with a method, the server's with a
//! status line, so the parser stays in HTTP/1 and the fuzzer explores it.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    spy_image_fuzz::run(data, [b"GET ", b"HTTP/1.1 "]);
});
