//! Cluster membership: the voting members (with the peer address each listens on) and the ids
//! retired by removals, which are never used again. A configuration is a log entry
//! (`Command::Config`); like Raft's single-server changes it takes effect as soon as it is in
//! a node's log, committed or not, and the leader starts a change only once the previous one
//! is committed, so any two configurations in use at once differ by one node and their
//! majorities overlap.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::log::LogIndex;
use super::NodeId;

/// One cluster configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Config {
    /// Voting members and the peer address of each ("" when not known, e.g. from flags).
    pub members: BTreeMap<NodeId, String>,
    /// Ids of removed members: never members again.
    pub retired: BTreeSet<NodeId>,
}

impl Config {
    /// A configuration of `members`, none retired.
    pub fn of(members: impl IntoIterator<Item = (NodeId, String)>) -> Config {
        Config {
            members: members.into_iter().collect(),
            retired: BTreeSet::new(),
        }
    }

    /// True when `id` votes in this configuration.
    pub fn has(&self, id: NodeId) -> bool {
        self.members.contains_key(&id)
    }

    /// The voting members, in ring order.
    pub fn ids(&self) -> Vec<NodeId> {
        self.members.keys().copied().collect()
    }

    /// This configuration with `id` (at `addr`) added, or why it cannot be.
    pub fn with(&self, id: NodeId, addr: &str) -> Result<Config, String> {
        if self.retired.contains(&id) {
            return Err(format!(
                "node id {id} belonged to a removed node; ids are never reused"
            ));
        }
        if self.has(id) {
            return Err(format!("node {id} is already a member"));
        }
        let mut c = self.clone();
        c.members.insert(id, addr.to_owned());
        Ok(c)
    }

    /// This configuration without `id` (retired for good), or why it cannot be.
    pub fn without(&self, id: NodeId) -> Result<Config, String> {
        if !self.has(id) {
            return Err(format!("node {id} is not a member"));
        }
        if self.members.len() == 1 {
            return Err(format!("node {id} is the last member"));
        }
        let mut c = self.clone();
        c.members.remove(&id);
        c.retired.insert(id);
        Ok(c)
    }
}

/// The configurations a node's log holds: the one in effect at the applied index (`base`) and
/// those appended after it, each from its index on. The newest one is in effect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigHistory {
    base: Config,
    /// Index of the entry that set `base` (0: from flags or a snapshot).
    base_index: LogIndex,
    /// Whether `base` came from a log entry or snapshot (false: only from command-line flags).
    base_logged: bool,
    pending: Vec<(LogIndex, Config)>,
    /// Counts changes, so users can tell cheaply whether anything changed.
    version: u64,
}

impl ConfigHistory {
    /// A history starting from `base`; `logged` when it comes from the log (a snapshot).
    pub fn new(base: Config, logged: bool) -> ConfigHistory {
        ConfigHistory {
            base,
            base_index: 0,
            base_logged: logged,
            pending: Vec::new(),
            version: 0,
        }
    }

    /// The configuration in effect (the newest in the log).
    pub fn current(&self) -> &Config {
        self.pending.last().map_or(&self.base, |(_, c)| c)
    }

    /// The configuration at the applied index (what a snapshot there holds).
    pub fn applied(&self) -> &Config {
        &self.base
    }

    /// True when no configuration entry is in the log yet (only flags gave one).
    pub fn unlogged(&self) -> bool {
        !self.base_logged && self.pending.is_empty()
    }

    /// Index of the newest configuration entry (0 if none is held).
    pub fn last_index(&self) -> LogIndex {
        self.pending.last().map_or(self.base_index, |(i, _)| *i)
    }

    /// Every node of every configuration held (the nodes that matter until changes commit).
    pub fn all_members(&self) -> BTreeSet<NodeId> {
        let mut all: BTreeSet<NodeId> = self.base.members.keys().copied().collect();
        for (_, c) in &self.pending {
            all.extend(c.members.keys().copied());
        }
        all
    }

    /// True when nodes `a` and `b` are a majority of every configuration held, and one was
    /// logged: an entry of the leader's epoch that both hold durably is then committed,
    /// whichever of these configurations is in effect (and any single change after them has
    /// a majority that meets the pair).
    pub fn pair_is_majority(&self, a: NodeId, b: NodeId) -> bool {
        let pair_in = |c: &Config| c.members.len() <= 3 && c.has(a) && c.has(b);
        a != b
            && !self.unlogged()
            && pair_in(&self.base)
            && self.pending.iter().all(|(_, c)| pair_in(c))
    }

    /// Changes so far (any change bumps it).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// A configuration entry was appended at `index`.
    pub fn appended(&mut self, index: LogIndex, config: Config) {
        self.pending.push((index, config));
        self.version += 1;
    }

    /// Entries from `from` on were removed: so are their configurations.
    pub fn truncated(&mut self, from: LogIndex) {
        let before = self.pending.len();
        self.pending.retain(|(i, _)| *i < from);
        if self.pending.len() != before {
            self.version += 1;
        }
    }

    /// Entries up to `index` were applied: the newest configuration among them is the base.
    pub fn applied_to(&mut self, index: LogIndex) {
        let n = self.pending.iter().take_while(|(i, _)| *i <= index).count();
        if let Some((i, c)) = self.pending.drain(..n).next_back() {
            self.base = c;
            self.base_index = i;
            self.base_logged = true;
        }
    }

    /// The log was replaced by a snapshot holding `config`.
    pub fn reset(&mut self, config: Config) {
        self.base = config;
        self.base_index = 0;
        self.base_logged = true;
        self.pending.clear();
        self.version += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ids: &[NodeId]) -> Config {
        Config::of(ids.iter().map(|&i| (i, format!("h{i}:1"))))
    }

    #[test]
    fn the_newest_configuration_rules_and_truncation_reverts_it() {
        let mut h = ConfigHistory::new(cfg(&[1, 2, 3]), false);
        assert!(h.unlogged());
        h.appended(5, cfg(&[1, 2, 3, 4]));
        assert_eq!(h.current().ids(), vec![1, 2, 3, 4]);
        assert_eq!(h.all_members().len(), 4);
        h.truncated(5);
        assert_eq!(h.current().ids(), vec![1, 2, 3]);
        h.appended(6, cfg(&[1, 2, 3, 4]));
        h.applied_to(6);
        assert_eq!((h.applied().ids().len(), h.last_index()), (4, 6));
        assert!(!h.unlogged());
        h.truncated(6);
        assert_eq!(h.current().ids().len(), 4, "applied configurations stay");
    }

    #[test]
    fn removed_ids_are_never_reused_and_the_last_member_stays() {
        let c = cfg(&[1, 2]);
        let c = c.without(2).unwrap();
        assert!(c.with(2, "h2:1").unwrap_err().contains("never reused"));
        assert!(c.without(1).is_err());
        assert!(c.with(1, "x").is_err());
        assert_eq!(c.with(3, "h3:1").unwrap().ids(), vec![1, 3]);
    }
}
