//! ringchat: a fault-tolerant chat service.
//!
//! The crate is layered so that everything but `driver` is sans-IO:
//! - [`codec`]: frame header and payload encoding, the only place bytes are made or parsed;
//! - [`core`]: the node state machine (sessions, the replicated log, the chat state machine),
//!   which takes events plus `now` and returns actions;
//! - [`storage`]: the `Storage` trait the driver persists the log through;
//! - [`driver`]: the single-threaded mio event loop around one `core::Node`;
//! - [`client`]: the blocking client library used by the CLI and the load tool;
//! - [`sim`]: the deterministic simulation of a whole cluster on a virtual clock.

pub mod client;
pub mod codec;
pub mod core;
pub mod driver;
pub mod sim;
pub mod storage;
