//! The collector's gRPC edge: the sensor service (enrollment, event streams,
//! commands) and the admin service (operators and custodyctl). Only this folder
//! speaks tonic; the domain modules it calls return their own types and errors,
//! which are converted to and from the wire here.

pub mod admin_service;
pub mod conn_limit;
mod errors;
pub mod sensor_service;
