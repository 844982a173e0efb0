//! A packet socket that sees the TCP packets of one network namespace,
//! filtered in the kernel by a classic BPF program.
//!
//! SOCK_DGRAM: packets start at the network header whatever the link
//! (Ethernet, loopback, veth, tunnels). The filter keeps IPv4 and IPv6 TCP
//! and drops loopback's outgoing copy (every loopback packet passes the
//! device twice: once out, once in). Packets are cut at [`SNAPLEN`] bytes:
//! a hello needs the start of a connection, not its bulk.

#![allow(unsafe_code, reason = "packet sockets, setns and socket filters are raw system calls")]

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

// More classic BPF opcodes for the payload test.
const BPF_LDX_B_MSH: u16 = 0xb1; // X = 4 * (pkt[k] & 0xf): the IPv4 header length
const BPF_LDX_IMM: u16 = 0x01; // X = k
const BPF_LD_B_IND: u16 = 0x50; // A = pkt[X + k]
const BPF_LD_H_ABS: u16 = 0x28; // A = pkt[k..k+2], big-endian
const BPF_ALU_AND_K: u16 = 0x54;
const BPF_ALU_RSH_K: u16 = 0x74;
const BPF_ALU_ADD_K: u16 = 0x04;
const BPF_ALU_ADD_X: u16 = 0x0c;
const BPF_MISC_TAX: u16 = 0x07; // X = A
const BPF_JGT_X: u16 = 0x2d; // A > X
const BPF_JA: u16 = 0x05; // unconditional

/// TLS record types and the major version byte of every TLS record header.
const TLS_APPLICATION_DATA: u32 = 0x17;
const TLS_MAJOR_VERSION: u32 = 0x03;
const IPV6_HEADER_LEN: u32 = 40;

/// A classic BPF program written with labels, resolved to relative jumps.
#[derive(Default)]
struct Program {
    insns: Vec<(u16, Jump, Jump, u32)>,
    labels: std::collections::HashMap<&'static str, usize>,
}

#[derive(Clone, Copy)]
enum Jump {
    Next,
    To(&'static str),
}

impl Program {
    fn label(&mut self, name: &'static str) {
        self.labels.insert(name, self.insns.len());
    }
    fn op(&mut self, code: u16, k: u32) {
        self.insns.push((code, Jump::Next, Jump::Next, k));
    }
    fn jump(&mut self, code: u16, k: u32, jt: Jump, jf: Jump) {
        self.insns.push((code, jt, jf, k));
    }
    fn build(self) -> Vec<libc::sock_filter> {
        let resolve = |at: usize, jump: Jump| -> u8 {
            match jump {
                Jump::Next => 0,
                Jump::To(label) => {
                    let target = self.labels[label];
                    u8::try_from(target - at - 1).expect("classic BPF jumps are forward and short")
                }
            }
        };
        self.insns
            .iter()
            .enumerate()
            .map(|(at, &(code, jt, jf, k))| {
                if code == BPF_JA {
                    // `ja` takes its offset in k.
                    let Jump::To(label) = jt else { return op(code, 0, 0, k) };
                    return op(code, 0, 0, u32::from(resolve(at, Jump::To(label))));
                }
                op(code, resolve(at, jt), resolve(at, jf), k)
            })
            .collect()
    }
}

/// The filter: TCP over IPv4 or IPv6, not loopback's outgoing copy, and not
/// the bulk of established TLS connections: a segment whose payload starts
/// with a TLS application-data record header (17 03) carries nothing a
/// handshake reader needs. Everything else passes (SYN, FIN, handshake
/// records, a ClientHello's continuation segment, non-TLS bytes).
/// Offsets count from the network header (SOCK_DGRAM).
pub fn tcp_filter() -> Vec<libc::sock_filter> {
    use Jump::{Next, To};
    let mut p = Program::default();
    p.op(BPF_LD_W_ABS, ancillary(libc::SKF_AD_PKTTYPE));
    p.jump(BPF_JEQ_K, PACKET_OUTGOING, Next, To("protocol"));
    p.op(BPF_LD_W_ABS, ancillary(libc::SKF_AD_HATYPE));
    p.jump(BPF_JEQ_K, u32::from(libc::ARPHRD_LOOPBACK), To("reject"), Next);
    p.label("protocol");
    p.op(BPF_LD_W_ABS, ancillary(libc::SKF_AD_PROTOCOL));
    p.jump(BPF_JEQ_K, ETH_P_IP, Next, To("ipv6"));
    // IPv4: TCP only. X = IP header length, A = total length.
    p.op(BPF_LD_B_ABS, 9);
    p.jump(BPF_JEQ_K, IPPROTO_TCP, Next, To("reject"));
    p.op(BPF_LDX_B_MSH, 0);
    p.op(BPF_LD_B_IND, 12); // TCP data offset, in the high nibble
    p.op(BPF_ALU_AND_K, 0xf0);
    p.op(BPF_ALU_RSH_K, 2); // (offset >> 4) * 4
    p.op(BPF_ALU_ADD_X, 0);
    p.op(BPF_MISC_TAX, 0); // X = start of the TCP payload
    p.op(BPF_LD_H_ABS, 2); // A = IPv4 total length
    p.jump(BPF_JA, 0, To("payload"), Next);
    p.label("ipv6");
    p.jump(BPF_JEQ_K, ETH_P_IPV6, Next, To("reject"));
    p.op(BPF_LD_B_ABS, 6); // next header (extension headers: not TCP here)
    p.jump(BPF_JEQ_K, IPPROTO_TCP, Next, To("reject"));
    p.op(BPF_LDX_IMM, IPV6_HEADER_LEN);
    p.op(BPF_LD_B_IND, 12);
    p.op(BPF_ALU_AND_K, 0xf0);
    p.op(BPF_ALU_RSH_K, 2);
    p.op(BPF_ALU_ADD_X, 0);
    p.op(BPF_MISC_TAX, 0);
    p.op(BPF_LD_H_ABS, 4); // payload length
    p.op(BPF_ALU_ADD_K, IPV6_HEADER_LEN); // A = total length
    p.label("payload");
    // No payload (SYN, ACK, FIN): keep, the flow table needs them. Checked
    // first because a load past the packet's end would reject it.
    p.jump(BPF_JGT_X, 0, Next, To("accept"));
    p.op(BPF_LD_B_IND, 0);
    p.jump(BPF_JEQ_K, TLS_APPLICATION_DATA, Next, To("accept"));
    p.op(BPF_LD_B_IND, 1);
    p.jump(BPF_JEQ_K, TLS_MAJOR_VERSION, To("reject"), To("accept"));
    p.label("accept");
    p.op(BPF_RET_K, SNAPLEN);
    p.label("reject");
    p.op(BPF_RET_K, 0);
    p.build()
}

/// Moves the calling thread into the network namespace `ns` (an open
/// /proc/PID/ns/net). Only this thread moves.
/// Sets the calling thread's nice value (not the whole process's).
pub fn set_thread_nice(nice: i32) {
    // SAFETY: gettid and setpriority on this thread's own id; no memory is
    // involved. A refusal leaves the priority as it was, which is fine.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice);
    }
}

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

    /// Runs a classic BPF program on a packet (enough of the instruction
    /// set for our filter), with the kernel's rule that a load past the end
    /// rejects. Ancillary loads read from `meta`.
    fn run(filter: &[libc::sock_filter], packet: &[u8], meta: (u32, u32, u32)) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        loop {
            let insn = filter[pc];
            let k = insn.k;
            pc += 1;
            match insn.code {
                BPF_LD_W_ABS => {
                    a = match k.wrapping_sub(libc::SKF_AD_OFF as u32) as i32 {
                        libc::SKF_AD_PKTTYPE => meta.0,
                        libc::SKF_AD_HATYPE => meta.1,
                        libc::SKF_AD_PROTOCOL => meta.2,
                        _ => unreachable!("no word loads of packet bytes"),
                    }
                }
                BPF_LD_B_ABS | BPF_LD_B_IND => {
                    let at = if insn.code == BPF_LD_B_IND { x + k } else { k } as usize;
                    let Some(&b) = packet.get(at) else { return 0 };
                    a = u32::from(b);
                }
                BPF_LD_H_ABS => {
                    let Some(h) = packet.get(k as usize..k as usize + 2) else { return 0 };
                    a = u32::from(u16::from_be_bytes([h[0], h[1]]));
                }
                BPF_LDX_B_MSH => {
                    let Some(&b) = packet.get(k as usize) else { return 0 };
                    x = 4 * u32::from(b & 0xf);
                }
                BPF_LDX_IMM => x = k,
                BPF_ALU_AND_K => a &= k,
                BPF_ALU_RSH_K => a >>= k,
                BPF_ALU_ADD_K => a += k,
                BPF_ALU_ADD_X => a += x,
                BPF_MISC_TAX => x = a,
                BPF_JA => pc += k as usize,
                BPF_JEQ_K => pc += usize::from(if a == k { insn.jt } else { insn.jf }),
                BPF_JGT_X => pc += usize::from(if a > x { insn.jt } else { insn.jf }),
                BPF_RET_K => return k,
                other => panic!("opcode {other:#x} not emulated"),
            }
        }
    }

    /// An IPv4 TCP packet (20-byte IP header, 20-byte TCP header) with a payload.
    fn ipv4_tcp(payload: &[u8]) -> Vec<u8> {
        let total = 40 + payload.len();
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[9] = 6;
        p[32] = 5 << 4;
        p.extend_from_slice(payload);
        p
    }

    fn ipv6_tcp(payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 60];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        p[6] = 6;
        p[52] = 5 << 4;
        p.extend_from_slice(payload);
        p
    }

    const INCOMING_V4: (u32, u32, u32) = (0, 1, ETH_P_IP);
    const INCOMING_V6: (u32, u32, u32) = (0, 1, ETH_P_IPV6);

    #[test]
    fn handshakes_syn_and_other_bytes_pass_application_data_does_not() {
        let filter = tcp_filter();
        let hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
        for (make, meta) in [(ipv4_tcp as fn(&[u8]) -> Vec<u8>, INCOMING_V4), (ipv6_tcp, INCOMING_V6)] {
            assert_eq!(run(&filter, &make(&hello), meta), SNAPLEN, "ClientHello");
            assert_eq!(run(&filter, &make(&[]), meta), SNAPLEN, "SYN/ACK/FIN without payload");
            assert_eq!(run(&filter, &make(b"GET / HTTP/1.1\r\n"), meta), SNAPLEN, "not TLS: counted");
            assert_eq!(run(&filter, &make(&[0x17, 0x42, 0x00]), meta), SNAPLEN, "a continuation segment");
            assert_eq!(run(&filter, &make(&[0x17, 0x03, 0x03, 0x00, 0x20]), meta), 0, "application data");
        }
    }

    #[test]
    fn loopback_outgoing_copies_and_other_protocols_are_rejected() {
        let filter = tcp_filter();
        let hello = ipv4_tcp(&[0x16, 0x03, 0x01]);
        assert_eq!(run(&filter, &hello, (PACKET_OUTGOING, u32::from(libc::ARPHRD_LOOPBACK), ETH_P_IP)), 0);
        assert_eq!(run(&filter, &hello, (PACKET_OUTGOING, 1, ETH_P_IP)), SNAPLEN, "outgoing on ethernet");
        let mut udp = hello.clone();
        udp[9] = 17;
        assert_eq!(run(&filter, &udp, INCOMING_V4), 0);
        assert_eq!(run(&filter, &hello, (0, 1, 0x0806)), 0, "ARP");
        // IPv4 with options: a 24-byte header moves the TCP header.
        let mut options = hello[..20].to_vec();
        options[0] = 0x46;
        options.extend_from_slice(&[0; 4]);
        options.extend_from_slice(&hello[20..]);
        let total = options.len() as u16;
        options[2..4].copy_from_slice(&total.to_be_bytes());
        let mut app = options.clone();
        let payload_at = 24 + 20;
        app[payload_at] = 0x17;
        app[payload_at + 1] = 0x03;
        assert_eq!(run(&filter, &options, INCOMING_V4), SNAPLEN);
        assert_eq!(run(&filter, &app, INCOMING_V4), 0);
    }
}
