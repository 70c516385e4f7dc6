//! Host-side logic of custodyd that does not touch the kernel: credential recognition
//! and fingerprinting, redaction, and parsing of intent signals (HTTP, LLM APIs, MCP,
//! DNS) from captured plaintext, and the catalogue of known agent programs.

pub mod credential;
pub mod intent;
pub mod known_agents;
pub mod shipper;
pub mod tls_stack;
