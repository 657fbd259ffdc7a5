//! Carries out the node's [`PersistJob`]s: on a storage thread for a disk, so the event loop
//! goes on reading, replicating and delivering while an fdatasync runs; inline for storage
//! that costs nothing (memory), where a thread would only add a hop.
//!
//! The thread takes every job queued when it wakes, stages them in order and syncs ONCE (group
//! commit), then reports their tokens through a channel and wakes the loop with the
//! `mio::Waker`. The loop feeds each token to `Node::handle_persisted`; nothing waiting on
//! durability leaves before that. At most [`MAX_IN_FLIGHT`] jobs are queued: beyond that the
//! node keeps its writes and hands them out as one job when the thread catches up.
//!
//! A failed write is reported once; the thread then discards the jobs queued behind it (they
//! were taken before the loop knew), and the node hands everything not durable out again after
//! [`STORAGE_RETRY`] (`Node::handle_persist_failed`). Jobs carry the loop's attempt number so
//! the thread can tell the discarded ones from the re-issue.

use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::error;
use mio::Waker;

use crate::core::{NodeId, PersistJob, PersistToken};
use crate::storage::{self, Storage, StorageError};

/// Jobs handed to the storage thread and not yet reported back, at most.
pub const MAX_IN_FLIGHT: usize = 8;
/// Pause before handing storage the writes again after it failed.
pub const STORAGE_RETRY: Duration = Duration::from_secs(1);

/// What storage reports back to the loop.
#[derive(Debug)]
pub enum Completion {
    /// A job is durable (reported in the order the jobs were taken).
    Persisted(PersistToken),
    /// The write failed: nothing since the last durable point may be relied on.
    Failed(String),
}

/// A job on its way to the thread, with the attempt it belongs to.
struct Queued {
    job: PersistJob,
    attempt: u64,
}

/// What the thread sends back.
enum Report {
    Done(Vec<PersistToken>),
    /// A write failed at `attempt`; `jobs` jobs (the failed and the discarded) are done with.
    Failed {
        attempt: u64,
        jobs: usize,
        error: StorageError,
    },
    /// Jobs of an attempt that had already failed, dropped unwritten.
    Discarded(usize),
}

enum Mode {
    Inline(Box<dyn Storage>),
    Thread {
        tx: Option<SyncSender<Queued>>,
        rx: Receiver<Report>,
        handle: Option<JoinHandle<()>>,
    },
}

/// The node's storage, behind the loop: see the module docs.
pub struct Persister {
    node: NodeId,
    mode: Mode,
    in_flight: usize,
    attempt: u64,
    retry_at: Option<Instant>,
    /// Completions of inline writes, reported at the next `completions` call.
    done: Vec<Completion>,
}

impl Persister {
    /// Writes inline, on the loop: for storage whose writes cost nothing.
    pub fn inline(node: NodeId, storage: Box<dyn Storage>) -> Persister {
        Persister::with_mode(node, Mode::Inline(storage))
    }

    /// Writes on a storage thread of its own, which wakes the loop through `waker`.
    pub fn threaded<S: Storage + Send + 'static>(
        node: NodeId,
        storage: S,
        waker: Arc<Waker>,
    ) -> std::io::Result<Persister> {
        let (tx, jobs) = mpsc::sync_channel(MAX_IN_FLIGHT);
        let (reports, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(format!("storage-{node}"))
            .spawn(move || storage_thread(node, storage, jobs, reports, waker))?;
        Ok(Persister::with_mode(
            node,
            Mode::Thread {
                tx: Some(tx),
                rx,
                handle: Some(handle),
            },
        ))
    }

    fn with_mode(node: NodeId, mode: Mode) -> Persister {
        Persister {
            node,
            mode,
            in_flight: 0,
            attempt: 0,
            retry_at: None,
            done: Vec::new(),
        }
    }

    /// Whether a job may be handed over now (not while the queue is full, nor while waiting
    /// to retry after a failure).
    pub fn can_take(&self, now: Instant) -> bool {
        self.in_flight < MAX_IN_FLIGHT && self.retry_at.is_none_or(|t| now >= t)
    }

    /// When storage may take a job again after a failure, while it waits to.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Hands a job over (call only when [`Persister::can_take`]). Inline, it is written at once
    /// and its completion waits for [`Persister::completions`].
    pub fn submit(&mut self, now: Instant, job: PersistJob) {
        self.retry_at = None;
        match &mut self.mode {
            Mode::Inline(storage) => {
                let done = match storage::write(storage.as_mut(), &job) {
                    Ok(()) => Completion::Persisted(job.token),
                    Err(e) => {
                        self.retry_at = Some(now + STORAGE_RETRY);
                        self.attempt += 1;
                        Completion::Failed(e.to_string())
                    }
                };
                self.done.push(done);
            }
            Mode::Thread { tx, .. } => {
                let queued = Queued {
                    job,
                    attempt: self.attempt,
                };
                // The bound is ours: `can_take` keeps the queue from filling, so a send fails
                // only when the thread is gone.
                let sent = tx.as_ref().is_some_and(|tx| {
                    !matches!(tx.try_send(queued), Err(TrySendError::Disconnected(_)))
                });
                if sent {
                    self.in_flight += 1;
                } else {
                    self.done
                        .push(Completion::Failed("the storage thread stopped".to_owned()));
                    self.retry_at = Some(now + STORAGE_RETRY);
                }
            }
        }
    }

    /// True when inline writes completed that [`Persister::completions`] has not reported.
    pub fn has_completions(&self) -> bool {
        !self.done.is_empty()
    }

    /// Appends to `out` what storage finished since the last call, in order (into the
    /// caller's buffer: this runs every loop turn).
    pub fn completions(&mut self, now: Instant, out: &mut Vec<Completion>) {
        out.append(&mut self.done);
        let Mode::Thread { rx, .. } = &self.mode else {
            return;
        };
        loop {
            match rx.try_recv() {
                Ok(Report::Done(tokens)) => {
                    self.in_flight -= tokens.len();
                    out.extend(tokens.into_iter().map(Completion::Persisted));
                }
                Ok(Report::Failed {
                    attempt,
                    jobs,
                    error,
                }) => {
                    self.in_flight -= jobs;
                    self.attempt = self.attempt.max(attempt + 1);
                    self.retry_at = Some(now + STORAGE_RETRY);
                    out.push(Completion::Failed(error.to_string()));
                }
                Ok(Report::Discarded(jobs)) => self.in_flight -= jobs,
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    if self.in_flight > 0 {
                        self.in_flight = 0;
                        self.retry_at = Some(now + STORAGE_RETRY);
                        out.push(Completion::Failed("the storage thread stopped".to_owned()));
                    }
                    return;
                }
            }
        }
    }
}

impl Drop for Persister {
    /// Lets the thread finish what it was handed (a graceful stop syncs its last writes).
    fn drop(&mut self) {
        if let Mode::Thread { tx, handle, .. } = &mut self.mode {
            drop(tx.take());
            if let Some(h) = handle.take() {
                if h.join().is_err() {
                    error!("node {}: the storage thread panicked", self.node);
                }
            }
        }
    }
}

/// The storage thread: group commits until the loop hangs up.
fn storage_thread<S: Storage>(
    node: NodeId,
    mut storage: S,
    jobs: Receiver<Queued>,
    reports: mpsc::Sender<Report>,
    waker: Arc<Waker>,
) {
    // Jobs of this attempt and before are dropped: one of them failed.
    let mut failed: Option<u64> = None;
    let mut batch = Vec::with_capacity(MAX_IN_FLIGHT);
    while let Ok(first) = jobs.recv() {
        batch.push(first);
        while let Ok(more) = jobs.try_recv() {
            batch.push(more);
        }
        let stale = batch
            .iter()
            .take_while(|q| failed.is_some_and(|a| q.attempt <= a))
            .count();
        let mut sent = Vec::new();
        if stale > 0 {
            sent.push(Report::Discarded(stale));
        }
        let live = &batch[stale..];
        if !live.is_empty() {
            let written = live
                .iter()
                .try_for_each(|q| storage::stage(&mut storage, &q.job))
                .and_then(|()| storage.sync())
                .and_then(|()| storage.compact());
            sent.push(match written {
                Ok(()) => Report::Done(live.iter().map(|q| q.job.token).collect()),
                Err(error) => {
                    let attempt = live.iter().map(|q| q.attempt).max().unwrap_or(0);
                    failed = Some(attempt);
                    Report::Failed {
                        attempt,
                        jobs: live.len(),
                        error,
                    }
                }
            });
        }
        batch.clear();
        for r in sent {
            if reports.send(r).is_err() {
                return;
            }
        }
        if let Err(e) = waker.wake() {
            error!("node {node}: the storage thread cannot wake the event loop: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Instant, SystemTime};

    use mio::{Events, Poll, Token};

    use super::*;
    use crate::codec::{ClientFrame, Hello};
    use crate::core::log::{Entry, HardState, LogIndex};
    use crate::core::{ConnId, Node, NodeConfig, Now};
    use crate::storage::{MemStorage, Recovered, StoredSnapshot};

    /// Memory storage the test keeps a hand on: it counts syncs, and holds the first sync
    /// (saying so) until the test lets it go.
    /// Tells the test the sync started, then waits for the test's go.
    type Gate = (mpsc::Sender<()>, mpsc::Receiver<()>);

    #[derive(Clone, Default)]
    struct Probe {
        store: Arc<Mutex<MemStorage>>,
        syncs: Arc<Mutex<u32>>,
        gate: Arc<Mutex<Option<Gate>>>,
    }

    impl Storage for Probe {
        fn truncate(&mut self, from: LogIndex) -> Result<(), StorageError> {
            self.store.lock().unwrap().truncate(from)
        }
        fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
            self.store.lock().unwrap().append(entries)
        }
        fn save_hard_state(&mut self, hs: &HardState) -> Result<(), StorageError> {
            self.store.lock().unwrap().save_hard_state(hs)
        }
        fn save_snapshot(
            &mut self,
            s: &StoredSnapshot,
            replaces: bool,
        ) -> Result<(), StorageError> {
            self.store.lock().unwrap().save_snapshot(s, replaces)
        }
        fn sync(&mut self) -> Result<(), StorageError> {
            let gate = self.gate.lock().unwrap().take();
            if let Some((entered, release)) = gate {
                let _ = entered.send(());
                let _ = release.recv();
            }
            *self.syncs.lock().unwrap() += 1;
            self.store.lock().unwrap().sync()
        }
        fn compact(&mut self) -> Result<(), StorageError> {
            self.store.lock().unwrap().compact()
        }
        fn load(&mut self) -> Result<Recovered, StorageError> {
            self.store.lock().unwrap().load()
        }
    }

    fn now() -> Now {
        let unix_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Now {
            mono: Instant::now(),
            unix_ms,
        }
    }

    /// A cluster of one and the jobs of its next `n` turns, each with a client's Hello.
    fn jobs(n: u64) -> Vec<PersistJob> {
        let mut node = Node::new(NodeConfig::default(), Recovered::default(), now()).unwrap();
        (0..n)
            .map(|i| {
                let conn = ConnId(i);
                node.handle_connect(now(), conn);
                let hello = Hello {
                    user: format!("user{i}"),
                    client_id: i,
                };
                node.handle_frame(now(), conn, ClientFrame::Hello(hello));
                node.turn(now(), true).persist.expect("a write to persist")
            })
            .collect()
    }

    /// Completions until `n` have come (bounded in time).
    fn wait(p: &mut Persister, poll: &mut Poll, n: usize) -> Vec<Completion> {
        let mut events = Events::with_capacity(8);
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < n {
            assert!(Instant::now() < deadline, "storage answered {got:?} only");
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            p.completions(Instant::now(), &mut got);
        }
        got
    }

    fn threaded(probe: &Probe) -> (Persister, Poll) {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
        (Persister::threaded(1, probe.clone(), waker).unwrap(), poll)
    }

    #[test]
    fn jobs_queued_behind_a_slow_sync_complete_in_order_under_one_sync() {
        let probe = Probe::default();
        let (release, gate) = mpsc::channel();
        let (entered, syncing) = mpsc::channel();
        *probe.gate.lock().unwrap() = Some((entered, gate));
        let (mut p, mut poll) = threaded(&probe);
        let jobs = jobs(3);
        let tokens: Vec<PersistToken> = jobs.iter().map(|j| j.token).collect();
        let t = Instant::now();
        for (i, job) in jobs.into_iter().enumerate() {
            assert!(p.can_take(t));
            p.submit(t, job);
            if i == 0 {
                syncing.recv_timeout(Duration::from_secs(10)).unwrap();
            }
        }
        release.send(()).unwrap();
        let done = wait(&mut p, &mut poll, 3);
        let got: Vec<PersistToken> = done
            .into_iter()
            .map(|c| match c {
                Completion::Persisted(t) => t,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, tokens, "in the order taken");
        assert_eq!(
            *probe.syncs.lock().unwrap(),
            2,
            "the two queued jobs share a sync"
        );
        assert!(p.can_take(Instant::now()));
    }

    #[test]
    fn a_failed_write_discards_the_jobs_behind_it_until_the_reissue() {
        let probe = Probe::default();
        probe.store.lock().unwrap().set_failing(true);
        let (mut p, mut poll) = threaded(&probe);
        let mut jobs = jobs(3).into_iter();
        let t = Instant::now();
        p.submit(t, jobs.next().unwrap());
        p.submit(t, jobs.next().unwrap());
        let done = wait(&mut p, &mut poll, 1);
        assert!(matches!(done[..], [Completion::Failed(_)]), "{done:?}");
        // The second job is discarded unwritten (or failed with the first): never persisted.
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.in_flight > 0 {
            assert!(Instant::now() < deadline, "the second job never came back");
            let mut more = Vec::new();
            p.completions(Instant::now(), &mut more);
            assert!(more.is_empty(), "{more:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!p.can_take(Instant::now()), "it waits before retrying");
        let later = Instant::now() + STORAGE_RETRY;
        assert!(p.can_take(later));
        probe.store.lock().unwrap().set_failing(false);
        let reissue = jobs.next().unwrap();
        let token = reissue.token;
        p.submit(later, reissue);
        let done = wait(&mut p, &mut poll, 1);
        assert!(
            matches!(done[..], [Completion::Persisted(t)] if t == token),
            "{done:?}"
        );
    }

    #[test]
    fn inline_writes_complete_at_the_next_look() {
        let probe = Probe::default();
        let mut p = Persister::inline(1, Box::new(probe.clone()));
        let job = jobs(1).pop().unwrap();
        let token = job.token;
        p.submit(Instant::now(), job);
        assert!(p.has_completions());
        let mut done = Vec::new();
        p.completions(Instant::now(), &mut done);
        assert!(matches!(done[..], [Completion::Persisted(t)] if t == token));
        assert_eq!(*probe.syncs.lock().unwrap(), 1);
    }
}
