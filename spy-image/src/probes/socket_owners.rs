//! Who owns a TCP connection, as the kernel saw it when a target's
//! `connect()` or `accept()` returned (the `socket_owners` map).
//!
//! The handshake capture sees packets later than the kernel does; a client
//! that connects, shakes hands and exits at once is gone from /proc by then.
//! The map still names it.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use aya::maps::{HashMap, MapData};
use spy_ebpf::{ConnTuple, SocketKey, SocketOwner};

/// The map's key and value as aya plain data.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(super) struct SocketKeyValue(SocketKey);

#[derive(Clone, Copy)]
#[repr(transparent)]
pub(super) struct SocketOwnerValue(SocketOwner);

// SAFETY: both are repr(C) structs of integers and byte arrays whose layout
// (no implicit padding: the padding fields are explicit) is asserted in
// spy-ebpf; every bit pattern is a valid value.
unsafe impl aya::Pod for SocketKeyValue {}
// SAFETY: as above.
unsafe impl aya::Pod for SocketOwnerValue {}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// A connection's owner, from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelOwner {
    pub tgid: u32,
    /// The thread's name when it connected or accepted.
    pub comm: String,
}

/// Read access to the `socket_owners` map; shared with the capture threads.
pub struct SocketOwners {
    map: HashMap<MapData, SocketKeyValue, SocketOwnerValue>,
}

impl SocketOwners {
    pub(super) fn new(map: HashMap<MapData, SocketKeyValue, SocketOwnerValue>) -> SocketOwners {
        SocketOwners { map }
    }

    /// The target that owns `local` ↔ `remote` (its end is `local`) in the
    /// network namespace with inode `netns`.
    pub fn lookup(&self, netns: u64, local: SocketAddr, remote: SocketAddr) -> Option<KernelOwner> {
        keys(netns, local, remote).into_iter().find_map(|key| {
            let owner = self.map.get(&SocketKeyValue(key), 0).ok()?.0;
            let comm = owner.comm.split(|&b| b == 0).next().unwrap_or_default();
            Some(KernelOwner { tgid: owner.tgid, comm: String::from_utf8_lossy(comm).into_owned() })
        })
    }
}

impl crate::capture::owner::KernelOwners for SocketOwners {
    fn owner_of(&self, netns: u64, local: SocketAddr, remote: SocketAddr) -> Option<(u32, String)> {
        self.lookup(netns, local, remote).map(|o| (o.tgid, o.comm))
    }
}

/// The keys a connection may be stored under: an IPv4 connection is either
/// an IPv4 socket's or an IPv6 socket's with v4-mapped addresses.
pub fn keys(netns: u64, local: SocketAddr, remote: SocketAddr) -> Vec<SocketKey> {
    // Namespace inode numbers are 32-bit in the kernel.
    let Ok(netns) = u32::try_from(netns) else { return Vec::new() };
    let key = |family, local_addr, remote_addr| SocketKey {
        tuple: ConnTuple {
            family,
            local_port: local.port(),
            remote_port: remote.port(),
            _pad: 0,
            local_addr,
            remote_addr,
        },
        netns,
        _pad: 0,
    };
    match (local.ip(), remote.ip()) {
        (IpAddr::V4(l), IpAddr::V4(r)) => {
            let mut l4 = [0u8; 16];
            let mut r4 = [0u8; 16];
            l4[..4].copy_from_slice(&l.octets());
            r4[..4].copy_from_slice(&r.octets());
            vec![key(AF_INET, l4, r4), key(AF_INET6, l.to_ipv6_mapped().octets(), r.to_ipv6_mapped().octets())]
        }
        (l, r) => vec![key(AF_INET6, v6(l).octets(), v6(r).octets())],
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_connections_have_a_v4_and_a_v4_mapped_key() {
        let local: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let remote: SocketAddr = "10.0.0.2:443".parse().unwrap();
        let keys = keys(4026531840, local, remote);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].tuple.family, AF_INET);
        assert_eq!(&keys[0].tuple.local_addr[..4], &[10, 0, 0, 1]);
        assert!(keys[0].tuple.local_addr[4..].iter().all(|&b| b == 0));
        assert_eq!((keys[0].tuple.local_port, keys[0].tuple.remote_port), (40000, 443));
        assert_eq!(keys[1].tuple.family, AF_INET6);
        assert_eq!(keys[1].tuple.remote_addr, "::ffff:10.0.0.2".parse::<Ipv6Addr>().unwrap().octets());
        assert!(keys.iter().all(|k| k.netns == 4026531840));
    }

    #[test]
    fn ipv6_connections_have_one_key_and_oversized_namespaces_none() {
        let local: SocketAddr = "[::1]:40000".parse().unwrap();
        let remote: SocketAddr = "[::1]:443".parse().unwrap();
        assert_eq!(keys(1, local, remote).len(), 1);
        assert!(keys(u64::MAX, local, remote).is_empty());
    }
}
