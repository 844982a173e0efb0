#![no_main]
//! Go binary analysis, a pclntab: header, function table, names: any bytes give an answer, never a panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    spy_image::targets::go::fuzzing::pclntab(data);
});
