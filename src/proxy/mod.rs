//! Protocol engines. Each plugs into `server::Engine`; none touches recordings directly.

pub mod postgres;
pub mod stream;
pub mod tls;
