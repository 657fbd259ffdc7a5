//! Snapshots: taking one when the log has grown (or on request), compacting the log behind it
//! once it is durable, streaming it in chunks to a follower that is behind the compacted log,
//! and installing one received from the leader.

use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{error, info, warn};

use super::cluster::encode_peer;
use super::Node;
use crate::codec::{
    self, AppendReply, ErrorCode, PeerFrame, SnapshotChunk, SnapshotEncoder, SnapshotReply,
};
use crate::core::durable::{SnapshotMeta, StoredSnapshot};
use crate::core::log::LogIndex;
use crate::core::progress::SnapshotSend;
use crate::core::{Action, NodeId};

/// A snapshot being received from the leader, in order.
#[derive(Debug)]
pub(super) struct Incoming {
    from: NodeId,
    meta: SnapshotMeta,
    bytes: Vec<u8>,
}

/// A snapshot of this node's applied state being encoded, a step per turn.
#[derive(Debug)]
pub(super) struct Encoding {
    pub(super) meta: SnapshotMeta,
    pub(super) encoder: SnapshotEncoder,
    /// Turns that encoded part of it.
    turns: u32,
    /// The `now` of the turn of the last step.
    stepped_at: Option<Instant>,
}

/// A snapshot waiting to be stored, and whether it replaces the log (installed from the leader).
#[derive(Debug)]
pub(super) struct PendingSnapshot {
    pub(super) snapshot: Rc<StoredSnapshot>,
    pub(super) replaces_log: bool,
    /// Handed to storage already (a write of it is in flight).
    pub(super) submitted: bool,
}

/// Most bytes reserved ahead for an incoming snapshot image, whatever size its sender states.
const SNAPSHOT_PREALLOCATE: u64 = 64 << 20;

impl Node {
    /// Takes a snapshot at the next persist, whatever the log's size (admin request).
    pub fn request_snapshot(&mut self) {
        self.snapshot_requested = true;
    }

    /// The newest snapshot's position (own or installed), if any.
    pub fn snapshot_meta(&self) -> Option<SnapshotMeta> {
        self.snapshot.as_ref().map(|s| s.meta)
    }

    /// Starts a snapshot of the applied state when the log has grown past the threshold since
    /// the last one, and by at least the last image's size, or one was requested: it is
    /// encoded a step per turn (see [`Node::encode_snapshot_step`]).
    pub(super) fn maybe_snapshot(&mut self) {
        let applied = self.log.applied();
        let last = self.snapshot_meta().map_or(0, |m| m.index);
        let jittered =
            |every: u64| every + every.saturating_mul(self.snapshot_jitter_permille) / 1000;
        let (entries, bytes) = (self.cfg.snapshot_entries, self.cfg.snapshot_bytes);
        // Each snapshot encodes the whole state: taken no more often than the log grows by the
        // last image's size, they cost about the same per entry however long the history (as
        // Redis rewrites its append-only file at 100 % growth).
        let grown = !self.cfg.snapshot_after_growth
            || self
                .snapshot
                .as_ref()
                .is_none_or(|s| self.applied_bytes >= s.bytes.len() as u64);
        let due = self.snapshot_requested
            || (grown
                && ((entries > 0 && applied >= last + jittered(entries))
                    || (bytes > 0 && self.applied_bytes >= jittered(bytes))));
        if !due
            || applied <= last
            || self.pending_snapshot.is_some()
            || self.incoming.is_some()
            || self.encoding.is_some()
        {
            return;
        }
        let Some(epoch) = self.log.epoch_at(applied) else {
            return;
        };
        // At most the last image plus what was applied since (an entry counts for more than
        // it adds to the image): reserved at once, the image does not grow by copies.
        let size_hint = self.snapshot.as_ref().map_or(0, |s| s.bytes.len())
            + usize::try_from(self.applied_bytes).unwrap_or(0);
        self.snapshot_requested = false;
        self.applied_bytes = 0;
        let encoder =
            match SnapshotEncoder::new(self.log.configs().applied(), &self.chat, size_hint) {
                Ok(e) => e,
                Err(e) => {
                    // Our own state always encodes, so this is a bug: keep serving from the log.
                    error!("node {}: cannot encode a snapshot: {e}", self.cfg.id);
                    return;
                }
            };
        info!(
            "node {}: snapshot at index {applied} (epoch {epoch}): encoding it",
            self.cfg.id
        );
        self.encoding = Some(Encoding {
            meta: SnapshotMeta {
                index: applied,
                epoch,
            },
            encoder,
            turns: 0,
            stepped_at: None,
        });
    }

    /// Encodes the next part of the snapshot being taken, once per turn (`now` tells turns
    /// apart); the complete image is stored at the next persist.
    pub(super) fn encode_snapshot_step(&mut self, now: Instant) {
        let Some(job) = self.encoding.as_mut().filter(|j| j.stepped_at != Some(now)) else {
            return;
        };
        job.stepped_at = Some(now);
        job.turns += 1;
        let bytes = match job.encoder.step(&self.chat, self.cfg.snapshot_step) {
            Ok(None) => return,
            Ok(Some(bytes)) => bytes,
            Err(e) => {
                error!(
                    "node {}: cannot encode snapshot {}: {e}",
                    self.cfg.id, job.meta.index
                );
                self.encoding = None;
                return;
            }
        };
        info!(
            "node {}: snapshot at index {} encoded: {} bytes in {} turns",
            self.cfg.id,
            job.meta.index,
            bytes.len(),
            job.turns
        );
        let snapshot = Rc::new(StoredSnapshot {
            meta: job.meta,
            bytes: bytes.into(),
        });
        self.encoding = None;
        self.pending_snapshot = Some(PendingSnapshot {
            snapshot,
            replaces_log: false,
            submitted: false,
        });
    }

    /// When the next step of the snapshot being encoded is due, if one is.
    pub(super) fn snapshot_step_due(&self) -> Option<Instant> {
        // Later than the turn of the last step, which has had its step; in practice at once,
        // a step taking longer than this.
        let after = self.encoding.as_ref()?.stepped_at?;
        Some(after + Duration::from_micros(1))
    }

    /// The pending snapshot is durable: it becomes the one sent to followers, and the log
    /// before it (less a margin for followers slightly behind) is dropped from memory.
    pub(super) fn snapshot_persisted(&mut self, index: LogIndex) {
        let Some(p) = self
            .pending_snapshot
            .take_if(|p| p.snapshot.meta.index == index)
        else {
            return;
        };
        if !p.replaces_log {
            self.log
                .compact_to(index.saturating_sub(self.cfg.compact_keep));
        }
        self.snapshot = Some(p.snapshot);
    }

    /// Leader: streams the snapshot to `peer`, a few chunks ahead of its acknowledgements.
    pub(super) fn send_snapshot(&mut self, now: Instant, peer: NodeId) {
        let Some(snap) = self.snapshot.clone() else {
            // The log is compacted only behind a durable snapshot, so this cannot happen.
            error!(
                "node {}: {peer} needs a snapshot but none is held",
                self.cfg.id
            );
            return;
        };
        let (chunk, window) = (self.cfg.snapshot_chunk, self.cfg.snapshot_window);
        let stall = self.cfg.failure_timeout;
        let epoch = self.hard.epoch;
        let Some(pr) = self.progress.get_mut(&peer) else {
            return;
        };
        let st = pr
            .snapshot
            .get_or_insert_with(|| SnapshotSend::new(snap.meta.index, now));
        if st.index != snap.meta.index {
            *st = SnapshotSend::new(snap.meta.index, now);
        }
        if st.sent > st.acked && now >= st.progressed + stall {
            // Nothing acknowledged for a while: send again from what the follower has.
            st.sent = st.acked;
            st.progressed = now;
        }
        let total = snap.bytes.len() as u64;
        let mut frames = Vec::new();
        while (st.sent < total || total == 0) && st.sent - st.acked < (chunk * window) as u64 {
            let from = st.sent as usize;
            let to = (from + chunk).min(snap.bytes.len());
            frames.push(PeerFrame::Snapshot(SnapshotChunk {
                epoch,
                index: snap.meta.index,
                index_epoch: snap.meta.epoch,
                offset: st.sent,
                total,
                data: snap.bytes[from..to].to_vec(),
            }));
            st.sent = to as u64;
            if total == 0 {
                break;
            }
        }
        for f in &frames {
            self.send_peer(peer, f);
        }
    }

    /// Leader: a follower reports how much of the snapshot it has.
    pub(super) fn handle_snapshot_reply(&mut self, now: Instant, from: NodeId, r: SnapshotReply) {
        if !self.answer_from(now, from, r.epoch) {
            return;
        }
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        if let Some(st) = pr.snapshot.as_mut().filter(|st| st.index == r.index) {
            // Replies come in order, so one that goes backwards means the follower lost what
            // it had: resend from there.
            if r.received < st.acked {
                st.sent = r.received;
            }
            if r.received != st.acked {
                st.progressed = now;
            }
            st.acked = r.received;
            st.sent = st.sent.max(r.received);
        }
        self.send_snapshot(now, from);
    }

    /// Follower: one chunk of the leader's snapshot; the last one installs it.
    pub(super) fn handle_snapshot_chunk(&mut self, now: Instant, from: NodeId, c: SnapshotChunk) {
        if !self.accept_leader(now, from, c.epoch) {
            let reply = SnapshotReply {
                epoch: self.hard.epoch,
                index: c.index,
                received: 0,
            };
            return self.send_peer(from, &PeerFrame::SnapshotReply(reply));
        }
        if c.index <= self.log.committed() {
            // Already applied (an earlier install, or the log caught up): say how far we are.
            let index = self.log.committed();
            return self.reply_matched(from, index);
        }
        let meta = SnapshotMeta {
            index: c.index,
            epoch: c.index_epoch,
        };
        let stale = |i: &Incoming| i.meta != meta || i.from != from;
        if c.offset == 0 || self.incoming.as_ref().is_some_and(stale) {
            self.incoming = (c.offset == 0).then(|| Incoming {
                from,
                meta,
                // The sender says how big; on its word alone reserve at most 64 MiB (the
                // buffer grows as the bytes arrive).
                bytes: Vec::with_capacity(c.total.min(SNAPSHOT_PREALLOCATE) as usize),
            });
        }
        // Out of order (we lost the start, or a resend overlaps): the reply says where to go on.
        let received = match self.incoming.as_mut() {
            Some(inc) if c.offset == inc.bytes.len() as u64 => {
                inc.bytes.extend_from_slice(&c.data);
                inc.bytes.len() as u64
            }
            Some(inc) => inc.bytes.len() as u64,
            None => 0,
        };
        if received < c.total {
            let reply = SnapshotReply {
                epoch: self.hard.epoch,
                index: c.index,
                received,
            };
            return self.send_peer(from, &PeerFrame::SnapshotReply(reply));
        }
        let Some(inc) = self.incoming.take() else {
            return;
        };
        if received > c.total {
            warn!(
                "node {}: snapshot {} from {from} is longer than announced; starting over",
                self.cfg.id, c.index
            );
            return;
        }
        self.install_snapshot(now, from, inc);
    }

    fn install_snapshot(&mut self, now: Instant, from: NodeId, inc: Incoming) {
        let (config, mut chat) = match codec::decode_snapshot(&inc.bytes) {
            Ok(image) => image,
            Err(e) => {
                error!(
                    "node {}: snapshot {} from {from} does not decode: {e}; asking again",
                    self.cfg.id, inc.meta.index
                );
                let reply = SnapshotReply {
                    epoch: self.hard.epoch,
                    index: inc.meta.index,
                    received: 0,
                };
                return self.send_peer(from, &PeerFrame::SnapshotReply(reply));
            }
        };
        info!(
            "node {}: installing snapshot at index {} (epoch {}, {} bytes) from {from}",
            self.cfg.id,
            inc.meta.index,
            inc.meta.epoch,
            inc.bytes.len()
        );
        if let Some(job) = self.encoding.take() {
            info!(
                "node {}: abandoning snapshot {} being encoded for the leader's",
                self.cfg.id, job.meta.index
            );
        }
        self.applied_bytes = 0;
        chat.configure(
            self.cfg.devices_per_user as usize,
            self.cfg.history_size as usize,
        );
        self.chat = chat;
        self.log.reset_to(inc.meta.index, inc.meta.epoch, config);
        self.sync_members(now);
        // Our clients missed what the snapshot skipped over: they resume on a fresh connection
        // (from the last message they saw), which replays it.
        self.drop_clients("the node caught up from a snapshot; reconnect and resume");
        self.pending_snapshot = Some(PendingSnapshot {
            snapshot: Rc::new(StoredSnapshot {
                meta: inc.meta,
                bytes: inc.bytes.into(),
            }),
            replaces_log: true,
            submitted: false,
        });
        self.check_amnesia();
        self.reply_matched(from, inc.meta.index);
    }

    /// Tells the leader our log matches its own up to `index`, once that is durable.
    fn reply_matched(&mut self, to: NodeId, index: LogIndex) {
        let reply = AppendReply {
            epoch: self.hard.epoch,
            ok: true,
            index,
        };
        let bytes = encode_peer(&PeerFrame::AppendReply(reply));
        self.hold_until(index, Action::SendPeer { to, bytes });
    }

    /// Ends every client connection of this node with `why` (they reconnect and resume).
    pub(super) fn drop_clients(&mut self, why: &str) {
        let mut conns: Vec<_> = self.conns.keys().copied().collect();
        conns.sort();
        for conn in conns {
            self.fail(conn, ErrorCode::ShuttingDown, None, why.to_owned());
            self.close(conn, why.to_owned());
        }
    }
}
