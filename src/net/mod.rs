//! The only place with sockets: TLS configuration and certificates ([`tls`]) and the client connection
//! driver ([`conn`]) that joins a socket, rustls and the c2s state machine on a shard.

pub mod conn;
pub mod tls;
