//! Integration tests: the real `gateway` binary on ephemeral ports in front of real HTTP upstreams.

mod acme;
mod admin;
mod api_keys;
mod auth;
mod balancing;
mod cors;
mod discovery;
mod faults;
mod forwarding;
mod gcra_script;
mod health;
mod helpers;
mod jwks;
mod malformed;
mod observability;
mod panics;
mod protocols;
mod ratelimit;
mod reload;
mod revocation;
mod routing;
mod shutdown;
mod slow_clients;
mod tls;
mod tls_helpers;
mod validate;
