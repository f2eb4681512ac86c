//! The gateway's life beside the requests: the live state compiled from the config ([`state`]), its
//! reload when the file changes ([`reload`]), and the stop that waits for requests in flight ([`drain`]).

pub mod drain;
pub mod reload;
pub mod state;
