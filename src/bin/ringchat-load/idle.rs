//! The `idle` scenario: what an idle connection costs the daemon in memory (and CPU to set up).
//!
//! RSS of the daemon before, then C connections opened in batches (each Hello with a unique
//! user and Join of one of a few rooms), RSS after all joined, hold, close, RSS after closing.

use std::time::{Duration, Instant};

use ringchat::codec::{self, ClientFrame, ErrorCode, ServerFrame};
use serde_json::{json, Value};

use crate::net::{Clock, Event, Net};
use crate::procfs::{self, CpuSample};
use crate::report::{round1, round3, CpuUse};
use crate::{Common, Stall, JOIN_STALLED, JOIN_TIMED_OUT};

pub struct IdleOpts {
    pub common: Common,
    pub pid: u32,
    pub connections: usize,
    pub rooms: usize,
    pub hold: Duration,
    pub settle: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Handshake,
    Joined,
    Dead,
}

struct Idle {
    opts: IdleOpts,
    net: Net,
    stages: Vec<Stage>,
    events: Vec<(usize, u64, Event)>,
    joined: usize,
    dead: usize,
    errors: u64,
    samples: Vec<String>,
    deadline: Instant,
}

/// Runs the idle scenario, prints its report; returns true if every connection joined.
pub fn run(opts: IdleOpts, clock: Clock) -> Result<bool, String> {
    let (soft, hard) =
        procfs::raise_nofile().map_err(|e| format!("cannot raise RLIMIT_NOFILE: {e}"))?;
    if (soft as usize) < opts.connections + 16 {
        return Err(format!(
            "{} connections need more file descriptors than the limit ({soft}, hard {hard})",
            opts.connections
        ));
    }
    if opts.rooms == 0 {
        return Err("--rooms must be at least 1".into());
    }
    let net = Net::new(opts.common.servers.clone(), clock)
        .map_err(|e| format!("cannot create poll: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs_f64(opts.common.timeout_secs);
    let mut idle = Idle {
        stages: Vec::with_capacity(opts.connections),
        opts,
        net,
        events: Vec::new(),
        joined: 0,
        dead: 0,
        errors: 0,
        samples: Vec::new(),
        deadline,
    };
    idle.go(clock)
}

impl Idle {
    fn pump(&mut self, timeout: Duration) -> Result<(), String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        self.net
            .poll(timeout.min(left), &mut self.events)
            .map_err(|e| format!("poll: {e}"))?;
        while !self.events.is_empty() {
            for (i, _, ev) in std::mem::take(&mut self.events) {
                self.handle(i, ev);
            }
        }
        Ok(())
    }

    /// Keeps reading (notices of other joins keep arriving) for `d`, bounded by the deadline.
    fn idle_for(&mut self, d: Duration) -> Result<(), String> {
        let until = Instant::now() + d;
        while Instant::now() < until && Instant::now() < self.deadline {
            self.pump(until.saturating_duration_since(Instant::now()))?;
        }
        Ok(())
    }

    fn sample(&mut self, s: String) {
        if self.samples.len() < 10 {
            eprintln!("{s}");
            self.samples.push(s);
        }
    }

    fn handle(&mut self, i: usize, ev: Event) {
        match ev {
            Event::Frame(f) => match *f {
                ServerFrame::Joined(_) if self.stages[i] == Stage::Handshake => {
                    self.stages[i] = Stage::Joined;
                    self.joined += 1;
                }
                ServerFrame::Error(e) => {
                    self.errors += 1;
                    let name = ErrorCode::from_u16(e.code).map_or("UNKNOWN", |c| c.name());
                    self.sample(format!(
                        "error for connection {i}: {name} ({}) {}",
                        e.code, e.message
                    ));
                    if self.stages[i] == Stage::Handshake {
                        self.net
                            .close(i, "refused while joining".into(), &mut self.events);
                    }
                }
                _ => {}
            },
            Event::Resp(_) | Event::Delivery(_) => {}
            Event::Closed(reason) => {
                if self.stages[i] != Stage::Dead {
                    if self.stages[i] == Stage::Joined {
                        self.joined -= 1;
                    }
                    self.stages[i] = Stage::Dead;
                    self.dead += 1;
                    self.sample(format!("connection {i} lost: {reason}"));
                }
            }
        }
    }

    fn go(&mut self, clock: Clock) -> Result<bool, String> {
        let pid = self.opts.pid;
        let clk = procfs::clk_tck();
        let run = run_tag(clock);
        // Random per run: client ids must not repeat across runs on one server.
        let client_base = fastrand::u64(..) << 32;
        let rss = |what: &str| {
            procfs::rss_bytes(pid)
                .map_err(|e| format!("cannot read the RSS of pid {pid} ({what}): {e}"))
        };
        let rss_before = rss("before")?;
        let cpu0 = CpuSample::take(&[pid]);
        let t0 = clock.nanos();
        let mut outcome = "complete";
        let total = self.opts.connections;
        while self.stages.len() < total {
            let batch_end = (self.stages.len() + self.opts.common.batch).min(total);
            while self.stages.len() < batch_end {
                let i = self.net.connect(&mut self.events);
                self.stages.push(Stage::Handshake);
                let hello = ClientFrame::Hello(codec::Hello {
                    user: format!("idle-{run}-{i}"),
                    client_id: client_base | i as u64,
                });
                let join = ClientFrame::Join(codec::Join {
                    room: format!("idle-{run}-{}", i % self.opts.rooms),
                    after_seq: None,
                });
                self.net.send(i, &hello, &mut self.events);
                self.net.send(i, &join, &mut self.events);
            }
            let mut stall = Stall::new(self.opts.common.join_stall);
            while self.joined + self.dead < self.stages.len() && Instant::now() < self.deadline {
                if stall.stalled(self.joined + self.dead) {
                    break;
                }
                self.pump(Duration::from_millis(100))?;
            }
            if Instant::now() >= self.deadline {
                outcome = JOIN_TIMED_OUT;
                break;
            }
            if self.joined + self.dead < self.stages.len() {
                outcome = JOIN_STALLED;
                break;
            }
        }
        let connect_secs = (clock.nanos() - t0) as f64 / 1e9;
        let cpu1 = CpuSample::take(&[pid]);
        self.idle_for(self.opts.settle)?;
        let rss_after = rss("after joining")?;
        let joined_at_rss = self.joined;
        self.idle_for(self.opts.hold)?;
        let still_open = self.joined;
        self.net.close_all();
        std::thread::sleep(self.opts.settle);
        let rss_closed = rss("after closing").ok();

        let cpu = CpuUse::between(
            cpu0,
            cpu1,
            clk,
            ("connection", "connections"),
            joined_at_rss as u64,
        );
        let growth = rss_after as i64 - rss_before as i64;
        let per_conn = if joined_at_rss > 0 {
            growth as f64 / joined_at_rss as f64
        } else {
            0.0
        };
        let clean = outcome == "complete" && self.dead == 0 && still_open == total;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let o = &self.opts;
        if o.common.json {
            let mut v = json!({
                "mode": "idle",
                "server": crate::chat::server_list(&o.common.servers),
                "pid": pid,
                "connections": total,
                "joined": joined_at_rss,
                "still_open_after_hold": still_open,
                "failed": self.dead,
                "errors": self.errors,
                "outcome": outcome,
                "clean": clean,
                "connect_elapsed_s": round3(connect_secs),
                "connections_per_s": round1(joined_at_rss as f64 / connect_secs.max(1e-9)),
                "rss_before_bytes": rss_before,
                "rss_after_bytes": rss_after,
                "rss_after_close_bytes": rss_closed,
                "rss_growth_bytes": growth,
                "rss_growth_per_connection_bytes": round1(per_conn),
                "samples": self.samples,
            });
            if let (Value::Object(m), Value::Object(c)) = (&mut v, cpu.json()) {
                m.extend(c);
            }
            println!("{v}");
        } else {
            println!(
                "ringchat-load idle: {total} connections in {} room(s), batches of {}, server {}, daemon pid {pid}",
                o.rooms,
                o.common.batch,
                crate::chat::server_list(&o.common.servers)
            );
            println!("outcome:     {outcome}");
            println!(
                "joined:      {joined_at_rss}/{total} in {connect_secs:.2} s = {:.0} connections/s  (failed {}, errors {}, open after hold {still_open})",
                joined_at_rss as f64 / connect_secs.max(1e-9),
                self.dead,
                self.errors
            );
            println!(
                "daemon RSS:  {:.1} MiB before, {:.1} MiB with all joined, {} after closing",
                mib(rss_before),
                mib(rss_after),
                rss_closed.map_or("?".into(), |b| format!("{:.1} MiB", mib(b)))
            );
            println!(
                "per conn:    {per_conn:.0} bytes of daemon RSS growth per idle connection ({growth} bytes / {joined_at_rss})"
            );
            for l in cpu.lines() {
                println!("{l}");
            }
            println!("result:      {}", if clean { "CLEAN" } else { "NOT CLEAN" });
        }
        Ok(clean)
    }
}

/// A short tag making user names unique per run.
fn run_tag(clock: Clock) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
        ^ clock.nanos();
    format!("{:06x}", t & 0xFF_FFFF)
}
