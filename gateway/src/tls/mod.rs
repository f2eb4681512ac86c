//! TLS at the edge: the live certificate store ([`store`]) that every handshake asks, termination with
//! a deadline ([`accept`]) and local development certificates ([`dev`]). Certificates are parsed once
//! by [`crate::support::cert`]; the ones the gateway orders itself come from [`crate::acme`], which
//! fills the store and answers its challenges.

pub mod accept;
pub mod client_auth;
pub mod dev;
pub mod ocsp;
pub mod store;
