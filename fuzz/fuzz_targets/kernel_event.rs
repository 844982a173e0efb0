#![no_main]
//! Ring buffer records, as a hostile target could shape them: what a
//! traced process writes becomes data events, and the decoder must take
//! any bytes. Input: records of `[len_hi][len_lo][len bytes]` (a short tail
//! is one record). Each record is decoded and what decodes goes on to the
//! connection tracker (data, closes, exits), so call numbering, gap marking
//! and closes are fuzzed with it, under a small memory budget.
use spy_image::conn::{Budget, Tracker};
use spy_image::memory::MemoryGauge;
use spy_image::probes::event::{self, KernelEvent};
use spy_image::proto::ParseOptions;

/// Small enough that eviction paths run; what the tracker holds must stay
/// within it (checked after every record).
const BUDGET: u64 = 4 << 20;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut tracker = Tracker::new(ParseOptions { max_body: 256, show_secrets: false }, false);
    let gauge = MemoryGauge::new(BUDGET);
    tracker.set_budget(Budget::new(gauge.clone(), 1_000_000));
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let (record, tail) = match rest.get(..2) {
            Some(l) => {
                let len = usize::from(u16::from_be_bytes([l[0], l[1]])).min(rest.len() - 2);
                (&rest[2..2 + len], &rest[2 + len..])
            }
            None => (rest, &rest[rest.len()..]),
        };
        rest = tail;
        match event::decode(record) {
            Ok(KernelEvent::Data { header, data }) => {
                assert!(data.len() <= spy_ebpf::MAX_DATA, "a data event larger than the kernel sends");
                let ev = event::data_event(&header, data, header.ts_ns);
                tracker.on_data(&ev, &mut out);
            }
            Ok(KernelEvent::Close(close)) => {
                let (conn_ptr, fd) = event::closed(&close);
                tracker.connection_closed(close.tgid, conn_ptr, fd, &mut out);
            }
            Ok(KernelEvent::Exit(proc_event)) => tracker.process_exited(proc_event.tgid, &mut out),
            Ok(KernelEvent::Fork(_) | KernelEvent::Exec(_)) | Err(_) => {}
        }
        assert!(gauge.held() <= BUDGET + (64 << 10), "the tracker holds {} past its budget", gauge.held());
        // Records are the spy's output: drop them as the sink would.
        out.clear();
    }
    tracker.finish(&mut out);
});
