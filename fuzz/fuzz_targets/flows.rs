#![no_main]
//! TCP flows reassembled for TLS hellos: a sequence of packets a hostile
//! target (or its peer) sends, in any order, with any flags and sequence
//! numbers. Input: records of `[control][len_hi][len_lo][len bytes]`; each
//! record's bytes are one captured packet (IP header first). Control bit 0
//! says whether the flow's owner is a target; bits 1-7 advance the clock
//! (so idle and late-hello paths run). The table must stay within its
//! bounds: flows, and out-of-order bytes per direction.
use spy_image::capture::flows::{FlowTable, MAX_FLOWS, MAX_OUT_OF_ORDER_BYTES};
use spy_image::capture::packet;
use std::net::SocketAddr;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut table: FlowTable<u32> = FlowTable::new();
    let mut out = Vec::new();
    let mut now_ns = 1_000_000_000u64;
    let mut rest = data;
    while let Some((&control, tail)) = rest.split_first() {
        let (packet, tail) = match tail.get(..2) {
            Some(l) => {
                let len = usize::from(u16::from_be_bytes([l[0], l[1]])).min(tail.len() - 2);
                (&tail[2..2 + len], &tail[2 + len..])
            }
            None => (tail, &tail[tail.len()..]),
        };
        rest = tail;
        // Up to ~2 minutes per step: past the flows' idle timeout in a few.
        now_ns = now_ns.saturating_add(u64::from(control >> 1) * 1_000_000_000);
        let owned = control & 1 != 0;
        if let Ok(segment) = packet::parse(packet, packet.len()) {
            let mut owners = |_: SocketAddr, _: SocketAddr| owned.then_some(7u32);
            table.on_segment(&segment, now_ns, &mut owners, &mut out);
        }
        if control & 0x80 != 0 {
            table.tick(now_ns, &mut out);
        }
        assert!(table.len() <= MAX_FLOWS);
        assert!(table.held_bytes() <= table.len() * 2 * MAX_OUT_OF_ORDER_BYTES, "{}", table.held_bytes());
        out.clear();
    }
    table.flush(&mut out);
    assert_eq!(table.held_bytes(), 0, "a flushed table holds nothing");
});
