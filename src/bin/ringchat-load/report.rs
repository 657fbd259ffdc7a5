//! Figures shared by the scenarios: latency summaries and CPU accounting.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::procfs::CpuSample;

/// A latency histogram in nanoseconds (1 ns .. 1 h, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// p50/p99/p99.9/max/mean of a nanosecond histogram, in microseconds.
pub struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        let us = |ns: u64| ns as f64 / 1000.0;
        if h.is_empty() {
            return Latency {
                count: 0,
                p50: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
                mean: 0.0,
            };
        }
        Latency {
            count: h.len(),
            p50: us(h.value_at_quantile(0.50)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
        }
    }

    pub fn line(&self) -> String {
        if self.count == 0 {
            return "no samples".to_owned();
        }
        format!(
            "p50 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}  mean {:.0}  ({} samples)",
            self.p50, self.p99, self.p999, self.max, self.mean, self.count
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "count": self.count,
            "p50": round1(self.p50),
            "p99": round1(self.p99),
            "p999": round1(self.p999),
            "max": round1(self.max),
            "mean": round1(self.mean),
        })
    }
}

pub fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// CPU consumed between two samples, per unit of work.
pub struct CpuUse {
    pub clk_tck: u64,
    pub clk_tck_measured: bool,
    pub daemon_s: Option<f64>,
    /// The daemons' page faults and sleeps in their poll (voluntary context switches).
    pub daemon_faults_sleeps: Option<(u64, u64)>,
    pub tool_s: f64,
    /// What the work is (e.g. "delivery", "connection").
    pub unit: &'static str,
    /// Its plural.
    pub units_name: &'static str,
    pub units: u64,
}

impl CpuUse {
    pub fn between(
        a: CpuSample,
        b: CpuSample,
        (clk_tck, clk_tck_measured): (u64, bool),
        (unit, units_name): (&'static str, &'static str),
        units: u64,
    ) -> CpuUse {
        let secs = |t: u64| t as f64 / clk_tck as f64;
        CpuUse {
            clk_tck,
            clk_tck_measured,
            daemon_s: match (a.daemon_ticks, b.daemon_ticks) {
                (Some(x), Some(y)) => Some(secs(y.saturating_sub(x))),
                _ => None,
            },
            daemon_faults_sleeps: match (a.daemon_faults_sleeps, b.daemon_faults_sleeps) {
                (Some(x), Some(y)) => Some((y.0.saturating_sub(x.0), y.1.saturating_sub(x.1))),
                _ => None,
            },
            tool_s: secs(b.tool_ticks.saturating_sub(a.tool_ticks)),
            unit,
            units_name,
            units,
        }
    }

    /// Daemon CPU microseconds per unit.
    pub fn daemon_us_per_unit(&self) -> Option<f64> {
        match self.daemon_s {
            Some(s) if self.units > 0 => Some(s * 1e6 / self.units as f64),
            _ => None,
        }
    }

    pub fn lines(&self) -> Vec<String> {
        let tck = if self.clk_tck_measured {
            format!("CLK_TCK {}", self.clk_tck)
        } else {
            format!("CLK_TCK assumed {}", self.clk_tck)
        };
        let resolution = 1.0 / self.clk_tck as f64;
        let mut out = Vec::new();
        match (self.daemon_s, self.daemon_us_per_unit()) {
            (Some(s), Some(per)) => out.push(format!(
                "daemon CPU:  {s:.2} s = {per:.2} µs per {u} = {m:.2} s per million {us}  ({tck}, ±{resolution} s)",
                u = self.unit,
                us = self.units_name,
                m = per,
            )),
            (Some(s), None) => out.push(format!("daemon CPU:  {s:.2} s (no {})  ({tck})", self.units_name)),
            _ => out.push("daemon CPU:  not measured (give --pid)".to_owned()),
        }
        if let Some((faults, sleeps)) = self.daemon_faults_sleeps {
            let per_k = |n: u64| match self.units {
                0 => String::new(),
                u => format!(
                    " = {:.2} per thousand {}",
                    n as f64 * 1e3 / u as f64,
                    self.units_name
                ),
            };
            out.push(format!(
                "daemon sleeps in poll: {sleeps}{}; page faults: {faults}{}",
                per_k(sleeps),
                per_k(faults)
            ));
        }
        let tool_per = if self.units > 0 {
            format!(
                " = {:.2} µs per {}",
                self.tool_s * 1e6 / self.units as f64,
                self.unit
            )
        } else {
            String::new()
        };
        out.push(format!(
            "tool CPU:    {:.2} s{tool_per}  (this load generator, same machine)",
            self.tool_s
        ));
        out
    }

    pub fn json(&self) -> Value {
        let per = self.daemon_us_per_unit();
        let mut m = serde_json::Map::new();
        m.insert("clk_tck".into(), json!(self.clk_tck));
        m.insert("clk_tck_measured".into(), json!(self.clk_tck_measured));
        m.insert("daemon_cpu_s".into(), json!(self.daemon_s.map(round3)));
        m.insert(
            format!("daemon_cpu_us_per_{}", self.unit),
            json!(per.map(round3)),
        );
        m.insert(
            format!("daemon_cpu_s_per_million_{}", self.units_name),
            json!(per.map(round3)),
        );
        m.insert(
            "daemon_page_faults".into(),
            json!(self.daemon_faults_sleeps.map(|a| a.0)),
        );
        m.insert(
            "daemon_poll_sleeps".into(),
            json!(self.daemon_faults_sleeps.map(|a| a.1)),
        );
        m.insert("tool_cpu_s".into(), json!(round3(self.tool_s)));
        Value::Object(m)
    }
}
