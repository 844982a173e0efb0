//! TLS handshakes seen on the wire: the ClientHello and ServerHello of one
//! TCP connection, read from each direction's bytes in order.
//!
//! Pure: the capture reassembles TCP and feeds a [`HelloReader`] per
//! direction; the reader answers with the hello it found, or says the bytes
//! are not TLS. Only the plaintext start of a connection is looked at: a
//! reader stops at the first encrypted record, after [`MAX_RECORDS`] records
//! or [`MAX_HANDSHAKE_BYTES`] bytes, whichever comes first.
//!
//! Also here: the JA4 client fingerprint (FoxIO's public specification,
//! `technical_details/JA4.md`), and names for versions and cipher suites.

#![forbid(unsafe_code)]

use sha2::{Digest as _, Sha256};
use tls_parser::{TlsCipherSuite, TlsExtension};

use spy_protocol::record::Handshake;

/// Handshake bytes buffered per direction: a ClientHello with a
/// post-quantum key share is about 2 KiB; 16 KiB leaves room for padding,
/// session tickets and a TLS 1.2 server's first flight.
pub const MAX_HANDSHAKE_BYTES: usize = 16 * 1024;
/// Records looked at per direction before giving up on finding a hello.
pub const MAX_RECORDS: usize = 8;
/// A TLS record's payload is at most 2^14 bytes plus expansion (RFC 8446 §5.2).
const MAX_RECORD_LEN: usize = (1 << 14) + 2048;
const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;

const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;
const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;

const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const HANDSHAKE_SERVER_HELLO: u8 = 2;

const EXT_SERVER_NAME: u16 = 0x0000;
const EXT_ALPN: u16 = 0x0010;

/// The ServerHello.random that marks a HelloRetryRequest (RFC 8446 §4.1.3).
const HELLO_RETRY_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91, 0xc2, 0xa2, 0x11,
    0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// What a ClientHello offered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The `legacy_version` field of the hello (0x0303 for TLS 1.2 and 1.3).
    pub legacy_version: u16,
    pub sni: Option<String>,
    /// ALPN protocol names, as sent (GREASE included).
    pub alpn: Vec<Vec<u8>>,
    /// The supported_versions extension, as sent (GREASE included).
    pub supported_versions: Vec<u16>,
    /// Cipher suites, as sent (GREASE included).
    pub ciphers: Vec<u16>,
    /// Extension types in the order sent (GREASE included).
    pub extensions: Vec<u16>,
    /// The signature_algorithms extension, as sent.
    pub signature_algorithms: Vec<u16>,
}

/// What a ServerHello chose.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerHello {
    pub legacy_version: u16,
    /// The supported_versions extension: how TLS 1.3 says it is 1.3.
    pub selected_version: Option<u16>,
    pub cipher: u16,
    /// ALPN chosen in the ServerHello (TLS 1.2 and older; TLS 1.3 sends it
    /// encrypted, in EncryptedExtensions, where we cannot see it).
    pub alpn: Option<Vec<u8>>,
    /// A HelloRetryRequest: the real ServerHello follows.
    pub hello_retry: bool,
}

impl ServerHello {
    /// The version the connection speaks.
    pub fn version(&self) -> u16 {
        self.selected_version.unwrap_or(self.legacy_version)
    }
}

/// What reading one direction produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HelloEvent {
    Client(ClientHello),
    Server(ServerHello),
    /// The first bytes are not a TLS handshake record.
    NotTls(&'static str),
    /// TLS records, but a hello that does not parse or never comes.
    Malformed(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReaderState {
    Reading,
    /// Found what it looks for, gave up, or saw encryption start: the rest
    /// of the stream is not looked at.
    Done,
}

/// Reads TLS records from one direction of a connection, in order, and
/// reports the hellos in them.
#[derive(Clone, Debug)]
pub struct HelloReader {
    state: ReaderState,
    /// Record-layer bytes not yet consumed.
    pending: Vec<u8>,
    /// Handshake-layer bytes (record payloads of content type 22) not yet
    /// consumed: a handshake message may span records.
    handshake: Vec<u8>,
    records: usize,
    buffered: usize,
    /// Hellos wanted before this direction is done: a client's first
    /// ClientHello; a server's ServerHello (after a HelloRetryRequest, the next).
    found_hello: bool,
}

impl Default for HelloReader {
    fn default() -> Self {
        HelloReader::new()
    }
}

impl HelloReader {
    pub fn new() -> Self {
        HelloReader {
            state: ReaderState::Reading,
            pending: Vec::new(),
            handshake: Vec::new(),
            records: 0,
            buffered: 0,
            found_hello: false,
        }
    }

    /// Heap bytes the reader's buffers hold (their capacity).
    pub fn held_bytes(&self) -> usize {
        self.pending.capacity() + self.handshake.capacity()
    }

    /// True once the reader wants no more bytes.
    pub fn is_done(&self) -> bool {
        self.state == ReaderState::Done
    }

    /// Stops reading: the stream can no longer be followed.
    pub fn stop(&mut self) {
        self.done();
    }

    /// Feeds the next bytes of the stream; events go to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<HelloEvent>) {
        if self.state == ReaderState::Done || data.is_empty() {
            return;
        }
        self.buffered += data.len();
        if self.buffered > MAX_HANDSHAKE_BYTES + RECORD_HEADER_LEN {
            // Keep what fits: the hello may be complete in it.
            let keep = data.len().saturating_sub(self.buffered - MAX_HANDSHAKE_BYTES - RECORD_HEADER_LEN);
            self.pending.extend_from_slice(&data[..keep]);
            self.read_records(out);
            if self.state != ReaderState::Done {
                self.finish(HelloEvent::Malformed("handshake larger than the capture keeps"), out);
            }
            return;
        }
        self.pending.extend_from_slice(data);
        self.read_records(out);
    }

    fn finish(&mut self, event: HelloEvent, out: &mut Vec<HelloEvent>) {
        out.push(event);
        self.done();
    }

    fn done(&mut self) {
        self.state = ReaderState::Done;
        self.pending = Vec::new();
        self.handshake = Vec::new();
    }

    fn read_records(&mut self, out: &mut Vec<HelloEvent>) {
        let mut at = 0;
        while self.state == ReaderState::Reading {
            let rest = &self.pending[at..];
            // Decide on the very first bytes: a TLS stream starts with a
            // handshake record header (22, 3, minor ≤ 4).
            if self.records == 0 {
                if let Some(why) = not_tls_start(rest) {
                    return self.finish(HelloEvent::NotTls(why), out);
                }
            }
            if rest.len() < RECORD_HEADER_LEN {
                break;
            }
            let content = rest[0];
            let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
            if rest[1] != 3 || len > MAX_RECORD_LEN {
                let why = if self.records == 0 { "not a TLS record" } else { "bad TLS record header" };
                return self.finish_not_hello(self.records == 0, why, out);
            }
            if rest.len() < RECORD_HEADER_LEN + len {
                break;
            }
            let payload = &rest[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len];
            at += RECORD_HEADER_LEN + len;
            self.records += 1;
            match content {
                CONTENT_HANDSHAKE => {
                    self.handshake.extend_from_slice(payload);
                    self.read_handshake_messages(out);
                }
                // TLS 1.3 middlebox compatibility sends one between hellos.
                CONTENT_CHANGE_CIPHER_SPEC => {}
                CONTENT_ALERT | CONTENT_APPLICATION_DATA => {
                    // Encryption started (or the peer gave up) before a hello.
                    if !self.found_hello {
                        out.push(HelloEvent::Malformed("no hello before encrypted or alert records"));
                    }
                    self.done();
                }
                _ => return self.finish_not_hello(self.records == 1, "unknown TLS content type", out),
            }
            if self.state == ReaderState::Reading && self.records >= MAX_RECORDS {
                if !self.found_hello {
                    out.push(HelloEvent::Malformed("no hello in the first records"));
                }
                self.done();
            }
        }
        if self.state == ReaderState::Reading {
            self.pending.drain(..at);
        }
    }

    fn finish_not_hello(&mut self, first: bool, why: &'static str, out: &mut Vec<HelloEvent>) {
        if self.found_hello {
            self.done();
        } else if first {
            self.finish(HelloEvent::NotTls(why), out);
        } else {
            self.finish(HelloEvent::Malformed(why), out);
        }
    }

    fn read_handshake_messages(&mut self, out: &mut Vec<HelloEvent>) {
        let mut at = 0;
        while self.state == ReaderState::Reading {
            let rest = &self.handshake[at..];
            if rest.len() < HANDSHAKE_HEADER_LEN {
                break;
            }
            let kind = rest[0];
            let len = (usize::from(rest[1]) << 16) | (usize::from(rest[2]) << 8) | usize::from(rest[3]);
            if len > MAX_HANDSHAKE_BYTES {
                if !self.found_hello {
                    out.push(HelloEvent::Malformed("handshake message larger than the capture keeps"));
                }
                return self.done();
            }
            if rest.len() < HANDSHAKE_HEADER_LEN + len {
                break;
            }
            let body = &rest[HANDSHAKE_HEADER_LEN..HANDSHAKE_HEADER_LEN + len];
            at += HANDSHAKE_HEADER_LEN + len;
            if self.found_hello {
                // Certificate and friends after the hello: not our business.
                return self.done();
            }
            match kind {
                HANDSHAKE_CLIENT_HELLO => match parse_client_hello(body) {
                    Some(hello) => {
                        self.found_hello = true;
                        out.push(HelloEvent::Client(hello));
                        return self.done();
                    }
                    None => return self.finish(HelloEvent::Malformed("ClientHello does not parse"), out),
                },
                HANDSHAKE_SERVER_HELLO => match parse_server_hello(body) {
                    Some(hello) => {
                        let retry = hello.hello_retry;
                        out.push(HelloEvent::Server(hello));
                        if !retry {
                            self.found_hello = true;
                            return self.done();
                        }
                    }
                    None => return self.finish(HelloEvent::Malformed("ServerHello does not parse"), out),
                },
                _ => return self.finish(HelloEvent::Malformed("first handshake message is not a hello"), out),
            }
        }
        if self.state == ReaderState::Reading {
            self.handshake.drain(..at);
        }
    }
}

/// Why the first bytes of a stream cannot start TLS, if they cannot.
fn not_tls_start(data: &[u8]) -> Option<&'static str> {
    let expected = [CONTENT_HANDSHAKE, 3];
    for (i, &byte) in data.iter().take(3).enumerate() {
        let ok = match i {
            0 | 1 => byte == expected[i],
            _ => byte <= 4,
        };
        if !ok {
            return Some(if i == 0 && data[0] & 0x80 != 0 { "SSLv2-style record" } else { "not a TLS record" });
        }
    }
    None
}

fn parse_client_hello(body: &[u8]) -> Option<ClientHello> {
    let (_, contents) = tls_parser::parse_tls_handshake_client_hello(body).ok()?;
    let mut hello = ClientHello {
        legacy_version: contents.version.0,
        ciphers: contents.ciphers.iter().map(|c| c.0).collect(),
        ..ClientHello::default()
    };
    for (kind, raw) in raw_extensions(contents.ext.unwrap_or_default())? {
        hello.extensions.push(kind);
        if is_grease(kind) {
            continue;
        }
        // A malformed extension body is kept as a type, not fatal: the
        // fingerprint still counts it.
        let Ok((_, extension)) = tls_parser::parse_tls_client_hello_extension(raw) else { continue };
        match extension {
            TlsExtension::SNI(names) => {
                hello.sni = names
                    .iter()
                    .find(|(kind, _)| kind.0 == 0)
                    .map(|(_, name)| String::from_utf8_lossy(name).into_owned());
            }
            TlsExtension::ALPN(protocols) => hello.alpn = protocols.iter().map(|p| p.to_vec()).collect(),
            TlsExtension::SupportedVersions(versions) => {
                hello.supported_versions = versions.iter().map(|v| v.0).collect();
            }
            TlsExtension::SignatureAlgorithms(algorithms) => hello.signature_algorithms = algorithms,
            _ => {}
        }
    }
    Some(hello)
}

fn parse_server_hello(body: &[u8]) -> Option<ServerHello> {
    let (_, contents) = tls_parser::parse_tls_handshake_server_hello(body).ok()?;
    let mut hello = ServerHello {
        legacy_version: contents.version.0,
        cipher: contents.cipher.0,
        hello_retry: contents.random == HELLO_RETRY_RANDOM,
        ..ServerHello::default()
    };
    for (kind, raw) in raw_extensions(contents.ext.unwrap_or_default())? {
        if is_grease(kind) {
            continue;
        }
        let Ok((_, extension)) = tls_parser::parse_tls_server_hello_extension(raw) else { continue };
        match extension {
            TlsExtension::SupportedVersions(versions) => hello.selected_version = versions.first().map(|v| v.0),
            TlsExtension::ALPN(protocols) => hello.alpn = protocols.first().map(|p| p.to_vec()),
            _ => {}
        }
    }
    Some(hello)
}

/// Splits an extensions block into (type, whole extension bytes); None
/// when the framing is broken.
fn raw_extensions(mut block: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    let mut extensions = Vec::new();
    while !block.is_empty() {
        if block.len() < 4 {
            return None;
        }
        let kind = u16::from_be_bytes([block[0], block[1]]);
        let len = usize::from(u16::from_be_bytes([block[2], block[3]]));
        if block.len() < 4 + len {
            return None;
        }
        extensions.push((kind, &block[..4 + len]));
        block = &block[4 + len..];
    }
    Some(extensions)
}

/// GREASE values (RFC 8701): 0x?a?a with both bytes equal.
pub fn is_grease(value: u16) -> bool {
    value & 0x0f0f == 0x0a0a && value >> 8 == value & 0xff
}

/// "TLSv1.3", "TLSv1.2", …, or the number in hex.
pub fn version_name(version: u16) -> String {
    match version {
        0x0304 => "TLSv1.3".into(),
        0x0303 => "TLSv1.2".into(),
        0x0302 => "TLSv1.1".into(),
        0x0301 => "TLSv1.0".into(),
        0x0300 => "SSLv3".into(),
        other => format!("0x{other:04x}"),
    }
}

/// The IANA name of a cipher suite, or its number in hex.
pub fn cipher_name(cipher: u16) -> String {
    TlsCipherSuite::from_id(cipher).map_or_else(|| format!("0x{cipher:04x}"), |c| c.name.to_string())
}

impl ClientHello {
    /// The highest version offered (supported_versions, else legacy_version).
    pub fn max_version(&self) -> u16 {
        self.supported_versions.iter().copied().filter(|v| !is_grease(*v)).max().unwrap_or(self.legacy_version)
    }

    /// The JA4 fingerprint, e.g. `t13d1516h2_8daaf6152771_e5627efa2ab1`.
    pub fn ja4(&self) -> String {
        let (a, ciphers, extensions) = self.ja4_parts(true);
        format!("{a}_{}_{}", hash12(&ciphers), hash12(&extensions))
    }

    /// JA4_r: the same with the lists in clear instead of hashed.
    pub fn ja4_raw(&self) -> String {
        let (a, ciphers, extensions) = self.ja4_parts(true);
        format!("{a}_{ciphers}_{extensions}")
    }

    /// JA4_o: lists in their original order, SNI and ALPN kept.
    pub fn ja4_original(&self) -> String {
        let (a, ciphers, extensions) = self.ja4_parts(false);
        format!("{a}_{}_{}", hash12(&ciphers), hash12(&extensions))
    }

    /// The first part and the two lists JA4 hashes, as text.
    fn ja4_parts(&self, sorted: bool) -> (String, String, String) {
        let version = match self.max_version() {
            0x0304 => "13",
            0x0303 => "12",
            0x0302 => "11",
            0x0301 => "10",
            0x0300 => "s3",
            0x0002 => "s2",
            0xfeff => "d1",
            0xfefd => "d2",
            0xfefc => "d3",
            _ => "00",
        };
        let sni = if self.extensions.contains(&EXT_SERVER_NAME) { 'd' } else { 'i' };
        let mut ciphers: Vec<u16> = self.ciphers.iter().copied().filter(|c| !is_grease(*c)).collect();
        let extensions: Vec<u16> = self.extensions.iter().copied().filter(|e| !is_grease(*e)).collect();
        let a = format!(
            "t{version}{sni}{:02}{:02}{}",
            ciphers.len().min(99),
            extensions.len().min(99),
            ja4_alpn(self.alpn.first().map(Vec::as_slice))
        );
        let mut hashed_extensions = extensions;
        if sorted {
            ciphers.sort_unstable();
            hashed_extensions.retain(|e| *e != EXT_SERVER_NAME && *e != EXT_ALPN);
            hashed_extensions.sort_unstable();
        }
        let mut extensions_text = hex_list(&hashed_extensions);
        let algorithms: Vec<u16> = self.signature_algorithms.iter().copied().filter(|s| !is_grease(*s)).collect();
        if !algorithms.is_empty() && !extensions_text.is_empty() {
            extensions_text.push('_');
            extensions_text.push_str(&hex_list(&algorithms));
        }
        (a, hex_list(&ciphers), extensions_text)
    }

    /// Fills the offered side of a handshake record.
    pub fn describe(&self, record: &mut Handshake) {
        record.sni = self.sni.clone();
        record.alpn_offered =
            self.alpn.iter().filter(|p| !is_grease_alpn(p)).map(|p| String::from_utf8_lossy(p).into_owned()).collect();
        let versions: Vec<u16> = if self.supported_versions.is_empty() {
            vec![self.legacy_version]
        } else {
            self.supported_versions.iter().copied().filter(|v| !is_grease(*v)).collect()
        };
        record.versions_offered = versions.into_iter().map(version_name).collect();
        record.ciphers_offered = self.ciphers.iter().copied().filter(|c| !is_grease(*c)).map(cipher_name).collect();
        record.ja4 = Some(self.ja4());
    }
}

impl ServerHello {
    /// Fills the chosen side of a handshake record.
    pub fn describe(&self, record: &mut Handshake) {
        record.version = Some(version_name(self.version()));
        record.cipher = Some(cipher_name(self.cipher));
        record.alpn = self.alpn.as_ref().map(|p| String::from_utf8_lossy(p).into_owned());
    }
}

/// Chrome-style GREASE ALPN values are not real protocols.
fn is_grease_alpn(protocol: &[u8]) -> bool {
    protocol.len() == 2 && is_grease(u16::from_be_bytes([protocol[0], protocol[1]]))
}

/// JA4's two ALPN characters: first and last of the first value, or of its
/// hex form when either is not alphanumeric; "00" without one.
fn ja4_alpn(first: Option<&[u8]>) -> String {
    let Some(value @ [head, ..]) = first else { return "00".into() };
    let tail = value[value.len() - 1];
    if head.is_ascii_alphanumeric() && tail.is_ascii_alphanumeric() {
        format!("{}{}", *head as char, tail as char)
    } else {
        let head_hex = format!("{head:02x}");
        let tail_hex = format!("{tail:02x}");
        format!("{}{}", &head_hex[..1], &tail_hex[1..])
    }
}

fn hex_list(values: &[u16]) -> String {
    values.iter().map(|v| format!("{v:04x}")).collect::<Vec<_>>().join(",")
}

/// First 12 hex digits of SHA-256, or twelve zeros for an empty list.
fn hash12(text: &str) -> String {
    if text.is_empty() {
        return "000000000000".into();
    }
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(crate) mod tests;
