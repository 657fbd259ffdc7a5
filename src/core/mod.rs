//! The sans-IO core: a node's whole behaviour as a state machine.
//!
//! Contract (in the spirit of quinn-proto and raft-rs's `Ready`): every entry point takes
//! `now`; the core never reads the clock, never touches a socket, a file or a thread, and draws
//! randomness from a seeded generator, so a test can run a whole cluster in one process on a
//! virtual clock. A shell (the daemon's event loop, the simulator, the node tests) drives it in
//! turns, always in this order:
//!
//! 1. Feed the inputs that arrived, each with `now`: `handle_connect`, `handle_frame`,
//!    `handle_bad_frame`, `handle_disconnect` (clients); `handle_peer_connected`,
//!    `handle_peer_frame`, `handle_peer_disconnected` (peers); and the completions of earlier
//!    turns' work: `handle_persisted` / `handle_persist_failed` for each storage job, in the
//!    order the jobs were taken.
//! 2. Call [`Node::turn`] once: it runs the timers that are due, sends what the inputs
//!    produced (rounds of replication, forwards) and returns one owned [`Ready`].
//! 3. Carry the `Ready` out: hand `persist` to storage (which may sync on another thread;
//!    jobs are carried out in order, and one sync may cover several), queue `actions` on their
//!    connections in order, follow `peers`, stop on `removed`, start the join client
//!    ([`join::JoinClient`], a state machine of its own) on `rejoin`.
//!    Nothing in `actions` depends on a write not yet reported durable: the core holds such
//!    sends back and releases them in the turn after the completion that allows them.
//! 4. Wait for input or until `deadline`, then start again at 1.
//!
//! A shell whose storage completes at once (memory storage) feeds the completion and turns
//! again before it waits.

pub mod chat;
pub mod durable;
pub mod join;
pub mod log;
pub mod membership;
pub mod names;
mod node;
mod outbox;
mod progress;
mod ring;
mod round;

pub use node::{
    Node, NodeConfig, NodeConfigError, NodeStats, PersistJob, PersistToken, Ready, Role,
    SnapshotWrite, MAX_HISTORY_SIZE, MAX_TEXT_LIMIT,
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
    /// Close the link to this peer now (it stayed silent past the limit) and dial it again as
    /// usual: a fresh connection gets through a healed network at once, where the old one
    /// would wait for TCP's retransmission backoff. The node already counts it disconnected.
    ResetPeer {
        /// The peer.
        to: NodeId,
        /// Why, for the log.
        reason: String,
    },
    /// Close the connection once what is already queued for it has been flushed.
    Close {
        /// Connection to close.
        conn: ConnId,
        /// Why, for the log.
        reason: String,
    },
}
