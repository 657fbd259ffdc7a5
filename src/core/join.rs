//! The join client: how a node started with `--join` gets a running cluster to add it, as a
//! socket-free state machine so that the daemon (before and inside its event loop) and the
//! simulator follow one policy.
//!
//! Policy: ask the `--join` address; a member that does not lead answers with a pointer to the
//! leader, which is asked at once (a few hops at most, so two members pointing at each other
//! cannot make it spin); any failure (no connection, no answer within the request timeout, the
//! connection closed, garbage) sends it back to the `--join` address, since the leader it was
//! pointed to may be gone. Retries wait an exponential backoff with jitter drawn from a seeded
//! generator (several nodes joining at once do not ask in lockstep). A refusal that says not to
//! retry (another cluster, an id already used) ends the join; an acceptance hands back the
//! leader and its peer address, for [`crate::core::Node::handle_join_accepted`].
//!
//! Contract, like the node's: feed what happened ([`JoinClient::handle_reply`],
//! [`JoinClient::handle_failure`]), each with `now`; call [`JoinClient::turn`], which runs the
//! timers that are due and returns one owned [`JoinReady`]; carry out its actions; wait for
//! input or until its deadline.

use std::time::{Duration, Instant};

use log::{info, warn};

use crate::codec::{self, CodecError, JoinReply, JoinRequest, PeerFrame};
use crate::core::{NodeId, SharedBytes};

/// The timing rules of a [`JoinClient`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinPolicy {
    /// How long one request may take, connecting included, before it counts as failed.
    pub request_timeout: Duration,
    /// The first pause after a failure; it doubles with each failure in a row.
    pub backoff_min: Duration,
    /// The longest pause between two requests.
    pub backoff_max: Duration,
    /// Leader pointers followed at once in a row; past that the next request waits a backoff.
    pub max_hops: u32,
}

impl Default for JoinPolicy {
    fn default() -> Self {
        JoinPolicy {
            // A member answers at once from its state: two seconds cover a loaded loop and a
            // slow link, and a silent one (paused, partitioned) is abandoned soon enough.
            request_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(200),
            // Short enough that a node joins soon after the cluster heals.
            backoff_max: Duration::from_secs(2),
            max_hops: 3,
        }
    }
}

/// Names one request, so an answer to a request given up is told apart from the current one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JoinAttempt(pub u64);

/// What the shell must do for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinAction {
    /// Open a connection to `addr`, send `bytes` (one encoded join request), then report the
    /// member's [`JoinReply`] (skipping the peer Hello it sends first) or the failure, naming
    /// `attempt`.
    Connect {
        /// The request.
        attempt: JoinAttempt,
        /// A member's peer address.
        addr: String,
        /// The encoded `PeerFrame::Join`.
        bytes: SharedBytes,
    },
    /// Close the connection of `attempt`: it was answered or timed out.
    Close {
        /// The request.
        attempt: JoinAttempt,
    },
}

/// Why a request got no answer (reported by the shell; timeouts are the client's own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinFailure {
    /// No connection could be made (refused, unreachable, a bad address).
    Unreachable(String),
    /// The connection ended before the answer came.
    Closed(String),
    /// The member sent something other than a join answer.
    Garbled(String),
}

impl std::fmt::Display for JoinFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinFailure::Unreachable(why) => write!(f, "cannot connect: {why}"),
            JoinFailure::Closed(why) => write!(f, "connection closed before the answer: {why}"),
            JoinFailure::Garbled(why) => write!(f, "bad answer: {why}"),
        }
    }
}

/// How a join ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinOutcome {
    /// A leader accepted the node: hand these to `Node::handle_join_accepted`.
    Accepted {
        /// The leader.
        leader: NodeId,
        /// Its peer address.
        addr: String,
    },
    /// A member refused for good (another cluster, an id not usable): asking again is futile.
    Refused(String),
    /// The limit given to [`JoinClient::start`] passed; the last failure says why.
    GaveUp(String),
}

/// Everything one [`JoinClient::turn`] asks of the shell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinReady {
    /// Connections to open or close, in order.
    pub actions: Vec<JoinAction>,
    /// The join ended (said once); the client is idle until started again.
    pub outcome: Option<JoinOutcome>,
    /// When the next turn is due if nothing is reported first.
    pub deadline: Option<Instant>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Idle,
    /// Asks `target` at `at`.
    Waiting {
        target: String,
        at: Instant,
    },
    /// Asked `target`; the answer is due by `by`.
    Asking {
        attempt: JoinAttempt,
        target: String,
        by: Instant,
    },
}

/// The join client of one node. See the module docs.
#[derive(Debug)]
pub struct JoinClient {
    id: NodeId,
    via: String,
    request: SharedBytes,
    policy: JoinPolicy,
    rng: fastrand::Rng,
    state: State,
    /// Failures in a row (the backoff's exponent).
    failures: u32,
    /// Leader pointers followed at once in a row.
    hops: u32,
    attempts: u64,
    give_up_at: Option<Instant>,
    /// The last failure or refusal, for the logs and [`JoinOutcome::GaveUp`].
    last: String,
    actions: Vec<JoinAction>,
    outcome: Option<JoinOutcome>,
}

impl JoinClient {
    /// A client that asks `via` (the `--join` address) to add the node `request` describes,
    /// drawing its jitter from a generator seeded with `seed`. It is idle until started.
    pub fn new(
        request: &JoinRequest,
        via: String,
        policy: JoinPolicy,
        seed: u64,
    ) -> Result<JoinClient, CodecError> {
        let bytes = codec::encode(&PeerFrame::Join(request.clone()))?;
        Ok(JoinClient {
            id: request.node_id,
            via,
            request: bytes.into(),
            policy,
            rng: fastrand::Rng::with_seed(seed),
            state: State::Idle,
            failures: 0,
            hops: 0,
            attempts: 0,
            give_up_at: None,
            last: String::new(),
            actions: Vec::new(),
            outcome: None,
        })
    }

    /// The `--join` address.
    pub fn via(&self) -> &str {
        &self.via
    }

    /// True while a join is under way (started and not ended).
    pub fn is_active(&self) -> bool {
        self.state != State::Idle
    }

    /// Starts asking at the `--join` address, at the next turn; giving up after `limit` if one
    /// is set. Does nothing while a join is under way: the request out is as good as a new one.
    pub fn start(&mut self, now: Instant, limit: Option<Duration>) {
        if self.is_active() {
            return;
        }
        info!("node {}: asking {} to join the cluster", self.id, self.via);
        self.failures = 0;
        self.hops = 0;
        self.last.clear();
        self.outcome = None;
        self.give_up_at = limit.map(|l| now + l);
        self.state = State::Waiting {
            target: self.via.clone(),
            at: now,
        };
    }

    /// A member answered `attempt` (ignored unless it is the request out).
    pub fn handle_reply(&mut self, now: Instant, attempt: JoinAttempt, reply: JoinReply) {
        let Some(target) = self.current(attempt) else {
            return;
        };
        self.actions.push(JoinAction::Close { attempt });
        if reply.ok {
            match reply.leader {
                Some((leader, addr)) => {
                    info!(
                        "node {}: join accepted by node {leader} at {addr} (asked {target}): {}",
                        self.id, reply.message
                    );
                    self.finish(JoinOutcome::Accepted { leader, addr });
                }
                None => {
                    let why = format!("{target} accepted without naming the leader");
                    self.back_off(now, self.via.clone(), why);
                }
            }
            return;
        }
        if !reply.retry {
            let why = format!("{target} refused: {}", reply.message);
            warn!("node {}: join refused for good: {why}", self.id);
            return self.finish(JoinOutcome::Refused(why));
        }
        let why = format!("{target}: {}", reply.message);
        match reply.leader.map(|(_, addr)| addr) {
            Some(addr) if addr != target && self.hops < self.policy.max_hops => {
                // Pointed to the leader: ask it at once.
                self.hops += 1;
                info!("node {}: {why}; asking {addr}", self.id);
                self.last = why;
                self.state = State::Waiting {
                    target: addr,
                    at: now,
                };
            }
            // Too many hops in a row (views that point in a circle), or the leader itself is
            // busy with another change: the same place, later.
            Some(addr) => self.back_off(now, addr, why),
            None => self.back_off(now, target, why),
        }
    }

    /// The request `attempt` failed (ignored unless it is the request out); the shell has
    /// dropped its connection.
    pub fn handle_failure(&mut self, now: Instant, attempt: JoinAttempt, failure: JoinFailure) {
        let Some(target) = self.current(attempt) else {
            return;
        };
        // The leader it was pointed to may be gone: start again where the operator said.
        self.back_off(now, self.via.clone(), format!("{target}: {failure}"));
    }

    /// Runs the timers that are due (a request timing out, a pause ending, the limit) and
    /// hands out what the shell must do.
    pub fn turn(&mut self, now: Instant) -> JoinReady {
        if self.is_active() && self.give_up_at.is_some_and(|t| now >= t) {
            if let State::Asking { attempt, .. } = self.state {
                self.actions.push(JoinAction::Close { attempt });
            }
            let why = if self.last.is_empty() {
                "no answer".to_owned()
            } else {
                self.last.clone()
            };
            warn!("node {}: giving up joining; last answer: {why}", self.id);
            self.finish(JoinOutcome::GaveUp(why));
        }
        match &self.state {
            State::Asking {
                attempt,
                target,
                by,
            } if now >= *by => {
                let (attempt, why) = (*attempt, format!("{target}: no answer in time"));
                self.actions.push(JoinAction::Close { attempt });
                self.back_off(now, self.via.clone(), why);
            }
            State::Waiting { target, at } if now >= *at => {
                self.attempts += 1;
                let attempt = JoinAttempt(self.attempts);
                let target = target.clone();
                self.actions.push(JoinAction::Connect {
                    attempt,
                    addr: target.clone(),
                    bytes: self.request.clone(),
                });
                self.state = State::Asking {
                    attempt,
                    target,
                    by: now + self.policy.request_timeout,
                };
            }
            _ => {}
        }
        JoinReady {
            actions: std::mem::take(&mut self.actions),
            outcome: self.outcome.take(),
            deadline: self.deadline(),
        }
    }

    /// When the next turn is due, if a join is under way.
    pub fn deadline(&self) -> Option<Instant> {
        let timer = match &self.state {
            State::Idle => return None,
            State::Waiting { at, .. } => *at,
            State::Asking { by, .. } => *by,
        };
        Some(self.give_up_at.map_or(timer, |g| g.min(timer)))
    }

    /// The target of `attempt` if it is the request out.
    fn current(&self, attempt: JoinAttempt) -> Option<String> {
        match &self.state {
            State::Asking {
                attempt: a, target, ..
            } if *a == attempt => Some(target.clone()),
            _ => None,
        }
    }

    /// Asks `target` again after a pause that doubles with each failure in a row, drawn from
    /// [d/2, d] so that nodes failing together do not retry together.
    fn back_off(&mut self, now: Instant, target: String, why: String) {
        let doublings = self.failures.min(16);
        self.failures = self.failures.saturating_add(1);
        self.hops = 0;
        let full = self
            .policy
            .backoff_min
            .saturating_mul(1 << doublings)
            .min(self.policy.backoff_max);
        let nanos = u64::try_from(full.as_nanos()).unwrap_or(u64::MAX);
        let pause = Duration::from_nanos(self.rng.u64(nanos / 2..=nanos));
        warn!(
            "node {}: not joined yet ({why}); asking {target} in {} ms",
            self.id,
            pause.as_millis()
        );
        self.last = why;
        self.state = State::Waiting {
            target,
            at: now + pause,
        };
    }

    fn finish(&mut self, outcome: JoinOutcome) {
        self.state = State::Idle;
        self.give_up_at = None;
        self.outcome = Some(outcome);
    }
}

#[cfg(test)]
mod tests;
