//! Custody's collector: mTLS gRPC ingest from host sensors, durable storage in
//! sled, cross-host chain reconstruction, and the operator (admin) API.
//!
//! The ingest and chain-index logic is usable without the network through
//! [`engine::Engine`] (the benchmark drives it directly).

pub mod auth;
pub mod chain;
pub mod pki;
pub mod synth;
