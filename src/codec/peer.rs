//! Payload types of node-to-node frames (kinds 0x81-0x87) and of the admin status view.

use serde::{Deserialize, Serialize};

use crate::core::log::{Entry, Epoch, LogIndex, Proposal};
use crate::core::NodeId;

/// First frame on a peer connection, both ways.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHello {
    /// Cluster identity; a node refuses peers of another cluster.
    pub cluster_id: u64,
    /// The sender's node id.
    pub node_id: NodeId,
    /// The sender's current epoch.
    pub epoch: Epoch,
    /// Where the sender serves clients (for redirects when a node is full).
    pub client_addr: String,
}

/// Periodic liveness signal every node sends every peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The sender's current epoch.
    pub epoch: Epoch,
    /// The leader the sender follows (or is), if any.
    pub leader: Option<NodeId>,
    /// Client connections the sender holds (for capacity redirects, a later feature).
    pub load: u32,
    /// Whether the sender has heard from the receiver within its failure timeout: a node
    /// whose frames do not arrive (one-way loss) is skipped when passing the election token.
    pub hears_you: bool,
}

/// Leader -> follower: entries after (prev_index, prev_epoch), and the commit index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Append {
    /// Leader's epoch.
    pub epoch: Epoch,
    /// Index of the entry before `entries`.
    pub prev_index: LogIndex,
    /// Epoch of that entry (0 for index 0).
    pub prev_epoch: Epoch,
    /// Leader's commit index.
    pub commit: LogIndex,
    /// The leader's log is durable up to here (when this Append leaves it).
    pub durable: LogIndex,
    /// Entries to append (empty for a heartbeat).
    pub entries: Vec<Entry>,
}

/// Follower -> leader: the answer to an `Append`, sent only once the entries are durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendReply {
    /// The follower's current epoch.
    pub epoch: Epoch,
    /// True when the entries matched and are stored.
    pub ok: bool,
    /// If ok: the highest index known to match the leader. If not: a hint where to retry
    /// from (at most the follower's last index, and below the mismatching prev_index).
    pub index: LogIndex,
}

/// How up to date a node's log is; the election picks the greatest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Candidate {
    /// Epoch of the last log entry.
    pub last_epoch: Epoch,
    /// Index of the last log entry.
    pub last_index: LogIndex,
    /// Node id (breaks ties).
    pub id: NodeId,
}

/// The ring election token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// The epoch being elected.
    pub epoch: Epoch,
    /// A pre-election: nobody changes state; it only counts who would take part.
    pub pre: bool,
    /// The node that started this election; the token ends there.
    pub initiator: NodeId,
    /// Best candidate among the participants so far.
    pub best: Candidate,
    /// Nodes that took part, in ring order.
    pub participants: Vec<NodeId>,
}

/// The outcome of a successful election, announced to every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Elected {
    /// The epoch.
    pub epoch: Epoch,
    /// Its leader.
    pub leader: NodeId,
    /// The majority that took part.
    pub participants: Vec<NodeId>,
}

/// Follower -> leader: client writes to append, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    /// The epoch whose leader the sender gives them to: a leader of another epoch drops them
    /// (the sender re-sends everything pending once it follows a leader again), so a delayed
    /// batch can never be appended after a later one and leave a gap.
    pub epoch: Epoch,
    /// The proposals.
    pub proposals: Vec<Proposal>,
}

/// Leader -> follower: bytes `offset..offset+data.len()` of the snapshot covering the log up to
/// (`index`, `index_epoch`), `total` bytes in all. Chunks go in order, a few in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// Leader's epoch.
    pub epoch: Epoch,
    /// Last log index the snapshot covers.
    pub index: LogIndex,
    /// Epoch of that entry.
    pub index_epoch: Epoch,
    /// Position of `data` in the snapshot.
    pub offset: u64,
    /// Size of the whole snapshot.
    pub total: u64,
    /// The bytes (encoded as one slice, not byte by byte: same wire format, far faster).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Follower -> leader: bytes of the snapshot at `index` received so far in order (the leader
/// resumes from there); once it is installed and durable an `AppendReply` follows instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotReply {
    /// The follower's current epoch.
    pub epoch: Epoch,
    /// The snapshot's last log index.
    pub index: LogIndex,
    /// Bytes received in order.
    pub received: u64,
}

/// New node -> member: asks to join the cluster (sent instead of `Hello` on a fresh link).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The cluster it means to join.
    pub cluster_id: u64,
    /// Its node id (never used in this cluster before).
    pub node_id: NodeId,
    /// Where it listens for peers.
    pub peer_addr: String,
    /// Where it serves clients.
    pub client_addr: String,
}

/// Member -> new node: the answer to a `JoinRequest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinReply {
    /// Accepted: the leader (below) replicates to it and adds it once it has caught up.
    pub ok: bool,
    /// Not accepted now, but may be later (no leader yet, another change in progress).
    pub retry: bool,
    /// Human-readable explanation.
    pub message: String,
    /// The leader, and its peer address, when known.
    pub leader: Option<(NodeId, String)>,
}

/// Client -> server: an admin operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Remove this node from the cluster for good (it stops once it knows).
    Remove {
        /// The node.
        node: NodeId,
    },
    /// Take a snapshot now (and compact the log behind it).
    Snapshot,
}

/// Server -> client: the answer to an `AdminRequest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminReply {
    /// Done (or started).
    pub ok: bool,
    /// What happened, or why not.
    pub message: String,
    /// When this node is not the one to ask: the leader's client address.
    pub leader: Option<String>,
}

impl AdminReply {
    /// A refusal saying why, pointing to the leader's client address if given.
    pub fn refused(message: String, leader: Option<String>) -> AdminReply {
        AdminReply {
            ok: false,
            message,
            leader,
        }
    }
}

/// Client -> server: asks for the node's view of the cluster (admin).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRequest {
    /// Reserved, 0.
    pub flags: u32,
}

/// What one node knows of one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Peer node id.
    pub id: NodeId,
    /// Whether a peer connection is up.
    pub connected: bool,
    /// Milliseconds since anything was heard from it (None: never).
    pub last_heard_ms: Option<u64>,
    /// Highest index known replicated there (leader only; 0 otherwise).
    pub match_index: LogIndex,
}

/// Server -> client: a node's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Node id.
    pub node_id: NodeId,
    /// "leader", "follower" or "candidate".
    pub role: String,
    /// Current epoch.
    pub epoch: Epoch,
    /// Leader known to this node.
    pub leader: Option<NodeId>,
    /// Last log index.
    pub last_index: LogIndex,
    /// Commit index.
    pub commit_index: LogIndex,
    /// Applied index.
    pub applied_index: LogIndex,
    /// Client connections on this node.
    pub connections: u32,
    /// Peers.
    pub peers: Vec<PeerStatus>,
}
