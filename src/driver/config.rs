//! Daemon configuration: command-line flags (clap) merged over an optional TOML file, merged
//! over built-in defaults. Flags win over the file, the file wins over the defaults.
//!
//! The TOML keys are the long flag names with `_` for `-`, all optional:
//!
//! ```toml
//! id = 1
//! listen = "127.0.0.1:7070"
//! data_dir = "/var/lib/ringchat"
//! history_size = 10
//! max_text = 4096
//! max_connections = 16384
//! max_output_bytes = 4194304
//! shutdown_timeout_ms = 2000
//! port_file = "/run/ringchat/port"
//! peer_listen = "127.0.0.1:7170"
//! peers = "2=127.0.0.1:7171,3=127.0.0.1:7172"   # or ["2=127.0.0.1:7171", "3=127.0.0.1:7172"]
//! cluster_id = 1
//! heartbeat_ms = 30
//! failure_timeout_ms = 200
//! replication_linger_us = 1000
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::Deserialize;

use crate::codec::MAX_CLIENT_PAYLOAD;
use crate::core::names::MAX_ROOM_LEN;
use crate::core::{NodeConfig, NodeId};

/// Default client listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./ringchat-data";
/// Default number of messages replayed on join.
pub const DEFAULT_HISTORY_SIZE: u32 = 10;
/// Default longest message text in bytes.
pub const DEFAULT_MAX_TEXT: u32 = 4096;
/// Default client connection limit (below the usual 20000 open-file hard limit).
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Default bound on bytes queued for one client before it is dropped as a slow consumer.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 4 * 1024 * 1024;
/// Default bound on a graceful stop.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 2000;

/// Default cluster identity (peers of another cluster id are refused).
pub const DEFAULT_CLUSTER_ID: u64 = 1;
/// Default heartbeat interval between nodes, in milliseconds.
pub const DEFAULT_HEARTBEAT_MS: u64 = 30;
/// Default silence after which a peer or the leader is considered dead, in milliseconds.
pub const DEFAULT_FAILURE_TIMEOUT_MS: u64 = 200;
/// Default time the leader holds new entries for the next replication round, in microseconds.
pub const DEFAULT_REPLICATION_LINGER_US: u64 = 1000;
/// Default number of applied entries between two snapshots.
pub const DEFAULT_SNAPSHOT_ENTRIES: u64 = 100_000;

/// Largest `max_text` a `Say` frame can carry within the client payload limit.
pub const MAX_TEXT_LIMIT: u32 = MAX_CLIENT_PAYLOAD - 3 * 8 - MAX_ROOM_LEN as u32;
/// Smallest accepted `max_output_bytes`: a client must be able to hold a full Say's worth.
pub const MIN_OUTPUT_BYTES: usize = 64 * 1024;
/// Largest accepted `history_size`.
pub const MAX_HISTORY_SIZE: u32 = 10_000;

const LONG_ABOUT: &str = "\
ringchatd: one node of a ringchat cluster. It serves chat clients on --listen with a \
single-threaded event loop and logs to stderr (set RUST_LOG, e.g. RUST_LOG=debug; default \
info).

Every setting can also come from a TOML file given with --config. Its keys are the long flag \
names with '_' instead of '-', e.g.

    id = 1
    listen = \"0.0.0.0:7070\"
    data_dir = \"/var/lib/ringchat\"
    history_size = 10
    max_connections = 16384

Precedence: command-line flags, then the file, then the defaults shown below.

Cluster: a node given --peers is a member of a cluster made of itself and those peers (the \
same set, with the same --cluster-id, on every member). It accepts node-to-node connections \
on --peer-listen; of every pair of members the lower id connects to the higher. Without \
--peers the node is a cluster of one and leads it. Example of a 3-node cluster on one host:

    ringchatd --id 1 --listen 127.0.0.1:7070 --peer-listen 127.0.0.1:7170 \\
        --peers 2=127.0.0.1:7171,3=127.0.0.1:7172 --data-dir ./data/node1
    (and likewise for --id 2 and --id 3)

SIGTERM or SIGINT stops the node gracefully: it stops accepting, tells every client to \
reconnect elsewhere, flushes, and exits 0 within --shutdown-timeout-ms. A second signal \
stops at once.

Exit status: 0 after a graceful stop, 1 on a runtime error (e.g. the address is in use or the \
data directory is locked by another daemon), 2 on an invalid flag or configuration file.";

/// The command line of `ringchatd`. Every field is optional so that a value given in the TOML
/// file can be told apart from one given on the command line.
#[derive(Parser, Debug, Clone, Default, PartialEq, Eq)]
#[command(name = "ringchatd", version, about = "ringchat chat server daemon (one cluster node)", long_about = LONG_ABOUT)]
pub struct DaemonArgs {
    /// TOML configuration file; its keys are the flag names with '_' (e.g. history_size = 10).
    /// Flags given on the command line override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Node id, unique in the cluster and never reused (1 or more). [default: 1]
    #[arg(long, value_name = "N")]
    pub id: Option<NodeId>,

    /// Address (IP:PORT or HOST:PORT) to accept client connections on. Port 0 picks a free
    /// port; see --port-file. [default: 127.0.0.1:7070]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,

    /// Directory of this node's data: the write-ahead log (DIR/wal), snapshots (DIR/snapshot)
    /// and a lock (DIR/LOCK holds the pid) so two daemons cannot share it. Created if missing.
    /// A node started with an empty directory is a new node to the cluster: it catches up
    /// before it may vote. [default: ./ringchat-data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Take a snapshot of the chat state (and drop the log before it) every N applied
    /// entries; 0: no limit by count. [default: 100000]
    #[arg(long, value_name = "N")]
    pub snapshot_entries: Option<u64>,

    /// Also take a snapshot once the entries applied since the last one hold about this many
    /// bytes; 0: no limit by size. With both limits 0, snapshots are taken only on request
    /// (ringchat admin snapshot). [default: 67108864]
    #[arg(long, value_name = "BYTES")]
    pub snapshot_bytes: Option<u64>,

    /// Where the log is kept: "file" (the write-ahead log in --data-dir, fsynced before any
    /// acknowledgement) or "memory" (nothing survives the process: benchmarks and throwaway
    /// clusters only). [default: file]
    #[arg(long, value_name = "KIND")]
    pub storage: Option<StorageKind>,

    /// Number of recent messages a client is shown when it joins a room. [default: 10]
    #[arg(long, value_name = "N")]
    pub history_size: Option<u32>,

    /// Longest accepted message text, in bytes of UTF-8 (at most 65448). [default: 4096]
    #[arg(long, value_name = "BYTES")]
    pub max_text: Option<u32>,

    /// Most client connections served at once; a client above the limit gets a SERVER_FULL
    /// error and is disconnected. The open-file limit is raised to its hard limit at startup.
    /// [default: 16384]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Most bytes queued for one client that does not read fast enough; above it the client
    /// is disconnected as a slow consumer so nobody else is slowed (at least 65536).
    /// [default: 4194304]
    #[arg(long, value_name = "BYTES")]
    pub max_output_bytes: Option<usize>,

    /// Longest a graceful stop (SIGTERM/SIGINT) waits for clients to be told and
    /// disconnected before the daemon exits anyway, in milliseconds. [default: 2000]
    #[arg(long, value_name = "MS")]
    pub shutdown_timeout_ms: Option<u64>,

    /// Once listening, write the actual bound client address (e.g. 127.0.0.1:41234) and a
    /// newline to this file; useful with --listen 127.0.0.1:0. [default: none]
    #[arg(long, value_name = "PATH")]
    pub port_file: Option<PathBuf>,

    /// Address (IP:PORT or HOST:PORT) to accept connections from the other cluster members
    /// on. Required with --peers. [default: none]
    #[arg(long, value_name = "ADDR")]
    pub peer_listen: Option<String>,

    /// The OTHER members of the cluster and their --peer-listen addresses, comma separated,
    /// e.g. 2=10.0.0.2:7170,3=10.0.0.3:7170. Every member must list the same cluster.
    /// Without it the node is a cluster of one. [default: none]
    #[arg(long, value_name = "ID=ADDR[,ID=ADDR...]")]
    pub peers: Option<String>,

    /// Join a running cluster through any member's peer address (its --peer-listen), as a new
    /// node with a never-used --id; needs --peer-listen, excludes --peers. The node catches up,
    /// then becomes a member; once it is one (its data dir says so) the flag is ignored.
    #[arg(long, value_name = "ADDR")]
    pub join: Option<String>,

    /// Cluster identity; peers that announce another cluster id are refused. [default: 1]
    #[arg(long, value_name = "N")]
    pub cluster_id: Option<u64>,

    /// Interval of the heartbeats every node sends every peer, in milliseconds. [default: 30]
    #[arg(long, value_name = "MS")]
    pub heartbeat_ms: Option<u64>,

    /// Silence after which a peer (or the leader) is considered dead and, for the leader, a
    /// new one is elected, in milliseconds; at least twice --heartbeat-ms. [default: 200]
    #[arg(long, value_name = "MS")]
    pub failure_timeout_ms: Option<u64>,

    /// Longest time, in microseconds, the leader holds new messages until every writer
    /// active in the last such time has written again, so that one replication round (an
    /// Append to each follower, a reply from each, a write to each client) carries them all
    /// (a follower holds its clients' messages the same way before forwarding them):
    /// less CPU per message under load, for up to about this much more latency (the loop's
    /// timer has a 1 ms resolution, so it can be up to 1 ms more). Nothing is held while
    /// fewer than two writers are active. 0 sends every loop turn; below --heartbeat-ms.
    /// [default: 1000]
    #[arg(long, value_name = "US")]
    pub replication_linger_us: Option<u64>,
}

/// The `peers` key of the TOML file: "ID=ADDR,ID=ADDR" or ["ID=ADDR", ...].
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(untagged)]
pub enum PeersValue {
    /// One comma-separated string, as on the command line.
    List(String),
    /// One "ID=ADDR" per element.
    Array(Vec<String>),
}

impl PeersValue {
    fn joined(self) -> String {
        match self {
            PeersValue::List(s) => s,
            PeersValue::Array(v) => v.join(","),
        }
    }
}

/// Where a daemon keeps its log.
#[derive(ValueEnum, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// The write-ahead log and snapshots in the data directory.
    File,
    /// Nothing durable (the node restarts empty): for benchmarks and throwaway clusters.
    Memory,
}

/// The keys of the TOML configuration file (all optional; unknown keys are an error).
#[derive(Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See `--id`.
    pub id: Option<NodeId>,
    /// See `--listen`.
    pub listen: Option<String>,
    /// See `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// See `--snapshot-entries`.
    pub snapshot_entries: Option<u64>,
    /// See `--snapshot-bytes`.
    pub snapshot_bytes: Option<u64>,
    /// See `--storage`.
    pub storage: Option<StorageKind>,
    /// See `--history-size`.
    pub history_size: Option<u32>,
    /// See `--max-text`.
    pub max_text: Option<u32>,
    /// See `--max-connections`.
    pub max_connections: Option<usize>,
    /// See `--max-output-bytes`.
    pub max_output_bytes: Option<usize>,
    /// See `--shutdown-timeout-ms`.
    pub shutdown_timeout_ms: Option<u64>,
    /// See `--port-file`.
    pub port_file: Option<PathBuf>,
    /// See `--peer-listen`.
    pub peer_listen: Option<String>,
    /// See `--peers`.
    pub peers: Option<PeersValue>,
    /// See `--join`.
    pub join: Option<String>,
    /// See `--cluster-id`.
    pub cluster_id: Option<u64>,
    /// See `--heartbeat-ms`.
    pub heartbeat_ms: Option<u64>,
    /// See `--failure-timeout-ms`.
    pub failure_timeout_ms: Option<u64>,
    /// See `--replication-linger-us`.
    pub replication_linger_us: Option<u64>,
}

/// A configuration problem, reported to the operator (the daemon exits 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The resolved, validated settings of one daemon.
///
/// Built from flags and an optional TOML file by [`DaemonConfig::from_args`]; tests may build
/// one directly from [`DaemonConfig::default`] and change fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Node id (`--id`).
    pub id: NodeId,
    /// Client listen address (`--listen`).
    pub listen: SocketAddr,
    /// Data directory (`--data-dir`).
    pub data_dir: PathBuf,
    /// Applied entries between snapshots (`--snapshot-entries`).
    pub snapshot_entries: u64,
    /// Applied bytes between snapshots (`--snapshot-bytes`).
    pub snapshot_bytes: u64,
    /// Where the log is kept (`--storage`).
    pub storage: StorageKind,
    /// A member's peer address to join through (`--join`).
    pub join: Option<SocketAddr>,
    /// Messages replayed on join (`--history-size`).
    pub history_size: u32,
    /// Longest message text (`--max-text`).
    pub max_text: u32,
    /// Connection limit (`--max-connections`).
    pub max_connections: usize,
    /// Output queue bound per connection (`--max-output-bytes`).
    pub max_output_bytes: usize,
    /// Graceful stop bound (`--shutdown-timeout-ms`).
    pub shutdown_timeout_ms: u64,
    /// Where to write the bound address once listening (`--port-file`).
    pub port_file: Option<PathBuf>,
    /// Node-to-node listen address (`--peer-listen`).
    pub peer_listen: Option<SocketAddr>,
    /// The other members and their peer addresses (`--peers`).
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Cluster identity (`--cluster-id`).
    pub cluster_id: u64,
    /// Heartbeat interval (`--heartbeat-ms`).
    pub heartbeat_ms: u64,
    /// Failure detection timeout (`--failure-timeout-ms`).
    pub failure_timeout_ms: u64,
    /// Replication batching (`--replication-linger-us`).
    pub replication_linger_us: u64,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            id: 1,
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            snapshot_entries: DEFAULT_SNAPSHOT_ENTRIES,
            snapshot_bytes: NodeConfig::default().snapshot_bytes,
            storage: StorageKind::File,
            join: None,
            history_size: DEFAULT_HISTORY_SIZE,
            max_text: DEFAULT_MAX_TEXT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            shutdown_timeout_ms: DEFAULT_SHUTDOWN_TIMEOUT_MS,
            port_file: None,
            peer_listen: None,
            peers: BTreeMap::new(),
            cluster_id: DEFAULT_CLUSTER_ID,
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            failure_timeout_ms: DEFAULT_FAILURE_TIMEOUT_MS,
            replication_linger_us: DEFAULT_REPLICATION_LINGER_US,
        }
    }
}

impl FileConfig {
    /// Parses TOML text; `origin` names the source in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(format!("invalid config file {origin}: {e}")))
    }

    /// Reads and parses a TOML file.
    pub fn read(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        FileConfig::parse(&text, &path.display().to_string())
    }
}

impl DaemonConfig {
    /// Resolves flags over the `--config` file (if any) over defaults, then validates.
    pub fn from_args(args: DaemonArgs) -> Result<DaemonConfig, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::read(path)?,
            None => FileConfig::default(),
        };
        DaemonConfig::merge(args, file)
    }

    /// Flags win over the file, the file over the defaults; the result is validated.
    pub fn merge(args: DaemonArgs, file: FileConfig) -> Result<DaemonConfig, ConfigError> {
        let d = DaemonConfig::default();
        let listen = match args.listen.or(file.listen) {
            Some(s) => resolve_addr(&s, "--listen")?,
            None => d.listen,
        };
        let peer_listen = match args.peer_listen.or(file.peer_listen) {
            Some(s) => Some(resolve_addr(&s, "--peer-listen")?),
            None => None,
        };
        let peers = match args.peers.or(file.peers.map(PeersValue::joined)) {
            Some(s) => parse_peers(&s)?,
            None => BTreeMap::new(),
        };
        let join = match args.join.or(file.join) {
            Some(s) => Some(resolve_addr(&s, "--join")?),
            None => None,
        };
        let cfg = DaemonConfig {
            id: args.id.or(file.id).unwrap_or(d.id),
            listen,
            data_dir: args.data_dir.or(file.data_dir).unwrap_or(d.data_dir),
            snapshot_entries: args
                .snapshot_entries
                .or(file.snapshot_entries)
                .unwrap_or(d.snapshot_entries),
            snapshot_bytes: args
                .snapshot_bytes
                .or(file.snapshot_bytes)
                .unwrap_or(d.snapshot_bytes),
            storage: args.storage.or(file.storage).unwrap_or(d.storage),
            join,
            history_size: args
                .history_size
                .or(file.history_size)
                .unwrap_or(d.history_size),
            max_text: args.max_text.or(file.max_text).unwrap_or(d.max_text),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(d.max_connections),
            max_output_bytes: args
                .max_output_bytes
                .or(file.max_output_bytes)
                .unwrap_or(d.max_output_bytes),
            shutdown_timeout_ms: args
                .shutdown_timeout_ms
                .or(file.shutdown_timeout_ms)
                .unwrap_or(d.shutdown_timeout_ms),
            port_file: args.port_file.or(file.port_file),
            peer_listen,
            peers,
            cluster_id: args.cluster_id.or(file.cluster_id).unwrap_or(d.cluster_id),
            heartbeat_ms: args
                .heartbeat_ms
                .or(file.heartbeat_ms)
                .unwrap_or(d.heartbeat_ms),
            failure_timeout_ms: args
                .failure_timeout_ms
                .or(file.failure_timeout_ms)
                .unwrap_or(d.failure_timeout_ms),
            replication_linger_us: args
                .replication_linger_us
                .or(file.replication_linger_us)
                .unwrap_or(d.replication_linger_us),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value is in range, with a message naming the flag.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if self.id == 0 {
            return err("--id must be 1 or more (node ids start at 1)".into());
        }
        if self.history_size > MAX_HISTORY_SIZE {
            return err(format!(
                "--history-size {} is too large; the limit is {MAX_HISTORY_SIZE}",
                self.history_size
            ));
        }
        if self.max_text == 0 || self.max_text > MAX_TEXT_LIMIT {
            return err(format!(
                "--max-text {} is out of range; use 1 to {MAX_TEXT_LIMIT} bytes",
                self.max_text
            ));
        }
        if self.max_connections == 0 {
            return err("--max-connections must be 1 or more".into());
        }
        if self.max_output_bytes < MIN_OUTPUT_BYTES {
            return err(format!(
                "--max-output-bytes {} is too small; use at least {MIN_OUTPUT_BYTES}",
                self.max_output_bytes
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return err("--data-dir must not be empty".into());
        }
        if self.peers.contains_key(&self.id) {
            return err(format!(
                "--peers lists this node's own id {}; list only the other members",
                self.id
            ));
        }
        if self.peers.contains_key(&0) {
            return err("--peers: node ids must be 1 or more".into());
        }
        if !self.peers.is_empty() && self.peer_listen.is_none() {
            return err(
                "--peer-listen is required with --peers (the address the other members \
                 connect to)"
                    .into(),
            );
        }
        if self.join.is_some() && !self.peers.is_empty() {
            return err(
                "--join and --peers exclude each other: a joining node learns the members \
                 from the cluster"
                    .into(),
            );
        }
        if self.join.is_some() && self.peer_listen.is_none() {
            return err("--join needs --peer-listen (the address the members connect to)".into());
        }
        // The address goes into the cluster configuration as the one the others dial.
        if let Some(listen) = self.peer_listen {
            if listen.ip().is_unspecified() {
                return err(format!(
                    "--peer-listen {listen} is a wildcard address, which the other nodes \
                     cannot dial: use this host's address on the cluster network"
                ));
            }
            let remote = self.peers.iter().find(|(_, a)| !a.ip().is_loopback());
            if let (true, Some((id, addr))) = (listen.ip().is_loopback(), remote) {
                return err(format!(
                    "--peer-listen {listen} is a loopback address, but node {id} is at \
                     {addr}: it could not reach this node; use this host's address on the \
                     cluster network"
                ));
            }
        }
        if self.heartbeat_ms == 0 {
            return err("--heartbeat-ms must be 1 or more".into());
        }
        if self.failure_timeout_ms < 2 * self.heartbeat_ms {
            return err(format!(
                "--failure-timeout-ms {} is too small; use at least twice --heartbeat-ms ({})",
                self.failure_timeout_ms,
                2 * self.heartbeat_ms
            ));
        }
        if self.replication_linger_us >= self.heartbeat_ms.saturating_mul(1000) {
            return err(format!(
                "--replication-linger-us {} is too large; use less than --heartbeat-ms ({} ms)",
                self.replication_linger_us, self.heartbeat_ms
            ));
        }
        Ok(())
    }

    /// Every member of the cluster, this node included, in id order.
    pub fn members(&self) -> Vec<NodeId> {
        let mut m: Vec<NodeId> = self.peers.keys().copied().collect();
        m.push(self.id);
        m.sort_unstable();
        m
    }

    /// The core's configuration for these settings.
    pub fn node_config(&self) -> NodeConfig {
        NodeConfig {
            id: self.id,
            members: if self.join.is_some() {
                Vec::new()
            } else {
                self.members()
            },
            addresses: self
                .peers
                .iter()
                .map(|(&id, a)| (id, a.to_string()))
                .chain(self.peer_listen.map(|a| (self.id, a.to_string())))
                .collect(),
            joining: self.join.is_some(),
            cluster_id: self.cluster_id,
            heartbeat_interval: Duration::from_millis(self.heartbeat_ms),
            failure_timeout: Duration::from_millis(self.failure_timeout_ms),
            replication_linger: Duration::from_micros(self.replication_linger_us),
            replicate_after_persist: self.storage == StorageKind::Memory,
            history_size: self.history_size,
            max_text: self.max_text,
            snapshot_entries: self.snapshot_entries,
            snapshot_bytes: self.snapshot_bytes,
            // A tenth of the interval (at most the default): enough for followers a little
            // behind to get entries, little enough to bound memory.
            compact_keep: (self.snapshot_entries / 10).min(NodeConfig::default().compact_keep),
            ..NodeConfig::default()
        }
    }
}

/// Parses `--peers`: "ID=ADDR,ID=ADDR,..." (blanks around items ignored); ids must be unique.
pub fn parse_peers(s: &str) -> Result<BTreeMap<NodeId, SocketAddr>, ConfigError> {
    let mut peers = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let bad = |why: &str| {
            ConfigError(format!(
                "--peers: invalid item {item:?}: {why} (expected ID=ADDR, e.g. 2=10.0.0.2:7170)"
            ))
        };
        let (id, addr) = item.split_once('=').ok_or_else(|| bad("no '='"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| bad("the id is not a number"))?;
        let addr = resolve_addr(addr.trim(), "--peers")?;
        if peers.insert(id, addr).is_some() {
            return Err(ConfigError(format!(
                "--peers: node id {id} is listed twice; ids must be unique"
            )));
        }
    }
    Ok(peers)
}

fn resolve_addr(s: &str, flag: &str) -> Result<SocketAddr, ConfigError> {
    let bad = |why: String| ConfigError(format!("{flag} {s:?}: {why} (expected IP:PORT)"));
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let mut addrs = s.to_socket_addrs().map_err(|e| bad(e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| bad("no address found for this name".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> DaemonArgs {
        let mut all = vec!["ringchatd"];
        all.extend_from_slice(v);
        DaemonArgs::try_parse_from(all).unwrap()
    }

    #[test]
    fn defaults_without_flags_or_file() {
        let c = DaemonConfig::merge(args(&[]), FileConfig::default()).unwrap();
        assert_eq!(c, DaemonConfig::default());
        assert_eq!(c.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(c.node_config().history_size, 10);
    }

    #[test]
    fn file_overrides_defaults_and_flags_override_file() {
        let file = FileConfig::parse(
            "id = 3\nlisten = \"127.0.0.1:9000\"\nhistory_size = 20\nmax_text = 100\n\
             max_connections = 50\nport_file = \"/tmp/p\"\n",
            "test",
        )
        .unwrap();
        let c = DaemonConfig::merge(
            args(&["--history-size", "5", "--listen", "127.0.0.1:0"]),
            file,
        )
        .unwrap();
        assert_eq!(c.id, 3, "from the file");
        assert_eq!(c.max_text, 100, "from the file");
        assert_eq!(c.max_connections, 50, "from the file");
        assert_eq!(c.port_file, Some(PathBuf::from("/tmp/p")));
        assert_eq!(c.history_size, 5, "the flag wins");
        assert_eq!(c.listen.port(), 0, "the flag wins");
        assert_eq!(
            c.shutdown_timeout_ms, DEFAULT_SHUTDOWN_TIMEOUT_MS,
            "default"
        );
        let n = c.node_config();
        assert_eq!((n.id, n.history_size, n.max_text), (3, 5, 100));
    }

    #[test]
    fn config_file_is_read_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ringchatd.toml");
        std::fs::write(&path, "id = 7\nmax_output_bytes = 100000\n").unwrap();
        let a = args(&["--config", path.to_str().unwrap(), "--id", "8"]);
        let c = DaemonConfig::from_args(a).unwrap();
        assert_eq!((c.id, c.max_output_bytes), (8, 100_000));
        let missing = args(&["--config", "/nonexistent/ringchatd.toml"]);
        let e = DaemonConfig::from_args(missing).unwrap_err();
        assert!(e.0.contains("cannot read config file"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_clear_errors() {
        let e = FileConfig::parse("histroy_size = 3\n", "f.toml").unwrap_err();
        assert!(
            e.0.contains("f.toml") && e.0.contains("histroy_size"),
            "{e}"
        );
        let e = FileConfig::parse("id = \"one\"\n", "f.toml").unwrap_err();
        assert!(e.0.contains("f.toml"), "{e}");
        for (flags, needle) in [
            (&["--id", "0"][..], "--id"),
            (&["--max-text", "0"][..], "--max-text"),
            (&["--max-text", "70000"][..], "--max-text"),
            (&["--max-connections", "0"][..], "--max-connections"),
            (&["--max-output-bytes", "10"][..], "--max-output-bytes"),
            (&["--history-size", "999999"][..], "--history-size"),
            (&["--listen", "nonsense"][..], "--listen"),
        ] {
            let e = DaemonConfig::merge(args(flags), FileConfig::default()).unwrap_err();
            assert!(e.0.contains(needle), "{flags:?}: {e}");
        }
        // A bad value in the file is overridden by a good flag.
        let file = FileConfig {
            id: Some(0),
            ..FileConfig::default()
        };
        assert_eq!(
            DaemonConfig::merge(args(&["--id", "2"]), file).unwrap().id,
            2
        );
    }

    #[test]
    fn help_mentions_every_flag() {
        use clap::CommandFactory;
        let help = DaemonArgs::command().render_long_help().to_string();
        for flag in [
            "--config",
            "--id",
            "--listen",
            "--data-dir",
            "--history-size",
            "--max-text",
            "--max-connections",
            "--max-output-bytes",
            "--shutdown-timeout-ms",
            "--port-file",
            "--peer-listen",
            "--peers",
            "--cluster-id",
            "--heartbeat-ms",
            "--failure-timeout-ms",
            "--replication-linger-us",
            "--snapshot-entries",
            "--snapshot-bytes",
            "--storage",
            "--join",
            "write-ahead log",
        ] {
            assert!(help.contains(flag), "help lacks {flag}:\n{help}");
        }
    }

    #[test]
    fn cluster_flags_map_to_the_node_config() {
        let c = DaemonConfig::merge(
            args(&[
                "--id",
                "2",
                "--peer-listen",
                "127.0.0.1:7171",
                "--peers",
                "3=127.0.0.1:7172, 1=127.0.0.1:7170",
                "--cluster-id",
                "42",
                "--heartbeat-ms",
                "10",
                "--failure-timeout-ms",
                "100",
                "--replication-linger-us",
                "250",
                "--snapshot-bytes",
                "1000000",
            ]),
            FileConfig::default(),
        )
        .unwrap();
        assert_eq!(c.peer_listen, Some("127.0.0.1:7171".parse().unwrap()));
        assert_eq!(
            c.peers
                .iter()
                .map(|(i, a)| (*i, a.port()))
                .collect::<Vec<_>>(),
            vec![(1, 7170), (3, 7172)]
        );
        let n = c.node_config();
        assert_eq!(n.members, vec![1, 2, 3]);
        assert_eq!(n.cluster_id, 42);
        assert_eq!(n.heartbeat_interval, Duration::from_millis(10));
        assert_eq!(n.failure_timeout, Duration::from_millis(100));
        assert_eq!(n.replication_linger, Duration::from_micros(250));
        assert_eq!(n.snapshot_bytes, 1_000_000);

        // Without --peers: a cluster of one, with the documented defaults.
        let c = DaemonConfig::merge(args(&[]), FileConfig::default()).unwrap();
        assert!(c.peers.is_empty() && c.peer_listen.is_none());
        let n = c.node_config();
        assert_eq!(n.members, vec![1]);
        assert_eq!(n.cluster_id, 1);
        assert_eq!(n.heartbeat_interval, Duration::from_millis(30));
        assert_eq!(n.failure_timeout, Duration::from_millis(200));
        assert_eq!(n.replication_linger, Duration::from_millis(1));
        assert_eq!((n.snapshot_entries, n.snapshot_bytes), (100_000, 64 << 20));
    }

    #[test]
    fn cluster_keys_come_from_the_file_as_a_string_or_an_array() {
        for peers in [
            "peers = \"2=127.0.0.1:7171,3=127.0.0.1:7172\"",
            "peers = [\"2=127.0.0.1:7171\", \"3=127.0.0.1:7172\"]",
        ] {
            let text = format!(
                "id = 1\npeer_listen = \"127.0.0.1:7170\"\n{peers}\ncluster_id = 9\n\
                 heartbeat_ms = 20\nfailure_timeout_ms = 300\nreplication_linger_us = 0\n"
            );
            let file = FileConfig::parse(&text, "f.toml").unwrap();
            let c = DaemonConfig::merge(args(&["--cluster-id", "10"]), file).unwrap();
            assert_eq!(c.members(), vec![1, 2, 3], "{peers}");
            assert_eq!(c.cluster_id, 10, "the flag wins");
            assert_eq!((c.heartbeat_ms, c.failure_timeout_ms), (20, 300));
            assert!(c.node_config().replication_linger.is_zero());
            assert_eq!(c.peer_listen.unwrap().port(), 7170);
        }
    }

    #[test]
    fn cluster_flags_are_validated() {
        let pl = "--peer-listen";
        for (flags, needle) in [
            (
                &[
                    "--id",
                    "2",
                    pl,
                    "127.0.0.1:1",
                    "--peers",
                    "2=127.0.0.1:7171",
                ][..],
                "own id",
            ),
            (
                &[
                    pl,
                    "127.0.0.1:1",
                    "--peers",
                    "2=127.0.0.1:7171,2=127.0.0.1:7172",
                ][..],
                "twice",
            ),
            (
                &["--peers", "2=127.0.0.1:7171"][..],
                "--peer-listen is required",
            ),
            (&[pl, "127.0.0.1:1", "--peers", "2"][..], "no '='"),
            (
                &[pl, "127.0.0.1:1", "--peers", "x=127.0.0.1:1"][..],
                "not a number",
            ),
            (
                &[pl, "127.0.0.1:1", "--peers", "0=127.0.0.1:1"][..],
                "1 or more",
            ),
            (&[pl, "127.0.0.1:1", "--peers", "2=nowhere"][..], "--peers"),
            (&[pl, "nonsense"][..], "--peer-listen"),
            (&[pl, "0.0.0.0:7170"][..], "wildcard"),
            (
                &[pl, "[::]:7170", "--peers", "2=127.0.0.1:7171"][..],
                "wildcard",
            ),
            (
                &[pl, "127.0.0.1:7170", "--peers", "2=10.0.0.2:7170"][..],
                "loopback",
            ),
            (
                &["--join", "127.0.0.1:7170"][..],
                "--join needs --peer-listen",
            ),
            (&["--heartbeat-ms", "0"][..], "--heartbeat-ms"),
            (&["--failure-timeout-ms", "50"][..], "--failure-timeout-ms"),
            (
                &["--heartbeat-ms", "100", "--failure-timeout-ms", "150"][..],
                "twice",
            ),
            (
                &["--heartbeat-ms", "10", "--replication-linger-us", "10000"][..],
                "--replication-linger-us",
            ),
        ] {
            let e = DaemonConfig::merge(args(flags), FileConfig::default()).unwrap_err();
            assert!(e.0.contains(needle), "{flags:?}: {e}");
        }
        let e = FileConfig::parse("peers = 3\n", "f.toml").unwrap_err();
        assert!(e.0.contains("f.toml"), "{e}");
        // --peer-listen alone is allowed (a cluster of one that listens for nobody).
        assert!(DaemonConfig::merge(args(&[pl, "127.0.0.1:0"]), FileConfig::default()).is_ok());
    }
}
