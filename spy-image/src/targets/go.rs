//! Go binary analysis (crypto/tls probe points). Filled in by the Go issue.
