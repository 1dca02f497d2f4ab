//! Shared helpers for the cross-process tests (spawning `peer`, checksums, names).
#![forbid(unsafe_code)]
