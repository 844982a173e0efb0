//! Secrets in text no parser structured: `--raw` chunks, a connection
//! whose parser gave up (joined mid-body, too many headers), and JSON
//! bodies. Redaction must not depend on the parser succeeding.
//!
//! [`RawMasker`] reads one direction of a connection as a stream cut
//! anywhere: its state carries over from one call to the next, so a secret
//! split across two TLS calls is masked in both, and no bytes are held
//! back (each chunk goes out when it comes, as long as it was). It masks
//! the value of
//! - a header line with a secret name (`Authorization: …` to the line end),
//! - a secret `name=value` pair anywhere (request lines, `Location:`
//!   values, form bodies), to the next `&`, `;`, `#`, quote or blank,
//! - a JSON member with a secret name (`"password": …`): a string's
//!   content, or a whole number, literal, object or array, which becomes
//!   the string `"<redacted>"`, so that valid JSON stays valid.
//!
//! A value becomes `<redacted>` once, where it starts; its other bytes are
//! dropped. Text that merely looks like one of these (a body line
//! `token: …`) is masked too: better one masked value too many.
//!
//! Binary data (HTTP/2 frames, whose HPACK Huffman coding hides header
//! text from any scan; gzip; protocols we do not know) cannot be scanned
//! for secrets at all, so a direction that turns out binary is withheld
//! from then on, unless `--show-secrets`.

use super::names::is_secret_bytes;
use super::REDACTED;

/// Longer words are no names we know.
const MAX_NAME: usize = 64;

/// What [`RawMasker::mask`] made of some bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Masked {
    /// The bytes as they may be shown; `masked`: a value was redacted.
    Text { data: Vec<u8>, masked: bool },
    /// Binary: not shown at all (see the module docs).
    Withheld,
}

#[derive(Clone, Debug, Default)]
pub struct RawMasker {
    state: State,
    /// The name being read (bounded; `long` once it overflowed).
    word: Vec<u8>,
    long: bool,
    /// The word started a line (a header name, maybe) / right after `"`.
    word_at_line_start: bool,
    word_quoted: bool,
    /// The next byte starts a line.
    at_line_start: bool,
    started: bool,
    /// JSON only (a body): no header lines, and every replaced value
    /// keeps the document valid.
    json: bool,
    binary: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    #[default]
    Scan,
    /// After the closing quote of a secret-named string: blanks, then `:`.
    JsonKeyEnd,
    /// After `"secret":`: blanks, then the value.
    JsonValueStart,
    /// Inside a secret value; `shown`: the marker went out.
    Mask { until: Until, shown: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Until {
    LineEnd,
    PairEnd,
    /// `escape`: the previous byte was a backslash.
    JsonString {
        escape: bool,
    },
    JsonScalar,
    /// Nesting depth, and whether inside a string (and after a backslash).
    JsonNested {
        depth: u32,
        string: bool,
        escape: bool,
    },
}

impl RawMasker {
    /// A masker for one JSON document (a body), cut anywhere.
    pub(crate) fn json() -> Self {
        RawMasker { json: true, ..RawMasker::default() }
    }

    /// The bytes as they may be shown. Once a direction was binary it
    /// stays withheld: its later text may be the middle of a frame.
    pub fn mask(&mut self, input: &[u8]) -> Masked {
        if !self.json && (self.binary || is_binary(input)) {
            self.binary = true;
            return Masked::Withheld;
        }
        if !self.started {
            self.started = true;
            self.at_line_start = true;
        }
        let mut out = Vec::with_capacity(input.len());
        let mut masked = false;
        for &b in input {
            self.byte(b, &mut out, &mut masked);
        }
        Masked::Text { data: out, masked }
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>, masked: &mut bool) {
        match self.state {
            State::Scan => self.scan(b, out),
            State::JsonKeyEnd => match b {
                b' ' | b'\t' | b'\r' | b'\n' => out.push(b),
                b':' => {
                    out.push(b);
                    self.state = State::JsonValueStart;
                }
                _ => {
                    self.state = State::Scan;
                    self.scan(b, out);
                }
            },
            State::JsonValueStart => match b {
                b' ' | b'\t' | b'\r' | b'\n' => out.push(b),
                b'"' => {
                    out.push(b);
                    self.state = State::Mask { until: Until::JsonString { escape: false }, shown: false };
                }
                b'{' | b'[' => {
                    out.extend_from_slice(b"\"");
                    out.extend_from_slice(REDACTED.as_bytes());
                    out.extend_from_slice(b"\"");
                    *masked = true;
                    let until = Until::JsonNested { depth: 1, string: false, escape: false };
                    self.state = State::Mask { until, shown: true };
                }
                b',' | b'}' | b']' => {
                    self.state = State::Scan;
                    self.scan(b, out);
                }
                _ => {
                    out.extend_from_slice(b"\"");
                    out.extend_from_slice(REDACTED.as_bytes());
                    out.extend_from_slice(b"\"");
                    *masked = true;
                    self.state = State::Mask { until: Until::JsonScalar, shown: true };
                }
            },
            State::Mask { until, shown } => self.mask_byte(b, until, shown, out, masked),
        }
    }

    fn mask_byte(&mut self, b: u8, until: Until, shown: bool, out: &mut Vec<u8>, masked: &mut bool) {
        let mut hide = |state: &mut State, until: Until| {
            if !shown {
                out.extend_from_slice(REDACTED.as_bytes());
            }
            *masked = true;
            *state = State::Mask { until, shown: true };
        };
        match until {
            Until::LineEnd => match b {
                b'\r' | b'\n' => {
                    self.state = State::Scan;
                    self.scan(b, out);
                }
                b' ' | b'\t' if !shown => out.push(b),
                _ => hide(&mut self.state, until),
            },
            Until::PairEnd => match b {
                b'&' | b';' | b'#' | b' ' | b'\t' | b'\r' | b'\n' | b'"' | b'\'' | b'<' | b'>' | b'\\' | b',' => {
                    self.state = State::Scan;
                    self.scan(b, out);
                }
                _ => hide(&mut self.state, until),
            },
            Until::JsonString { escape } => match b {
                _ if escape => hide(&mut self.state, Until::JsonString { escape: false }),
                b'\\' => hide(&mut self.state, Until::JsonString { escape: true }),
                b'"' => {
                    out.push(b);
                    self.end_value();
                }
                // No JSON string holds a raw line end: this was not one.
                b'\n' if !self.json => {
                    self.state = State::Scan;
                    self.scan(b, out);
                }
                _ => hide(&mut self.state, until),
            },
            Until::JsonScalar => match b {
                b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n' => {
                    self.state = State::Scan;
                    self.scan(b, out);
                }
                _ => hide(&mut self.state, until),
            },
            Until::JsonNested { depth, string, escape } => {
                let next = match (string, escape, b) {
                    (true, true, _) => Until::JsonNested { depth, string: true, escape: false },
                    (true, false, b'\\') => Until::JsonNested { depth, string: true, escape: true },
                    (true, false, b'"') => Until::JsonNested { depth, string: false, escape: false },
                    (true, false, _) => until,
                    (false, _, b'"') => Until::JsonNested { depth, string: true, escape: false },
                    (false, _, b'{' | b'[') => Until::JsonNested { depth: depth + 1, string: false, escape: false },
                    (false, _, b'}' | b']') if depth == 1 => {
                        *masked = true;
                        self.end_value();
                        return;
                    }
                    (false, _, b'}' | b']') => Until::JsonNested { depth: depth - 1, string: false, escape: false },
                    _ => until,
                };
                hide(&mut self.state, next);
            }
        }
    }

    /// A JSON value ended: back to scanning, between tokens.
    fn end_value(&mut self) {
        self.state = State::Scan;
        self.reset_word(false);
    }

    fn reset_word(&mut self, quoted: bool) {
        self.word.clear();
        self.long = false;
        self.word_quoted = quoted;
        self.word_at_line_start = self.at_line_start;
    }

    fn scan(&mut self, b: u8, out: &mut Vec<u8>) {
        out.push(b);
        if is_name_byte(b) {
            if self.word.is_empty() && !self.long {
                self.word_at_line_start = self.at_line_start;
            }
            if self.word.len() < MAX_NAME {
                self.word.push(b);
            } else {
                self.long = true;
            }
            self.at_line_start = false;
            return;
        }
        let secret = !self.long && !self.word.is_empty() && is_secret_word(&self.word);
        let header = b == b':' && secret && self.word_at_line_start && !self.word_quoted && !self.json;
        let pair = b == b'=' && secret;
        let key = b == b'"' && secret && self.word_quoted;
        self.at_line_start = b == b'\n';
        if header {
            self.state = State::Mask { until: Until::LineEnd, shown: false };
        } else if pair {
            self.state = State::Mask { until: Until::PairEnd, shown: false };
        } else if key {
            self.state = State::JsonKeyEnd;
        }
        // A quote that closes a word opens nothing.
        let closes_a_word = self.word_quoted && !self.word.is_empty();
        let opens = b == b'"' && !closes_a_word;
        self.reset_word(opens);
        if !opens {
            self.word_at_line_start = self.at_line_start;
        }
    }
}

/// Name characters: header tokens, parameter and JSON key names (`%` for
/// percent-encoded names).
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'%' | b'~')
}

fn is_secret_word(word: &[u8]) -> bool {
    if word.contains(&b'%') {
        let decoded: Vec<u8> = percent_encoding::percent_decode(word).collect();
        return is_secret_bytes(&decoded);
    }
    is_secret_bytes(word)
}

/// Bytes no text scan can judge: NUL and the C0 controls text does not
/// use (tab, line ends, form feed and ESC are text), or bytes that are not
/// UTF-8 (a character cut at either end of the chunk is still text).
pub(crate) fn is_binary(bytes: &[u8]) -> bool {
    if bytes.iter().any(|&b| matches!(b, 0x00..=0x08 | 0x0e..=0x1a | 0x1c..=0x1f)) {
        return true;
    }
    // Skip a continuation of a character cut at the start.
    let start = bytes.iter().take(3).take_while(|&&b| b & 0xc0 == 0x80).count();
    match std::str::from_utf8(&bytes[start..]) {
        Ok(_) => false,
        Err(e) => e.error_len().is_some(),
    }
}

/// A whole JSON body, redacted (see the module docs); `true` when
/// something was.
pub(crate) fn redact_json_body(body: &[u8]) -> (Vec<u8>, bool) {
    match RawMasker::json().mask(body) {
        Masked::Text { data, masked } => (data, masked),
        Masked::Withheld => (Vec::new(), true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(m: Masked) -> (String, bool) {
        match m {
            Masked::Text { data, masked } => (String::from_utf8(data).expect("utf8"), masked),
            Masked::Withheld => panic!("withheld"),
        }
    }

    fn masked_whole(input: &[u8]) -> String {
        text(RawMasker::default().mask(input)).0
    }

    #[test]
    fn secret_header_lines_are_masked_and_others_kept() {
        let request =
            b"GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer s3cret\r\nCookie:sid=1\r\nX-Trace: t\r\n\r\nbody";
        let (out, masked) = text(RawMasker::default().mask(request));
        assert!(masked);
        assert_eq!(
            out,
            "GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: <redacted>\r\nCookie:<redacted>\r\nX-Trace: t\r\n\r\nbody"
        );
        assert_eq!(
            masked_whole(b"Content-Type: text/plain\nset-cookie: a=b\n"),
            "Content-Type: text/plain\nset-cookie: <redacted>\n"
        );
        // A colon later in a line is no header.
        let (out, masked) = text(RawMasker::default().mask(b"GET /token: x HTTP/1.1\r\n"));
        assert!(!masked);
        assert_eq!(out, "GET /token: x HTTP/1.1\r\n");
    }

    #[test]
    fn query_pairs_form_fields_and_json_members_are_masked() {
        assert_eq!(
            masked_whole(b"GET /cb?code=abc&state=x HTTP/1.1\r\nLocation: /n?access_token=t#a\r\n"),
            "GET /cb?code=<redacted>&state=x HTTP/1.1\r\nLocation: /n?access_token=<redacted>#a\r\n"
        );
        assert_eq!(masked_whole(b"client_id=me&client_secret=s3&x=1"), "client_id=me&client_secret=<redacted>&x=1");
        assert_eq!(
            masked_whole(br#"{"user":"u","password":"hunter2","n":{"refresh_token":12,"ok":true}}"#),
            r#"{"user":"u","password":"<redacted>","n":{"refresh_token":"<redacted>","ok":true}}"#
        );
        assert_eq!(masked_whole(br#"{"secret" : {"a":[1,"}"]}, "b":1}"#), r#"{"secret" : "<redacted>", "b":1}"#);
        assert_eq!(masked_whole(br#"{"token":"a\"b\\","x":"y"}"#), r#"{"token":"<redacted>","x":"y"}"#);
        assert_eq!(masked_whole(br#"["password","x"]"#), r#"["password","x"]"#, "a value, not a key");
        assert_eq!(masked_whole(br#"{"note":"password: x"}"#), r#"{"note":"password: x"}"#);
    }

    /// Cut anywhere, and in as many pieces as there are bytes: the same
    /// output, no secret byte out.
    #[test]
    fn a_secret_split_across_calls_is_masked_at_every_split_point() {
        let input: &[u8] = b"POST /t?sig=abcd HTTP/1.1\r\nX-Api-Key:   k3y-value\r\nProxy-Authorization: Basic dXNlcg==\r\n\r\n{\"password\": \"pw0rd\"}";
        let whole = masked_whole(input);
        for cut in 0..=input.len() {
            let mut masker = RawMasker::default();
            let mut out = text(masker.mask(&input[..cut])).0;
            out.push_str(&text(masker.mask(&input[cut..])).0);
            assert_eq!(out, whole, "cut at {cut}");
        }
        let mut masker = RawMasker::default();
        let bytewise: String = input.iter().map(|b| text(masker.mask(std::slice::from_ref(b))).0).collect();
        assert_eq!(bytewise, whole);
        for secret in ["k3y", "dXNlcg", "abcd", "pw0rd"] {
            assert!(!whole.contains(secret), "{secret}: {whole}");
        }
    }

    #[test]
    fn binary_directions_are_withheld_from_then_on() {
        let mut masker = RawMasker::default();
        assert!(matches!(masker.mask(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Masked::Text { .. }));
        assert_eq!(masker.mask(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00"), Masked::Withheld);
        assert_eq!(masker.mask(b"plain text now"), Masked::Withheld);
        assert!(!is_binary("héllo\x1b[2J\r\n\t".as_bytes()));
        assert!(!is_binary(&"é".as_bytes()[..1]), "a character cut at the end");
        assert!(!is_binary(&"é".as_bytes()[1..]), "a character cut at the start");
        assert!(is_binary(b"\x1f\x8b\x08\x00"), "gzip");
        assert!(is_binary(b"\xff\xfe text"));
    }

    fn secret_name() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["password", "token", "client_secret", "refresh_token", "secret", "api_key"])
    }

    /// A JSON value tree with secret members at some depths.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            "[ -~é\\n\\\\\"]{0,12}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
                prop::collection::vec(("[a-z_]{1,8}", inner), 0..5)
                    .prop_map(|members| serde_json::Value::Object(members.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Valid JSON stays valid, every secret member's value is gone,
        /// and a truncated document is masked as far as it goes.
        #[test]
        fn json_stays_valid_and_loses_its_secrets(
            tree in json_value(),
            name in secret_name(),
            secret in "[A-Za-z0-9]{8,16}",
            pretty in any::<bool>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let doc = serde_json::json!({ "a": tree, name: secret, "nested": [{ name: { "x": secret } }] });
            let input = if pretty { serde_json::to_vec_pretty(&doc) } else { serde_json::to_vec(&doc) }.expect("json");
            let (out, masked) = redact_json_body(&input);
            prop_assert!(masked);
            let parsed: serde_json::Value = serde_json::from_slice(&out).map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&out))))?;
            prop_assert_eq!(&parsed[name], &serde_json::json!(REDACTED));
            let text = String::from_utf8_lossy(&out);
            prop_assert!(!text.contains(&secret), "{}", text);
            let truncated = &input[..cut.index(input.len() + 1)];
            let (out, _) = redact_json_body(truncated);
            prop_assert!(!String::from_utf8_lossy(&out).contains(&secret));
        }

        /// Any bytes, cut anywhere: no panic, and cutting changes nothing.
        #[test]
        fn masking_never_panics_and_ignores_cuts(input in prop::collection::vec(any::<u8>(), 0..300), cut in any::<prop::sample::Index>()) {
            let cut = cut.index(input.len() + 1);
            let mut whole = RawMasker::json();
            let whole = whole.mask(&input);
            let mut split = RawMasker::json();
            let (a, b) = (split.mask(&input[..cut]), split.mask(&input[cut..]));
            if let (Masked::Text { data: w, .. }, Masked::Text { data: a, .. }, Masked::Text { data: b, .. }) = (whole, a, b) {
                prop_assert_eq!(w, [a, b].concat());
            }
            let _ = RawMasker::default().mask(&input);
        }
    }
}
