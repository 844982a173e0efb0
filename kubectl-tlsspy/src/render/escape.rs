//! Text from the wire made safe for a terminal.
//!
//! Paths, hosts, header values, SNI, process names and bodies come from
//! the traffic of programs we do not control: a `:path` holding `ESC[2J`
//! clears the user's screen, an OSC sequence renames the window or writes
//! a hyperlink, a carriage return overwrites the line before it, and the
//! Unicode bidirectional controls make text read differently from what it
//! is. Every such character is shown as an escape instead (`\x1b`,
//! `\u{202e}`), so what is on screen is what came over the wire.

#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` with every control character escaped (tabs too: this is for
/// fields on one line).
pub fn field(text: &str) -> Cow<'_, str> {
    escape(text, false)
}

/// A line of a text body: tabs are kept, every other control escaped.
pub fn body_line(text: &str) -> Cow<'_, str> {
    escape(text, true)
}

fn escape(text: &str, keep_tabs: bool) -> Cow<'_, str> {
    if !text.chars().any(|c| needs_escape(c, keep_tabs)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c, keep_tabs) {
            match u32::from(c) {
                n @ 0..=0x7f => {
                    let _ = write!(out, "\\x{n:02x}");
                }
                n => {
                    let _ = write!(out, "\\u{{{n:x}}}");
                }
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char, keep_tabs: bool) -> bool {
    match c {
        '\t' => !keep_tabs,
        // C0, DEL and C1: what terminals act on.
        c if c.is_control() => true,
        // Bidirectional embeddings, overrides and isolates; the line and
        // paragraph separators a terminal may break on.
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}' => true,
        '\u{2028}' | '\u{2029}' => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_not_copied() {
        assert!(matches!(field("/api/v1/orders?id=42 ünïcode 🔓"), Cow::Borrowed(_)));
    }

    #[test]
    fn terminal_sequences_are_shown_not_obeyed() {
        assert_eq!(field("/\x1b[2J\x1b]0;pwned\x07"), "/\\x1b[2J\\x1b]0;pwned\\x07");
        assert_eq!(field("ok\rEVIL"), "ok\\x0dEVIL");
        assert_eq!(field("a\nb\tc\x7f"), "a\\x0ab\\x09c\\x7f");
        assert_eq!(field("\u{9b}31m"), "\\u{9b}31m", "C1 CSI");
        assert_eq!(field("abc\u{202e}fdp.exe"), "abc\\u{202e}fdp.exe");
        assert_eq!(body_line("key:\tvalue\x1b[5m"), "key:\tvalue\\x1b[5m");
    }

    #[test]
    fn escaped_text_has_no_control_left() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        for escaped in [field(&all), body_line(&all)] {
            assert!(escaped.chars().all(|c| !c.is_control() || c == '\t'), "{escaped:?}");
            assert!(!escaped.contains('\u{202e}'));
        }
    }
}
