//! eBPF: load, attach, read events.
