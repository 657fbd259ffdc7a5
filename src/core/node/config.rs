//! What a [`NodeConfig`] must satisfy to run, and the timeouts derived from its settings.
//!
//! [`NodeConfig::validate`] checks ranges and the relations between settings that the core
//! relies on; a shell (the daemon, the simulator) calls it once it has built a configuration
//! and words the error for its own users (the daemon in terms of its flags). `Node::new` does
//! not call it, so tests remain free to build odd configurations on purpose.
//!
//! Timeouts that are a multiple of a setting are named methods here, each saying why its
//! factor, rather than multipliers at their use sites.

use std::fmt;
use std::time::Duration;

use super::NodeConfig;
use crate::codec::MAX_CLIENT_PAYLOAD;
use crate::core::names::MAX_ROOM_LEN;
use crate::core::NodeId;

/// Largest `max_text` a `Say` frame can carry within the client payload limit.
pub const MAX_TEXT_LIMIT: u32 = MAX_CLIENT_PAYLOAD - 3 * 8 - MAX_ROOM_LEN as u32;
/// Largest accepted `history_size`.
pub const MAX_HISTORY_SIZE: u32 = 10_000;

/// Why a [`NodeConfig`] cannot run, from [`NodeConfig::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeConfigError {
    /// `id` is 0: node ids start at 1.
    ZeroId,
    /// `members` is not empty but lacks this node's id, or lists id 0.
    Members {
        /// This node's id.
        id: NodeId,
        /// The members as configured.
        members: Vec<NodeId>,
    },
    /// `history_size` is above [`MAX_HISTORY_SIZE`].
    HistorySize(u32),
    /// `max_text` is 0 or above [`MAX_TEXT_LIMIT`].
    MaxText(u32),
    /// `heartbeat_interval` is zero.
    ZeroHeartbeat,
    /// `failure_timeout` is shorter than two heartbeat intervals.
    FailureTimeout {
        /// The failure timeout as configured.
        failure_timeout: Duration,
        /// The heartbeat interval as configured.
        heartbeat_interval: Duration,
    },
    /// `replication_linger` is not below the heartbeat interval.
    Linger {
        /// The linger as configured.
        replication_linger: Duration,
        /// The heartbeat interval as configured.
        heartbeat_interval: Duration,
    },
    /// A limit the node needs at least 1 of to make progress is 0; the field's name.
    Zero(&'static str),
}

impl fmt::Display for NodeConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeConfigError::ZeroId => f.write_str("id must be 1 or more (node ids start at 1)"),
            NodeConfigError::Members { id, members } => write!(
                f,
                "members {members:?} must include this node ({id}) and only ids of 1 or more"
            ),
            NodeConfigError::HistorySize(n) => write!(
                f,
                "history_size {n} is too large; the limit is {MAX_HISTORY_SIZE}"
            ),
            NodeConfigError::MaxText(n) => write!(
                f,
                "max_text {n} is out of range; use 1 to {MAX_TEXT_LIMIT} bytes"
            ),
            NodeConfigError::ZeroHeartbeat => f.write_str("heartbeat_interval must not be zero"),
            NodeConfigError::FailureTimeout {
                failure_timeout,
                heartbeat_interval,
            } => write!(
                f,
                "failure_timeout {failure_timeout:?} is too small; use at least twice \
                 heartbeat_interval ({:?})",
                heartbeat_interval.saturating_mul(2)
            ),
            NodeConfigError::Linger {
                replication_linger,
                heartbeat_interval,
            } => write!(
                f,
                "replication_linger {replication_linger:?} is too large; use less than \
                 heartbeat_interval ({heartbeat_interval:?})"
            ),
            NodeConfigError::Zero(name) => write!(f, "{name} must be 1 or more"),
        }
    }
}

impl std::error::Error for NodeConfigError {}

impl NodeConfig {
    /// Checks the settings are in range and consistent with each other (the first problem).
    pub fn validate(&self) -> Result<(), NodeConfigError> {
        use NodeConfigError as E;
        if self.id == 0 {
            return Err(E::ZeroId);
        }
        let listed = self.members.is_empty() || self.members.contains(&self.id);
        if !listed || self.members.contains(&0) {
            return Err(E::Members {
                id: self.id,
                members: self.members.clone(),
            });
        }
        if self.history_size > MAX_HISTORY_SIZE {
            return Err(E::HistorySize(self.history_size));
        }
        if self.max_text == 0 || self.max_text > MAX_TEXT_LIMIT {
            return Err(E::MaxText(self.max_text));
        }
        if self.heartbeat_interval.is_zero() {
            return Err(E::ZeroHeartbeat);
        }
        // One late or lost heartbeat must not make a live peer (or the leader) look dead.
        let two_beats = self.heartbeat_interval.checked_mul(2);
        if two_beats.is_none_or(|least| self.failure_timeout < least) {
            return Err(E::FailureTimeout {
                failure_timeout: self.failure_timeout,
                heartbeat_interval: self.heartbeat_interval,
            });
        }
        // A held round must go out before the heartbeat that would otherwise carry it.
        if self.replication_linger >= self.heartbeat_interval {
            return Err(E::Linger {
                replication_linger: self.replication_linger,
                heartbeat_interval: self.heartbeat_interval,
            });
        }
        let limits = [
            ("devices_per_user", self.devices_per_user as usize),
            ("max_pending", self.max_pending),
            ("max_page", self.max_page as usize),
            ("max_append_entries", self.max_append_entries),
            ("max_append_bytes", self.max_append_bytes),
            ("replication_window", self.replication_window as usize),
            ("snapshot_chunk", self.snapshot_chunk),
            ("snapshot_window", self.snapshot_window),
            ("snapshot_step", self.snapshot_step),
        ];
        match limits.into_iter().find(|&(_, v)| v == 0) {
            Some((name, _)) => Err(E::Zero(name)),
            None => Ok(()),
        }
    }

    /// Wait for an election this node started, or for the leader it follows, before starting
    /// one: twice the failure timeout, so a token lost to a successor that died unnoticed goes
    /// past it on the retry, and the leader-loss check (one failure timeout) comes first.
    pub fn election_timeout(&self) -> Duration {
        self.failure_timeout * 2
    }

    /// Silence after which a peer link is closed and dialed again: one failure timeout, the
    /// point where the peer counts as dead anyway. A link silent for longer is most likely cut
    /// by a partition that drops packets (no RST), where TCP would wait for its retransmission
    /// timer, which backs off to minutes; a fresh connection gets through as soon as the
    /// network heals.
    pub fn link_silence_limit(&self) -> Duration {
        self.failure_timeout
    }

    /// How long a dial may take to connect before it is abandoned and tried again: one
    /// failure timeout. A SYN lost to a partition is then resent by the next dial rather than by
    /// the kernel's own SYN backoff (1 s, 3 s, 7 s, ...).
    pub fn dial_timeout(&self) -> Duration {
        self.failure_timeout
    }

    /// The longest pause between two dials to a peer: half a failure timeout, so that after a
    /// partition heals a dial gets through within about 1.5 failure timeouts, and the node
    /// follows its leader again within two.
    pub fn dial_backoff_max(&self) -> Duration {
        self.failure_timeout / 2
    }

    /// How long a node may know no leader before it tells its clients to go to another node
    /// (`NO_LEADER`): five failure timeouts (1 s by default), well past an election's usual
    /// few heartbeats, so only a node cut off from a majority does it.
    pub fn leaderless_limit(&self) -> Duration {
        self.failure_timeout * 5
    }

    /// How long a joining node, once accepted, waits to be a member by a committed
    /// configuration before asking again: 25 failure timeouts (5 s by default) leave time to
    /// catch up from a snapshot first, yet recover from a leader change that dropped it.
    pub fn join_patience(&self) -> Duration {
        self.failure_timeout * 25
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_configuration_is_valid() {
        assert_eq!(NodeConfig::default().validate(), Ok(()));
    }

    #[test]
    fn each_broken_rule_is_named() {
        let ms = Duration::from_millis;
        let d = NodeConfig::default;
        for (cfg, want) in [
            (NodeConfig { id: 0, ..d() }, NodeConfigError::ZeroId),
            (
                NodeConfig {
                    id: 4,
                    members: vec![1, 2, 3],
                    ..d()
                },
                NodeConfigError::Members {
                    id: 4,
                    members: vec![1, 2, 3],
                },
            ),
            (
                NodeConfig {
                    members: vec![0, 1],
                    ..d()
                },
                NodeConfigError::Members {
                    id: 1,
                    members: vec![0, 1],
                },
            ),
            (
                NodeConfig {
                    history_size: MAX_HISTORY_SIZE + 1,
                    ..d()
                },
                NodeConfigError::HistorySize(MAX_HISTORY_SIZE + 1),
            ),
            (
                NodeConfig { max_text: 0, ..d() },
                NodeConfigError::MaxText(0),
            ),
            (
                NodeConfig {
                    max_text: MAX_TEXT_LIMIT + 1,
                    ..d()
                },
                NodeConfigError::MaxText(MAX_TEXT_LIMIT + 1),
            ),
            (
                NodeConfig {
                    heartbeat_interval: Duration::ZERO,
                    ..d()
                },
                NodeConfigError::ZeroHeartbeat,
            ),
            (
                NodeConfig {
                    heartbeat_interval: ms(100),
                    failure_timeout: ms(199),
                    ..d()
                },
                NodeConfigError::FailureTimeout {
                    failure_timeout: ms(199),
                    heartbeat_interval: ms(100),
                },
            ),
            (
                NodeConfig {
                    heartbeat_interval: ms(10),
                    replication_linger: ms(10),
                    ..d()
                },
                NodeConfigError::Linger {
                    replication_linger: ms(10),
                    heartbeat_interval: ms(10),
                },
            ),
            (
                NodeConfig {
                    replication_window: 0,
                    ..d()
                },
                NodeConfigError::Zero("replication_window"),
            ),
            (
                NodeConfig {
                    snapshot_chunk: 0,
                    ..d()
                },
                NodeConfigError::Zero("snapshot_chunk"),
            ),
        ] {
            assert_eq!(cfg.validate(), Err(want));
        }
    }

    #[test]
    fn the_limits_of_each_rule_are_valid() {
        let ms = Duration::from_millis;
        let edge = NodeConfig {
            id: 2,
            members: vec![1, 2],
            history_size: MAX_HISTORY_SIZE,
            max_text: MAX_TEXT_LIMIT,
            heartbeat_interval: ms(100),
            failure_timeout: ms(200),
            replication_linger: ms(100) - Duration::from_nanos(1),
            ..NodeConfig::default()
        };
        assert_eq!(edge.validate(), Ok(()));
        let joining = NodeConfig {
            members: Vec::new(),
            joining: true,
            ..edge
        };
        assert_eq!(joining.validate(), Ok(()));
    }

    #[test]
    fn errors_name_the_setting_and_the_bound() {
        let e = NodeConfig {
            heartbeat_interval: Duration::from_millis(100),
            failure_timeout: Duration::from_millis(150),
            ..NodeConfig::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "failure_timeout 150ms is too small; use at least twice heartbeat_interval (200ms)"
        );
        let e = NodeConfigError::Zero("snapshot_window").to_string();
        assert_eq!(e, "snapshot_window must be 1 or more");
        // So large that two of them overflow: refused, not a panic.
        let huge = NodeConfig {
            heartbeat_interval: Duration::MAX,
            failure_timeout: Duration::MAX,
            replication_linger: Duration::ZERO,
            ..NodeConfig::default()
        };
        assert!(matches!(
            huge.validate(),
            Err(NodeConfigError::FailureTimeout { .. })
        ));
        assert!(huge
            .validate()
            .unwrap_err()
            .to_string()
            .contains("too small"));
    }

    #[test]
    fn derived_timeouts_follow_the_failure_timeout() {
        let c = NodeConfig {
            failure_timeout: Duration::from_millis(100),
            ..NodeConfig::default()
        };
        assert_eq!(c.election_timeout(), Duration::from_millis(200));
        assert_eq!(c.join_patience(), Duration::from_millis(2500));
    }
}
