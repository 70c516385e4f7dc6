//! Reporting, where an event leaves the host: the JSON-lines output, the status
//! snapshot behind `custodyd status`, and the Prometheus metrics rendered from it.

pub mod metrics;
pub mod output;
pub mod status;
