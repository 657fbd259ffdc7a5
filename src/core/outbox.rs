//! A node's own proposals from the moment a client asks until the node applies them. They are
//! kept so that a change of leader never loses one: every proposal not yet applied is sent
//! again to the new leader, and applying skips the copies by proposal id.

use std::collections::VecDeque;

use super::log::{approx_size, Command, Proposal, ProposalId};
use super::NodeId;

/// Proposals of this node not yet applied, oldest first.
#[derive(Debug)]
pub struct Outbox {
    node: NodeId,
    incarnation: u64,
    next_seq: u64,
    pending: VecDeque<Proposal>,
    /// How many of `pending` (from the front) the current leader has been given.
    sent: usize,
    /// Proposals from this sequence number on have not been through [`Outbox::fresh`].
    fresh_from: u64,
}

impl Outbox {
    /// An empty outbox for this run of `node`, numbering proposals from 1.
    pub fn new(node: NodeId, incarnation: u64) -> Outbox {
        Outbox {
            node,
            incarnation,
            next_seq: 1,
            pending: VecDeque::new(),
            sent: 0,
            fresh_from: 1,
        }
    }

    /// Adds a proposal and returns its id.
    pub fn push(&mut self, command: Command) -> ProposalId {
        let id = ProposalId {
            node: self.node,
            incarnation: self.incarnation,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        self.pending.push_back(Proposal { id, command });
        id
    }

    /// The proposals pushed since the last call that are still pending, newest first.
    pub fn fresh(&mut self) -> impl Iterator<Item = &Proposal> {
        let from = std::mem::replace(&mut self.fresh_from, self.next_seq);
        self.pending
            .iter()
            .rev()
            .take_while(move |p| p.id.seq >= from)
    }

    /// Proposals waiting to be applied.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Takes the proposals the leader has not been given yet, marking them given.
    pub fn take_unsent(&mut self) -> Vec<Proposal> {
        self.take_unsent_upto(usize::MAX)
    }

    /// Like [`Outbox::take_unsent`], but stops once about `max_bytes` are taken (at least one).
    pub fn take_unsent_upto(&mut self, max_bytes: usize) -> Vec<Proposal> {
        let mut bytes = 0;
        let mut out = Vec::new();
        for p in self.pending.range(self.sent..) {
            bytes += approx_size(&p.command);
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(p.clone());
        }
        self.sent += out.len();
        out
    }

    /// True when some proposal has not been given to the leader.
    pub fn has_unsent(&self) -> bool {
        self.sent < self.pending.len()
    }

    /// The leader changed (or the link to it broke): everything pending must go again.
    pub fn resend_all(&mut self) {
        self.sent = 0;
    }

    /// The node applied one of its proposals: if it is of this run, it and every earlier one
    /// are done.
    pub fn applied(&mut self, id: ProposalId) {
        if id.node != self.node || id.incarnation != self.incarnation {
            return;
        }
        let seq = id.seq;
        while self.pending.front().is_some_and(|p| p.id.seq <= seq) {
            self.pending.pop_front();
            self.sent = self.sent.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposals_stay_until_applied_and_are_resent_after_a_leader_change() {
        let mut o = Outbox::new(3, 7);
        let a = o.push(Command::Noop);
        let b = o.push(Command::Noop);
        assert_eq!((a.seq, b.seq, a.node, a.incarnation), (1, 2, 3, 7));
        assert_eq!(o.take_unsent().len(), 2);
        assert!(!o.has_unsent());
        let c = o.push(Command::Noop);
        let seqs = |v: Vec<Proposal>| v.iter().map(|p| p.id.seq).collect::<Vec<_>>();
        assert_eq!(seqs(o.take_unsent()), vec![3]);
        o.applied(a);
        o.resend_all();
        assert_eq!(seqs(o.take_unsent()), vec![2, 3]);
        // A proposal of an earlier run of this node (still in the log) is not one of ours.
        o.applied(ProposalId {
            incarnation: 6,
            ..c
        });
        assert_eq!(o.len(), 2);
        o.applied(c);
        assert_eq!(o.len(), 0);
    }

    #[test]
    fn a_long_backlog_is_taken_in_bounded_chunks() {
        let mut o = Outbox::new(1, 1);
        for _ in 0..10 {
            o.push(Command::Noop);
        }
        let first = o.take_unsent_upto(48 * 3);
        assert_eq!(first.len(), 3);
        assert_eq!(
            o.take_unsent_upto(1).len(),
            1,
            "at least one even when over the bound"
        );
        assert_eq!(o.take_unsent().len(), 6);
        assert!(!o.has_unsent());
    }
}
