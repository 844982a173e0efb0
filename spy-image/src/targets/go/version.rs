//! Go release numbers, as the toolchain writes them into `.go.buildinfo`.

use std::fmt;

/// A Go release: `go1.23.4` is `{ major: 1, minor: 23, patch: 4 }`.
/// Pre-releases (`go1.21rc2`) and development builds (`devel go1.24-abc…`)
/// count as the `.0` of their minor release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl GoVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        GoVersion { major, minor, patch }
    }

    /// Parses `go1.23.4`, `go1.21rc2`, `go1.22.0 X:boringcrypto`,
    /// `devel go1.24-4b9a6c5 Mon Jun 3 …`. `None` for anything else.
    pub fn parse(text: &str) -> Option<GoVersion> {
        let text = text.trim();
        let text = text.strip_prefix("devel ").unwrap_or(text);
        let rest = text.strip_prefix("go")?;
        let (major, rest) = leading_number(rest)?;
        let rest = rest.strip_prefix('.')?;
        let (minor, rest) = leading_number(rest)?;
        let patch = match rest.strip_prefix('.') {
            Some(rest) => leading_number(rest).map_or(0, |(n, _)| n),
            None => 0,
        };
        Some(GoVersion::new(major, minor, patch))
    }

    /// Whether this release is `major.minor` or later.
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

impl fmt::Display for GoVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "go{}.{}.{}", self.major, self.minor, self.patch)
    }
}

fn leading_number(s: &str) -> Option<(u32, &str)> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 6 {
        return None;
    }
    let n = s.get(..digits)?.parse().ok()?;
    Some((n, s.get(digits..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_prerelease_and_devel_versions() {
        assert_eq!(GoVersion::parse("go1.23.4"), Some(GoVersion::new(1, 23, 4)));
        assert_eq!(GoVersion::parse("go1.21rc2"), Some(GoVersion::new(1, 21, 0)));
        assert_eq!(GoVersion::parse("go1.22"), Some(GoVersion::new(1, 22, 0)));
        assert_eq!(GoVersion::parse("go1.22.0 X:boringcrypto"), Some(GoVersion::new(1, 22, 0)));
        assert_eq!(GoVersion::parse("devel go1.24-4b9a6c5 Mon Jun 3 2024"), Some(GoVersion::new(1, 24, 0)));
        assert_eq!(GoVersion::parse("1.23.4"), None);
        assert_eq!(GoVersion::parse("go"), None);
        assert_eq!(GoVersion::parse("go1"), None);
        assert_eq!(GoVersion::parse("go99999999.1"), None);
    }

    #[test]
    fn orders_versions() {
        let v = GoVersion::new(1, 17, 13);
        assert!(v.at_least(1, 17));
        assert!(!v.at_least(1, 18));
        assert!(GoVersion::new(2, 0, 0).at_least(1, 99));
    }
}
