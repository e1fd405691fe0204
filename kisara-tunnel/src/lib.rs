#![doc = include_str!("../README.md")]

mod auth;
mod bucket;
mod client;
mod datagram;
mod error;
mod metrics;
mod relay;
mod splice;
#[cfg(test)]
mod test_support;
mod transport;
mod udp;
mod wire;
#[cfg(target_os = "linux")]
mod zero_copy;

pub use client::{ClientBuilder, LinkStatus, RelayEndpoint, RelayStatus, TunnelClient};
pub use error::{Result, TunnelError};
pub use relay::{Relay, RelayOptions};
pub use tokio_rustls::rustls;
pub use transport::{ClientTls, RelayTls};
pub use wire::{MAX_FRAME, VERSION};
