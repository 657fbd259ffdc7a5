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
        let Scene {
            nodes: members,
            down,
            clients,
            ..
        } = *scene;
        let n = members.len();
        if n == 0 {
            return None;
        }
        let pick = |rng: &mut fastrand::Rng| members[rng.usize(..n)];
        let pair = |rng: &mut fastrand::Rng| {
            let a = members[rng.usize(..n)];
            let others: Vec<NodeId> = members.iter().copied().filter(|&m| m != a).collect();
            (a, others[rng.usize(..others.len())])
        };
        let span = |rng: &mut fastrand::Rng, (lo, hi): (Micros, Micros)| rng.u64(lo..=hi);
        let voters = scene.members.len().max(1);
        let may_take_down = down.len() < (voters - 1) / 2 || rng.u8(..20) == 0;
        let roll = rng.u8(..100);
        if n < 2 && roll < 54 {
            return None; // no links to break
        }
        let fault = match roll {
            0..=17 => {
                let (a, b) = pair(rng);
                (Fault::LinkReset(a, b), span(rng, self.reconnect_after))
            }
            18..=33 => {
                // A random non-empty proper subset, often a single node; a third of them
                // silent.
                let mut side: Vec<NodeId> =
                    members.iter().copied().filter(|_| rng.bool()).collect();
                if side.is_empty() || side.len() == n {
                    side = vec![pick(rng)];
                }
                let dur = span(rng, self.cut_for);
                if roll >= 28 {
                    (Fault::Silent(side), dur)
                } else {
                    (Fault::Partition(side), dur)
                }
            }
            34..=43 => {
                let (a, b) = pair(rng);
                (Fault::OneWay(a, b), span(rng, self.cut_for))
            }
            44..=53 => {
                let (a, b) = pair(rng);
                (Fault::Clog(a, b), span(rng, self.cut_for) / 2)
            }
            54..=68 => {
                let v = pick(rng);
                if down.contains(&v) || !may_take_down {
                    return None;
                }
                (Fault::Pause(v), span(rng, self.pause_for))
            }
            69..=71 => (Fault::DiskFail(pick(rng)), span(rng, self.pause_for)),
            72..=74 => (Fault::SyncFail(pick(rng)), 0),
            75..=91 => {
                let v = pick(rng);
                if down.contains(&v) || !may_take_down {
                    return None;
                }
                let point = match rng.u8(..4) {
                    0 => CrashPoint::Idle,
                    1 => CrashPoint::BeforeSync,
                    2 => CrashPoint::BeforeSend,
                    _ => CrashPoint::MidWrite,
                };
                (Fault::Crash(v, point), span(rng, self.down_for))
            }
            92..=94 => {
                let v = pick(rng);
                if down.contains(&v) || !may_take_down {
                    return None;
                }
                (Fault::Wipe(v), span(rng, self.down_for))
            }
            _ => {
                if clients == 0 {
                    return None;
                }
                (Fault::ClientReset(rng.usize(..clients)), 0)
            }
        };
        Some(fault)
    }

    fn draw_membership(
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
