//! Tartan's local gRPC API: the `.proto` files under `proto/` and the code
//! `tonic` generates from them. No logic lives here.

/// Version 1 of the local agent API.
pub mod v1 {
    tonic::include_proto!("tartan.v1");
}
