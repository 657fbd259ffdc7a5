//! The invariants of DESIGN.md, checked after every step of a run:
//! 1. election safety: at most one leader per epoch, over the whole run;
//! 2. durability: an acknowledged message stays at its seq in every node's applied chat state,
//!    and at the end of the run every node has it;
//! 3. agreement: committed log entries are identical on every node at every index; every node's
//!    chat state, every delivery and every ack agree on (room, seq) -> (author, text), and no
//!    message is committed twice (every text the clients send is unique);
//! 4. session limit: no user ever has more than the allowed devices in a chat state;
//! 5. membership: committed configurations change one member at a time and a removed id
//!    never comes back (each keeps every earlier retirement, and lists no retired member);
//!    no leader that is itself a member lists a removed node; a leader never holds more than
//!    one configuration entry beyond what is committed (one change at a time).
//!
//! The per-client checks (gap-free, duplicate-free views) are in `client.rs`; liveness (and
//! the members' agreement on the configuration at the end) in `world.rs`. Checks are incremental: each node's log and chat state are checked once per
//! entry / message, so checking after every step stays cheap.

use std::collections::{BTreeMap, BTreeSet};

use super::client::Observed;
use crate::core::log::{Command, Entry, Epoch, LogIndex};
use crate::core::membership::Config;
use crate::core::{Node, NodeId, NodeStats, Role};

/// What the checker remembers of the run.
#[derive(Debug, Default)]
pub struct Checker {
    /// epoch -> the node (and its run) seen leading it: a restarted node leading an epoch
    /// again counts as a second leader, since it may have lost entries of the first run.
    leaders: BTreeMap<Epoch, (NodeId, u64)>,
    /// The committed history as first seen on any node.
    committed: BTreeMap<LogIndex, Entry>,
    /// Per node: the committed index already compared.
    log_checked: BTreeMap<NodeId, LogIndex>,
    /// (room, seq) -> (author, text), from chat states, deliveries and acks.
    truth: BTreeMap<(String, u64), (String, String)>,
    /// text -> (room, seq): every text is sent once, so it may sit at one place only.
    placed: BTreeMap<String, (String, u64)>,
    /// Per (node, room): the seq up to which its chat state was compared.
    room_checked: BTreeMap<(NodeId, String), u64>,
    /// Acknowledged messages: (room, seq) -> (author, text).
    acked: BTreeMap<(String, u64), (String, String)>,
    /// Committed configuration entries seen, by index.
    configs: BTreeMap<LogIndex, Config>,
    /// Ids retired by a committed configuration, with the highest epoch that had a leader
    /// when the retirement was first seen committed: it was committed in that epoch or
    /// before, so every leader of a later epoch holds it.
    retired: BTreeMap<NodeId, Epoch>,
    /// Ids that were voting members of a committed configuration.
    ever_members: BTreeSet<NodeId>,
    /// Per leader: (run, epoch, configuration version) last checked for pending changes.
    leader_configs: BTreeMap<NodeId, (u64, Epoch, u64)>,
    /// Per node: (run, applied index, configuration version) its applied configuration was
    /// last looked at.
    applied_seen: BTreeMap<NodeId, (u64, LogIndex, u64)>,
}

impl Checker {
    /// A checker with nothing seen yet.
    pub fn new() -> Checker {
        Checker::default()
    }

    /// Distinct epochs that had a leader.
    pub fn elections(&self) -> usize {
        self.leaders.len()
    }

    /// Highest epoch that had a leader.
    pub fn max_epoch(&self) -> Epoch {
        self.leaders.keys().next_back().copied().unwrap_or(0)
    }

    /// The leader (node, run) of each epoch seen.
    pub fn leaders(&self) -> &BTreeMap<Epoch, (NodeId, u64)> {
        &self.leaders
    }

    /// Highest index committed anywhere.
    pub fn committed_len(&self) -> LogIndex {
        self.committed.keys().next_back().copied().unwrap_or(0)
    }

    /// Acknowledged messages.
    pub fn acked(&self) -> &BTreeMap<(String, u64), (String, String)> {
        &self.acked
    }

    /// Whether `id` was retired by a committed configuration (removed for good).
    pub fn is_retired(&self, id: NodeId) -> bool {
        self.retired.contains_key(&id)
    }

    /// Ids retired by a committed configuration (removed for good).
    pub fn retired(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.retired.keys().copied()
    }

    /// How many ids were retired by a committed configuration.
    pub fn retired_count(&self) -> usize {
        self.retired.len()
    }

    fn note_retired(&mut self, config: &Config) {
        let epoch = self.max_epoch();
        for &id in &config.retired {
            self.retired.entry(id).or_insert(epoch);
        }
    }

    /// Ids that were voting members of a committed configuration.
    pub fn ever_members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.ever_members.iter().copied()
    }

    /// The newest committed configuration entry seen, if any.
    pub fn cluster(&self) -> Option<&Config> {
        self.configs.last_key_value().map(|(_, c)| c)
    }

    /// A committed configuration entry: it must follow the one before it (and precede the one
    /// after it, if that was seen first) by one change that keeps every retirement.
    fn record_config(&mut self, index: LogIndex, config: &Config) -> Result<(), String> {
        let before = self.configs.range(..index).next_back();
        let after = self.configs.range(index + 1..).next();
        for (earlier, later, at) in [
            (before.map(|(i, c)| (*i, c)), Some((index, config)), index),
            (Some((index, config)), after.map(|(i, c)| (*i, c)), index),
        ] {
            let (Some((i, a)), Some((j, b))) = (earlier, later) else {
                continue;
            };
            if let Some(back) = b.members.keys().find(|m| a.retired.contains(m)) {
                return Err(format!(
                    "membership: node {back}, retired by the configuration at {i}, is a member \
                     again in the one committed at {j} ({b:?})"
                ));
            }
            if !a.retired.is_subset(&b.retired) {
                return Err(format!(
                    "membership: the configuration committed at {j} forgets retirements of the \
                     one at {i} ({a:?} then {b:?}, seen at {at})"
                ));
            }
            let changed = a
                .members
                .keys()
                .filter(|m| !b.members.contains_key(m))
                .chain(b.members.keys().filter(|m| !a.members.contains_key(m)))
                .count();
            // Only when every entry in between was seen (some are compacted unseen).
            let adjacent = self.configs.range(i + 1..j).next().is_none()
                && self.committed.range(i + 1..j).count() as u64 == j - i - 1;
            if adjacent && changed > 1 {
                return Err(format!(
                    "membership: committed configurations at {i} and {j} differ by {changed} \
                     members ({:?} then {:?})",
                    a.ids(),
                    b.ids()
                ));
            }
        }
        self.configs.insert(index, config.clone());
        self.note_retired(config);
        self.ever_members.extend(config.members.keys().copied());
        Ok(())
    }

    /// The membership checks of one live node.
    fn check_membership(&mut self, id: NodeId, node: &Node, st: &NodeStats) -> Result<(), String> {
        let configs = node.configs();
        // What a node applied is committed (looked at when it may have changed).
        let seen = (node.incarnation(), st.applied, configs.version());
        if self.applied_seen.insert(id, seen) != Some(seen) {
            self.note_retired(configs.applied());
            self.ever_members
                .extend(configs.applied().members.keys().copied());
        }
        if st.role != Role::Leader {
            return Ok(());
        }
        let current = configs.current();
        // A leader holds every entry committed before its epoch, so every such removal (a
        // leader of an older epoch, cut off, may not have heard of it yet).
        let back = current
            .members
            .keys()
            .find(|m| self.retired.get(m).is_some_and(|&e| e < st.epoch));
        if let Some(back) = back {
            return Err(format!(
                "membership: leader {id} of epoch {} has node {back}, whose removal was \
                 committed by epoch {}, as a member ({current:?})",
                st.epoch, self.retired[back]
            ));
        }
        let key = (node.incarnation(), st.epoch, configs.version());
        if self.leader_configs.insert(id, key) == Some(key) {
            return Ok(());
        }
        // Its configuration entries beyond what is committed anywhere: at most one.
        let from = self.committed_len().max(st.committed) + 1;
        let pending: Vec<LogIndex> = (from..=st.last_index)
            .filter(|&i| {
                node.entry(i)
                    .is_some_and(|e| matches!(e.command, Command::Config(_)))
            })
            .collect();
        if pending.len() > 1 {
            return Err(format!(
                "membership: leader {id} of epoch {} has {} uncommitted configuration entries \
                 (at {pending:?}, committed up to {})",
                st.epoch,
                pending.len(),
                from - 1
            ));
        }
        Ok(())
    }

    /// A node restarted: its log and chat state are rebuilt, so they are compared again.
    pub fn node_restarted(&mut self, id: NodeId) {
        self.log_checked.insert(id, 0);
        self.room_checked.retain(|(n, _), _| *n != id);
    }

    fn record(
        &mut self,
        room: &str,
        seq: u64,
        author: &str,
        text: &str,
        source: &str,
    ) -> Result<(), String> {
        let key = (room.to_owned(), seq);
        match self.truth.get(&key) {
            Some((a, t)) if a == author && t == text => return Ok(()),
            Some((a, t)) => {
                return Err(format!(
                    "agreement: {room}#{seq} is ({a}: {t:?}) elsewhere, but {source} has \
                     ({author}: {text:?})"
                ))
            }
            None => {}
        }
        if let Some((r, s)) = self.placed.get(text) {
            return Err(format!(
                "exactly once: {text:?} is committed as {r}#{s} and again as {room}#{seq} \
                 (seen by {source})"
            ));
        }
        self.truth.insert(key, (author.to_owned(), text.to_owned()));
        self.placed.insert(text.to_owned(), (room.to_owned(), seq));
        Ok(())
    }

    /// A client's delivery or acknowledgement.
    pub fn observe(&mut self, client: usize, o: &Observed) -> Result<(), String> {
        let source = format!(
            "client {client}'s {}",
            if o.ack { "ack" } else { "delivery" }
        );
        self.record(&o.room, o.seq, &o.author, &o.text, &source)?;
        if o.ack {
            self.acked
                .insert((o.room.clone(), o.seq), (o.author.clone(), o.text.clone()));
        }
        Ok(())
    }

    /// Checks one live node against everything seen so far.
    pub fn check_node(
        &mut self,
        id: NodeId,
        node: &Node,
        users: &[String],
        rooms: &[String],
        devices_per_user: usize,
    ) -> Result<(), String> {
        let st = node.stats();
        if st.role == Role::Leader {
            let me = (id, node.incarnation());
            let first = *self.leaders.entry(st.epoch).or_insert(me);
            if first != me {
                return Err(format!(
                    "election safety: node {} (run {}) and node {id} (run {}) both led epoch {}",
                    first.0, first.1, me.1, st.epoch
                ));
            }
        }
        if st.applied > st.committed || st.committed > st.last_index {
            return Err(format!(
                "node {id}: applied {} / committed {} / last {} out of order",
                st.applied, st.committed, st.last_index
            ));
        }
        let from = self.log_checked.get(&id).copied().unwrap_or(0);
        if st.committed < from {
            return Err(format!(
                "node {id}: commit index went back from {from} to {}",
                st.committed
            ));
        }
        for index in from + 1..=st.committed {
            let Some(e) = node.entry(index) else {
                continue; // compacted away
            };
            if e.index != index {
                return Err(format!(
                    "node {id}: entry at {index} says index {}",
                    e.index
                ));
            }
            match self.committed.get(&index) {
                Some(first) if first != e => {
                    return Err(format!(
                        "agreement: committed entry {index} differs: {first:?} elsewhere, \
                         {e:?} on node {id}"
                    ))
                }
                Some(_) => {}
                None => {
                    if let Command::Config(c) = &e.command {
                        self.record_config(index, c)?;
                    }
                    self.committed.insert(index, e.clone());
                }
            }
        }
        self.log_checked.insert(id, st.committed);
        self.check_membership(id, node, &st)?;

        let chat = node.chat();
        for user in users {
            let n = chat.devices(user);
            if n > devices_per_user {
                return Err(format!(
                    "session limit: node {id}'s chat state has {n} sessions of {user}"
                ));
            }
        }
        for room in rooms {
            let key = (id, room.clone());
            let done = self.room_checked.get(&key).copied().unwrap_or(0);
            let last = chat.last_seq(room);
            if last < done {
                return Err(format!(
                    "durability: node {id}'s room {room} went back from #{done} to #{last}"
                ));
            }
            if last == done {
                continue;
            }
            let source = format!("node {id}'s chat state");
            for (expect, m) in (done + 1..).zip(chat.messages_after(room, done)) {
                if m.seq != expect {
                    return Err(format!(
                        "node {id}: room {room} has #{} where #{expect} was due",
                        m.seq
                    ));
                }
                self.record(room, m.seq, &m.author, &m.text, &source)?;
            }
            self.room_checked.insert(key, last);
        }
        Ok(())
    }

    /// End of a run: every acknowledged message is in `node`'s chat state at its seq.
    pub fn check_acked_present(&self, id: NodeId, node: &Node) -> Result<(), String> {
        for ((room, seq), (author, text)) in &self.acked {
            let m = node.chat().messages_after(room, seq - 1).first();
            match m {
                Some(m) if m.seq == *seq && *m.author == **author && *m.text == **text => {}
                other => {
                    return Err(format!(
                        "durability: acknowledged {room}#{seq} ({author}: {text:?}) is {:?} \
                         on node {id}",
                        other.map(|m| (m.seq, &m.author, &m.text))
                    ))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(room: &str, seq: u64, text: &str, ack: bool) -> Observed {
        Observed {
            room: room.into(),
            seq,
            author: "a".into(),
            text: text.into(),
            ack,
        }
    }

    #[test]
    fn disagreement_and_double_commits_are_caught() {
        let mut c = Checker::new();
        c.observe(0, &obs("r", 1, "x", true)).unwrap();
        c.observe(1, &obs("r", 1, "x", false)).unwrap();
        assert!(c
            .observe(1, &obs("r", 1, "y", false))
            .unwrap_err()
            .contains("agreement"));
        assert!(c
            .observe(1, &obs("r", 2, "x", false))
            .unwrap_err()
            .contains("exactly once"));
        assert_eq!(c.acked().len(), 1);
    }
}
