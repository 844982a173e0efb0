//! Where each piece of plaintext sits in its connection's byte stream, per
//! direction, and what the kernel lost in between.
//!
//! The kernel numbers every TLS call per connection and direction
//! (`call_seq`) and says how many bytes the calls before it moved
//! (`call_start`), whether or not their events fit in the ring buffer. A
//! call larger than one kernel event arrives as several, `call_offset`
//! apart. So a piece's place in the stream is `call_start + call_offset`:
//! when that is past where the stream was, the bytes in between (whole
//! calls, or part of one) were lost there, and the parser is told so at
//! that point instead of being handed the next bytes as if they followed.
//!
//! Events from a source that numbers no calls ([`CallPosition`] absent)
//! only have losses inside a call found, from `call_offset` alone.

#![forbid(unsafe_code)]

use spy_protocol::record::Direction;

/// More bytes than any connection moves (4 EiB): a jump past it is no real
/// loss but a position gone wrong, and is told as a loss of unknown size,
/// so that the parsers' offsets stay far from overflow.
pub const MAX_STREAM_BYTES: u64 = 1 << 62;

/// Where the kernel put a call: its number and the bytes before it, in its
/// connection and direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallPosition {
    pub seq: u64,
    pub start: u64,
}

/// One piece of a call, as an event brings it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Piece {
    pub position: Option<CallPosition>,
    pub call_offset: u64,
    pub len: u64,
    pub call_len: u64,
}

/// Stream positions of one connection, both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamOffsets {
    dirs: [DirOffsets; 2],
    /// The connection's first numbered piece was the kernel's first call
    /// of it (call 0 at byte 0): its numbering is known from the start in
    /// both directions, so the other direction's first call must be 0 too.
    /// Otherwise (joined after calls were numbered: an evicted connection
    /// seen again) each direction starts where it is first seen.
    numbered_from_start: Option<bool>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct DirOffsets {
    /// Next expected `call_offset` within the current call.
    expected_call_offset: u64,
    /// The kernel's position (`call_start + call_offset`) expected next,
    /// and the number of the call after the last one seen (the rest of a
    /// call in pieces keeps the last one's); `None` before the first
    /// numbered piece.
    kernel: Option<KernelExpect>,
    /// Bytes of the stream so far, gaps included.
    stream_offset: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct KernelExpect {
    position: u64,
    next_seq: u64,
}

/// Where one event's bytes go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Placed {
    /// The event is not where the stream was: something before it was lost
    /// (even when how much cannot be told: an event that starts before
    /// the expected offset).
    pub lost: bool,
    /// Bytes known lost just before these (0: none, or unknown).
    pub gap: u64,
    /// Whole TLS calls lost just before these (the kernel's numbering
    /// jumped); 0 when only part of a call, or nothing, was lost.
    pub lost_calls: u64,
    /// Offset of the event's first byte in the direction's stream.
    pub offset: u64,
}

impl StreamOffsets {
    /// Places one piece of a call and moves past it.
    pub fn place(&mut self, direction: Direction, piece: Piece) -> Placed {
        if let (Some(position), None) = (piece.position, self.numbered_from_start) {
            self.numbered_from_start = Some(position == CallPosition::default() && piece.call_offset == 0);
        }
        let from_start = self.numbered_from_start == Some(true);
        let dir = &mut self.dirs[direction as usize];
        let placed = match (piece.position, dir.kernel) {
            (Some(position), Some(expect)) => by_kernel(position, piece.call_offset, expect),
            (Some(position), None) if from_start => by_kernel(position, piece.call_offset, KernelExpect::default()),
            // Otherwise the stream is taken from here: a connection found
            // again after it was forgotten has calls before that were
            // never ours to see. Only a piece that is not a call's first is
            // known to follow a loss.
            (Some(_), None) | (None, _) => by_call_offset(piece.call_offset, dir.expected_call_offset),
        };
        if let Some(position) = piece.position {
            dir.kernel = Some(KernelExpect {
                position: position.start.saturating_add(piece.call_offset).saturating_add(piece.len),
                next_seq: position.seq.saturating_add(1),
            });
        }
        let mut placed = placed;
        if dir.stream_offset.saturating_add(placed.gap) > MAX_STREAM_BYTES {
            placed.gap = 0;
        }
        let end = piece.call_offset.saturating_add(piece.len);
        dir.expected_call_offset = if end >= piece.call_len { 0 } else { end };
        dir.stream_offset = dir.stream_offset.saturating_add(placed.gap);
        let offset = dir.stream_offset;
        dir.stream_offset = dir.stream_offset.saturating_add(piece.len);
        Placed { offset, ..placed }
    }
}

/// A numbered piece against what the kernel's numbering expects next.
fn by_kernel(position: CallPosition, call_offset: u64, expect: KernelExpect) -> Placed {
    let at = position.start.saturating_add(call_offset);
    if at > expect.position {
        Placed {
            lost: true,
            gap: at - expect.position,
            lost_calls: position.seq.saturating_sub(expect.next_seq),
            offset: 0,
        }
    } else if at < expect.position || position.seq.saturating_add(1) < expect.next_seq {
        // Behind: the kernel's numbering started over (its entry aged out,
        // or the connection object was freed and reused unseen). What was
        // lost, if anything, cannot be told.
        Placed { lost: true, ..Placed::default() }
    } else {
        Placed::default()
    }
}

/// A piece placed by `call_offset` alone: a piece that starts a call is
/// never after a loss, one that starts elsewhere than expected is.
fn by_call_offset(call_offset: u64, expected: u64) -> Placed {
    if call_offset == expected || call_offset == 0 {
        return Placed::default();
    }
    Placed { lost: true, gap: call_offset.saturating_sub(expected), ..Placed::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unnumbered(call_offset: u64, len: u64, call_len: u64) -> Piece {
        Piece { position: None, call_offset, len, call_len }
    }

    fn numbered(seq: u64, start: u64, call_offset: u64, len: u64, call_len: u64) -> Piece {
        Piece { position: Some(CallPosition { seq, start }), call_offset, len, call_len }
    }

    fn placed(lost: bool, gap: u64, lost_calls: u64, offset: u64) -> Placed {
        Placed { lost, gap, lost_calls, offset }
    }

    #[test]
    fn whole_calls_follow_each_other_per_direction() {
        let mut s = StreamOffsets::default();
        assert_eq!(s.place(Direction::Send, unnumbered(0, 5, 5)), placed(false, 0, 0, 0));
        assert_eq!(s.place(Direction::Send, unnumbered(0, 3, 3)), placed(false, 0, 0, 5));
        assert_eq!(s.place(Direction::Recv, unnumbered(0, 2, 2)), placed(false, 0, 0, 0));
    }

    #[test]
    fn a_call_in_pieces_is_contiguous_and_a_lost_piece_is_a_gap() {
        let mut s = StreamOffsets::default();
        // A 100-byte call in pieces of 40: the second piece is lost.
        assert_eq!(s.place(Direction::Recv, unnumbered(0, 40, 100)), placed(false, 0, 0, 0));
        assert_eq!(s.place(Direction::Recv, unnumbered(80, 20, 100)), placed(true, 40, 0, 80));
        // The call is done: the next one starts afresh.
        assert_eq!(s.place(Direction::Recv, unnumbered(0, 10, 10)), placed(false, 0, 0, 100));
        // Unnumbered, a piece that starts a call is never a gap.
        assert_eq!(s.place(Direction::Recv, unnumbered(0, 40, 100)), placed(false, 0, 0, 110));
        assert_eq!(s.place(Direction::Recv, unnumbered(0, 5, 5)), placed(false, 0, 0, 150));
    }

    #[test]
    fn a_piece_before_the_expected_offset_is_a_loss_of_unknown_size() {
        let mut s = StreamOffsets::default();
        assert_eq!(s.place(Direction::Send, unnumbered(0, 120, 200)), placed(false, 0, 0, 0));
        // The rest of that call and the start of the next are lost; the
        // next call's piece at 40 comes while 120 was expected.
        assert_eq!(s.place(Direction::Send, unnumbered(40, 10, 300)), placed(true, 0, 0, 120));
    }

    #[test]
    fn numbered_calls_in_order_have_no_gap() {
        let mut s = StreamOffsets::default();
        assert_eq!(s.place(Direction::Send, numbered(0, 0, 0, 5, 5)), placed(false, 0, 0, 0));
        // A call in two pieces keeps its number.
        assert_eq!(s.place(Direction::Send, numbered(1, 5, 0, 16, 20)), placed(false, 0, 0, 5));
        assert_eq!(s.place(Direction::Send, numbered(1, 5, 16, 4, 20)), placed(false, 0, 0, 21));
        assert_eq!(s.place(Direction::Send, numbered(2, 25, 0, 1, 1)), placed(false, 0, 0, 25));
        // The other direction counts on its own.
        assert_eq!(s.place(Direction::Recv, numbered(0, 0, 0, 7, 7)), placed(false, 0, 0, 0));
    }

    /// The case the call offsets alone never saw: whole calls lost between
    /// two others. The gap is where they were, with their bytes and count.
    #[test]
    fn whole_calls_lost_between_two_others_are_a_gap_there() {
        let mut s = StreamOffsets::default();
        assert_eq!(s.place(Direction::Recv, numbered(0, 0, 0, 10, 10)), placed(false, 0, 0, 0));
        // Calls 1 (30 bytes) and 2 (60 bytes) never arrived.
        assert_eq!(s.place(Direction::Recv, numbered(3, 100, 0, 8, 8)), placed(true, 90, 2, 100));
        assert_eq!(s.place(Direction::Recv, numbered(4, 108, 0, 2, 2)), placed(false, 0, 0, 108));
    }

    #[test]
    fn a_lost_first_piece_of_a_call_is_part_of_a_call_lost() {
        let mut s = StreamOffsets::default();
        assert_eq!(s.place(Direction::Send, numbered(0, 0, 0, 10, 10)), placed(false, 0, 0, 0));
        // Call 1 is 40000 bytes; its first 16384-byte piece was lost.
        assert_eq!(s.place(Direction::Send, numbered(1, 10, 16384, 16384, 40000)), placed(true, 16384, 0, 16394));
        // Its last piece is lost too, and call 2 comes whole.
        assert_eq!(s.place(Direction::Send, numbered(2, 40010, 0, 5, 5)), placed(true, 7232, 0, 40010));
    }

    /// A connection first seen after the kernel numbered some of its calls
    /// (forgotten and seen again): each direction starts where it is first
    /// seen, unless the piece is a call's middle.
    #[test]
    fn a_connection_seen_again_starts_where_it_is_seen() {
        let mut s = StreamOffsets::default();
        assert_eq!(s.place(Direction::Send, numbered(7, 5000, 0, 10, 10)), placed(false, 0, 0, 0));
        assert_eq!(s.place(Direction::Send, numbered(8, 5010, 0, 10, 10)), placed(false, 0, 0, 10));
        assert_eq!(s.place(Direction::Recv, numbered(3, 900, 0, 10, 10)), placed(false, 0, 0, 0));
        let mut s = StreamOffsets::default();
        assert_eq!(s.place(Direction::Send, numbered(7, 5000, 16384, 10, 16394)), placed(true, 16384, 0, 16384));
    }

    /// A connection whose first call the kernel numbered 0 is known from
    /// its start in both directions: the other direction's first call
    /// seen being 2 means calls 0 and 1 were lost.
    #[test]
    fn from_the_start_the_other_directions_first_calls_count() {
        let mut s = StreamOffsets::default();
        assert_eq!(s.place(Direction::Send, numbered(0, 0, 0, 10, 10)), placed(false, 0, 0, 0));
        assert_eq!(s.place(Direction::Recv, numbered(2, 300, 0, 10, 10)), placed(true, 300, 2, 300));
        assert_eq!(s.place(Direction::Recv, numbered(3, 310, 0, 10, 10)), placed(false, 0, 0, 310));
    }

    #[test]
    fn numbering_that_starts_over_is_a_loss_of_unknown_size() {
        let mut s = StreamOffsets::default();
        assert_eq!(s.place(Direction::Send, numbered(0, 0, 0, 10, 10)), placed(false, 0, 0, 0));
        assert_eq!(s.place(Direction::Send, numbered(1, 10, 0, 10, 10)), placed(false, 0, 0, 10));
        assert_eq!(s.place(Direction::Send, numbered(0, 0, 0, 4, 4)), placed(true, 0, 0, 20));
        // And it goes on from there.
        assert_eq!(s.place(Direction::Send, numbered(1, 4, 0, 4, 4)), placed(false, 0, 0, 24));
    }

    #[test]
    fn absurd_offsets_do_not_overflow() {
        let mut s = StreamOffsets::default();
        let placed = s.place(Direction::Send, unnumbered(u64::MAX, 10, u64::MAX));
        assert_eq!((placed.lost, placed.gap), (true, 0), "past MAX_STREAM_BYTES: size unknown");
        let placed = s.place(Direction::Send, unnumbered(MAX_STREAM_BYTES - 10, 10, u64::MAX));
        assert_eq!((placed.lost, placed.gap), (true, MAX_STREAM_BYTES - 10));
        let mut s = StreamOffsets::default();
        s.place(Direction::Send, numbered(0, 0, 0, 1, 1));
        let placed = s.place(Direction::Send, numbered(u64::MAX, u64::MAX, u64::MAX, u64::MAX, 1));
        assert_eq!((placed.lost, placed.gap, placed.lost_calls), (true, 0, u64::MAX - 1));
        let placed = s.place(Direction::Send, numbered(0, 0, 0, 1, 1));
        assert!(placed.lost, "numbering started over");
    }
}
