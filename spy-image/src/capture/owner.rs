//! Which target process owns a TCP connection: the socket's inode from the
//! namespace's /proc/net/tcp{,6}, then the target whose fds hold it.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spy_protocol::record::Role;

use super::flows::Owners;

/// A target's end of a connection.
#[derive(Clone, Debug)]
pub struct Owner {
    pub pid: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub role: Role,
    /// The process's name, read while it was alive (a short-lived client
    /// may be gone when its handshake is reported).
    pub process: Option<String>,
    /// A TLS stack tlsspy cannot probe, seen in the libraries the process
    /// mapped then.
    pub unprobed: Option<&'static str>,
    /// Its executable, held open so it can be examined after the process
    /// is gone.
    pub exe: Option<std::sync::Arc<fs::File>>,
}

/// Owners the kernel recorded when a target's connect() or accept()
/// returned: exact, and still there after the process has exited.
pub trait KernelOwners: Send + Sync {
    /// The target whose end of `local` ↔ `remote` is `local`, in the network
    /// namespace with inode `netns`: its pid and its name then.
    fn owner_of(&self, netns: u64, local: SocketAddr, remote: SocketAddr) -> Option<(u32, String)>;
}

/// A target's end of `client` → `server` as the kernel recorded it.
pub fn kernel_owner(kernel: &dyn KernelOwners, netns: u64, client: SocketAddr, server: SocketAddr) -> Option<Owner> {
    let (client, server) = (normalize(client), normalize(server));
    let owner = |pid, local, remote, role, process| Owner {
        pid,
        local,
        remote,
        role,
        process: Some(process),
        unprobed: None,
        exe: None,
    };
    if let Some((pid, name)) = kernel.owner_of(netns, client, server) {
        return Some(owner(pid, client, server, Role::Client, name));
    }
    let (pid, name) = kernel.owner_of(netns, server, client)?;
    Some(owner(pid, server, client, Role::Server, name))
}

/// An IPv4 peer of an IPv6 socket shows as ::ffff:a.b.c.d; on the wire it
/// is plain IPv4. One form for both, so they match. Any other address is
/// returned as it came (an IPv6 scope id included).
pub fn normalize(addr: SocketAddr) -> SocketAddr {
    let ip = addr.ip().to_canonical();
    if ip == addr.ip() {
        addr
    } else {
        SocketAddr::new(ip, addr.port())
    }
}

/// (local, remote) → socket inode, from the text of /proc/net/tcp or tcp6.
pub fn parse_socket_table(text: &str, into: &mut HashMap<(SocketAddr, SocketAddr), u64>) {
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(remote), Some(inode)) = (fields.get(1), fields.get(2), fields.get(9)) else {
            continue;
        };
        let (Some(local), Some(remote), Ok(inode)) = (parse_address(local), parse_address(remote), inode.parse())
        else {
            continue;
        };
        if inode != 0 {
            into.insert((normalize(local), normalize(remote)), inode);
        }
    }
}

/// "0100007F:1F90" (IPv4) or 32 hex digits + port (IPv6). The kernel prints
/// each 32-bit word of the address as a native-endian number.
fn parse_address(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word =
        |i: usize| -> Option<[u8; 4]> { Some(u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?.to_ne_bytes()) };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// "socket:[12345]" → 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Finds owners among the target pids of one network namespace. Runs on
/// the capture thread, which lives in that namespace, so
/// /proc/thread-self/net shows that namespace's sockets.
pub struct OwnerResolver {
    pids: Arc<Mutex<Vec<u32>>>,
    net_dir: PathBuf,
    /// The namespace's socket table as last read, and when.
    sockets: HashMap<(SocketAddr, SocketAddr), u64>,
    read_at: Option<Instant>,
}

/// How long a read of the socket table answers owner questions. The table
/// holds every socket of the namespace: reading it for each new flow costs
/// as much as the flows there are, so ten thousand connections opened at
/// once would cost a hundred million lines. Connections made while the
/// spy runs are named by the kernel (`KernelOwners`) anyway; this table is
/// for the ones it found open.
pub const SOCKET_TABLE_TTL: Duration = Duration::from_millis(250);

impl OwnerResolver {
    pub fn new(pids: Arc<Mutex<Vec<u32>>>) -> OwnerResolver {
        OwnerResolver { pids, net_dir: PathBuf::from("/proc/thread-self/net"), sockets: HashMap::new(), read_at: None }
    }

    fn sockets(&mut self) -> &HashMap<(SocketAddr, SocketAddr), u64> {
        if self.read_at.is_none_or(|at| at.elapsed() >= SOCKET_TABLE_TTL) {
            self.sockets.clear();
            for table in ["tcp", "tcp6"] {
                if let Ok(text) = fs::read_to_string(self.net_dir.join(table)) {
                    parse_socket_table(&text, &mut self.sockets);
                }
            }
            self.read_at = Some(Instant::now());
        }
        &self.sockets
    }
}

impl Owners<Owner> for OwnerResolver {
    fn owner(&mut self, client: SocketAddr, server: SocketAddr) -> Option<Owner> {
        let (client, server) = (normalize(client), normalize(server));
        let sockets = self.sockets();
        let client_inode = sockets.get(&(client, server)).copied();
        let server_inode = sockets.get(&(server, client)).copied();
        if client_inode.is_none() && server_inode.is_none() {
            log::debug!("no socket for {client} -> {server} in this namespace ({} sockets)", sockets.len());
            return None;
        }
        let pids = match self.pids.lock() {
            Ok(pids) => pids.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        for &pid in &pids {
            let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
            for fd in fds.flatten() {
                let Ok(link) = fs::read_link(fd.path()) else { continue };
                let Some(inode) = socket_inode(&link.to_string_lossy()) else { continue };
                if Some(inode) == client_inode {
                    return Some(Owner {
                        pid,
                        local: client,
                        remote: server,
                        role: Role::Client,
                        process: None,
                        unprobed: None,
                        exe: None,
                    });
                }
                if Some(inode) == server_inode {
                    return Some(Owner {
                        pid,
                        local: server,
                        remote: client,
                        role: Role::Server,
                        process: None,
                        unprobed: None,
                        exe: None,
                    });
                }
            }
        }
        log::debug!("{client} -> {server}: sockets {client_inode:?}/{server_inode:?} are not those of {pids:?}");
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_tables_parse_v4_and_v6() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:A0C2 0100007F:01BB 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1
";
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000100007F:C350 0000000000000000FFFF00000100007F:01BB 01 00000000:00000000 00:00000000 00000000     0        0 5555 1 0000000000000000 20 4 30 10 -1
   1: 00000000000000000000000001000000:01BB 00000000000000000000000001000000:D431 01 00000000:00000000 00:00000000 00000000     0        0 6666 1 0000000000000000 20 4 30 10 -1
";
        let mut map = HashMap::new();
        parse_socket_table(v4, &mut map);
        parse_socket_table(v6, &mut map);
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert_eq!(map.get(&(a("127.0.0.1:41154"), a("127.0.0.1:443"))), Some(&4343));
        assert_eq!(map.get(&(a("127.0.0.1:8080"), a("0.0.0.0:0"))), Some(&4242));
        // A v4-mapped IPv6 socket (Java's) matches the IPv4 packets.
        assert_eq!(map.get(&(a("127.0.0.1:50000"), a("127.0.0.1:443"))), Some(&5555));
        assert_eq!(map.get(&(a("[::1]:443"), a("[::1]:54321"))), Some(&6666));
        parse_socket_table("header\n garbage line\n 0: zz:zz", &mut map);
    }

    #[test]
    fn v4_mapped_addresses_become_v4_and_others_stay() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert_eq!(normalize(a("[::ffff:10.0.0.7]:443")), a("10.0.0.7:443"));
        assert_eq!(normalize(a("10.0.0.7:443")), a("10.0.0.7:443"));
        assert_eq!(normalize(a("[::1]:443")), a("[::1]:443"));
        // IPv4-compatible (::a.b.c.d, deprecated) is not IPv4-mapped.
        assert_eq!(normalize(a("[::10.0.0.7]:443")), a("[::10.0.0.7]:443"));
        // Equality of SocketAddrV6 takes in the scope id: it is kept.
        let scoped = SocketAddr::V6(std::net::SocketAddrV6::new("fe80::1".parse().expect("ip"), 443, 0, 3));
        assert_eq!(normalize(scoped), scoped);
    }

    #[test]
    fn socket_links() {
        assert_eq!(socket_inode("socket:[77]"), Some(77));
        assert_eq!(socket_inode("pipe:[77]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }
}
