//! The faults a run injects, and how they are drawn: which kinds, how often, for how long.

use super::clock::{ms, Micros};
use crate::core::NodeId;

/// Where in a node's loop turn a crash strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// Between turns.
    Idle,
    /// At the first turn with writes in flight, before their sync: the disk's power goes at
    /// their first fsync, and the crash loses what they wrote.
    BeforeSync,
    /// At the first turn with writes in flight, after their sync but before the node heard:
    /// the disk has what no one was told.
    BeforeSend,
    /// At the first turn with writes in flight, in the middle of them: the power goes after a
    /// random number of changes to the disk, and the crash tears what was not synced (a
    /// random prefix of it survives).
    MidWrite,
}

/// One fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The connection between two nodes breaks (it comes back by itself).
    LinkReset(NodeId, NodeId),
    /// These nodes are cut from the others, both ways.
    Partition(Vec<NodeId>),
    /// These nodes are cut from the others silently: packets are dropped both ways, nothing is
    /// reset, and after the heal the old connections move only at their next retransmission.
    Silent(Vec<NodeId>),
    /// Frames from the first node to the second are lost; the connection stays up.
    OneWay(NodeId, NodeId),
    /// Frames from the first node to the second are held back, then delivered late.
    Clog(NodeId, NodeId),
    /// The node stops: it processes nothing and its timers do not fire.
    Pause(NodeId),
    /// The node dies, keeping only what it synced.
    Crash(NodeId, CrashPoint),
    /// The node dies and loses its disk: it restarts empty (at most one node is without its
    /// data at a time, so a majority always keeps every committed entry).
    Wipe(NodeId),
    /// The node's storage fails every write for a while, as a full disk would: the node
    /// refuses client writes and any leadership, and retries at each turn.
    DiskFail(NodeId),
    /// The node's next fsync fails with an I/O error; what it was to make durable is lost.
    SyncFail(NodeId),
    /// A client's connection breaks.
    ClientReset(usize),
    /// A new node (with an id never used before) starts and asks to join the cluster.
    Join,
    /// An admin asks a live node to remove this member (it may be refused).
    Remove(NodeId),
}

impl Fault {
    /// Short name for counters.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::LinkReset(..) => "link-reset",
            Fault::Partition(_) => "partition",
            Fault::Silent(_) => "silent-partition",
            Fault::OneWay(..) => "one-way",
            Fault::Clog(..) => "clog",
            Fault::Pause(_) => "pause",
            Fault::Crash(..) => "crash",
            Fault::DiskFail(_) => "disk-fail",
            Fault::SyncFail(_) => "sync-fail",
            Fault::Wipe(_) => "wipe",
            Fault::ClientReset(_) => "client-reset",
            Fault::Join => "join",
            Fault::Remove(_) => "remove",
        }
    }
}

/// The end of a fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heal {
    /// Reconnect two nodes after a reset.
    Reconnect(NodeId, NodeId),
    /// End a partition: these pairs may connect again.
    Partition(Vec<(NodeId, NodeId)>),
    /// End a silent partition of these pairs.
    Silent(Vec<(NodeId, NodeId)>),
    /// End a one-way partition (the connection is reset, as TCP would after losses).
    OneWay(NodeId, NodeId),
    /// Release a clog.
    Clog(NodeId, NodeId),
    /// Resume a paused node.
    Resume(NodeId),
    /// Restart a crashed node from its storage.
    Restart(NodeId),
    /// The node's storage works again.
    Disk(NodeId),
}

/// A kind of fault a seed's mix may enable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// [`Fault::LinkReset`].
    LinkReset,
    /// [`Fault::Partition`].
    Partition,
    /// [`Fault::Silent`].
    Silent,
    /// [`Fault::OneWay`].
    OneWay,
    /// [`Fault::Clog`].
    Clog,
    /// [`Fault::Pause`].
    Pause,
    /// [`Fault::Crash`].
    Crash,
    /// [`Fault::Wipe`].
    Wipe,
    /// [`Fault::DiskFail`].
    DiskFail,
    /// [`Fault::SyncFail`].
    SyncFail,
    /// [`Fault::ClientReset`].
    ClientReset,
    /// [`Fault::Join`] and [`Fault::Remove`].
    Membership,
}

impl FaultKind {
    /// Every kind, in a fixed order (the order of draws).
    pub const ALL: [FaultKind; 12] = [
        FaultKind::LinkReset,
        FaultKind::Partition,
        FaultKind::Silent,
        FaultKind::OneWay,
        FaultKind::Clog,
        FaultKind::Pause,
        FaultKind::Crash,
        FaultKind::Wipe,
        FaultKind::DiskFail,
        FaultKind::SyncFail,
        FaultKind::ClientReset,
        FaultKind::Membership,
    ];

    /// Short name (as [`Fault::name`], "membership" for joins and removals).
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::LinkReset => "link-reset",
            FaultKind::Partition => "partition",
            FaultKind::Silent => "silent-partition",
            FaultKind::OneWay => "one-way",
            FaultKind::Clog => "clog",
            FaultKind::Pause => "pause",
            FaultKind::Crash => "crash",
            FaultKind::Wipe => "wipe",
            FaultKind::DiskFail => "disk-fail",
            FaultKind::SyncFail => "sync-fail",
            FaultKind::ClientReset => "client-reset",
            FaultKind::Membership => "membership",
        }
    }

    /// Whether the kind needs a link between two nodes (none in a cluster of one).
    pub(super) fn needs_pair(self) -> bool {
        matches!(
            self,
            FaultKind::LinkReset
                | FaultKind::Partition
                | FaultKind::Silent
                | FaultKind::OneWay
                | FaultKind::Clog
        )
    }
}

/// How faults are drawn.
#[derive(Clone, Debug)]
pub struct FaultPlan {
    /// Gap between two faults.
    pub gap: (Micros, Micros),
    /// How long partitions, one-way partitions and clogs last.
    pub cut_for: (Micros, Micros),
    /// How long a node stays paused.
    pub pause_for: (Micros, Micros),
    /// How long a crashed node stays down.
    pub down_for: (Micros, Micros),
    /// Delay before a reset link reconnects.
    pub reconnect_after: (Micros, Micros),
    /// Percentage of draws that are membership changes (a join or a removal).
    pub membership: u8,
    /// Smallest and largest cluster the membership changes keep to.
    pub sizes: (usize, usize),
}

/// What drawing a fault needs to know of the cluster now.
#[derive(Clone, Copy, Debug)]
pub struct Scene<'a> {
    /// The nodes faults may strike: members and nodes joining (never removed ones).
    pub nodes: &'a [NodeId],
    /// Those crashed, paused or about to crash.
    pub down: &'a [NodeId],
    /// Voting members of the newest committed configuration.
    pub members: &'a [NodeId],
    /// Nodes started to join that are no members yet.
    pub joining: usize,
    /// A removal the leader accepted is not committed yet.
    pub changing: bool,
    /// Clients.
    pub clients: usize,
}

impl Default for FaultPlan {
    fn default() -> Self {
        FaultPlan {
            gap: (ms(40), ms(250)),
            cut_for: (ms(100), ms(1000)),
            pause_for: (ms(50), ms(700)),
            down_for: (ms(50), ms(900)),
            reconnect_after: (ms(5), ms(60)),
            membership: 8,
            sizes: (3, 5),
        }
    }
}

impl FaultPlan {
    /// Draws a fault. At most a minority is taken down at once, except now and then, so that
    /// the cluster also gets to make progress. Membership changes keep the cluster within
    /// `sizes` (nodes joining count) and start only while no other change is under way.
    pub fn draw(&self, rng: &mut fastrand::Rng, scene: &Scene<'_>) -> Option<(Fault, Micros)> {
        if rng.u8(..100) < self.membership {
            return self.draw_membership(rng, scene);
        }
        let (n, down) = (scene.nodes.len(), scene.down);
        if n == 0 {
            return None;
        }
        let voters = scene.members.len().max(1);
        let may_take_down = down.len() < (voters - 1) / 2 || rng.u8(..20) == 0;
        let roll = rng.u8(..100);
        if n < 2 && roll < 54 {
            return None; // no links to break
        }
        let kind = match roll {
            0..=17 => FaultKind::LinkReset,
            // A random non-empty proper subset, often a single node; a third of them silent.
            18..=27 => FaultKind::Partition,
            28..=33 => FaultKind::Silent,
            34..=43 => FaultKind::OneWay,
            44..=53 => FaultKind::Clog,
            54..=68 => FaultKind::Pause,
            69..=71 => FaultKind::DiskFail,
            72..=74 => FaultKind::SyncFail,
            75..=91 => FaultKind::Crash,
            92..=94 => FaultKind::Wipe,
            _ => FaultKind::ClientReset,
        };
        self.fault_of(kind, rng, scene, may_take_down)
    }

    /// A fault of `kind` on the nodes of `scene`, lasting as this plan says; None when it
    /// would take a node down that is down already, or take one more down while
    /// `may_take_down` is false. The fixed mix and the swarm's both build their faults here.
    pub(super) fn fault_of(
        &self,
        kind: FaultKind,
        rng: &mut fastrand::Rng,
        scene: &Scene<'_>,
        may_take_down: bool,
    ) -> Option<(Fault, Micros)> {
        let Scene {
            nodes,
            down,
            clients,
            ..
        } = *scene;
        let n = nodes.len();
        let pick = |rng: &mut fastrand::Rng| nodes[rng.usize(..n)];
        let pair = |rng: &mut fastrand::Rng| {
            let a = nodes[rng.usize(..n)];
            let others: Vec<NodeId> = nodes.iter().copied().filter(|&m| m != a).collect();
            (a, others[rng.usize(..others.len())])
        };
        let span = |rng: &mut fastrand::Rng, (lo, hi): (Micros, Micros)| rng.u64(lo..=hi);
        // A node to take down, if the guard allows.
        let victim = |rng: &mut fastrand::Rng| {
            let v = pick(rng);
            (!down.contains(&v) && may_take_down).then_some(v)
        };
        let fault = match kind {
            FaultKind::LinkReset => {
                let (a, b) = pair(rng);
                (Fault::LinkReset(a, b), span(rng, self.reconnect_after))
            }
            FaultKind::Partition | FaultKind::Silent => {
                let mut side: Vec<NodeId> = nodes.iter().copied().filter(|_| rng.bool()).collect();
                if side.is_empty() || side.len() == n {
                    side = vec![pick(rng)];
                }
                let dur = span(rng, self.cut_for);
                if kind == FaultKind::Silent {
                    (Fault::Silent(side), dur)
                } else {
                    (Fault::Partition(side), dur)
                }
            }
            FaultKind::OneWay => {
                let (a, b) = pair(rng);
                (Fault::OneWay(a, b), span(rng, self.cut_for))
            }
            FaultKind::Clog => {
                let (a, b) = pair(rng);
                (Fault::Clog(a, b), span(rng, self.cut_for) / 2)
            }
            FaultKind::Pause => (Fault::Pause(victim(rng)?), span(rng, self.pause_for)),
            FaultKind::DiskFail => (Fault::DiskFail(pick(rng)), span(rng, self.pause_for)),
            FaultKind::SyncFail => (Fault::SyncFail(pick(rng)), 0),
            FaultKind::Crash => {
                let v = victim(rng)?;
                let point = match rng.u8(..4) {
                    0 => CrashPoint::Idle,
                    1 => CrashPoint::BeforeSync,
                    2 => CrashPoint::BeforeSend,
                    _ => CrashPoint::MidWrite,
                };
                (Fault::Crash(v, point), span(rng, self.down_for))
            }
            FaultKind::Wipe => (Fault::Wipe(victim(rng)?), span(rng, self.down_for)),
            FaultKind::ClientReset => {
                if clients == 0 {
                    return None;
                }
                (Fault::ClientReset(rng.usize(..clients)), 0)
            }
            FaultKind::Membership => return self.draw_membership(rng, scene),
        };
        Some(fault)
    }

    pub(super) fn draw_membership(
        &self,
        rng: &mut fastrand::Rng,
        scene: &Scene<'_>,
    ) -> Option<(Fault, Micros)> {
        let (min, max) = self.sizes;
        let size = scene.members.len();
        let may_join = size + scene.joining < max;
        let may_remove = !scene.changing && scene.joining == 0 && size > min;
        let join = match (may_join, may_remove) {
            (false, false) => return None,
            (true, true) => rng.bool(),
            (j, _) => j,
        };
        if join {
            return Some((Fault::Join, 0));
        }
        let victim = scene.members[rng.usize(..size)];
        Some((Fault::Remove(victim), 0))
    }
}
