//! `resp`: the Redis protocol (RESP2) as 0-db speaks it: request framing ([`frame`]) and the
//! commands of the 0-db dialect over the engine ([`commands`]).

pub mod commands;
pub mod frame;
