#![no_main]
//! Go binary analysis, a would-be Go executable: ELF parse, buildinfo, pclntab, disassembly, DWARF, end to end: any bytes give an answer, never a panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    spy_image::targets::go::fuzzing::elf(data);
});
