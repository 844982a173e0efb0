//! IPv4/IPv6 + TCP headers of a captured packet (network header first, as
//! a SOCK_DGRAM packet socket delivers it). Pure.

#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

const IPPROTO_TCP: u8 = 6;
const IPV4_MIN_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const TCP_MIN_HEADER: usize = 20;

/// One TCP segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub flags: u8,
    /// The payload bytes captured (fewer than `payload_len` when the
    /// capture cut the packet).
    pub payload: &'a [u8],
    /// The payload's true length, from the IP header.
    pub payload_len: usize,
}

impl Segment<'_> {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
    pub fn truncated(&self) -> bool {
        self.payload.len() < self.payload_len
    }
}

/// Why a packet was not taken as a TCP segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Shorter than its headers say, or not IP.
    Malformed,
    /// Not TCP, or a later IPv4 fragment, or IPv6 extension headers.
    NotTcp,
}

/// Parses the IP and TCP headers. `wire_len` is the packet's length before
/// the capture cut it.
pub fn parse(packet: &[u8], wire_len: usize) -> Result<Segment<'_>, Skip> {
    let version = packet.first().ok_or(Skip::Malformed)? >> 4;
    let (src_ip, dst_ip, ip_header, ip_total) = match version {
        4 => {
            if packet.len() < IPV4_MIN_HEADER {
                return Err(Skip::Malformed);
            }
            let header = usize::from(packet[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
            let fragment_offset = u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff;
            if header < IPV4_MIN_HEADER || (total != 0 && total < header) || packet.len() < header {
                return Err(Skip::Malformed);
            }
            if packet[9] != IPPROTO_TCP || fragment_offset != 0 {
                return Err(Skip::NotTcp);
            }
            let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
            let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
            (IpAddr::V4(src), IpAddr::V4(dst), header, total)
        }
        6 => {
            if packet.len() < IPV6_HEADER {
                return Err(Skip::Malformed);
            }
            // Extension headers are rare for TCP: not followed (a named limit).
            if packet[6] != IPPROTO_TCP {
                return Err(Skip::NotTcp);
            }
            let payload = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&packet[8..24]);
            dst.copy_from_slice(&packet[24..40]);
            (IpAddr::V6(Ipv6Addr::from(src)), IpAddr::V6(Ipv6Addr::from(dst)), IPV6_HEADER, IPV6_HEADER + payload)
        }
        _ => return Err(Skip::Malformed),
    };
    let tcp = &packet[ip_header..];
    if tcp.len() < TCP_MIN_HEADER {
        return Err(Skip::Malformed);
    }
    let tcp_header = usize::from(tcp[12] >> 4) * 4;
    if tcp_header < TCP_MIN_HEADER || tcp.len() < tcp_header {
        return Err(Skip::Malformed);
    }
    // The IP length, not the wire's: Ethernet pads short frames. Only a
    // BIG TCP packet (over 64 KiB) says 0 there; then the wire is right.
    let true_total = if ip_total == 0 { wire_len } else { ip_total };
    let payload_len = true_total.saturating_sub(ip_header + tcp_header);
    let captured_end = packet.len().min(true_total);
    let payload = packet.get(ip_header + tcp_header..captured_end).unwrap_or_default();
    Ok(Segment {
        src: SocketAddr::new(src_ip, u16::from_be_bytes([tcp[0], tcp[1]])),
        dst: SocketAddr::new(dst_ip, u16::from_be_bytes([tcp[2], tcp[3]])),
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        flags: tcp[13],
        payload,
        payload_len,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An IPv4 TCP packet as the capture sees it.
    pub(crate) fn ipv4_packet(src: SocketAddr, dst: SocketAddr, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else { panic!("v4 only") };
        let total = (20 + 20 + payload.len()) as u16;
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, IPPROTO_TCP, 0, 0];
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend(s.octets());
        p.extend(d.octets());
        p.extend(src.port().to_be_bytes());
        p.extend(dst.port().to_be_bytes());
        p.extend(seq.to_be_bytes());
        p.extend([0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn ipv4_tcp_segments_parse() {
        let a: SocketAddr = "10.0.0.1:40000".parse().expect("addr");
        let b: SocketAddr = "10.0.0.2:443".parse().expect("addr");
        let packet = ipv4_packet(a, b, 1000, TCP_ACK, b"hello");
        let segment = parse(&packet, packet.len()).expect("segment");
        assert_eq!((segment.src, segment.dst, segment.seq), (a, b, 1000));
        assert_eq!(segment.payload, b"hello");
        assert!(!segment.truncated() && segment.has(TCP_ACK) && !segment.has(TCP_SYN));
        // Cut by the capture: the true length is kept.
        let cut = &packet[..packet.len() - 2];
        let segment = parse(cut, packet.len()).expect("segment");
        assert_eq!(segment.payload, b"hel");
        assert!(segment.truncated());
    }

    #[test]
    fn ipv6_tcp_segments_parse() {
        let mut p = vec![0x60, 0, 0, 0, 0, 23, IPPROTO_TCP, 64];
        p.extend(Ipv6Addr::LOCALHOST.octets());
        p.extend(Ipv6Addr::LOCALHOST.octets());
        p.extend([0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 7, 0, 0, 0, 0, 0x50, TCP_SYN, 0xff, 0xff, 0, 0, 0, 0]);
        p.extend(b"abc");
        let segment = parse(&p, p.len()).expect("segment");
        assert_eq!(segment.src, "[::1]:40000".parse().expect("addr"));
        assert_eq!(segment.dst.port(), 443);
        assert_eq!(segment.payload, b"abc");
        assert!(segment.has(TCP_SYN));
    }

    #[test]
    fn junk_is_skipped_not_fatal() {
        assert_eq!(parse(&[], 0), Err(Skip::Malformed));
        assert_eq!(parse(&[0x45; 10], 10), Err(Skip::Malformed));
        let a: SocketAddr = "10.0.0.1:1".parse().expect("addr");
        let mut udp = ipv4_packet(a, a, 0, 0, b"");
        udp[9] = 17;
        assert_eq!(parse(&udp, udp.len()), Err(Skip::NotTcp));
        for len in 0..60 {
            let packet = ipv4_packet(a, a, 0, 0, b"0123456789");
            let _ = parse(&packet[..len.min(packet.len())], len);
        }
    }
}
