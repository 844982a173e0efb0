//! Where each piece of plaintext sits in its connection's byte stream, per
//! direction, and what the kernel lost in between.
//!
//! A TLS call larger than one kernel event arrives as several events,
//! `call_offset` apart; when one of them is lost (ring buffer full), the
//! next one starts further into the call than expected, and the bytes in
//! between are a gap the parser is told about.

#![forbid(unsafe_code)]

use spy_protocol::record::Direction;

/// Stream positions of one connection, both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamOffsets {
    /// Next expected `call_offset` within the current call, per direction.
    expected_call_offset: [u64; 2],
    /// Bytes of each direction's stream so far, gaps included.
    stream_offset: [u64; 2],
}

/// Where one event's bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    /// The event is not where the stream was: something before it was lost
    /// (even when how much cannot be told: an event that starts before
    /// the expected offset).
    pub lost: bool,
    /// Bytes known lost just before these (0: none, or unknown).
    pub gap: u64,
    /// Offset of the event's first byte in the direction's stream.
    pub offset: u64,
}

impl StreamOffsets {
    /// Places `len` bytes that start `call_offset` into a call of
    /// `call_len` bytes, and moves past them.
    pub fn place(&mut self, direction: Direction, call_offset: u64, len: u64, call_len: u64) -> Placed {
        let dir = direction as usize;
        let mut gap = 0;
        let lost = call_offset != self.expected_call_offset[dir] && call_offset != 0;
        if lost {
            // Part of this call was lost: bytes between what we expected
            // and where this event starts never arrived.
            gap = call_offset.saturating_sub(self.expected_call_offset[dir]);
            self.stream_offset[dir] = self.stream_offset[dir].saturating_add(gap);
        }
        let end = call_offset.saturating_add(len);
        self.expected_call_offset[dir] = if end >= call_len { 0 } else { end };
        let offset = self.stream_offset[dir];
        self.stream_offset[dir] = self.stream_offset[dir].saturating_add(len);
        Placed { lost, gap, offset }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_calls_follow_each_other_per_direction() {
        let mut s = StreamOffsets::default();
        assert_eq!(s.place(Direction::Send, 0, 5, 5), Placed { lost: false, gap: 0, offset: 0 });
        assert_eq!(s.place(Direction::Send, 0, 3, 3), Placed { lost: false, gap: 0, offset: 5 });
        assert_eq!(s.place(Direction::Recv, 0, 2, 2), Placed { lost: false, gap: 0, offset: 0 });
    }

    #[test]
    fn a_call_in_pieces_is_contiguous_and_a_lost_piece_is_a_gap() {
        let mut s = StreamOffsets::default();
        // A 100-byte call in pieces of 40: the second piece is lost.
        assert_eq!(s.place(Direction::Recv, 0, 40, 100), Placed { lost: false, gap: 0, offset: 0 });
        assert_eq!(s.place(Direction::Recv, 80, 20, 100), Placed { lost: true, gap: 40, offset: 80 });
        // The call is done: the next one starts afresh.
        assert_eq!(s.place(Direction::Recv, 0, 10, 10), Placed { lost: false, gap: 0, offset: 100 });
        // A piece that starts a call is never a gap, even mid-way expected.
        assert_eq!(s.place(Direction::Recv, 0, 40, 100), Placed { lost: false, gap: 0, offset: 110 });
        assert_eq!(s.place(Direction::Recv, 0, 5, 5), Placed { lost: false, gap: 0, offset: 150 });
    }

    #[test]
    fn a_piece_before_the_expected_offset_is_a_loss_of_unknown_size() {
        let mut s = StreamOffsets::default();
        assert_eq!(s.place(Direction::Send, 0, 120, 200), Placed { lost: false, gap: 0, offset: 0 });
        // The rest of that call and the start of the next are lost; the
        // next call's piece at 40 comes while 120 was expected.
        assert_eq!(s.place(Direction::Send, 40, 10, 300), Placed { lost: true, gap: 0, offset: 120 });
    }

    #[test]
    fn absurd_offsets_do_not_overflow() {
        let mut s = StreamOffsets::default();
        let placed = s.place(Direction::Send, u64::MAX, 10, u64::MAX);
        assert_eq!(placed.gap, u64::MAX);
    }
}
