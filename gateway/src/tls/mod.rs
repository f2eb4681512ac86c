//! TLS at the edge: the live certificate store ([`store`]) that every handshake asks, termination with
//! a deadline ([`accept`]), certificates parsed once ([`cert`]), ACME orders and renewals ([`acme`])
//! kept in [`storage`], certificates for tenants' own domains at their first handshake
//! ([`on_demand`]), and local development certificates ([`dev`]).

pub mod accept;
pub mod acme;
pub mod cert;
pub mod dev;
pub mod dns;
pub mod on_demand;
pub mod order_storage;
pub mod shared;
pub mod storage;
pub mod store;
