//! fedseg's wire protocol, shared by the coordinator and the site agent: the gRPC services
//! (`pb`), safetensors model files (the only form in which a model travels), chunked transfer
//! with BLAKE3 digests, and the TLS client setup both binaries dial with.

pub mod client;
pub mod direct_io;
pub mod http;
pub mod logging;
pub mod safetensors;
pub mod transfer;
pub mod upload;

/// Generated from `proto/fedseg.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("fedseg.v1");
}

/// Largest chunk of model bytes one message carries (the bound is 4 MiB; tonic's
/// default 4 MiB message limit counts framing, so stay below it).
pub const CHUNK_BYTES: usize = 2 << 20;

/// Message size limit set on both ends: a chunk plus framing, with room to spare.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

/// HTTP/2 flow-control windows of clients (what a site may have in flight towards it); the
/// default 64 KiB windows throttle model transfer several-fold.
pub const WINDOW_BYTES: u32 = 32 << 20;

/// The coordinator's receive windows: what each connected site may have buffered in the
/// coordinator at once. Small enough that memory stays flat as sites grow, still far above
/// the bandwidth-delay product of a hospital's uplink.
pub const SERVER_STREAM_WINDOW_BYTES: u32 = 4 << 20;
pub const SERVER_CONNECTION_WINDOW_BYTES: u32 = 8 << 20;
/// Largest HTTP/2 DATA frame either end accepts (the protocol default is 16 KiB): a 4 MiB
/// chunk then crosses in a few frames instead of 256, each with its flow-control bookkeeping.
pub const MAX_FRAME_BYTES: u32 = 1 << 20;
