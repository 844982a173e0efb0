//! A packet socket that sees the TCP packets of one network namespace,
//! filtered in the kernel by a classic BPF program.
//!
//! SOCK_DGRAM: packets start at the network header whatever the link
//! (Ethernet, loopback, veth, tunnels). The filter keeps IPv4 and IPv6 TCP
//! and drops loopback's outgoing copy (every loopback packet passes the
//! device twice: once out, once in). Packets are cut at [`SNAPLEN`] bytes:
//! a hello needs the start of a connection, not its bulk.

use std::fs::File;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::time::Duration;

/// Bytes kept per packet: headers plus a ClientHello with a post-quantum
/// key share fit many times over; a bigger segment is cut (and its flow
/// given up on if the hello was not complete in the part kept).
pub const SNAPLEN: u32 = 16 * 1024 + 256;
/// Kernel receive buffer of the socket: bursts wait here while we parse.
const RECEIVE_BUFFER: libc::c_int = 8 * 1024 * 1024;
/// How long a receive blocks before the capture thread looks around
/// (stop requests, timeouts).
pub const RECEIVE_TIMEOUT: Duration = Duration::from_millis(200);

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86dd;
const IPPROTO_TCP: u32 = 6;
/// PACKET_OUTGOING in `sll_pkttype` and SKF_AD_PKTTYPE.
const PACKET_OUTGOING: u32 = 4;

// Classic BPF opcodes (linux/bpf_common.h).
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS (0x20)
const BPF_LD_B_ABS: u16 = 0x30; // BPF_LD (0) | BPF_B (0x10) | BPF_ABS (0x20)
const BPF_JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K

fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Ancillary loads: the packet's metadata, not its bytes.
fn ancillary(offset: i32) -> u32 {
    (libc::SKF_AD_OFF + offset) as u32
}

/// The filter: TCP over IPv4 or IPv6, not loopback's outgoing copy.
/// Offsets count from the network header (SOCK_DGRAM).
pub fn tcp_filter() -> Vec<libc::sock_filter> {
    let accept = op(BPF_RET_K, 0, 0, SNAPLEN);
    let reject = op(BPF_RET_K, 0, 0, 0);
    vec![
        /* 0 */ op(BPF_LD_W_ABS, 0, 0, ancillary(libc::SKF_AD_PKTTYPE)),
        /* 1 */ op(BPF_JEQ_K, 0, 2, PACKET_OUTGOING), // not outgoing: to 4
        /* 2 */ op(BPF_LD_W_ABS, 0, 0, ancillary(libc::SKF_AD_HATYPE)),
        /* 3 */ op(BPF_JEQ_K, 8, 0, u32::from(libc::ARPHRD_LOOPBACK)), // loopback out: reject (12)
        /* 4 */ op(BPF_LD_W_ABS, 0, 0, ancillary(libc::SKF_AD_PROTOCOL)),
        /* 5 */ op(BPF_JEQ_K, 0, 2, ETH_P_IP), // not IPv4: to 8
        /* 6 */ op(BPF_LD_B_ABS, 0, 0, 9), // IPv4 protocol
        /* 7 */ op(BPF_JEQ_K, 3, 4, IPPROTO_TCP), // TCP: accept (11), else reject (12)
        /* 8 */ op(BPF_JEQ_K, 0, 3, ETH_P_IPV6), // not IPv6: reject (12)
        /* 9 */ op(BPF_LD_B_ABS, 0, 0, 6), // IPv6 next header
        /* 10 */ op(BPF_JEQ_K, 0, 1, IPPROTO_TCP), // TCP: accept (11), else reject (12)
        /* 11 */ accept,
        /* 12 */ reject,
    ]
}

/// Moves the calling thread into the network namespace `ns` (an open
/// /proc/PID/ns/net). Only this thread moves.
pub fn enter_netns(ns: &File) -> io::Result<()> {
    // SAFETY: setns on a valid fd we own; it changes only this thread's
    // network namespace.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One received packet: its bytes in the buffer, and its length on the wire.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    pub len: usize,
    pub wire_len: usize,
}

pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> io::Result<PacketSocket> {
        // Protocol 0: no packet is queued before the filter is in place
        // and the socket is bound.
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let socket = PacketSocket { fd };

        let mut filter = tcp_filter();
        let program = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_mut_ptr() };
        socket.set_option(libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &program)?;
        // FORCE works for root beyond rmem_max; plain SO_RCVBUF otherwise.
        if socket.set_option(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &RECEIVE_BUFFER).is_err() {
            socket.set_option(libc::SOL_SOCKET, libc::SO_RCVBUF, &RECEIVE_BUFFER)?;
        }
        let timeout = libc::timeval {
            tv_sec: RECEIVE_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: RECEIVE_TIMEOUT.subsec_micros() as libc::suseconds_t,
        };
        socket.set_option(libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout)?;

        // SAFETY: an all-zero sockaddr_ll is valid; we fill what bind needs.
        let mut address: libc::sockaddr_ll = unsafe { zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        address.sll_ifindex = 0; // every interface of the namespace
        // SAFETY: bind with a sockaddr_ll of the size we pass.
        let rc = unsafe {
            libc::bind(
                socket.fd.as_raw_fd(),
                (&raw const address).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(socket)
    }

    fn set_option<T>(&self, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
        // SAFETY: `value` points to a live T of the size we pass.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (value as *const T).cast(),
                size_of::<T>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one packet into `buf`; None when nothing came within the
    /// timeout (or, with `wait` false, when nothing is queued).
    pub fn recv(&self, buf: &mut [u8], wait: bool) -> io::Result<Option<Received>> {
        // SAFETY: an all-zero sockaddr_ll is a valid out-parameter.
        let mut from: libc::sockaddr_ll = unsafe { zeroed() };
        let mut from_len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        let flags = libc::MSG_TRUNC | if wait { 0 } else { libc::MSG_DONTWAIT };
        loop {
            // SAFETY: recvfrom writes at most buf.len() bytes into buf and
            // at most from_len bytes into `from`, both ours.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    flags,
                    (&raw mut from).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                return match err.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Ok(None),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(err),
                };
            }
            // The filter already drops loopback's outgoing copies; this
            // guards a kernel that ignored the ancillary loads.
            if u32::from(from.sll_pkttype) == PACKET_OUTGOING && from.sll_hatype == libc::ARPHRD_LOOPBACK {
                continue;
            }
            let wire_len = n as usize;
            return Ok(Some(Received { len: wire_len.min(buf.len()), wire_len }));
        }
    }

    /// Packets the kernel dropped (socket buffer full) since the last call.
    pub fn take_drops(&self) -> io::Result<u64> {
        let mut stats = libc::tpacket_stats { tp_packets: 0, tp_drops: 0 };
        let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `stats`.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&raw mut stats).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(u64::from(stats.tp_drops))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_jumps_land_inside_the_program() {
        let filter = tcp_filter();
        for (i, insn) in filter.iter().enumerate() {
            if insn.code == BPF_JEQ_K {
                assert!(i + 1 + (insn.jt as usize) < filter.len(), "insn {i}");
                assert!(i + 1 + (insn.jf as usize) < filter.len(), "insn {i}");
            }
        }
        assert_eq!(filter[11].k, SNAPLEN);
        assert_eq!(filter[12].k, 0);
        // Loopback's outgoing copy is rejected; TCP is accepted on both families.
        assert_eq!(3 + 1 + filter[3].jt as usize, 12);
        assert_eq!(7 + 1 + filter[7].jt as usize, 11);
        assert_eq!(10 + 1 + filter[10].jt as usize, 11);
    }
}
