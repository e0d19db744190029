//! Route 53 on loopback: `moto_server` and a proxy in front of it (fault injection, access
//! keys, a log of what was asked and what reached moto). Shared by the Route 53 provider's
//! tests and the service's end-to-end matrix.

mod moto;
mod proxy;

pub use moto::Moto;
pub use proxy::{aws_error, Fault, Op, Proxy, ProxyState};
