//! Custody's collector: mTLS gRPC ingest from host sensors, durable storage
//! (sled, behind the `store::Store` trait), cross-host chain reconstruction, the
//! operator (admin) API and the web UI.
//!
//! Rooms: `api/` is the gRPC edge (the only tonic-speaking domain code);
//! `engine/` owns ingest, the chain and fleet indexes and the read API; `store/`
//! is durable storage; `response/`, `live_policy/`, `export/`, `metrics/` and
//! `ui/` use the engine; `clock`, `secret`, `event_key`, `event_kind`,
//! `log_throttle` and `sensor_streams` are leaves; the policy language itself is
//! the `custody-policy` crate (collector/policy). `server.rs` wires it all together.
//!
//! The ingest and chain-index logic is usable without the network through
//! [`engine::Engine`] (`Engine::open`, `Engine::ingest`/`ingest_group`,
//! `Engine::get_chain`); the benchmark drives it directly.

pub mod alerts;
pub mod api;
pub mod audit;
pub mod auth;
pub mod chain;
pub mod client;
pub mod clock;
pub mod config;
pub mod engine;
pub mod event_key;
pub mod event_kind;
pub mod export;
pub mod fleet;
pub mod live_policy;
pub mod log_throttle;
pub mod metrics;
pub mod pki;
pub mod response;
pub mod secret;
pub mod sensor_streams;
pub mod server;
pub mod signal;
pub mod store;
pub mod synth;
pub mod ui;
pub mod units;

pub use engine::{Engine, IngestOutcome};
pub use server::{Collector, CollectorConfig};
