//! The records written since the last successful sync (group commit: `sync` writes them in one
//! go), with the log position after each, so a rewrite of what is still pending replaces it
//! instead of piling up behind it: the driver re-issues a whole failed bundle on every retry,
//! and without this the buffer would grow with each retry while the disk stays full.

use std::io;

use crate::codec::disk::{encode_entry, encode_hard_state, encode_truncate, DiskError};
use crate::core::log::{Entry, HardState, LogIndex};

/// What a buffered record does to the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Entry(LogIndex),
    HardState,
    Truncate(LogIndex),
}

/// One buffered record.
#[derive(Clone, Copy, Debug)]
struct Record {
    /// Where it starts in `Pending::bytes`.
    offset: usize,
    kind: Kind,
    /// The last entry index once it is applied.
    last_after: Option<LogIndex>,
}

/// Encoded records not yet durable, and the log they lead to.
#[derive(Debug)]
pub(super) struct Pending {
    bytes: Vec<u8>,
    records: Vec<Record>,
    /// Scratch space for encoding a batch before it is known to be valid.
    scratch: Vec<u8>,
    /// Last entry index of the durable log (what `bytes` applies to). `None`: no entry is
    /// known, so any index may come next (an empty or reset log, or one whose older segments
    /// were compacted away).
    durable_last: Option<LogIndex>,
    /// Last entry index once `bytes` is applied.
    last: Option<LogIndex>,
    /// The newest election state, buffered or not.
    hard_state: HardState,
}

fn invalid(e: DiskError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}

impl Pending {
    /// Nothing buffered, over a durable log ending at `last`.
    pub fn new(hard_state: HardState, last: Option<LogIndex>) -> Pending {
        Pending {
            bytes: Vec::new(),
            records: Vec::new(),
            scratch: Vec::new(),
            durable_last: last,
            last,
            hard_state,
        }
    }

    /// The encoded records, in order.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// True when nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Last entry index with the buffered records applied.
    #[cfg(test)]
    pub fn last(&self) -> Option<LogIndex> {
        self.last
    }

    /// The newest election state.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// Highest entry index buffered (0 when none).
    pub fn max_entry_index(&self) -> LogIndex {
        self.records
            .iter()
            .filter_map(|r| match r.kind {
                Kind::Entry(i) => Some(i),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// The buffer reached the disk: it is now the durable log.
    pub fn synced(&mut self) {
        self.bytes.clear();
        self.records.clear();
        self.durable_last = self.last;
    }

    /// An installed snapshot replaces the log: buffered log records are moot (the election
    /// state is kept, and goes at the head of the new segment).
    pub fn reset(&mut self) {
        self.bytes.clear();
        self.records.clear();
        self.durable_last = None;
        self.last = None;
    }

    /// Buffers `entries` after the current last entry. An entry at or below the last one
    /// replaces the log from there (as a truncation would); a gap is refused.
    pub fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "log entry with index 0",
            ));
        }
        for w in entries.windows(2) {
            if w[1].index != w[0].index.wrapping_add(1) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "entries not consecutive: {} then {}",
                        w[0].index, w[1].index
                    ),
                ));
            }
        }
        self.check_follows(first.index)?;
        // Encode first, so a failure leaves everything as it was.
        self.scratch.clear();
        let mut offsets = Vec::with_capacity(entries.len());
        for e in entries {
            offsets.push(self.scratch.len());
            encode_entry(e, &mut self.scratch).map_err(invalid)?;
        }
        if self.last.is_some_and(|l| first.index <= l) {
            self.rewind(first.index)?;
            self.check_follows(first.index)?;
        }
        let base = self.bytes.len();
        self.bytes.extend_from_slice(&self.scratch);
        for (e, off) in entries.iter().zip(offsets) {
            self.records.push(Record {
                offset: base + off,
                kind: Kind::Entry(e.index),
                last_after: Some(e.index),
            });
        }
        self.last = entries.last().map(|e| e.index);
        Ok(())
    }

    /// Refuses an entry at `index` that would leave a gap after the last one.
    fn check_follows(&self, index: LogIndex) -> io::Result<()> {
        match self.last {
            Some(l) if index > l.saturating_add(1) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("entry {index} does not follow the last entry {l}"),
            )),
            _ => Ok(()),
        }
    }

    /// Buffers the removal of every entry with index >= `from` (nothing if there is none).
    pub fn truncate(&mut self, from: LogIndex) -> io::Result<()> {
        if self.last.is_none_or(|l| from > l) {
            return Ok(());
        }
        self.rewind(from)?;
        if self.last.is_some_and(|l| from <= l) {
            self.push(Kind::Truncate(from), |out| encode_truncate(from, out))?;
            // The log may start above `from` (compacted); then it is empty, and claiming a
            // last entry of `from - 1` only makes `append` stricter than replay.
            self.set_last_of_top(from.checked_sub(1).filter(|&l| l > 0));
        }
        Ok(())
    }

    /// Buffers a new election state (replacing one buffered last, which it supersedes).
    pub fn save_hard_state(&mut self, hs: &HardState) -> io::Result<()> {
        if let Some(top) = self.records.last() {
            if top.kind == Kind::HardState {
                self.bytes.truncate(top.offset);
                self.records.pop();
            }
        }
        self.hard_state = *hs;
        self.push(Kind::HardState, |out| encode_hard_state(hs, out))
    }

    /// Drops the buffered tail that only concerns entries >= `from` (entries there,
    /// truncations from there or above, election states) since a truncation from `from`
    /// supersedes it; an election state dropped this way is written again.
    fn rewind(&mut self, from: LogIndex) -> io::Result<()> {
        let mut keep = self.records.len();
        let mut dropped_hard_state = false;
        while let Some(r) = keep.checked_sub(1).and_then(|i| self.records.get(i)) {
            match r.kind {
                Kind::Entry(i) | Kind::Truncate(i) if i >= from => {}
                Kind::HardState => dropped_hard_state = true,
                _ => break,
            }
            keep -= 1;
        }
        let Some(cut) = self.records.get(keep) else {
            return Ok(());
        };
        self.bytes.truncate(cut.offset);
        self.records.truncate(keep);
        self.last = match self.records.last() {
            Some(r) => r.last_after,
            None => self.durable_last,
        };
        if dropped_hard_state {
            let hs = self.hard_state;
            self.push(Kind::HardState, |out| encode_hard_state(&hs, out))?;
        }
        Ok(())
    }

    fn push(
        &mut self,
        kind: Kind,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), DiskError>,
    ) -> io::Result<()> {
        let offset = self.bytes.len();
        encode(&mut self.bytes).map_err(invalid)?;
        self.records.push(Record {
            offset,
            kind,
            last_after: self.last,
        });
        Ok(())
    }

    fn set_last_of_top(&mut self, last: Option<LogIndex>) {
        self.last = last;
        if let Some(r) = self.records.last_mut() {
            r.last_after = last;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::disk::{decode_record, WalRecord};
    use crate::core::log::Command;

    fn e(index: LogIndex) -> Entry {
        Entry {
            index,
            epoch: 1,
            origin: None,
            command: Command::Noop,
        }
    }

    fn hs(epoch: u64) -> HardState {
        HardState {
            epoch,
            ..HardState::default()
        }
    }

    fn records(p: &Pending) -> Vec<WalRecord> {
        let mut out = Vec::new();
        let mut b = p.bytes();
        while !b.is_empty() {
            let (r, n) = decode_record(b).unwrap();
            out.push(r);
            b = &b[n..];
        }
        out
    }

    #[test]
    fn a_reissued_bundle_replaces_what_is_pending_instead_of_doubling_it() {
        let mut p = Pending::new(hs(1), Some(4));
        let bundle = |p: &mut Pending| {
            p.truncate(3).unwrap();
            p.append(&[e(3), e(4), e(5)]).unwrap();
            p.save_hard_state(&hs(2)).unwrap();
        };
        bundle(&mut p);
        let once = p.bytes().to_vec();
        for _ in 0..5 {
            bundle(&mut p);
        }
        assert!(p.bytes().len() <= once.len() + 64, "buffer grew");
        let recs = records(&p);
        let entries = recs
            .iter()
            .filter(|r| matches!(r, WalRecord::Entry(_)))
            .count();
        assert_eq!(entries, 3);
        assert_eq!(recs.first(), Some(&WalRecord::HardState(hs(2))));
        assert!(recs.contains(&WalRecord::Truncate { from: 3 }));
        assert_eq!(p.last(), Some(5));
    }

    #[test]
    fn appends_must_follow_and_a_refused_batch_changes_nothing() {
        let mut p = Pending::new(HardState::default(), Some(10));
        assert!(p.append(&[e(12)]).is_err());
        assert!(p.append(&[e(11), e(13)]).is_err());
        assert!(p.append(&[e(0)]).is_err());
        assert!(p.is_empty());
        p.append(&[e(11), e(12)]).unwrap();
        assert_eq!(p.last(), Some(12));
        // An overlap replaces the pending suffix.
        p.append(&[e(12)]).unwrap();
        assert_eq!(records(&p).len(), 2);
        p.synced();
        p.truncate(20).unwrap();
        assert!(p.is_empty(), "nothing to truncate");
        p.truncate(5).unwrap();
        assert_eq!(records(&p), vec![WalRecord::Truncate { from: 5 }]);
        assert_eq!(p.last(), Some(4));
        p.reset();
        assert_eq!(p.last(), None);
        p.append(&[e(100)]).unwrap();
        assert_eq!(p.max_entry_index(), 100);
    }
}
