//! Integration tests: the real `gateway` binary on ephemeral ports in front of real HTTP upstreams.

mod balancing;
mod forwarding;
mod health;
mod helpers;
mod malformed;
mod protocols;
mod reload;
mod routing;
mod validate;
