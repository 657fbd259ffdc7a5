//! A cluster of real `ringchatd` processes on 127.0.0.1 for fault tests: free ports, optional
//! fault-injecting proxies on every peer link, leader discovery through `Status` on the client
//! ports, kill -9 / SIGSTOP / SIGCONT / restart of one node by its PID, and every node's log
//! (one file per incarnation) kept for the checks and for post-mortems.
//!
//! Ports: each node's client and peer ports are reserved by binding 127.0.0.1:0 and releasing
//! the socket, so a restarted node comes back on the same addresses (clients and peers keep
//! theirs). Should a port be taken in between, the whole start is retried with new ports; a
//! restart retries the same ports for a while.
//!
//! Proxies: with `ClusterConfig::proxies`, node `a` reaches node `b` through its own proxy
//! `(a, b)`, so [`Cluster::isolate`] can cut one node off from all its peers (both directions)
//! while its clients still reach it, and [`Cluster::cut_link`] can cut a single direction.
//!
//! Logs live under `target/tmp/`; when a test panics (or with `KEEP_CLUSTER_LOGS=1`) the
//! directory is kept and its path printed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use ringchat::codec::{self, ClientFrame, ServerFrame, StatusReport, StatusRequest};

use super::free_ports;
use super::proxy::Proxy;

/// How a test cluster is started.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Number of nodes; ids are 1..=nodes.
    pub nodes: u32,
    /// `--heartbeat-ms`.
    pub heartbeat_ms: u64,
    /// `--failure-timeout-ms`.
    pub failure_timeout_ms: u64,
    /// Put a proxy on every peer link (needed for `isolate`/`cut_link`).
    pub proxies: bool,
    /// More flags for every node.
    pub extra: Vec<String>,
    /// `RUST_LOG` of the daemons (the checks need at least `info`).
    pub rust_log: String,
    /// Name used for the log directory.
    pub name: String,
}

impl ClusterConfig {
    /// 3 nodes, 30 ms heartbeats, 200 ms failure timeout, no proxies, `RUST_LOG=info`.
    pub fn new(name: &str) -> ClusterConfig {
        ClusterConfig {
            nodes: 3,
            heartbeat_ms: 30,
            failure_timeout_ms: 200,
            proxies: false,
            extra: Vec::new(),
            rust_log: "info".into(),
            name: name.into(),
        }
    }
}

/// One node of the cluster (whether running or not).
pub struct NodeProc {
    /// Node id (1-based).
    pub id: u32,
    /// Client address, stable across restarts.
    pub client_addr: String,
    /// Peer listen address, stable across restarts.
    pub peer_addr: String,
    child: Option<Child>,
    /// Number of times it was started.
    incarnations: u32,
    stopped: bool,
    /// It joins the running cluster through this node (`--join`) instead of `--peers`.
    join_via: Option<u32>,
}

impl NodeProc {
    /// True while its process runs (possibly stopped with SIGSTOP).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// True between `stop` (SIGSTOP) and `cont` (SIGCONT).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The PID of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A running test cluster. Dropping it kills every node it started (by PID).
pub struct Cluster {
    /// The configuration it was started with.
    pub cfg: ClusterConfig,
    /// The nodes, index = id - 1.
    pub nodes: Vec<NodeProc>,
    /// Proxy used by node `a` to reach node `b`, keyed `(a, b)`.
    links: BTreeMap<(u32, u32), Proxy>,
    cluster_id: u64,
    dir: Option<tempfile::TempDir>,
}

/// Asks the node at `addr` for its status (`ClientFrame::Status`, answered before any Hello),
/// waiting at most `limit` in total. `None` if it does not answer in time (dead or stopped).
pub fn query_status(addr: &str, limit: Duration) -> Option<StatusReport> {
    let deadline = Instant::now() + limit;
    let sock: SocketAddr = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&sock, limit).ok()?;
    let _ = s.set_nodelay(true);
    s.set_write_timeout(Some(limit)).ok()?;
    let req = codec::encode(&ClientFrame::Status(StatusRequest { flags: 0 })).ok()?;
    s.write_all(&req).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let mut rest = &buf[..];
        while let Ok(Some((frame, used))) = codec::decode::<ServerFrame>(rest) {
            if let ServerFrame::Status(r) = frame {
                return Some(r);
            }
            rest = &rest[used..];
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left)).ok()?;
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

impl Cluster {
    /// Starts `cfg.nodes` nodes and waits (bounded) until they have elected a leader. Retries
    /// with fresh ports if a reserved port was taken meanwhile.
    pub fn start(cfg: ClusterConfig) -> Cluster {
        let mut last = String::new();
        for _ in 0..5 {
            match Cluster::try_start(cfg.clone()) {
                Ok(c) => {
                    if c.leader(Duration::from_secs(15)).is_none() {
                        panic!("no leader elected at startup\n{}", c.log_tails(40));
                    }
                    return c;
                }
                Err(e) => last = e,
            }
        }
        panic!("could not start the cluster: {last}");
    }

    fn try_start(cfg: ClusterConfig) -> Result<Cluster, String> {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(&base).map_err(|e| e.to_string())?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", cfg.name))
            .tempdir_in(&base)
            .map_err(|e| e.to_string())?;
        let ports = free_ports(2 * cfg.nodes as usize);
        let nodes = (1..=cfg.nodes)
            .map(|id| NodeProc {
                id,
                client_addr: format!("127.0.0.1:{}", ports[2 * (id as usize - 1)]),
                peer_addr: format!("127.0.0.1:{}", ports[2 * (id as usize - 1) + 1]),
                child: None,
                incarnations: 0,
                stopped: false,
                join_via: None,
            })
            .collect();
        let mut c = Cluster {
            cluster_id: fastrand::u64(1..u64::MAX / 2),
            cfg,
            nodes,
            links: BTreeMap::new(),
            dir: Some(dir),
        };
        if c.cfg.proxies {
            for a in 1..=c.cfg.nodes {
                for b in 1..=c.cfg.nodes {
                    if a != b {
                        let target = c.node(b).peer_addr.clone();
                        c.links.insert((a, b), Proxy::start(&target));
                    }
                }
            }
        }
        for id in 1..=c.cfg.nodes {
            c.spawn(id)?;
        }
        Ok(c)
    }

    /// The node with id `id`.
    pub fn node(&self, id: u32) -> &NodeProc {
        &self.nodes[id as usize - 1]
    }

    fn node_mut(&mut self, id: u32) -> &mut NodeProc {
        &mut self.nodes[id as usize - 1]
    }

    /// Every node's client address, in id order (the server list for clients).
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.client_addr.clone()).collect()
    }

    /// Client addresses of the nodes whose process runs.
    pub fn running_addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.client_addr.clone())
            .collect()
    }

    /// Starts a new node (the next id) that joins the running cluster through node `via`;
    /// returns its id.
    pub fn add_node(&mut self, via: u32) -> u32 {
        let ports = free_ports(2);
        let id = self.nodes.len() as u32 + 1;
        self.nodes.push(NodeProc {
            id,
            client_addr: format!("127.0.0.1:{}", ports[0]),
            peer_addr: format!("127.0.0.1:{}", ports[1]),
            child: None,
            incarnations: 0,
            stopped: false,
            join_via: Some(via),
        });
        self.spawn(id)
            .unwrap_or_else(|e| panic!("node {id} could not join: {e}"));
        id
    }

    /// Waits up to `limit` for node `id` to exit by itself (e.g. once removed); reaps it.
    pub fn wait_exit(&mut self, id: u32, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let n = self.node_mut(id);
            let status = n.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if status.is_some() {
                n.child = None;
                return status;
            }
            sleep(Duration::from_millis(20));
        }
        None
    }

    /// Node ids, in order.
    pub fn ids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The directory holding the logs.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("cluster dir").path()
    }

    /// Node `id`'s data directory, the same for all its runs.
    pub fn data_dir(&self, id: u32) -> PathBuf {
        self.dir().join(format!("node{id}.data"))
    }

    /// Deletes the data directory of node `id` (stopped): it restarts as a new node.
    pub fn wipe(&mut self, id: u32) {
        assert!(!self.node(id).is_running(), "node {id} is still running");
        let dir = self.data_dir(id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("wipe {dir:?}: {e}"));
        }
    }

    fn log_path(&self, id: u32, incarnation: u32) -> PathBuf {
        self.dir().join(format!("node{id}.{incarnation}.log"))
    }

    /// The value of `--peers` for node `id`: every other node, through its proxy if any.
    fn peers_arg(&self, id: u32) -> String {
        self.nodes
            .iter()
            .filter(|n| n.id != id)
            .map(|n| {
                let addr = match self.links.get(&(id, n.id)) {
                    Some(p) => p.addr.clone(),
                    None => n.peer_addr.clone(),
                };
                format!("{}={addr}", n.id)
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts node `id` (a new incarnation) and waits until it listens. Err when it exited
    /// first (e.g. a port is taken).
    fn spawn(&mut self, id: u32) -> Result<(), String> {
        let inc = self.node(id).incarnations + 1;
        let log_path = self.log_path(id, inc);
        let port_file = self.dir().join(format!("node{id}.{inc}.addr"));
        let data = self.data_dir(id);
        let log = File::create(&log_path).map_err(|e| e.to_string())?;
        let n = self.node(id);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringchatd"));
        cmd.arg("--id")
            .arg(id.to_string())
            .arg("--listen")
            .arg(&n.client_addr)
            .arg("--peer-listen")
            .arg(&n.peer_addr);
        match n.join_via {
            Some(via) => cmd.arg("--join").arg(&self.node(via).peer_addr),
            None => cmd.arg("--peers").arg(self.peers_arg(id)),
        };
        cmd.arg("--cluster-id")
            .arg(self.cluster_id.to_string())
            .arg("--heartbeat-ms")
            .arg(self.cfg.heartbeat_ms.to_string())
            .arg("--failure-timeout-ms")
            .arg(self.cfg.failure_timeout_ms.to_string())
            .arg("--port-file")
            .arg(&port_file)
            .arg("--data-dir")
            .arg(&data)
            .args(&self.cfg.extra)
            .env("RUST_LOG", &self.cfg.rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let mut child = cmd.spawn().map_err(|e| format!("spawn ringchatd: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::fs::read_to_string(&port_file).is_ok_and(|s| !s.trim().is_empty()) {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!("node {id} exited at start ({status}):\n{log}"));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("node {id} did not start listening within 10 s"));
            }
            sleep(Duration::from_millis(5));
        }
        let n = self.node_mut(id);
        n.child = Some(child);
        n.incarnations = inc;
        n.stopped = false;
        Ok(())
    }

    fn signal(&self, id: u32, sig: &str) {
        let pid = self
            .node(id)
            .pid()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid} (node {id}) failed");
    }

    /// `kill -KILL` node `id` by its PID and reaps it.
    pub fn kill(&mut self, id: u32) {
        self.signal(id, "-KILL");
        let n = self.node_mut(id);
        if let Some(mut child) = n.child.take() {
            let _ = child.wait();
        }
        n.stopped = false;
    }

    /// `kill -STOP` node `id`: it hangs with its sockets open.
    pub fn pause(&mut self, id: u32) {
        self.signal(id, "-STOP");
        self.node_mut(id).stopped = true;
    }

    /// `kill -CONT` node `id`.
    pub fn resume(&mut self, id: u32) {
        self.signal(id, "-CONT");
        self.node_mut(id).stopped = false;
    }

    /// Starts node `id` again on the same addresses and data directory (it recovers its log and
    /// catches up from the leader). Retries for a while if a port is still taken.
    pub fn restart(&mut self, id: u32) {
        assert!(!self.node(id).is_running(), "node {id} is still running");
        let mut last = String::new();
        for _ in 0..50 {
            match self.spawn(id) {
                Ok(()) => return,
                Err(e) => last = e,
            }
            sleep(Duration::from_millis(100));
        }
        panic!("node {id} could not be restarted: {last}");
    }

    /// The incarnation number the current (or last) run of node `id` logged.
    pub fn incarnation(&self, id: u32) -> Option<u64> {
        let inc = self.node(id).incarnations;
        incarnation_in(&std::fs::read_to_string(self.log_path(id, inc)).unwrap_or_default())
    }

    /// Cuts node `id` off from every peer (both directions) while its clients still reach it.
    pub fn isolate(&self, id: u32) {
        for ((a, b), p) in &self.links {
            if *a == id || *b == id {
                p.cut();
            }
        }
        assert!(
            !self.links.is_empty(),
            "isolate needs ClusterConfig::proxies"
        );
    }

    /// Heals every link of node `id`.
    pub fn reconnect(&self, id: u32) {
        for ((a, b), p) in &self.links {
            if *a == id || *b == id {
                p.heal();
            }
        }
    }

    /// The proxy node `from` uses to reach node `to` (with `proxies` on).
    pub fn link(&self, from: u32, to: u32) -> &Proxy {
        self.links.get(&(from, to)).expect("no proxy on this link")
    }

    /// Cuts the link node `from` uses to reach `to` (connections it dialed to `to`; of every
    /// pair the lower id dials, so `cut_link(1, 2)` cuts the one link between 1 and 2).
    pub fn cut_link(&self, from: u32, to: u32) {
        self.link(from, to).cut();
    }

    /// Heals the links between nodes `a` and `b` (both directions).
    pub fn heal_pair(&self, a: u32, b: u32) {
        for key in [(a, b), (b, a)] {
            if let Some(p) = self.links.get(&key) {
                p.heal();
            }
        }
    }

    /// Delays every byte on every peer link by `ms` (0: no delay).
    pub fn delay_all(&self, ms: u64) {
        for p in self.links.values() {
            p.delay(ms);
        }
    }

    /// Heals every link.
    pub fn heal_all(&self) {
        for p in self.links.values() {
            p.heal();
        }
    }

    /// Status of node `id`, `None` when it is not running, stopped, or does not answer within
    /// 500 ms.
    pub fn status(&self, id: u32) -> Option<StatusReport> {
        let n = self.node(id);
        if !n.is_running() || n.is_stopped() {
            return None;
        }
        query_status(&n.client_addr, Duration::from_millis(500))
    }

    /// Statuses of the nodes that answer.
    pub fn statuses(&self) -> Vec<StatusReport> {
        self.ids()
            .into_iter()
            .filter_map(|id| self.status(id))
            .collect()
    }

    /// The leader a majority of the nodes agrees on: a node reporting role "leader" in epoch
    /// E, and a majority of all nodes (it included) reporting epoch E and that leader. Waits
    /// up to `limit`.
    pub fn leader(&self, limit: Duration) -> Option<u32> {
        self.leader_where(limit, |_| true)
    }

    /// Like [`Cluster::leader`], for a leader satisfying `accept` (e.g. a new one).
    pub fn leader_where(
        &self,
        limit: Duration,
        mut accept: impl FnMut(&StatusReport) -> bool,
    ) -> Option<u32> {
        let need = self.cfg.nodes as usize / 2 + 1;
        let deadline = Instant::now() + limit;
        loop {
            let all = self.statuses();
            let found = all.iter().find(|s| {
                s.role == "leader"
                    && accept(s)
                    && all
                        .iter()
                        .filter(|o| o.epoch == s.epoch && o.leader == Some(s.node_id))
                        .count()
                        >= need
            });
            if let Some(s) = found {
                return Some(s.node_id);
            }
            if Instant::now() >= deadline {
                return None;
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// Like [`Cluster::leader`] but panics with the nodes' log tails when there is none.
    pub fn wait_leader(&self, limit: Duration) -> u32 {
        self.leader(limit).unwrap_or_else(|| {
            panic!(
                "no leader within {limit:?}; statuses {:#?}\n{}",
                self.statuses(),
                self.log_tails(60)
            )
        })
    }

    /// Waits until node `id` runs, follows a leader, and has applied at least everything that
    /// leader had committed when this call began. Panics after `limit`.
    pub fn wait_caught_up(&self, id: u32, limit: Duration) {
        let deadline = Instant::now() + limit;
        let leader = self.wait_leader(limit);
        let target = loop {
            if let Some(s) = self.status(leader) {
                break s.commit_index;
            }
            assert!(
                Instant::now() < deadline,
                "leader {leader} stopped answering"
            );
            sleep(Duration::from_millis(20));
        };
        loop {
            if let Some(s) = self.status(id) {
                if s.leader.is_some() && s.applied_index >= target {
                    return;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "node {id} did not catch up to index {target} within {limit:?}: {:#?}\n{}",
                    self.statuses(),
                    self.log_tails(60)
                );
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every running node follows the same leader in the same epoch and has
    /// applied the same index, equal to the leader's commit index, twice in a row 50 ms apart.
    /// Panics after `limit`.
    pub fn wait_converged(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let running = self.nodes.iter().filter(|n| n.is_running()).count();
        let mut previous: Option<(u64, u64)> = None;
        loop {
            let all = self.statuses();
            let current = all.first().and_then(|f| {
                let same = all.len() == running
                    && all.iter().all(|s| {
                        s.epoch == f.epoch
                            && s.leader.is_some()
                            && s.leader == f.leader
                            && s.applied_index == f.applied_index
                            && s.commit_index == f.applied_index
                    });
                same.then_some((f.epoch, f.applied_index))
            });
            if current.is_some() && current == previous {
                return;
            }
            previous = current;
            if Instant::now() >= deadline {
                panic!(
                    "the cluster did not converge within {limit:?}: {all:#?}\n{}",
                    self.log_tails(60)
                );
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every running node answers Status and follows the same leader in the same
    /// epoch (writes may still flow; logs need not be equal). Panics after `limit`.
    pub fn wait_converged_with_traffic(&self, limit: Duration) {
        let running = self.nodes.iter().filter(|n| n.is_running()).count();
        let ok = super::eventually(limit, || {
            let all = self.statuses();
            all.len() == running
                && all.iter().all(|s| {
                    s.leader.is_some() && s.leader == all[0].leader && s.epoch == all[0].epoch
                })
        });
        if !ok {
            panic!(
                "the nodes do not agree on a leader within {limit:?}: {:#?}\n{}",
                self.statuses(),
                self.log_tails(60)
            );
        }
    }

    /// Every node's log, one entry per incarnation: (node id, incarnation, text).
    pub fn logs(&self) -> Vec<(u32, u32, String)> {
        let mut out = Vec::new();
        for n in &self.nodes {
            for inc in 1..=n.incarnations {
                let text = std::fs::read_to_string(self.log_path(n.id, inc)).unwrap_or_default();
                out.push((n.id, inc, text));
            }
        }
        out
    }

    /// The last `lines` lines of every node's log (every incarnation), for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for (id, inc, text) in self.logs() {
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            out.push_str(&format!(
                "---- node {id} incarnation {inc} (last {lines} lines)\n"
            ));
            for l in &all[from..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out.push_str(&format!("(full logs in {})\n", self.dir().display()));
        out
    }

    /// Election safety over every log so far (see [`leaders_by_epoch`]): Err names the epochs
    /// led by more than one node.
    pub fn check_election_safety(&self) -> Result<BTreeMap<u64, BTreeSet<u32>>, String> {
        let logs = self.logs();
        let leaders = leaders_by_epoch(logs.iter().map(|(id, _, t)| (*id, t.as_str())));
        let bad: Vec<String> = leaders
            .iter()
            .filter(|(_, ids)| ids.len() > 1)
            .map(|(e, ids)| format!("epoch {e} led by nodes {ids:?}"))
            .collect();
        if bad.is_empty() {
            Ok(leaders)
        } else {
            Err(bad.join("; "))
        }
    }
}

/// The incarnation number a node logged at start (`starting (incarnation N, ...`).
pub fn incarnation_in(log: &str) -> Option<u64> {
    log.lines().find_map(|l| {
        let (_, rest) = l.split_once("starting (incarnation ")?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// Parses `node N: leading epoch E from log index I` lines of the given (node id, log text)
/// pairs into epoch -> the set of node ids that led it. A line whose `node N` disagrees with
/// the file it came from counts under both ids, so it cannot hide a conflict.
pub fn leaders_by_epoch<'a>(
    logs: impl IntoIterator<Item = (u32, &'a str)>,
) -> BTreeMap<u64, BTreeSet<u32>> {
    let mut out: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
    for (file_id, text) in logs {
        for line in text.lines() {
            let Some((left, right)) = line.split_once(": leading epoch ") else {
                continue;
            };
            let digits: String = right.chars().take_while(char::is_ascii_digit).collect();
            let Ok(epoch) = digits.parse::<u64>() else {
                continue;
            };
            let set = out.entry(epoch).or_default();
            set.insert(file_id);
            if let Some(named) = left
                .rsplit_once("node ")
                .and_then(|(_, n)| n.trim().parse::<u32>().ok())
            {
                set.insert(named);
            }
        }
    }
    out
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut child) = n.child.take() {
                // Child::kill sends SIGKILL to this PID only (a stopped process dies too).
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.links.clear();
        let keep = std::env::var("KEEP_CLUSTER_LOGS").is_ok_and(|v| !v.is_empty() && v != "0");
        if std::thread::panicking() || keep {
            if let Some(dir) = self.dir.take() {
                let path = dir.keep();
                eprintln!("cluster logs kept in {}", path.display());
            }
        }
    }
}
