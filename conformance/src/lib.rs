//! Shared pieces of the librdmasock conformance suite.
//!
//! The suite itself lives in `tests/`; the C test programs in `c/` and the
//! Rust one in `src/bin/rstream.rs` speak the protocols in [`proto`], and
//! [`decisions`] reads the shim's log.

pub mod decisions;
pub mod proto;
