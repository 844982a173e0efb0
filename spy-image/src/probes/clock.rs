//! Kernel timestamps (`bpf_ktime_get_ns`) are CLOCK_MONOTONIC; records
//! carry wall-clock time. The offset between the two is read once.

/// Turns monotonic kernel times into wall-clock Unix nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// CLOCK_REALTIME - CLOCK_MONOTONIC.
    offset_ns: i128,
}

impl WallClock {
    pub fn new() -> WallClock {
        WallClock { offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC) }
    }

    /// A kernel timestamp as wall-clock time.
    pub fn wall_ns(&self, monotonic_ns: u64) -> u64 {
        to_wall(monotonic_ns, self.offset_ns)
    }

    /// Now, as wall-clock time on the kernel's clock.
    pub fn now_ns(&self) -> u64 {
        self.wall_ns(monotonic_ns())
    }
}

impl Default for WallClock {
    fn default() -> Self {
        WallClock::new()
    }
}

fn to_wall(monotonic_ns: u64, offset_ns: i128) -> u64 {
    u64::try_from(i128::from(monotonic_ns) + offset_ns).unwrap_or(0)
}

pub fn monotonic_ns() -> u64 {
    u64::try_from(clock_ns(libc::CLOCK_MONOTONIC)).unwrap_or(0)
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec, which we own, and reads
    // nothing else; the clocks asked for exist on every Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_times_become_wall_times_and_never_wrap() {
        assert_eq!(to_wall(5, 10), 15);
        assert_eq!(to_wall(5, -10), 0, "before the epoch: 0, not a wrap");
        let clock = WallClock::new();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970");
        let seen = clock.now_ns();
        let diff = i128::from(seen) - now.as_nanos() as i128;
        assert!(diff.abs() < 1_000_000_000, "{diff} ns off the system clock");
    }
}
