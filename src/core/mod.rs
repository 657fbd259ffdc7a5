//! The sans-IO core: a node's whole behaviour as a state machine.
//!
//! Contract (quinn-proto style): every entry point takes `now`; `handle_*` methods feed input
//! (client frames, peer frames, connection events, persistence completions, timers);
//! `poll_action` drains output (bytes for a client or a peer, connections to close);
//! `to_persist` hands the driver what must become durable and `handle_persisted` reports it
//! done; `poll_timeout` is the next deadline. The core never reads the clock, never touches a
//! socket or a file, and draws randomness from a seeded generator, so a test can run a whole
//! cluster in one process on a virtual clock.
//!
//! One loop turn of a driver: feed every input, `handle_timeout` if due, `flush`, carry out
//! `to_persist` (one sync) and `handle_persisted`, `flush` again, then drain `poll_action`.

pub mod chat;
mod election;
pub mod log;
pub mod membership;
pub mod names;
mod node;
mod outbox;
mod progress;
mod round;

pub use node::{
    Node, NodeConfig, NodeConfigError, NodeStats, Persist, PersistToken, Role, SnapshotWrite,
    MAX_HISTORY_SIZE, MAX_TEXT_LIMIT,
};

use std::rc::Rc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Identifies a node in the cluster.
pub type NodeId = u32;

/// Encoded frame bytes, shared by every recipient of one delivery (encoded once).
pub type SharedBytes = Rc<[u8]>;

/// A client connection on one node, chosen by the driver and never reused during its lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConnId(pub u64);

/// A client session cluster-wide: the node holding the connection and the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId {
    /// Node the client is connected to.
    pub node: NodeId,
    /// That node's incarnation (start count), so connection ids of a restarted node never
    /// alias sessions of its previous run.
    pub incarnation: u64,
    /// Connection on that node.
    pub conn: ConnId,
}

/// The current time as the driver (or a simulation) sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time, for timers.
    pub mono: Instant,
    /// Wall-clock milliseconds since the Unix epoch, for message timestamps.
    pub unix_ms: u64,
}

/// Output of the core for the driver to carry out, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Queue these frame bytes on the connection's send buffer. The connection may have gone
    /// in the meantime (its close is still on its way through the log): then drop the bytes.
    Send {
        /// Destination connection.
        conn: ConnId,
        /// One or more complete encoded frames.
        bytes: SharedBytes,
    },
    /// Send these frame bytes to a peer node (dropped if there is no connection to it).
    SendPeer {
        /// Destination node.
        to: NodeId,
        /// One complete encoded peer frame.
        bytes: SharedBytes,
    },
    /// Close the connection once what is already queued for it has been flushed.
    Close {
        /// Connection to close.
        conn: ConnId,
        /// Why, for the log.
        reason: String,
    },
}
