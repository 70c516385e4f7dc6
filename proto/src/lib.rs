//! Custody's wire protocol: protobuf messages and gRPC services, generated at build
//! time from the `.proto` files beside this crate.

pub mod sensor {
    pub mod v1 {
        tonic::include_proto!("custody.sensor.v1");
    }
}

pub mod admin {
    pub mod v1 {
        tonic::include_proto!("custody.admin.v1");
    }
}
