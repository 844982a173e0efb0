//! Decoding ring buffer records into typed events. The one place raw event
//! bytes are reinterpreted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use spy_ebpf::{close_why, event_kind, CloseEvent, ConnTuple, DataHeader, ProcEvent};
use spy_protocol::record::{Direction, TlsLibrary};

use crate::conn::{CallPosition, DataEvent};

/// One ring buffer record.
#[derive(Debug)]
pub enum KernelEvent<'a> {
    Data { header: DataHeader, data: &'a [u8] },
    Fork(ProcEvent),
    Exec(ProcEvent),
    Exit(ProcEvent),
    Close(CloseEvent),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring buffer record of {0} bytes is too short")]
    Short(usize),
    #[error("ring buffer record of unknown kind {0}")]
    UnknownKind(u32),
    #[error("data event claims {claimed} bytes but carries {carried}")]
    Length { claimed: u32, carried: usize },
    #[error("data event of {0} bytes is more than one event may carry")]
    TooLong(u32),
    #[error("close event for an unknown reason {0}")]
    UnknownClose(u8),
}

pub fn decode(bytes: &[u8]) -> Result<KernelEvent<'_>, DecodeError> {
    let kind =
        bytes.get(..4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]])).ok_or(DecodeError::Short(bytes.len()))?;
    match kind {
        event_kind::DATA => {
            let header: DataHeader = read_pod(bytes)?;
            let data = &bytes[size_of::<DataHeader>()..];
            let len = header.data_len as usize;
            if len > spy_ebpf::MAX_DATA {
                return Err(DecodeError::TooLong(header.data_len));
            }
            if len > data.len() {
                return Err(DecodeError::Length { claimed: header.data_len, carried: data.len() });
            }
            Ok(KernelEvent::Data { header, data: &data[..len] })
        }
        event_kind::FORK => Ok(KernelEvent::Fork(read_pod(bytes)?)),
        event_kind::EXEC => Ok(KernelEvent::Exec(read_pod(bytes)?)),
        event_kind::EXIT => Ok(KernelEvent::Exit(read_pod(bytes)?)),
        event_kind::CLOSE => {
            let close: CloseEvent = read_pod(bytes)?;
            match close.why {
                close_why::SSL_FREE | close_why::FD => Ok(KernelEvent::Close(close)),
                other => Err(DecodeError::UnknownClose(other)),
            }
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// Types that are plain bytes: every bit pattern is a valid value.
trait Pod: Copy {}
impl Pod for DataHeader {}
impl Pod for ProcEvent {}
impl Pod for CloseEvent {}

fn read_pod<T: Pod>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: the length is checked above, T is a repr(C) struct of integers
    // and byte arrays (any bit pattern is valid), and read_unaligned makes
    // no alignment assumption about the ring buffer's bytes.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// The (local, remote) socket addresses, when the kernel found the socket.
/// IPv4 traffic on a dual-stack socket (`::ffff:10.0.0.2`, what a Go server
/// listening on ":8443" has) is shown as the IPv4 address the wire carries,
/// which is also what Kubernetes names pods and services by.
pub fn addresses(tuple: &ConnTuple) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let ip = |bytes: &[u8; 16]| -> Option<IpAddr> {
        match tuple.family {
            2 => Some(IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))),
            10 => Some(IpAddr::V6(Ipv6Addr::from(*bytes)).to_canonical()),
            _ => None,
        }
    };
    let local = ip(&tuple.local_addr).map(|ip| SocketAddr::new(ip, tuple.local_port));
    let remote = ip(&tuple.remote_addr).map(|ip| SocketAddr::new(ip, tuple.remote_port));
    (local, remote)
}

/// A data event as the connection tracker takes it: the probe's source and
/// direction in record terms, addresses decoded, the kernel's monotonic
/// time already turned into wall-clock time (`ts_ns`).
pub fn data_event<'a>(header: &'a DataHeader, data: &'a [u8], ts_ns: u64) -> DataEvent<'a> {
    let (local, remote) = addresses(&header.tuple);
    DataEvent {
        tgid: header.tgid,
        tid: header.tid,
        ts_ns,
        conn_ptr: header.conn_ptr,
        direction: match header.direction {
            spy_ebpf::direction::SEND => Direction::Send,
            _ => Direction::Recv,
        },
        library: match header.source {
            spy_ebpf::source::GO => TlsLibrary::GoCryptoTls,
            _ => TlsLibrary::Openssl,
        },
        call_len: header.call_len,
        call_offset: header.call_offset,
        position: Some(CallPosition { seq: header.call_seq, start: header.call_start }),
        fd: (header.fd >= 0).then_some(header.fd),
        local,
        remote,
        comm: comm(&header.comm),
        data,
    }
}

/// What a close event ends: the connection object freed, or the socket
/// closed.
pub fn closed(close: &CloseEvent) -> (Option<u64>, Option<i32>) {
    match close.why {
        close_why::SSL_FREE => (Some(close.conn_ptr), None),
        _ => (None, (close.fd >= 0).then_some(close.fd)),
    }
}

/// A NUL-padded kernel comm as text.
pub fn comm(bytes: &[u8]) -> &str {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    std::str::from_utf8(&bytes[..end]).unwrap_or("?")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_bytes(header: &DataHeader) -> Vec<u8> {
        let mut bytes = vec![0u8; size_of::<DataHeader>()];
        // SAFETY: DataHeader is repr(C) plain data and `bytes` is exactly its size.
        unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast::<DataHeader>(), *header) };
        bytes
    }

    #[test]
    fn decodes_a_data_event_and_its_addresses() {
        let mut header = DataHeader { kind: event_kind::DATA, tgid: 7, data_len: 3, ..Default::default() };
        header.tuple.family = 2;
        header.tuple.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        header.tuple.local_port = 40000;
        header.tuple.remote_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        header.tuple.remote_port = 443;
        let mut bytes = header_bytes(&header);
        bytes.extend_from_slice(b"abc");
        let KernelEvent::Data { header, data } = decode(&bytes).expect("decode") else { panic!("not data") };
        assert_eq!(header.tgid, 7);
        assert_eq!(data, b"abc");
        let (local, remote) = addresses(&header.tuple);
        assert_eq!(local, Some("127.0.0.1:40000".parse().expect("addr")));
        assert_eq!(remote, Some("10.0.0.2:443".parse().expect("addr")));
    }

    #[test]
    fn ipv6_addresses_are_whole_and_v4_mapped_ones_are_shown_as_ipv4() {
        let mut tuple = ConnTuple { family: 10, local_port: 8443, remote_port: 40000, ..Default::default() };
        tuple.local_addr = "2001:db8::1".parse::<Ipv6Addr>().expect("v6").octets();
        tuple.remote_addr = "::ffff:10.0.0.2".parse::<Ipv6Addr>().expect("v6").octets();
        let (local, remote) = addresses(&tuple);
        assert_eq!(local, Some("[2001:db8::1]:8443".parse().expect("addr")));
        assert_eq!(remote, Some("10.0.0.2:40000".parse().expect("addr")));
    }

    #[test]
    fn data_events_say_direction_and_library_in_record_terms() {
        let mut header =
            DataHeader { tgid: 7, tid: 8, conn_ptr: 0xabc, call_len: 9, call_offset: 3, ..Default::default() };
        header.direction = spy_ebpf::direction::SEND;
        header.source = spy_ebpf::source::GO;
        header.comm[..4].copy_from_slice(b"curl");
        let ev = data_event(&header, b"xyz", 42);
        assert_eq!((ev.tgid, ev.tid, ev.conn_ptr, ev.ts_ns), (7, 8, 0xabc, 42));
        assert_eq!((ev.call_len, ev.call_offset, ev.data), (9, 3, &b"xyz"[..]));
        assert_eq!((ev.direction, ev.library, ev.comm), (Direction::Send, TlsLibrary::GoCryptoTls, "curl"));
        assert_eq!((ev.local, ev.remote), (None, None), "no socket found");
        header.direction = spy_ebpf::direction::RECV;
        header.source = 0;
        let ev = data_event(&header, b"", 0);
        assert_eq!((ev.direction, ev.library), (Direction::Recv, TlsLibrary::Openssl));
    }

    fn close_bytes(close: &CloseEvent) -> Vec<u8> {
        let mut bytes = vec![0u8; size_of::<CloseEvent>()];
        // SAFETY: CloseEvent is repr(C) plain data and `bytes` is exactly its size.
        unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast::<CloseEvent>(), *close) };
        bytes
    }

    #[test]
    fn data_events_carry_the_calls_number_and_socket() {
        let header = DataHeader { call_seq: 5, call_start: 700, fd: 9, ..Default::default() };
        let ev = data_event(&header, b"", 0);
        assert_eq!(ev.position, Some(CallPosition { seq: 5, start: 700 }));
        assert_eq!(ev.fd, Some(9));
        let header = DataHeader { fd: -1, ..Default::default() };
        assert_eq!(data_event(&header, b"", 0).fd, None);
    }

    #[test]
    fn close_events_name_the_object_or_the_socket() {
        let free = CloseEvent {
            kind: event_kind::CLOSE,
            tgid: 4,
            conn_ptr: 0xabc,
            fd: -1,
            why: close_why::SSL_FREE,
            ..Default::default()
        };
        let KernelEvent::Close(decoded) = decode(&close_bytes(&free)).expect("decode") else { panic!("not close") };
        assert_eq!(closed(&decoded), (Some(0xabc), None));
        let fd = CloseEvent { kind: event_kind::CLOSE, tgid: 4, fd: 7, why: close_why::FD, ..Default::default() };
        let KernelEvent::Close(decoded) = decode(&close_bytes(&fd)).expect("decode") else { panic!("not close") };
        assert_eq!(closed(&decoded), (None, Some(7)));
        let odd = CloseEvent { kind: event_kind::CLOSE, why: 9, ..Default::default() };
        assert_eq!(decode(&close_bytes(&odd)).unwrap_err(), DecodeError::UnknownClose(9));
        assert_eq!(decode(&close_bytes(&fd)[..20]).unwrap_err(), DecodeError::Short(20));
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        assert_eq!(decode(&[1, 0]).unwrap_err(), DecodeError::Short(2));
        assert_eq!(decode(&[9, 0, 0, 0]).unwrap_err(), DecodeError::UnknownKind(9));
        let header = DataHeader { kind: event_kind::DATA, data_len: 100, ..Default::default() };
        let bytes = header_bytes(&header);
        assert!(matches!(decode(&bytes), Err(DecodeError::Length { claimed: 100, .. })));
        let header = DataHeader { kind: event_kind::DATA, data_len: u32::MAX, ..Default::default() };
        assert_eq!(decode(&header_bytes(&header)).unwrap_err(), DecodeError::TooLong(u32::MAX));
    }
}
