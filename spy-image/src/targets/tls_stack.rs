//! TLS stack detection in ELF files.
