#![no_main]
//! Go binary analysis, DWARF sections, as the struct-offset reader walks them: any bytes give an answer, never a panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    spy_image::targets::go::fuzzing::dwarf(data);
});
