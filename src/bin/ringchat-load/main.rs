//! `ringchat-load`: load generator and checker for a ringchat server.
//!
//! One single-threaded mio event loop drives every client connection (no thread per
//! connection), speaking the wire codec directly. Scenarios:
//! - `closed`: rooms x members, each member sends M messages, the next one only after its
//!   previous one came back as a delivered message;
//! - `open`: a fixed aggregate send rate by the clock, then a bounded drain;
//!
//!   both also against a redis-server's PUBLISH/SUBSCRIBE (`--target redis`), for comparison;
//! - `idle`: daemon RSS growth per idle, joined connection.
//!
//! Every delivery to every recipient is checked (lost, duplicated, out of order) and timed end
//! to end. With `--pid`, the daemon's CPU time over the run is reported per delivery. Exit
//! status: 0 clean, 1 the run finished but something was lost/duplicated/out of order/refused
//! or it timed out, 2 it could not run (bad arguments, or no member could join: the report
//! still says why, e.g. undecodable bytes from a server that is no ringchat server).

mod chat;
mod idle;
mod net;
mod procfs;
mod report;
mod resp;

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ringchat-load",
    version,
    about = "Load generator and delivery checker for ringchat (one mio event loop, many connections)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Closed loop: each member sends its next message once its previous one was delivered back.
    Closed {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        rooms: RoomArgs,
        /// Messages each member sends.
        #[arg(long)]
        messages: u64,
        /// Stop early if nothing is delivered for this many seconds.
        #[arg(long, default_value_t = 10.0)]
        stall_secs: f64,
    },
    /// Open loop: a fixed aggregate send rate, scheduled by the clock, spread over all members.
    Open {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        rooms: RoomArgs,
        /// Aggregate messages per second over all members.
        #[arg(long)]
        rate: f64,
        /// Seconds of sending.
        #[arg(long)]
        duration: f64,
        /// Longest wait for outstanding deliveries after the last send, in seconds.
        #[arg(long, default_value_t = 10.0)]
        drain_secs: f64,
    },
    /// Idle connections: daemon RSS growth per joined connection (needs --pid).
    Idle {
        #[command(flatten)]
        common: CommonArgs,
        /// Connections to open (each its own user, each joins a room).
        #[arg(long)]
        connections: usize,
        /// Rooms the connections are spread over.
        #[arg(long, default_value_t = 100)]
        rooms: usize,
        /// Seconds to keep the connections open after measuring.
        #[arg(long, default_value_t = 2.0)]
        hold_secs: f64,
        /// Seconds to let the daemon settle before each RSS reading.
        #[arg(long, default_value_t = 1.0)]
        settle_secs: f64,
    },
}

#[derive(Args)]
struct CommonArgs {
    /// Server address(es), host:port[,host:port...]; members are spread over them in turn
    /// (a member's connections all go to one server).
    #[arg(long)]
    server: String,
    /// The daemons' process ids, comma separated: their CPU over the run is summed (idle: one
    /// daemon, whose RSS is measured).
    #[arg(long, value_delimiter = ',')]
    pid: Vec<u32>,
    /// Give up after this many seconds in all, report what was measured, exit non-zero.
    #[arg(long, default_value_t = 120.0)]
    timeout_secs: f64,
    /// Give up joining if no connection finishes its handshake (joined, refused or closed) for
    /// this many seconds: a server that accepts and never answers is not waited on until
    /// --timeout-secs.
    #[arg(long, default_value_t = 10.0)]
    join_stall_secs: f64,
    /// Connections handshaking at once while connecting. Keep it under the server's listen
    /// backlog (128 for a mio/std listener): beyond it the kernel drops SYNs and those clients
    /// retry only after a second, which then dominates the connect time.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RoomArgs {
    /// Number of rooms.
    #[arg(long)]
    rooms: usize,
    /// Members per room, each its own connection and user.
    #[arg(long)]
    members: usize,
    /// Message text size in bytes (the text holds sender, number and send time, then padding).
    #[arg(long, default_value_t = 32)]
    text_bytes: usize,
    /// What --server is: a ringchat daemon, or a redis-server (PUBLISH/SUBSCRIBE over RESP2,
    /// two connections per member) to compare against.
    #[arg(long, value_enum, default_value_t = chat::Target::Ringchat)]
    target: chat::Target,
}

impl RoomArgs {
    /// The options of a chat scenario with these rooms.
    fn opts(self, common: Common, load: chat::Load) -> chat::ChatOpts {
        chat::ChatOpts {
            common,
            target: self.target,
            rooms: self.rooms,
            members: self.members,
            text_bytes: self.text_bytes,
            load,
        }
    }
}

/// Options every scenario has, validated.
pub struct Common {
    pub servers: Vec<SocketAddr>,
    pub pids: Vec<u32>,
    pub timeout_secs: f64,
    pub join_stall: Duration,
    pub batch: usize,
    pub json: bool,
}

impl CommonArgs {
    fn check(self) -> Result<Common, String> {
        let servers = self
            .server
            .split(',')
            .map(|one| {
                one.trim()
                    .to_socket_addrs()
                    .map_err(|e| format!("cannot resolve --server {one}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("--server {one} resolves to no address"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !(self.timeout_secs > 0.0 && self.timeout_secs < 1e7) {
            return Err("--timeout-secs must be a positive number of seconds".into());
        }
        for &pid in &self.pid {
            procfs::cpu_ticks(Some(pid))
                .map_err(|e| format!("--pid {pid}: cannot read /proc/{pid}/stat: {e}"))?;
        }
        Ok(Common {
            servers,
            pids: self.pid,
            timeout_secs: self.timeout_secs,
            join_stall: secs("join-stall-secs", self.join_stall_secs)?,
            batch: self.batch.max(1),
            json: self.json,
        })
    }
}

/// Why joining ended early: the global timeout, or no handshake finishing for too long.
pub const JOIN_TIMED_OUT: &str = "timed out while joining";
/// See [`JOIN_TIMED_OUT`].
pub const JOIN_STALLED: &str =
    "stalled while joining (no handshake finished for --join-stall-secs)";

/// Watches a count that should keep rising (handshakes finished): stalled once it has not
/// moved for the limit.
pub struct Stall {
    count: usize,
    since: Instant,
    limit: Duration,
}

impl Stall {
    pub fn new(limit: Duration) -> Stall {
        Stall {
            count: 0,
            since: Instant::now(),
            limit,
        }
    }

    /// True if `count` has not changed for the limit.
    pub fn stalled(&mut self, count: usize) -> bool {
        let now = Instant::now();
        if count != self.count {
            (self.count, self.since) = (count, now);
        }
        now.duration_since(self.since) >= self.limit
    }
}

fn secs(name: &str, v: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v).map_err(|_| format!("--{name} must be a non-negative number"))
}

/// How a run ended; the exit status says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Everything checked out.
    Clean,
    /// The run finished, but something was lost, duplicated, out of order or refused, or it
    /// timed out.
    NotClean,
    /// No member could join, so nothing was measured.
    NoneJoined,
}

impl Verdict {
    /// Clean or not.
    fn of(clean: bool) -> Verdict {
        if clean {
            Verdict::Clean
        } else {
            Verdict::NotClean
        }
    }
}

fn run(cli: Cli) -> Result<Verdict, String> {
    let clock = net::Clock::new();
    match cli.cmd {
        Cmd::Closed {
            common,
            rooms,
            messages,
            stall_secs,
        } => {
            let load = chat::Load::Closed {
                messages,
                stall: secs("stall-secs", stall_secs)?,
            };
            chat::run(rooms.opts(common.check()?, load), clock)
        }
        Cmd::Open {
            common,
            rooms,
            rate,
            duration,
            drain_secs,
        } => {
            let load = chat::Load::Open {
                rate,
                duration: secs("duration", duration)?,
                drain: secs("drain-secs", drain_secs)?,
            };
            chat::run(rooms.opts(common.check()?, load), clock)
        }
        Cmd::Idle {
            common,
            connections,
            rooms,
            hold_secs,
            settle_secs,
        } => {
            let common = common.check()?;
            let [pid] = common.pids[..] else {
                return Err("idle needs one --pid: it measures that daemon's RSS".into());
            };
            if common.servers.len() != 1 {
                return Err("idle measures one daemon: give one --server".into());
            }
            idle::run(
                idle::IdleOpts {
                    common,
                    pid,
                    connections,
                    rooms,
                    hold: secs("hold-secs", hold_secs)?,
                    settle: secs("settle-secs", settle_secs)?,
                },
                clock,
            )
            .map(Verdict::of)
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(Verdict::Clean) => ExitCode::SUCCESS,
        Ok(Verdict::NotClean) => ExitCode::from(1),
        Ok(Verdict::NoneJoined) => {
            eprintln!(
                "ringchat-load: no member could join, so nothing was measured (the report says \
                 why; against redis-server, give --target redis)"
            );
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("ringchat-load: {e}");
            ExitCode::from(2)
        }
    }
}
