//! Random faults during the safety phase, their healing, and healing everything for the
//! liveness phase.

use crate::core::log::HardState;
use crate::core::NodeId;
use crate::sim::clock::{ms, Micros};
use crate::sim::faults::{CrashPoint, Fault, Heal, Scene};

use super::durable_state;

use super::{Event, Input, World, TAG_FAULT};

impl World {
    pub(super) fn down_nodes(&self) -> Vec<NodeId> {
        self.targets
            .iter()
            .copied()
            .filter(|id| {
                self.nodes
                    .get(id)
                    .is_some_and(|n| n.node.is_none() || n.paused || n.crash_pending.is_some())
            })
            .collect()
    }

    pub(super) fn inject_fault(&mut self) {
        if !self.faults_on {
            return;
        }
        let down = self.down_nodes();
        let voters = self.voters();
        let scene = Scene {
            nodes: &self.targets,
            down: &down,
            members: &voters,
            joining: self.joining(),
            changing: self.removing.is_some(),
            clients: self.clients.len(),
        };
        let drawn = match &self.swarm {
            Some(mix) => mix.draw_fault(&self.plan, &mut self.rng, &scene),
            None => self.plan.draw(&mut self.rng, &scene),
        };
        if let Some((fault, dur)) = drawn {
            self.apply_fault(fault, dur);
        }
        let (lo, hi) = self.plan.gap;
        let at = self.clock.micros() + self.rng.u64(lo..=hi);
        self.schedule(at, Event::NextFault);
    }

    /// Crashes `id` and empties its storage, unless another node is without its data already
    /// (wiped and not caught up, durably so) or the cluster has fewer than 3 voters: the
    /// design keeps acknowledged writes only while a majority keeps its disks. True if it was
    /// wiped.
    pub fn wipe(&mut self, id: NodeId) -> bool {
        if self.node(id).is_none() || !self.may_lose_data(id) {
            return false;
        }
        self.crash_now(id, CrashPoint::Idle);
        if let Some(n) = self.nodes.get_mut(&id) {
            n.disk.wipe();
            n.wiped = true;
        }
        self.note(format!("node {id}: WIPED"));
        true
    }

    /// Whether node `id` may be without its data now: only if no other node is without its
    /// data already (wiped and not caught up, durably so), since the design keeps acknowledged
    /// writes only while a majority keeps its disks, and never in a cluster of 1 or 2.
    /// In the core liveness phase, never: the nodes left failed are without their data.
    pub(super) fn may_lose_data(&self, id: NodeId) -> bool {
        if self.core.is_some() {
            return false;
        }
        let n = self.voters().len();
        if n - 1 < n / 2 + 1 {
            return false; // in a cluster of 1 or 2, the others are no majority
        }
        for (&other, n) in &self.nodes {
            if n.gone || other == id {
                continue;
            }
            let Ok(r) = durable_state(&n.disk) else {
                return false;
            };
            let blank = r.hard_state == HardState::default() && r.entries.is_empty();
            if r.hard_state.amnesiac || blank {
                return false;
            }
        }
        true
    }

    /// Injects `fault`; it heals after `dur` (crash: restart, pause: resume, cuts: heal).
    pub fn apply_fault(&mut self, fault: Fault, dur: Micros) {
        let now = self.clock.micros();
        *self.stats.faults.entry(fault.name()).or_default() += 1;
        self.trace.mix(TAG_FAULT);
        self.trace.mix(now);
        self.trace
            .mix(crc32fast::hash(format!("{fault:?}").as_bytes()).into());
        self.note(format!("FAULT {fault:?} for {} ms", dur / 1000));
        match fault {
            Fault::LinkReset(a, b) => {
                self.reset_link(a, b, false);
                self.schedule(now + dur, Event::Heal(Heal::Reconnect(a, b)));
            }
            Fault::Partition(side) => {
                let pairs = self.cut(&side);
                self.schedule(now + dur, Event::Heal(Heal::Partition(pairs)));
            }
            Fault::Silent(side) => {
                let pairs = self.cut_silently(&side);
                self.schedule(now + dur, Event::Heal(Heal::Silent(pairs)));
            }
            Fault::OneWay(from, to) => {
                self.net.start_dropping(from, to);
                self.schedule(now + dur, Event::Heal(Heal::OneWay(from, to)));
            }
            Fault::Clog(from, to) => {
                self.net.clog(from, to);
                self.schedule(now + dur, Event::Heal(Heal::Clog(from, to)));
            }
            Fault::Pause(id) => {
                self.pause(id);
                self.schedule(now + dur, Event::Heal(Heal::Resume(id)));
            }
            Fault::Crash(id, point) => {
                self.crash(id, point);
                self.schedule(now + dur, Event::Heal(Heal::Restart(id)));
            }
            Fault::DiskFail(id) => {
                self.fail_disk(id);
                self.schedule(now + dur, Event::Heal(Heal::Disk(id)));
            }
            Fault::SyncFail(id) => self.fail_sync(id),
            Fault::Wipe(id) => {
                if self.wipe(id) {
                    self.schedule(now + dur, Event::Heal(Heal::Restart(id)));
                }
            }
            Fault::ClientReset(i) => self.reset_client(i),
            Fault::Join => {
                self.add_joining_node();
            }
            Fault::Remove(id) => {
                self.request_removal(id);
            }
        }
    }

    pub(super) fn heal(&mut self, h: Heal) {
        self.trace.mix(TAG_FAULT + 100);
        self.trace.mix(self.clock.micros());
        self.note(format!("HEAL {h:?}"));
        match h {
            Heal::Reconnect(a, b) => self.link_up(a, b),
            Heal::Partition(pairs) => {
                for (a, b) in pairs {
                    if self.net.uncut(a, b) {
                        let at = self.clock.micros() + self.rng.u64(ms(1)..=ms(30));
                        self.schedule(at, Event::LinkUp(a, b));
                    }
                }
            }
            Heal::Silent(pairs) => self.end_silent_cut(pairs),
            Heal::OneWay(from, to) => {
                self.net.stop_dropping(from, to);
                // Frames were lost mid-stream: TCP would not go on after that.
                self.reset_link(from, to, true);
            }
            Heal::Clog(from, to) => {
                let now = self.clock.micros();
                for (at, generation, bytes) in self.net.unclog(from, to, now, &mut self.net_rng) {
                    let input = Input::Peer {
                        from,
                        generation,
                        bytes,
                    };
                    self.schedule(at, Event::Input { node: to, input });
                }
            }
            Heal::Resume(id) => self.resume(id),
            Heal::Restart(id) => self.restart(id),
            Heal::Disk(id) => self.disk_works(id),
        }
    }

    /// The end of the fault phase: no more faults are drawn, the heals and faults planned are
    /// dropped, and so are the scenario's frame filters; retired nodes stop.
    pub(super) fn stop_faults(&mut self) {
        self.faults_on = false;
        let pending: Vec<(Micros, u64)> = self
            .events
            .iter()
            .filter(|(_, e)| matches!(e, Event::NextFault | Event::Heal(_)))
            .map(|(&k, _)| k)
            .collect();
        for k in pending {
            self.events.remove(&k);
        }
        self.filters.clear();
        self.stop_retired();
    }

    /// Liveness phase: no more faults; every node restarted or resumed, every link healed;
    /// clients stop saying new messages (probers leave).
    pub fn heal_all(&mut self) {
        self.note("LIVENESS: healing everything");
        self.stop_faults();
        for id in self.members.clone() {
            if let Some(n) = self.nodes.get_mut(&id) {
                n.crash_pending = None;
            }
            self.disk_works(id);
            self.resume(id);
            self.restart(id);
        }
        let now = self.clock.micros();
        self.clear_network_faults();
        for (a, b) in self.net.pairs() {
            if !self.net.connected(a, b) {
                let at = now + self.rng.u64(ms(1)..=ms(20));
                self.schedule(at, Event::LinkUp(a, b));
            }
        }
        for i in 0..self.clients.len() {
            self.with_client(i, |c, env| c.stop(env));
        }
    }
}
