//! The agent's memory limits, as both binaries take them on their command
//! lines: the memory budget, the body cap, and the sizes they are written in.
//!
//! The agent runs privileged on every node it spies on: how much memory it
//! holds must be decided by the person who runs it, never by the traffic of
//! the target. So every flag that sets a per-message or per-connection
//! amount is capped here, where both the plugin and the agent parse it.

#![forbid(unsafe_code)]

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// The agent's memory for connections and packet reassembly, unless told
/// otherwise (`--memory-budget`). Past it the least recently used
/// connections are forgotten, and counted.
pub const DEFAULT_MEMORY_BUDGET: u64 = 256 * MIB;
/// The smallest budget taken: below it one busy HTTP/2 connection (two HPACK
/// tables, a header block, a few bodies) would be evicted again and again.
pub const MIN_MEMORY_BUDGET: u64 = 16 * MIB;
/// The largest budget taken (a bound that keeps every sum far from overflow).
pub const MAX_MEMORY_BUDGET: u64 = 1024 * GIB;

/// What the agent holds besides its budget, whatever the traffic: the
/// kernel ring buffer it maps (32 MiB by default), its code and heap at
/// rest, the eBPF maps, and the receive buffers of a few packet captures
/// (8 MiB each, one per watched network namespace). The spy pod's memory
/// limit is the budget plus this. Measured (tests/tests/bounds.rs, local
/// mode, which renders in the same process): at rest 94-104 MiB RSS, of
/// which 64 MiB are the default ring buffer (the kernel maps its data
/// pages twice); with a 16 MiB budget and 50,000 idle TLS connections the
/// peak was 165.6-180.9 MiB, within 16 + 192.
pub const AGENT_FIXED_OVERHEAD: u64 = 192 * MIB;

/// Body bytes kept per message are capped: a connection may hold two
/// bodies for each of 512 HTTP/2 streams, so the cap bounds what one
/// connection can make the agent hold before the budget steps in.
pub const MAX_MAX_BODY: usize = 16 * MIB as usize;

/// Connections silent this long are forgotten (their partial exchanges are
/// reported as such).
pub const IDLE_TIMEOUT_SECS: u64 = 5 * 60;

/// A size: a number of bytes, or a number with KiB, MiB or GiB (Ki, Mi, Gi
/// as Kubernetes writes them). Decimal units (KB, MB) are refused rather
/// than guessed.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_bytes = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "Ki" => KIB,
        "MiB" | "Mi" => MIB,
        "GiB" | "Gi" => GIB,
        other => return Err(format!("`{text}`: unknown unit `{other}` (use bytes, KiB, MiB or GiB)")),
    };
    let value: u64 = number.parse().map_err(|_| format!("`{text}` is not a size like 65536, 64KiB or 256MiB"))?;
    value.checked_mul(unit_bytes).ok_or_else(|| format!("`{text}` is too large a size"))
}

/// `--max-body`: at most [`MAX_MAX_BODY`].
pub fn parse_max_body(text: &str) -> Result<usize, String> {
    let bytes = parse_size(text)?;
    if bytes > MAX_MAX_BODY as u64 {
        return Err(format!(
            "`{text}` is over the largest body tlsspy keeps, {} ({MAX_MAX_BODY} bytes): bodies are held in the \
             spy's memory, two per HTTP/2 stream",
            format_size(MAX_MAX_BODY as u64)
        ));
    }
    usize::try_from(bytes).map_err(|_| format!("`{text}` is too large a size"))
}

/// `--memory-budget`: between [`MIN_MEMORY_BUDGET`] and [`MAX_MEMORY_BUDGET`].
pub fn parse_memory_budget(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if bytes < MIN_MEMORY_BUDGET {
        return Err(format!("`{text}` is below the smallest memory budget, {}", format_size(MIN_MEMORY_BUDGET)));
    }
    if bytes > MAX_MEMORY_BUDGET {
        return Err(format!("`{text}` is over the largest memory budget, {}", format_size(MAX_MEMORY_BUDGET)));
    }
    Ok(bytes)
}

/// A size as [`parse_size`] reads it back: the largest unit that divides it.
pub fn format_size(bytes: u64) -> String {
    for (unit, size) in [("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

/// The kernel ring buffer between the eBPF programs and the agent, in MiB,
/// by default (`--ring-buffer-mib`; part of [`AGENT_FIXED_OVERHEAD`]).
pub const DEFAULT_RING_BUFFER_MIB: u32 = 32;
/// The largest ring buffer taken: its size in bytes must fit the kernel's
/// u32 map size and be a power of two.
pub const MAX_RING_BUFFER_MIB: u32 = 2048;

/// `--ring-buffer-mib`: a power of two from 1 to [`MAX_RING_BUFFER_MIB`]
/// (the kernel takes only power-of-two ring buffers).
pub fn parse_ring_buffer_mib(text: &str) -> Result<u32, String> {
    let mib: u32 = text.trim().parse().map_err(|_| format!("`{text}` is not a whole number of MiB"))?;
    if mib == 0 || mib > MAX_RING_BUFFER_MIB || !mib.is_power_of_two() {
        return Err(format!(
            "`{text}` is not a power of two from 1 to {MAX_RING_BUFFER_MIB} (the kernel takes only those)"
        ));
    }
    Ok(mib)
}

/// Memory for a spy pod whose agent has `budget` and a ring buffer of
/// `ring_buffer_mib`: the limit of its container, as a Kubernetes quantity
/// (bytes, exactly). A ring larger than the default adds twice its growth
/// (its data pages are mapped twice, and all of it becomes resident when
/// it fills), so raising it as the loss hint says does not get the spy
/// OOM-killed.
pub fn pod_memory_limit(budget: u64, ring_buffer_mib: u32) -> u64 {
    let ring_growth = u64::from(ring_buffer_mib.saturating_sub(DEFAULT_RING_BUFFER_MIB)) * MIB;
    budget.saturating_add(AGENT_FIXED_OVERHEAD).saturating_add(2 * ring_growth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_and_write_back() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("256Mi"), Ok(256 * MIB));
        assert_eq!(parse_size(" 2 GiB "), Ok(2 * GIB));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "MiB", "12MB", "1.5MiB", "-1", "5 parsecs", "18446744073709551616"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("18446744073709551615GiB").is_err());
        for bytes in [0, 1, 1023, 1024, 16 * MIB, 3 * GIB, 3 * GIB + 1] {
            assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
        }
        assert_eq!(format_size(256 * MIB), "256MiB");
    }

    /// The value issue 12 found accepted: every huge body cap is an error
    /// that says the largest, never a panic or a silent wrap.
    #[test]
    fn max_body_is_capped() {
        assert_eq!(parse_max_body("16384"), Ok(16384));
        assert_eq!(parse_max_body("16MiB"), Ok(MAX_MAX_BODY));
        for huge in ["18446744073709551615", "16777217", "17MiB", "1GiB", "99999999999999999999999"] {
            let err = parse_max_body(huge).expect_err(huge);
            assert!(err.contains('`'), "{err}");
        }
        assert!(parse_max_body("16777217").is_err_and(|e| e.contains("16MiB")));
    }

    #[test]
    fn ring_buffer_sizes_are_powers_of_two() {
        assert_eq!(parse_ring_buffer_mib("32"), Ok(DEFAULT_RING_BUFFER_MIB));
        assert_eq!(parse_ring_buffer_mib("1"), Ok(1));
        assert_eq!(parse_ring_buffer_mib("2048"), Ok(MAX_RING_BUFFER_MIB));
        for bad in ["0", "3", "4096", "-1", "", "1MiB", "99999999999"] {
            assert!(parse_ring_buffer_mib(bad).is_err_and(|e| e.contains('`')), "{bad}");
        }
    }

    #[test]
    fn memory_budget_is_bounded_both_ways() {
        assert_eq!(parse_memory_budget("256MiB"), Ok(DEFAULT_MEMORY_BUDGET));
        assert!(parse_memory_budget("1MiB").is_err_and(|e| e.contains("16MiB")));
        assert!(parse_memory_budget("2048GiB").is_err());
        assert!(parse_memory_budget("lots").is_err());
        assert_eq!(
            pod_memory_limit(DEFAULT_MEMORY_BUDGET, DEFAULT_RING_BUFFER_MIB),
            DEFAULT_MEMORY_BUDGET + AGENT_FIXED_OVERHEAD
        );
        assert_eq!(pod_memory_limit(16 * MIB, 8), 16 * MIB + AGENT_FIXED_OVERHEAD);
        assert_eq!(pod_memory_limit(16 * MIB, 512), 16 * MIB + AGENT_FIXED_OVERHEAD + 2 * 480 * MIB);
    }
}
