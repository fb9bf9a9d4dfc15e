//! roster-bolt's integration tests, one binary.
//!
//! - `roundtrip`: files the writer makes read back exactly, and the reader
//!   survives any damage (property tests).

mod roundtrip;
