//! The output contract: after its inputs, a node hands its shell one owned [`Ready`] bundle,
//! and the shell reports back what it carried out (see the call order in `core`'s docs).

use std::time::Instant;

use log::debug;

use super::{Node, PersistToken};
use crate::core::durable::StoredSnapshot;
use crate::core::log::{Entry, HardState, LogIndex};
use crate::core::{Action, NodeId, Now};

/// A snapshot storage must store before the log writes of the same [`PersistJob`].
#[derive(Clone, Debug)]
pub struct SnapshotWrite {
    /// The snapshot (its image is shared, not copied).
    pub snapshot: StoredSnapshot,
    /// It was installed from the leader and replaces the whole stored log.
    pub replaces_log: bool,
}

/// What must become durable, owned so that a storage thread can carry it out while the node
/// goes on: stage it (`storage::stage`), sync, then report [`PersistJob::token`] to
/// [`Node::handle_persisted`] (or the error to [`Node::handle_persist_failed`]). Jobs must be
/// carried out in the order they were taken; one sync may cover several.
#[derive(Clone, Debug)]
pub struct PersistJob {
    /// A snapshot to store first, if one was taken or installed.
    pub snapshot: Option<SnapshotWrite>,
    /// Drop stored entries from this index on first (a diverging suffix, or what a failed
    /// write may have left).
    pub truncate_from: Option<LogIndex>,
    /// Entries to append.
    pub entries: Vec<Entry>,
    /// New election state to save, if it changed.
    pub hard_state: Option<HardState>,
    /// Identifies what this job covers.
    pub token: PersistToken,
}

/// Everything a turn asks of the shell, in one owned bundle.
#[derive(Debug, Default)]
pub struct Ready {
    /// Sends to clients and peers and closes of client connections, in order. Whatever
    /// depends on durable state is not here until it is durable.
    pub actions: Vec<Action>,
    /// Writes to hand to storage now (group commit: everything since the last job).
    pub persist: Option<PersistJob>,
    /// The peer set changed: the peers to be linked to, with their peer addresses ("" if
    /// unknown: only links they open are kept).
    pub peers: Option<Vec<(NodeId, String)>>,
    /// The node is out of the cluster, and why: the shell stops it (said once).
    pub removed: Option<String>,
    /// A joining node's join stalled (never accepted, or accepted but still no member): the
    /// shell starts its join client (`core::join`) again.
    pub rejoin: bool,
    /// When the next turn is due if no input comes first.
    pub deadline: Option<Instant>,
}

impl Ready {
    /// True when the shell has nothing to carry out (a deadline aside).
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
            && self.persist.is_none()
            && self.peers.is_none()
            && self.removed.is_none()
            && !self.rejoin
    }
}

impl Node {
    /// One turn, after the shell fed this turn's inputs: runs the timers that are due, sends
    /// what the inputs produced (replication and forwarding rounds) and hands out what the shell must carry
    /// out. `take_persist` is false while storage cannot take a job (its queue is full, or it
    /// failed and waits to retry): the writes then wait here and go as one job later.
    pub fn turn(&mut self, now: Now, take_persist: bool) -> Ready {
        if self.poll_timeout().is_some_and(|t| t <= now.mono) {
            self.handle_timeout(now);
        }
        self.flush(now);
        self.sync_timers();
        let persist = if take_persist {
            self.take_persist()
        } else {
            None
        };
        let peers = (self.peers_version != self.peers_reported).then(|| {
            self.peers_reported = self.peers_version;
            self.peer_addresses()
        });
        let removed = match (&self.removed, self.removal_reported) {
            (Some(why), false) => {
                self.removal_reported = true;
                Some(why.clone())
            }
            _ => None,
        };
        Ready {
            actions: std::mem::replace(&mut self.actions, std::mem::take(&mut self.spare_actions)),
            persist,
            peers,
            removed,
            rejoin: self.join_stalled(now.mono),
            deadline: self.poll_timeout(),
        }
    }

    /// Gives back a `Ready`'s actions buffer once carried out, for a later turn to fill.
    pub fn recycle(&mut self, mut actions: Vec<Action>) {
        actions.clear();
        if actions.capacity() > self.spare_actions.capacity() {
            self.spare_actions = actions;
        }
    }

    /// Hands out what is not durable yet and not already handed out, if anything.
    fn take_persist(&mut self) -> Option<PersistJob> {
        let hard_state = (self.hard_version != self.hard_submitted).then_some(self.hard);
        let snapshot = self
            .pending_snapshot
            .as_mut()
            .filter(|p| !p.submitted)
            .map(|p| {
                p.submitted = true;
                SnapshotWrite {
                    snapshot: (*p.snapshot).clone(),
                    replaces_log: p.replaces_log,
                }
            });
        if hard_state.is_none() && snapshot.is_none() && !self.log.has_unsubmitted() {
            return None;
        }
        let (truncate_from, entries, log) = self.log.submit();
        self.hard_submitted = self.hard_version;
        let token = PersistToken {
            log,
            hard_version: self.hard_version,
            snapshot: snapshot.as_ref().map(|s| s.snapshot.meta.index),
        };
        debug!(
            "node {}: persisting {} entries up to index {}",
            self.cfg.id,
            entries.len(),
            log.index
        );
        Some(PersistJob {
            snapshot,
            truncate_from,
            entries,
            hard_state,
            token,
        })
    }
}
