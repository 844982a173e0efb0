//! Helpers shared by the end-to-end tests, and the test API server.

pub mod apiserver;
pub mod bench;
pub mod go;
pub mod support;
