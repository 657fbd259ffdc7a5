//! The core liveness mode (as TigerBeetle's VOPR): after the fault phase a random majority of
//! the voting members, the core, is healed (restarted, resumed, disks working, links among
//! them up), while every other node stays failed for good: crashed, or running but cut off
//! from the core. The core must then elect a leader among itself and serve every client:
//! clients of failed nodes fail over (a crashed node refuses them, a cut-off one tells them
//! NO_LEADER once it has known no leader for a while), and every write they buffered is
//! acknowledged exactly once. Healing everything ([`World::heal_all`]) never shows that a
//! cluster with a minority gone for good still works; this does.

use std::collections::BTreeSet;

use crate::core::log::HardState;
use crate::core::{NodeId, Role};
use crate::sim::client::ClientKind;

use super::talker_behind;
use crate::sim::clock::{ms, Micros};
use crate::sim::faults::CrashPoint;
use crate::sim::Failure;

use super::{Event, World};

/// The core of a core liveness phase and the nodes left failed.
#[derive(Clone, Debug, Default)]
pub(super) struct Core {
    /// The healed majority.
    pub nodes: Vec<NodeId>,
    /// Nodes left crashed for good.
    pub crashed: Vec<NodeId>,
    /// Nodes left running but cut off from the core for good.
    pub cut_off: Vec<NodeId>,
}

/// How a seed fails the nodes outside the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Crash,
    CutOff,
    Mixed,
}

impl World {
    /// Whether `id`'s disk holds no data it can vote with (wiped and not caught up, or never
    /// written): a core must not count on it for a majority of data holders.
    fn without_data(&mut self, id: NodeId) -> bool {
        self.durable(id).is_none_or(|r| {
            r.hard_state.amnesiac || (r.hard_state == HardState::default() && r.entries.is_empty())
        })
    }

    /// Heals node `id` (resumed or restarted, disk working, no crash pending).
    fn heal_node(&mut self, id: NodeId) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.crash_pending = None;
        }
        self.disk_works(id);
        self.resume(id);
        self.restart(id);
    }

    /// `ids` in random order, those with their data first.
    fn data_holders_first(&mut self, ids: &[NodeId]) -> Vec<NodeId> {
        let mut order = ids.to_vec();
        self.rng.shuffle(&mut order);
        let mut keyed: Vec<(bool, NodeId)> = Vec::new();
        for id in order {
            keyed.push((self.without_data(id), id));
        }
        keyed.sort_by_key(|&(blank, _)| blank); // stable: random among equals
        keyed.into_iter().map(|(_, id)| id).collect()
    }

    /// Starts the core liveness phase: no more faults; a random majority of the voting
    /// members (widened until it is a majority of every configuration a core node holds, as
    /// one with an uncommitted change may lead) is healed; every other node is crashed or
    /// cut off from the core for good, as the seed draws; clients stop saying new messages.
    /// Returns the core.
    pub fn heal_core(&mut self) -> Vec<NodeId> {
        self.stop_faults();
        // From now on the minority left failed uses up what the design may lose: no core
        // node loses its disk at its restart (see `may_lose_data`).
        self.core = Some(Core::default());
        let voters = self.voters();
        let order = self.data_holders_first(&voters);
        let mut core: BTreeSet<NodeId> = order[..voters.len() / 2 + 1].iter().copied().collect();
        loop {
            for id in core.clone() {
                self.heal_node(id);
            }
            let mut grew = false;
            for id in core.clone() {
                let Some(node) = self.node(id) else {
                    continue;
                };
                // A configuration listing a member whose removal is committed is older than
                // a committed entry: a node holding it as its newest misses that entry and can
                // never lead, so its configuration does not bind the core.
                let ids = node.configs().current().ids();
                if ids.iter().any(|&m| self.checker.is_retired(m)) {
                    continue;
                }
                let set: Vec<NodeId> = node
                    .configs()
                    .current()
                    .ids()
                    .into_iter()
                    .filter(|m| self.nodes.get(m).is_some_and(|n| !n.gone))
                    .collect();
                let need = (node.configs().current().ids().len() / 2 + 1)
                    .saturating_sub(set.iter().filter(|m| core.contains(m)).count());
                if need == 0 {
                    continue;
                }
                let outside: Vec<NodeId> =
                    set.iter().copied().filter(|m| !core.contains(m)).collect();
                let extra = self.data_holders_first(&outside);
                let before = core.len();
                core.extend(extra.into_iter().take(need));
                // Only if it did grow: a configuration naming nodes gone for good may be
                // impossible to satisfy, and the core's nodes have all been healed then.
                grew |= core.len() > before;
            }
            if !grew {
                break;
            }
        }
        let fate = match self.rng.u8(..3) {
            0 => Fate::Crash,
            1 => Fate::CutOff,
            _ => Fate::Mixed,
        };
        let in_configs: BTreeSet<NodeId> = core
            .iter()
            .filter_map(|&id| self.node(id))
            .flat_map(|n| n.configs().current().ids())
            .chain(voters.iter().copied())
            .collect();
        let (mut crashed, mut cut_off) = (Vec::new(), Vec::new());
        for id in self.targets.clone() {
            if core.contains(&id) {
                continue;
            }
            // A node joining from outside the configurations asks to join by a path the
            // network's cuts do not stop: it is crashed, never cut off.
            let crash = !in_configs.contains(&id)
                || match fate {
                    Fate::Crash => true,
                    Fate::CutOff => false,
                    Fate::Mixed => self.rng.bool(),
                };
            if crash {
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.crash_pending = None;
                }
                self.crash(id, CrashPoint::Idle);
                crashed.push(id);
            } else {
                self.heal_node(id);
                cut_off.push(id);
            }
        }
        // Nothing of a failed node's joining goes on (its requests in flight are lost).
        let failed: BTreeSet<NodeId> = crashed.iter().chain(&cut_off).copied().collect();
        let stale: Vec<(Micros, u64)> = self
            .events
            .iter()
            .filter(|(_, e)| match e {
                Event::JoinTick(id) => crashed.contains(id),
                Event::JoinAsk { joiner, .. } | Event::JoinAnswer { joiner, .. } => {
                    failed.contains(joiner)
                }
                _ => false,
            })
            .map(|(&k, _)| k)
            .collect();
        for k in stale {
            self.events.remove(&k);
        }
        let now = self.clock.micros();
        self.clear_network_faults();
        if !cut_off.is_empty() {
            self.cut(&cut_off);
        }
        for (a, b) in self.net.pairs() {
            if core.contains(&a) && core.contains(&b) && !self.net.connected(a, b) {
                let at = now + self.rng.u64(ms(1)..=ms(20));
                self.schedule(at, Event::LinkUp(a, b));
            }
        }
        for i in 0..self.clients.len() {
            self.with_client(i, |c, env| c.stop(env));
        }
        let nodes: Vec<NodeId> = core.into_iter().collect();
        self.note(format!(
            "LIVENESS: core {nodes:?} healed; left crashed {crashed:?}, cut off {cut_off:?}"
        ));
        self.core = Some(Core {
            nodes: nodes.clone(),
            crashed,
            cut_off,
        });
        nodes
    }

    /// The core of the core liveness phase, once started.
    pub fn core(&self) -> Option<&[NodeId]> {
        self.core.as_ref().map(|c| c.nodes.as_slice())
    }

    /// Nodes left failed for good by the core liveness phase: (crashed, cut off).
    pub fn left_failed(&self) -> Option<(&[NodeId], &[NodeId])> {
        self.core
            .as_ref()
            .map(|c| (c.crashed.as_slice(), c.cut_off.as_slice()))
    }

    /// Whether the link between `a` and `b` is up with no fault on it.
    pub fn linked(&self, a: NodeId, b: NodeId) -> bool {
        self.net.connected(a, b) && !self.net.faulty(a, b)
    }

    /// Whether a partition separates `a` and `b`.
    pub fn cut_between(&self, a: NodeId, b: NodeId) -> bool {
        self.net.is_cut(a, b)
    }

    /// Why the core has not converged yet (None once it has): one leader in the core, every
    /// core node of its configuration following it with everything applied and the same
    /// configuration, the core's links up, every talker settled on a core node with nothing
    /// unacked and every message of its rooms delivered.
    pub fn core_not_converged(&self) -> Option<String> {
        let Some(core) = &self.core else {
            return Some("no core".into());
        };
        let core = &core.nodes;
        let running = |id: &NodeId| {
            self.nodes
                .get(id)
                .is_some_and(|n| !n.paused && n.node.is_some())
        };
        let leaders: Vec<NodeId> = core
            .iter()
            .copied()
            .filter(|id| {
                running(id)
                    && self
                        .node(*id)
                        .is_some_and(|x| x.stats().role == Role::Leader)
            })
            .collect();
        let [leader] = leaders[..] else {
            return Some(format!("leaders in the core {core:?}: {leaders:?}"));
        };
        let lnode = self.node(leader)?;
        let config = lnode.configs().current();
        let set = config.ids();
        let ls = lnode.stats();
        if ls.committed != ls.last_index {
            return Some(format!(
                "leader {leader} committed {} of {}",
                ls.committed, ls.last_index
            ));
        }
        for &id in core {
            if self.nodes.get(&id).is_some_and(|n| n.gone) || !set.contains(&id) {
                continue;
            }
            if !running(&id) {
                return Some(format!("core node {id} is down"));
            }
            if let Some(why) = self.lags_behind(id, leader) {
                return Some(format!("core {why}"));
            }
            for &other in core {
                if other != id
                    && set.contains(&other)
                    && (!self.net.connected(id, other) || self.net.faulty(id, other))
                {
                    return Some(format!("core link {id} <-> {other} is not up"));
                }
            }
        }
        let chat = lnode.chat();
        for c in &self.clients {
            if c.kind != ClientKind::Talker {
                continue;
            }
            if !c.settled() {
                return Some(format!("client {} has no settled session", c.index));
            }
            if c.open_on().is_none_or(|n| !core.contains(&n)) {
                return Some(format!(
                    "client {} is settled on node {:?}, outside the core",
                    c.index,
                    c.open_on()
                ));
            }
            if let Some(why) = talker_behind(c, chat) {
                return Some(why);
            }
        }
        None
    }

    /// Heals the core (see [`World::heal_core`]), runs until it converges within `bound`,
    /// then checks every core node has every acknowledged message and the same chat state.
    /// Returns how long convergence took.
    pub fn settle_core(&mut self, bound: Micros) -> Result<Micros, Failure> {
        let start = self.now();
        self.heal_core();
        if !self.run_until_cond(bound, |w| w.core_not_converged().is_none())? {
            let why = self.core_not_converged().unwrap_or_default();
            let core = self.core.clone().unwrap_or_default();
            return Err(self.failure(format!(
                "liveness (core {:?}, left crashed {:?}, cut off {:?}): not converged {} ms \
                 after healing the core: {why}{}",
                core.nodes,
                core.crashed,
                core.cut_off,
                bound / 1000,
                self.describe()
            )));
        }
        // Core nodes the leader's configuration still has (one removed meanwhile may run on,
        // not knowing it yet, and rightly lacks what came after).
        let members = self
            .leader()
            .and_then(|l| self.node(l))
            .map(|n| n.configs().current().ids())
            .unwrap_or_default();
        let checked: Vec<NodeId> = self
            .core()
            .unwrap_or_default()
            .iter()
            .copied()
            .filter(|id| members.contains(id))
            .collect();
        self.final_checks_on(&checked)?;
        Ok(self.now() - start)
    }

    /// [`World::final_checks`] over the nodes `ids` only (those that run).
    pub fn final_checks_on(&self, ids: &[NodeId]) -> Result<(), Failure> {
        let mut first: Option<(NodeId, &crate::core::Node)> = None;
        for &id in ids {
            let Some(node) = self.node(id) else {
                continue;
            };
            self.checker
                .check_acked_present(id, node)
                .map_err(|v| self.failure(v))?;
            match first {
                None => first = Some((id, node)),
                Some((a, na)) if na.chat() != node.chat() => {
                    return Err(self.failure(format!(
                        "replicas: core nodes {a} and {id} applied index {} but their chat \
                         states differ",
                        node.stats().applied
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}
