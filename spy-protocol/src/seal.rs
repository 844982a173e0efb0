//! A session belongs to the plugin that started it.
//!
//! Everyone allowed `pods/attach` in the spy namespace can attach to a
//! running spy pod: every attacher reads the same stdout, every attacher's
//! stdin reaches the agent, and the kubelet keeps stdout as the pod's log.
//! So the plugin makes a fresh [`SessionKey`] for each session and puts only
//! its SHA-256 digest into the spy pod's arguments (anyone who can read the
//! pod can read them). The key itself travels once, as the first line the
//! plugin writes to the agent's stdin ([`SessionKey::line`]), which no other
//! attacher can read. The agent takes the first `key` line whose digest
//! matches and ignores the rest.
//!
//! From then on every line in both directions is sealed with
//! ChaCha20-Poly1305 under that key ([`Sealer`], [`Opener`]):
//! - records on stdout (and in the pod's log) are useless to a second
//!   reader;
//! - a command someone else writes to stdin does not open, and the agent
//!   drops it;
//! - the nonce is the line's number in its direction, so a line cannot be
//!   replayed, reordered or moved to the other direction. The two
//!   directions use disjoint nonces under the one key.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chacha20poly1305::aead::Aead;
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The first word of the line that hands the key to the agent.
const KEY_WORD: &str = "key";
/// The first word of a sealed line.
const SEALED_WORD: &str = "s";

/// A session's secret: 32 random bytes, never written anywhere but the
/// agent's stdin.
#[derive(Clone)]
pub struct SessionKey([u8; 32]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(…)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("the system gave no random bytes for the session key: {0}")]
    Random(String),
    #[error("not a session key line (`key <base64 of 32 bytes>`)")]
    NotAKey,
    #[error("the session key does not match the digest this spy was started with")]
    WrongKey,
    #[error("not a sealed line (`s <base64>`)")]
    NotSealed,
    #[error("a sealed line that does not open under this session's key (another attacher's, or damaged)")]
    DoesNotOpen,
}

impl SessionKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<SessionKey, SealError> {
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key).map_err(|e| SealError::Random(e.to_string()))?;
        Ok(SessionKey(key))
    }

    /// The hex SHA-256 of the key: what the spy pod's arguments carry.
    pub fn digest(&self) -> String {
        hex(&Sha256::digest(self.0))
    }

    /// The line that hands the key to the agent, with its newline.
    pub fn line(&self) -> String {
        format!("{KEY_WORD} {}\n", BASE64.encode(self.0))
    }

    /// Reads a `key` line and checks it against the digest the agent was
    /// started with (compared in constant time).
    pub fn from_line(line: &str, digest: &str) -> Result<SessionKey, SealError> {
        let encoded = line.trim_end().strip_prefix(KEY_WORD).and_then(|rest| rest.strip_prefix(' '));
        let bytes = encoded.and_then(|b| BASE64.decode(b).ok()).ok_or(SealError::NotAKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| SealError::NotAKey)?;
        let key = SessionKey(key);
        let expected = digest.trim().to_ascii_lowercase();
        if bool::from(key.digest().as_bytes().ct_eq(expected.as_bytes())) {
            Ok(key)
        } else {
            Err(SealError::WrongKey)
        }
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0))
    }
}

/// Which way a line goes: part of every nonce, so the two directions never
/// share one under the same key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Records, agent to plugin.
    ToPlugin = 1,
    /// Commands, plugin to agent.
    ToSpy = 2,
}

fn nonce(direction: Direction, counter: u64) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[0] = direction as u8;
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    *Nonce::from_slice(&nonce)
}

/// Seals the lines of one direction, in order.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
    direction: Direction,
    counter: u64,
}

impl Sealer {
    pub fn new(key: &SessionKey, direction: Direction) -> Sealer {
        Sealer { cipher: key.cipher(), direction, counter: 0 }
    }

    /// `line` (without its newline) as a sealed line, with its newline.
    pub fn seal(&mut self, line: &[u8]) -> String {
        let sealed = self
            .cipher
            .encrypt(&nonce(self.direction, self.counter), line)
            // ChaCha20-Poly1305 fails only for a message over 256 GiB.
            .expect("a line is far below ChaCha20-Poly1305's limit");
        self.counter += 1;
        format!("{SEALED_WORD} {}\n", BASE64.encode(sealed))
    }
}

/// Opens the lines of one direction, in the order they were sealed. A line
/// that does not open leaves the opener where it was, so a forged line in
/// between (someone else's stdin) costs nothing but itself.
pub struct Opener {
    cipher: ChaCha20Poly1305,
    direction: Direction,
    counter: u64,
}

impl Opener {
    pub fn new(key: &SessionKey, direction: Direction) -> Opener {
        Opener { cipher: key.cipher(), direction, counter: 0 }
    }

    /// The line's text (without newline), or why it is refused.
    pub fn open(&mut self, line: &str) -> Result<Vec<u8>, SealError> {
        let encoded = line.trim_end().strip_prefix(SEALED_WORD).and_then(|rest| rest.strip_prefix(' '));
        let sealed = encoded.and_then(|b| BASE64.decode(b).ok()).ok_or(SealError::NotSealed)?;
        let plain = self
            .cipher
            .decrypt(&nonce(self.direction, self.counter), sealed.as_slice())
            .map_err(|_| SealError::DoesNotOpen)?;
        self.counter += 1;
        Ok(plain)
    }
}

/// A writer that seals each line written through it: the agent's stdout in
/// a session. Bytes after the last newline wait for the rest of their line.
pub struct SealedLines<W: std::io::Write> {
    inner: W,
    sealer: Sealer,
    line: Vec<u8>,
}

impl<W: std::io::Write> SealedLines<W> {
    pub fn new(inner: W, key: &SessionKey) -> SealedLines<W> {
        SealedLines { inner, sealer: Sealer::new(key, Direction::ToPlugin), line: Vec::new() }
    }
}

impl<W: std::io::Write> std::io::Write for SealedLines<W> {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let written = buf.len();
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&buf[..end]);
            let sealed = self.sealer.seal(&self.line);
            self.line.clear();
            self.inner.write_all(sealed.as_bytes())?;
            buf = &buf[end + 1..];
        }
        self.line.extend_from_slice(buf);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> SessionKey {
        SessionKey::generate().expect("random")
    }

    #[test]
    fn the_key_line_reads_back_only_against_its_digest() {
        let key = key();
        let line = key.line();
        assert!(line.ends_with('\n') && line.starts_with("key "));
        let back = SessionKey::from_line(&line, &key.digest()).expect("own digest");
        assert_eq!(back.0, key.0);
        assert_eq!(SessionKey::from_line(&line, &key.digest().to_uppercase()).map(|k| k.0), Ok(key.0));
        let other = SessionKey::generate().expect("random");
        assert_eq!(SessionKey::from_line(&line, &other.digest()).map(|_| ()), Err(SealError::WrongKey));
        for bad in ["", "key", "key ", "key !!!", "key AAAA", "go", "keyAAAA"] {
            assert_eq!(SessionKey::from_line(bad, &key.digest()).map(|_| ()), Err(SealError::NotAKey), "{bad:?}");
        }
    }

    #[test]
    fn the_digest_is_sha256_in_hex_and_never_the_key() {
        let key = SessionKey([7; 32]);
        assert_eq!(key.digest(), hex(&Sha256::digest([7u8; 32])));
        assert_eq!(key.digest().len(), 64);
        assert!(!key.line().contains(&key.digest()));
        assert_eq!(format!("{key:?}"), "SessionKey(…)");
    }

    #[test]
    fn lines_open_in_order_and_forgeries_are_dropped_without_harm() {
        let key = key();
        let mut sealer = Sealer::new(&key, Direction::ToSpy);
        let mut opener = Opener::new(&key, Direction::ToSpy);
        let first = sealer.seal(b"go");
        let second = sealer.seal(b"hb");
        // Someone else's key makes lines that do not open here.
        let forged = Sealer::new(&SessionKey::generate().expect("random"), Direction::ToSpy).seal(b"stop");
        assert_eq!(opener.open(&forged), Err(SealError::DoesNotOpen));
        assert_eq!(opener.open("hb"), Err(SealError::NotSealed));
        assert_eq!(opener.open(&first).as_deref(), Ok(&b"go"[..]));
        // A replayed line does not open twice.
        assert_eq!(opener.open(&first), Err(SealError::DoesNotOpen));
        assert_eq!(opener.open(&second).as_deref(), Ok(&b"hb"[..]));
    }

    #[test]
    fn a_line_does_not_open_in_the_other_direction() {
        let key = key();
        let line = Sealer::new(&key, Direction::ToPlugin).seal(b"{\"t\":\"hello\"}");
        assert_eq!(Opener::new(&key, Direction::ToSpy).open(&line), Err(SealError::DoesNotOpen));
        assert!(Opener::new(&key, Direction::ToPlugin).open(&line).is_ok());
    }

    #[test]
    fn a_sealed_line_hides_its_text() {
        let key = key();
        let line = Sealer::new(&key, Direction::ToPlugin).seal(b"Authorization: Bearer hunter2");
        assert!(!line.contains("hunter2") && !line.contains("Bearer"));
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
    }

    #[test]
    fn a_sealed_writer_seals_whole_lines_however_they_are_written() {
        use std::io::Write as _;
        let key = key();
        let mut out = SealedLines::new(Vec::new(), &key);
        out.write_all(b"{\"t\":").expect("write");
        out.write_all(b"\"hello\"}\n{\"t\":\"bye\"}\npartial").expect("write");
        out.flush().expect("flush");
        let text = String::from_utf8(out.inner.clone()).expect("base64 is text");
        let mut opener = Opener::new(&key, Direction::ToPlugin);
        let lines: Vec<Vec<u8>> = text.lines().map(|l| opener.open(l).expect("opens")).collect();
        assert_eq!(lines, vec![b"{\"t\":\"hello\"}".to_vec(), b"{\"t\":\"bye\"}".to_vec()]);
        assert_eq!(out.line, b"partial", "an unfinished line waits");
    }

    proptest! {
        #[test]
        fn every_line_round_trips(lines in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
            let key = SessionKey([3; 32]);
            let mut sealer = Sealer::new(&key, Direction::ToPlugin);
            let mut opener = Opener::new(&key, Direction::ToPlugin);
            for line in &lines {
                let sealed = sealer.seal(line);
                prop_assert_eq!(opener.open(&sealed), Ok(line.clone()));
            }
        }

        #[test]
        fn random_text_never_opens_nor_panics(text in ".{0,200}") {
            let key = SessionKey([3; 32]);
            prop_assert!(Opener::new(&key, Direction::ToSpy).open(&text).is_err());
            prop_assert!(SessionKey::from_line(&text, &key.digest()).is_err());
        }
    }
}
