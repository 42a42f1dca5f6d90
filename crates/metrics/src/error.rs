//! The crate's one error enum.

use std::io;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// `--metrics-address` could not be bound (in use, not a local address, no permission).
    #[error("cannot bind the metrics endpoint to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the local address of the metrics listener")]
    LocalAddr(#[source] io::Error),
    #[error("cannot encode the metrics registry")]
    Encode(#[source] std::fmt::Error),
}
