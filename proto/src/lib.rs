//! Custody's wire protocol: protobuf messages and gRPC services, generated at build
//! time from the `.proto` files beside this crate, with the names of their enums
//! (how they read in JSON, see [`enums`]) and the one table of event kinds
//! ([`sensor::v1::EventKind`]).

pub mod codec;
pub mod enums;

pub mod sensor {
    pub mod v1 {
        tonic::include_proto!("custody.sensor.v1");

        mod command_kind;
        mod event_kind;
    }
}

pub mod admin {
    pub mod v1 {
        tonic::include_proto!("custody.admin.v1");
    }
}

include!(concat!(env!("OUT_DIR"), "/enum_names.rs"));
