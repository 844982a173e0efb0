use proptest::prelude::*;

use super::*;

/// Builds wire bytes of hellos, so tests feed what a client really sends.
#[derive(Clone, Debug, Default)]
struct HelloSpec {
    ciphers: Vec<u16>,
    /// Extension types in wire order; bodies come from the fields below.
    extensions: Vec<u16>,
    sni: Option<&'static str>,
    alpn: Vec<&'static [u8]>,
    versions: Vec<u16>,
    signature_algorithms: Vec<u16>,
    /// Bytes of a padding-like key share, to make hellos larger than one MTU.
    key_share_len: usize,
}

fn u16s(values: &[u16]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_be_bytes()).collect()
}

fn with_len16(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn extension_body(spec: &HelloSpec, kind: u16) -> Vec<u8> {
    match kind {
        0x0000 => {
            let name = spec.sni.unwrap_or("").as_bytes();
            let mut entry = vec![0u8];
            entry.extend(with_len16(name));
            with_len16(&entry)
        }
        0x0010 => {
            let mut list = Vec::new();
            for p in &spec.alpn {
                list.push(p.len() as u8);
                list.extend_from_slice(p);
            }
            with_len16(&list)
        }
        0x002b => {
            let mut out = vec![(spec.versions.len() * 2) as u8];
            out.extend(u16s(&spec.versions));
            out
        }
        0x000d => with_len16(&u16s(&spec.signature_algorithms)),
        0x0033 => {
            let mut share = u16s(&[0x001d]);
            share.extend(with_len16(&vec![0x42; spec.key_share_len.max(32)]));
            with_len16(&share)
        }
        // Others: empty bodies parse (or are skipped) fine.
        _ => Vec::new(),
    }
}

fn client_hello_message(spec: &HelloSpec) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend([7u8; 32]); // random
    body.push(32);
    body.extend([9u8; 32]); // session id
    body.extend(with_len16(&u16s(&spec.ciphers)));
    body.extend([1, 0]); // null compression
    let mut extensions = Vec::new();
    for &kind in &spec.extensions {
        extensions.extend(kind.to_be_bytes());
        extensions.extend(with_len16(&extension_body(spec, kind)));
    }
    body.extend(with_len16(&extensions));
    handshake_message(HANDSHAKE_CLIENT_HELLO, &body)
}

fn handshake_message(kind: u8, body: &[u8]) -> Vec<u8> {
    let len = body.len() as u32;
    let mut out = vec![kind, (len >> 16) as u8, (len >> 8) as u8, len as u8];
    out.extend_from_slice(body);
    out
}

/// Wraps handshake bytes in records of at most `max` bytes each.
fn records(content: u8, bytes: &[u8], max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in bytes.chunks(max) {
        out.extend([content, 3, 1]);
        out.extend(with_len16(piece));
    }
    out
}

fn server_hello_bytes(version_ext: Option<u16>, cipher: u16, alpn: Option<&[u8]>, random: [u8; 32]) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend(random);
    body.push(0); // no session id
    body.extend(cipher.to_be_bytes());
    body.push(0);
    let mut extensions = Vec::new();
    if let Some(version) = version_ext {
        extensions.extend([0x00, 0x2b, 0x00, 0x02]);
        extensions.extend(version.to_be_bytes());
    }
    if let Some(p) = alpn {
        extensions.extend([0x00, 0x10]);
        let mut list = vec![p.len() as u8];
        list.extend_from_slice(p);
        extensions.extend(with_len16(&with_len16(&list)));
    }
    body.extend(with_len16(&extensions));
    records(CONTENT_HANDSHAKE, &handshake_message(HANDSHAKE_SERVER_HELLO, &body), 1 << 14)
}

/// A ClientHello record like a TLS 1.3 client's (SNI example.com, ALPN h2
/// and http/1.1), with a key share of `key_share_len` bytes.
pub(crate) fn sample_client_hello(key_share_len: usize) -> Vec<u8> {
    let spec = HelloSpec { key_share_len, ..spec_example() };
    records(CONTENT_HANDSHAKE, &client_hello_message(&spec), 1 << 14)
}

/// A TLS 1.3 ServerHello record (TLS_AES_256_GCM_SHA384).
pub(crate) fn sample_server_hello() -> Vec<u8> {
    server_hello_bytes(Some(0x0304), 0x1302, None, [1; 32])
}

fn read_all(pieces: &[&[u8]]) -> Vec<HelloEvent> {
    let mut reader = HelloReader::new();
    let mut out = Vec::new();
    for piece in pieces {
        reader.feed(piece, &mut out);
    }
    out
}

fn only_client(events: &[HelloEvent]) -> &ClientHello {
    match events {
        [HelloEvent::Client(hello)] => hello,
        other => panic!("expected one ClientHello, got {other:?}"),
    }
}

/// The example of FoxIO's JA4 specification (technical_details/JA4.md),
/// in its original order (JA4_ro), with GREASE added as Chrome sends it.
fn spec_example() -> HelloSpec {
    HelloSpec {
        ciphers: vec![
            0x0a0a, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014, 0x009c,
            0x009d, 0x002f, 0x0035,
        ],
        extensions: vec![
            0x2a2a, 0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d, 0x0005, 0x0023, 0x0012, 0x002b,
            0xff01, 0x000b, 0x000a, 0x0015, 0xbaba,
        ],
        sni: Some("example.com"),
        alpn: vec![b"h2", b"http/1.1"],
        versions: vec![0x7a7a, 0x0304, 0x0303],
        signature_algorithms: vec![0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601],
        key_share_len: 32,
    }
}

#[test]
fn ja4_matches_the_published_specification_example() {
    let bytes = records(CONTENT_HANDSHAKE, &client_hello_message(&spec_example()), 1 << 14);
    let events = read_all(&[&bytes]);
    let hello = only_client(&events);
    assert_eq!(hello.ja4(), "t13d1516h2_8daaf6152771_e5627efa2ab1");
    assert_eq!(
        hello.ja4_raw(),
        "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_0005,000a,000b,\
         000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,0804,0401,0503,0805,0501,0806,0601"
    );
    assert_eq!(hello.ja4_original(), "t13d1516h2_acb858a92679_18f69afefd3d");
    assert_eq!(hello.sni.as_deref(), Some("example.com"));
    assert_eq!(hello.max_version(), 0x0304);
}

#[test]
fn ja4_matches_a_published_chrome_143_capture() {
    // browserleaks.com's report for Chrome 143 (ECH and X25519MLKEM768),
    // from its ja4_ro line: t13d1516h2_8daaf6152771_d8a2da3f94cd.
    let spec = HelloSpec {
        ciphers: vec![
            0xdada, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014, 0x009c,
            0x009d, 0x002f, 0x0035,
        ],
        extensions: vec![
            0x3a3a, 0x002d, 0x0033, 0x0010, 0xfe0d, 0x0017, 0x44cd, 0x0000, 0x000b, 0x000a, 0x002b, 0xff01, 0x0023,
            0x0012, 0x0005, 0x000d, 0x001b, 0x4a4a,
        ],
        sni: Some("tls-outer.browserleaks.com"),
        alpn: vec![b"h2", b"http/1.1"],
        versions: vec![0x0304, 0x0303],
        signature_algorithms: vec![0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601],
        // An ML-KEM-768 + X25519 share: the hello no longer fits one MTU.
        key_share_len: 1216 + 32,
    };
    let message = client_hello_message(&spec);
    assert!(message.len() + 5 > 1460, "more than one full-size TCP segment: {}", message.len());
    let bytes = records(CONTENT_HANDSHAKE, &message, 1 << 14);
    let events = read_all(&[&bytes]);
    let hello = only_client(&events);
    assert_eq!(hello.ja4(), "t13d1516h2_8daaf6152771_d8a2da3f94cd");
    assert_eq!(hello.ja4_original(), "t13d1516h2_acb858a92679_f96a17c57971");
}

#[test]
fn ja4_alpn_characters_follow_the_specification_examples() {
    assert_eq!(ja4_alpn(None), "00");
    assert_eq!(ja4_alpn(Some(b"")), "00");
    assert_eq!(ja4_alpn(Some(b"h2")), "h2");
    assert_eq!(ja4_alpn(Some(b"http/1.1")), "h1");
    assert_eq!(ja4_alpn(Some(b"h")), "hh");
    assert_eq!(ja4_alpn(Some(&[0xab])), "ab");
    assert_eq!(ja4_alpn(Some(&[0xab, 0xcd])), "ad");
    assert_eq!(ja4_alpn(Some(&[0x30, 0xab])), "3b");
    assert_eq!(ja4_alpn(Some(&[0x30, 0x31, 0xab, 0xcd])), "3d");
    assert_eq!(ja4_alpn(Some(&[0x30, 0xab, 0xcd, 0x31])), "01");
}

#[test]
fn ja4_without_signature_algorithms_or_extensions() {
    // The specification's example of an extension list hashed alone.
    assert_eq!(hash12("0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01"), "6d807ffa2a79");
    let hello = ClientHello { legacy_version: 0x0303, ciphers: vec![0x002f], ..ClientHello::default() };
    assert_eq!(hello.ja4(), format!("t12i010000_{}_000000000000", hash12("002f")));
    let empty = ClientHello { legacy_version: 0x0301, ..ClientHello::default() };
    assert_eq!(empty.ja4(), "t10i000000_000000000000_000000000000");
}

#[test]
fn a_hello_split_at_every_byte_reads_the_same() {
    let bytes = records(CONTENT_HANDSHAKE, &client_hello_message(&spec_example()), 1 << 14);
    let whole = read_all(&[&bytes]);
    for split in 0..=bytes.len() {
        let (a, b) = bytes.split_at(split);
        assert_eq!(read_all(&[a, b]), whole, "split at {split}");
    }
    // Byte by byte, too.
    let pieces: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(read_all(&pieces), whole);
}

#[test]
fn a_hello_fragmented_over_several_records_is_reassembled() {
    let spec = HelloSpec { key_share_len: 3000, ..spec_example() };
    let message = client_hello_message(&spec);
    let bytes = records(CONTENT_HANDSHAKE, &message, 700);
    assert!(bytes.len() > 3 * 700);
    let events = read_all(&[&bytes]);
    assert_eq!(only_client(&events).ja4(), "t13d1516h2_8daaf6152771_e5627efa2ab1");
}

#[test]
fn server_hellos_name_version_cipher_and_alpn() {
    // TLS 1.3: the version is in supported_versions.
    let events = read_all(&[&server_hello_bytes(Some(0x0304), 0x1302, None, [1; 32])]);
    let [HelloEvent::Server(hello)] = events.as_slice() else { panic!("{events:?}") };
    let mut record = Handshake::default();
    hello.describe(&mut record);
    assert_eq!(record.version.as_deref(), Some("TLSv1.3"));
    assert_eq!(record.cipher.as_deref(), Some("TLS_AES_256_GCM_SHA384"));
    assert_eq!(record.alpn, None);

    // TLS 1.2 with ALPN, followed by a certificate message we skip.
    let mut bytes = server_hello_bytes(None, 0xc02f, Some(b"h2"), [1; 32]);
    bytes.extend(records(CONTENT_HANDSHAKE, &handshake_message(11, &[0; 40]), 1 << 14));
    let events = read_all(&[&bytes]);
    let [HelloEvent::Server(hello)] = events.as_slice() else { panic!("{events:?}") };
    let mut record = Handshake::default();
    hello.describe(&mut record);
    assert_eq!(record.version.as_deref(), Some("TLSv1.2"));
    assert_eq!(record.cipher.as_deref(), Some("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"));
    assert_eq!(record.alpn.as_deref(), Some("h2"));
}

#[test]
fn a_hello_retry_request_is_followed_by_the_real_server_hello() {
    let mut bytes = server_hello_bytes(Some(0x0304), 0x1301, None, HELLO_RETRY_RANDOM);
    bytes.extend(records(CONTENT_CHANGE_CIPHER_SPEC, &[1], 10));
    bytes.extend(server_hello_bytes(Some(0x0304), 0x1301, None, [5; 32]));
    let events = read_all(&[&bytes]);
    assert!(matches!(&events[..], [HelloEvent::Server(a), HelloEvent::Server(b)] if a.hello_retry && !b.hello_retry));
}

#[test]
fn client_hello_describes_the_offer() {
    let bytes = records(CONTENT_HANDSHAKE, &client_hello_message(&spec_example()), 1 << 14);
    let events = read_all(&[&bytes]);
    let mut record = Handshake::default();
    only_client(&events).describe(&mut record);
    assert_eq!(record.sni.as_deref(), Some("example.com"));
    assert_eq!(record.alpn_offered, ["h2", "http/1.1"]);
    assert_eq!(record.versions_offered, ["TLSv1.3", "TLSv1.2"]);
    assert_eq!(record.ciphers_offered.len(), 15, "GREASE is not a cipher");
    assert_eq!(record.ciphers_offered[0], "TLS_AES_128_GCM_SHA256");
    assert_eq!(record.ja4.as_deref(), Some("t13d1516h2_8daaf6152771_e5627efa2ab1"));
}

#[test]
fn without_sni_and_alpn() {
    let spec =
        HelloSpec { extensions: vec![0x000a, 0x000d, 0x002b], sni: None, versions: vec![0x0303], ..spec_example() };
    let bytes = records(CONTENT_HANDSHAKE, &client_hello_message(&spec), 1 << 14);
    let events = read_all(&[&bytes]);
    let hello = only_client(&events);
    assert_eq!(hello.sni, None);
    assert!(hello.alpn.is_empty());
    assert!(hello.ja4().starts_with("t12i150300_"), "{}", hello.ja4());
}

#[test]
fn other_protocols_are_not_tls() {
    for text in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"\x80\x2e\x01\x03\x01",
        b"\x16\x02\x01",
    ] {
        let events = read_all(&[text]);
        assert!(matches!(events[..], [HelloEvent::NotTls(_)]), "{text:?}: {events:?}");
    }
    // One byte at a time decides as early as it can.
    let mut reader = HelloReader::new();
    let mut out = Vec::new();
    reader.feed(b"\x16", &mut out);
    assert!(out.is_empty() && !reader.is_done());
    reader.feed(b"\x04", &mut out);
    assert!(matches!(out[..], [HelloEvent::NotTls(_)]) && reader.is_done());
}

#[test]
fn broken_hellos_are_malformed_not_fatal() {
    // A handshake record whose ClientHello body is garbage.
    let bad = records(CONTENT_HANDSHAKE, &handshake_message(HANDSHAKE_CLIENT_HELLO, &[3, 3, 1, 2]), 100);
    assert!(matches!(read_all(&[&bad])[..], [HelloEvent::Malformed(_)]));
    // Encrypted data before any hello.
    let encrypted = records(CONTENT_APPLICATION_DATA, &[1; 50], 100);
    let mut bytes = Vec::new();
    bytes.extend(records(CONTENT_HANDSHAKE, &handshake_message(12, &[0; 4])[..2], 100));
    bytes.extend(encrypted);
    assert!(matches!(read_all(&[&bytes])[..], [HelloEvent::Malformed(_)]), "{:?}", read_all(&[&bytes]));
    // A truncated hello is simply incomplete: no event, not done.
    let whole = records(CONTENT_HANDSHAKE, &client_hello_message(&spec_example()), 1 << 14);
    let mut reader = HelloReader::new();
    let mut out = Vec::new();
    reader.feed(&whole[..whole.len() - 1], &mut out);
    assert!(out.is_empty() && !reader.is_done());
}

#[test]
fn the_buffer_is_capped() {
    // A handshake message announcing more than the cap gives up at once.
    let mut bytes = vec![CONTENT_HANDSHAKE, 3, 3, 0x40, 0x00, HANDSHAKE_CLIENT_HELLO, 0x10, 0x00, 0x00];
    bytes.extend(vec![0u8; 0x4000 - 4]);
    let events = read_all(&[&bytes]);
    assert!(matches!(events[..], [HelloEvent::Malformed(_)]), "{events:?}");
    // Endless small handshake records never reach a message end.
    let mut reader = HelloReader::new();
    let mut out = Vec::new();
    let mut head = vec![HANDSHAKE_CLIENT_HELLO, 0x00, 0x30, 0x00];
    head.extend([0u8; 100]);
    reader.feed(&records(CONTENT_HANDSHAKE, &head, 1 << 14), &mut out);
    for _ in 0..MAX_RECORDS {
        reader.feed(&records(CONTENT_HANDSHAKE, &[0; 100], 1 << 14), &mut out);
    }
    assert!(reader.is_done());
    assert!(matches!(out[..], [HelloEvent::Malformed(_)]), "{out:?}");
}

#[test]
fn grease_values() {
    assert!(is_grease(0x0a0a) && is_grease(0xfafa) && is_grease(0x3a3a));
    assert!(!is_grease(0x0a1a) && !is_grease(0x1301) && !is_grease(0x0304));
}

proptest! {
    #[test]
    fn random_bytes_never_panic(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8)) {
        let mut reader = HelloReader::new();
        let mut out = Vec::new();
        for chunk in &chunks {
            reader.feed(chunk, &mut out);
        }
        prop_assert!(out.len() <= 3);
    }

    #[test]
    fn random_bytes_after_a_record_header_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..600),
        kind in prop_oneof![Just(1u8), Just(2u8), any::<u8>()],
    ) {
        let mut message = vec![kind, 0, (body.len() >> 8) as u8, body.len() as u8];
        message.extend(&body);
        let bytes = records(CONTENT_HANDSHAKE, &message, 200);
        let mut reader = HelloReader::new();
        let mut out = Vec::new();
        for piece in bytes.chunks(37) {
            reader.feed(piece, &mut out);
        }
        for event in &out {
            if let HelloEvent::Client(hello) = event {
                let _ = hello.ja4();
            }
        }
    }

    #[test]
    fn mutated_hellos_never_panic(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = records(CONTENT_HANDSHAKE, &client_hello_message(&spec_example()), 300);
        for (index, value) in flips {
            let i = index.index(bytes.len());
            bytes[i] = value;
        }
        let mut reader = HelloReader::new();
        let mut out = Vec::new();
        reader.feed(&bytes, &mut out);
        for event in &out {
            if let HelloEvent::Client(hello) = event {
                let mut record = Handshake::default();
                hello.describe(&mut record);
            }
        }
    }
}
