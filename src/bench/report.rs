//! What `sluice bench` writes: `bench.json` (the contract other tools read),
//! `BENCH.md` (tables and the goals as measured ratios) and SVG plots drawn
//! here, so the benchmark needs no plotting crate or font.

use super::{ABLATION, Sample};
use crate::tool::{Context, ToolResult};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub os: String,
    pub cpu: String,
    pub postgres: String,
    pub sluice: &'static str,
    pub quick: bool,
    pub run_seconds: f64,
    pub repetitions: usize,
    pub date_unix_ms: i64,
}

impl Machine {
    pub fn here(postgres: String, quick: bool, run: Duration, repetitions: usize) -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|s| s.trim().to_owned())
            })
            .unwrap_or_default();
        let memory = sysinfo::System::new().map_or(0, |mut system| {
            system.refresh_memory();
            system.total_memory()
        });
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: memory as f64 / (1u64 << 30) as f64,
            os: sysinfo::System::long_os_version().unwrap_or_default(),
            cpu,
            postgres,
            sluice: env!("CARGO_PKG_VERSION"),
            quick,
            run_seconds: run.as_secs_f64(),
            repetitions,
            date_unix_ms: crate::clock::wall_ms(),
        }
    }
}

/// One entry of `bench.json`'s `runs`: a workload, setting and contender,
/// each figure the median over the repetitions.
#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    pub workload: String,
    pub theta: Option<f64>,
    pub load: Option<f64>,
    pub contender: String,
    pub goodput: f64,
    pub applied: u64,
    pub wasted_writes: u64,
    pub client_conflicts: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub timeouts: u64,
    pub rejected_429: u64,
    pub cpu_us_per_mutation: Option<f64>,
    /// The link's round trip between the clients and the service they
    /// talk to (0: loopback, no link).
    pub rtt_ms: f64,
    /// Where a Sluice contender sits: `next-to-store` (loopback to
    /// PostgreSQL) or `own-tier` (the link between it and PostgreSQL too);
    /// `None` for the direct contenders.
    pub placement: Option<String>,
    pub cpu_us_per_intent: CpuPerIntent,
    /// Latency quantiles (ms) at 0%, 1%, … 100%, for the distribution plot.
    #[serde(skip)]
    pub quantiles_ms: Vec<f64>,
}

/// User+system CPU of each part of the machine per applied intent (µs);
/// `None` where that part takes no part (Sluice for a direct contender,
/// the relay on loopback) or cannot be read (a PostgreSQL elsewhere).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct CpuPerIntent {
    pub sluice: Option<f64>,
    pub postgres: Option<f64>,
    pub client: Option<f64>,
    pub relay: Option<f64>,
}

/// The link's round trip as measured by ping-pongs through it, idle.
#[derive(Clone, Debug, Serialize)]
pub struct LinkRecord {
    pub rtt_ms: f64,
    pub median_ms: f64,
    pub p99_ms: f64,
}

/// Sluice's capacity at one round trip: what that link's overload loads
/// are multiples of.
#[derive(Clone, Debug, Serialize)]
pub struct CapacityRecord {
    pub rtt_ms: f64,
    pub goodput: f64,
}

/// The yardstick's goal: missed, the direct baseline is too weak and the
/// bench fails.
pub const YARDSTICK_GOAL: &str = "the bench's direct-lock / pgbench-lock";

#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    pub goal: String,
    pub measured: f64,
    pub target: f64,
    pub met: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub machine: Machine,
    pub runs: Vec<RunRecord>,
    /// Sluice's goodput on uniform keys, closed loop, no think time, at the
    /// first round trip: what its `overload` loads are multiples of.
    pub capacity: Option<f64>,
    /// The same at every round trip.
    pub capacities: Vec<CapacityRecord>,
    /// The link at each round trip of the run, measured.
    pub links: Vec<LinkRecord>,
    /// The `writes` workload's records again (group commit against direct
    /// writes), where readers of an earlier `bench.json` look for them.
    pub group_commit: Vec<RunRecord>,
    /// `hot` at θ = 0.99, Sluice's features turned on one at a time.
    pub ablation: Vec<RunRecord>,
    pub goals: Vec<Goal>,
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn median_u64(values: impl Iterator<Item = u64>) -> u64 {
    median(values.map(|v| v as f64).collect()).round() as u64
}

/// Groups samples (one `RunRecord` a run) by workload, setting and contender
/// (first-seen order) and takes each figure's median.
fn medians(samples: &[Sample]) -> Vec<RunRecord> {
    let mut groups: Vec<Vec<&Sample>> = Vec::new();
    for s in samples {
        let same = |g: &Vec<&Sample>| {
            let f = g[0];
            f.workload == s.workload
                && f.theta == s.theta
                && f.load == s.load
                && f.contender == s.contender
                && f.rtt_ms == s.rtt_ms
                && f.placement == s.placement
        };
        match groups.iter_mut().find(|g| same(g)) {
            Some(g) => g.push(s),
            None => groups.push(vec![s]),
        }
    }
    groups
        .into_iter()
        .map(|g| {
            let f = g[0];
            let cpu: Vec<f64> = g.iter().filter_map(|s| s.cpu_us_per_mutation).collect();
            RunRecord {
                workload: f.workload.clone(),
                theta: f.theta,
                load: f.load,
                contender: f.contender.clone(),
                goodput: median(g.iter().map(|s| s.goodput).collect()),
                applied: median_u64(g.iter().map(|s| s.applied)),
                wasted_writes: median_u64(g.iter().map(|s| s.wasted_writes)),
                client_conflicts: median_u64(g.iter().map(|s| s.client_conflicts)),
                p50_ms: median(g.iter().map(|s| s.p50_ms).collect()),
                p99_ms: median(g.iter().map(|s| s.p99_ms).collect()),
                p999_ms: median(g.iter().map(|s| s.p999_ms).collect()),
                timeouts: median_u64(g.iter().map(|s| s.timeouts)),
                rejected_429: median_u64(g.iter().map(|s| s.rejected_429)),
                cpu_us_per_mutation: (!cpu.is_empty()).then(|| median(cpu)),
                rtt_ms: f.rtt_ms,
                placement: f.placement.clone(),
                cpu_us_per_intent: {
                    let part = |pick: fn(&CpuPerIntent) -> Option<f64>| {
                        let values: Vec<f64> = g
                            .iter()
                            .filter_map(|s| pick(&s.cpu_us_per_intent))
                            .collect();
                        (!values.is_empty()).then(|| median(values))
                    };
                    CpuPerIntent {
                        sluice: part(|c| c.sluice),
                        postgres: part(|c| c.postgres),
                        client: part(|c| c.client),
                        relay: part(|c| c.relay),
                    }
                },
                quantiles_ms: (0..f.quantiles_ms.len())
                    .map(|i| {
                        median(
                            g.iter()
                                .filter_map(|s| s.quantiles_ms.get(i).copied())
                                .collect(),
                        )
                    })
                    .collect(),
            }
        })
        .collect()
}

impl BenchReport {
    pub fn new(
        machine: Machine,
        links: Vec<LinkRecord>,
        samples: &[Sample],
        capacity: &[Sample],
        ablation: &[Sample],
    ) -> BenchReport {
        let runs = medians(samples);
        // Kept for the readers of `bench.json`'s earlier shape.
        let group_commit = runs
            .iter()
            .filter(|r| r.workload == "writes")
            .cloned()
            .collect();
        let mut ablation_runs: Vec<RunRecord> = Vec::new();
        let mut rtts: Vec<f64> = ablation.iter().map(|s| s.rtt_ms).collect();
        rtts.dedup();
        let steps = medians(ablation);
        for rtt in rtts {
            // The ends of the ablation are the contenders themselves.
            let at = |name: &str| {
                runs.iter()
                    .find(|r| {
                        r.workload == "hot"
                            && r.theta == Some(0.99)
                            && r.contender == name
                            && r.rtt_ms == rtt
                            && r.placement.as_deref() != Some("own-tier")
                    })
                    .cloned()
            };
            if let Some(mut fifo) = at("sluice-fifo") {
                fifo.contender = format!("sluice-{}", ABLATION[0].0);
                ablation_runs.push(fifo);
            }
            ablation_runs.extend(steps.iter().filter(|r| r.rtt_ms == rtt).cloned());
            if let Some(mut all) = at("sluice") {
                all.contender = format!(
                    "sluice-{}",
                    ABLATION[ABLATION.len() - 1].0.trim_start_matches('+')
                );
                ablation_runs.push(all);
            }
        }
        let capacities: Vec<CapacityRecord> = medians(capacity)
            .into_iter()
            .map(|r| CapacityRecord {
                rtt_ms: r.rtt_ms,
                goodput: r.goodput,
            })
            .collect();
        let mut report = BenchReport {
            machine,
            runs,
            capacity: capacities.first().map(|c| c.goodput),
            capacities,
            links,
            group_commit,
            ablation: ablation_runs,
            goals: Vec::new(),
        };
        report.goals = report.goals();
        report
    }

    /// The round trips of this run's records, in the order they ran.
    fn rtts(&self) -> Vec<f64> {
        let mut rtts: Vec<f64> = Vec::new();
        for r in self.runs.iter().chain(&self.group_commit) {
            if !rtts.contains(&r.rtt_ms) {
                rtts.push(r.rtt_ms);
            }
        }
        rtts
    }

    /// A record of this run: Sluice next to its store where it is Sluice.
    fn find(
        &self,
        workload: &str,
        theta: Option<f64>,
        load: Option<f64>,
        contender: &str,
        rtt_ms: f64,
    ) -> Option<&RunRecord> {
        self.runs.iter().find(|r| {
            r.workload == workload
                && r.theta == theta
                && r.load == load
                && r.contender == contender
                && r.rtt_ms == rtt_ms
                && r.placement.as_deref() != Some("own-tier")
        })
    }

    /// The goals, each as a ratio measured in this run, at each round trip
    /// it has (`R=…` in the goal's name).
    fn goals(&self) -> Vec<Goal> {
        let mut goals = Vec::new();
        let mut goal = |goal: String, measured: f64, target: f64, at_most: bool| {
            let met = if at_most {
                measured <= target
            } else {
                measured >= target
            };
            goals.push(Goal {
                goal,
                measured: (measured * 1000.0).round() / 1000.0,
                target,
                met,
            });
        };
        let ratio = |a: f64, b: f64| a / b.max(f64::MIN_POSITIVE);
        for l in &self.links {
            goal(
                format!(
                    "R={} ms: the link's median round trip, off R by (share of R)",
                    l.rtt_ms
                ),
                (ratio(l.median_ms, l.rtt_ms) - 1.0).abs(),
                0.2,
                true,
            );
        }
        for rtt in self.rtts() {
            let at = format!("R={rtt} ms");
            let linked = rtt > 0.0;
            for theta in super::THETAS {
                let t = Some(theta);
                let (Some(s), Some(occ), Some(lock)) = (
                    self.find("hot", t, None, "sluice", rtt),
                    self.find("hot", t, None, "direct-occ", rtt),
                    self.find("hot", t, None, "direct-lock", rtt),
                ) else {
                    continue;
                };
                let best = occ.goodput.max(lock.goodput);
                if linked || theta == 0.99 {
                    goal(
                        format!(
                            "{at}, hot θ={theta}: sluice goodput / the better direct contender's"
                        ),
                        ratio(s.goodput, best),
                        1.0,
                        false,
                    );
                }
                if theta == 0.99 && linked {
                    goal(
                        format!("{at}, hot θ=0.99: sluice goodput / direct-occ's"),
                        ratio(s.goodput, occ.goodput),
                        3.0,
                        false,
                    );
                    goal(
                        format!("{at}, hot θ=0.99: sluice goodput / direct-lock's"),
                        ratio(s.goodput, lock.goodput),
                        2.0,
                        false,
                    );
                    goal(
                        format!("{at}, hot θ=0.99: sluice p99 / direct-occ's"),
                        ratio(s.p99_ms, occ.p99_ms),
                        0.5,
                        true,
                    );
                    goal(
                        format!("{at}, hot θ=0.99: sluice wasted store writes / applied"),
                        s.wasted_writes as f64 / s.applied.max(1) as f64,
                        0.01,
                        true,
                    );
                }
                if theta == 0.0 {
                    goal(
                        format!("{at}, hot θ=0: sluice goodput / direct-occ's"),
                        ratio(s.goodput, occ.goodput),
                        if linked { 0.95 } else { 0.9 },
                        false,
                    );
                }
                if !linked {
                    let cpu_max = match theta {
                        0.0 => Some(40.0),
                        0.99 => Some(60.0),
                        _ => None,
                    };
                    if let (Some(max), Some(cpu)) = (cpu_max, s.cpu_us_per_intent.sluice) {
                        goal(
                            format!("{at}, hot θ={theta}: Sluice's CPU µs per intent"),
                            cpu,
                            max,
                            true,
                        );
                    }
                    let machine = |r: &RunRecord| {
                        let c = r.cpu_us_per_intent;
                        match (c.postgres, c.client) {
                            (Some(pg), Some(client)) => Some(pg + client + c.sluice.unwrap_or(0.0)),
                            _ => None,
                        }
                    };
                    if theta == 0.99
                        && let (Some(mine), Some(theirs)) = (machine(s), machine(lock))
                    {
                        goal(
                            format!(
                                "{at}, hot θ=0.99: machine CPU per intent, sluice / direct-lock"
                            ),
                            ratio(mine, theirs),
                            1.0,
                            true,
                        );
                    }
                }
            }
            if linked
                && let (Some(s), Some(occ), Some(lock)) = (
                    self.find("external", Some(0.99), None, "sluice", rtt),
                    self.find("external", Some(0.99), None, "direct-occ", rtt),
                    self.find("external", Some(0.99), None, "direct-lock", rtt),
                )
            {
                goal(
                    format!("{at}, external: sluice goodput / the better direct contender's"),
                    ratio(s.goodput, occ.goodput.max(lock.goodput)),
                    1.0,
                    false,
                );
            }
            let overload: Vec<&RunRecord> = self
                .runs
                .iter()
                .filter(|r| r.workload == "overload" && r.contender == "sluice" && r.rtt_ms == rtt)
                .collect();
            // The peak of the goodput-against-offered-load curve: the same
            // open-loop intents at every load (the capacity run is a closed
            // loop without think time, only the loads' yardstick).
            let peak = overload.iter().map(|r| r.goodput).fold(0.0, f64::max);
            let unloaded = overload.iter().find(|r| r.load == Some(0.5));
            for (load, share) in [(2.0, 0.9), (4.0, 0.8)] {
                let Some(run) = overload.iter().find(|r| r.load == Some(load)) else {
                    continue;
                };
                goal(
                    format!("{at}, overload {load}×: sluice goodput / peak goodput"),
                    ratio(run.goodput, peak),
                    share,
                    false,
                );
                if load == 2.0
                    && let Some(unloaded) = unloaded
                {
                    goal(
                        format!("{at}, overload 2×: sluice admitted p99 / unloaded (0.5×) p99"),
                        ratio(run.p99_ms, unloaded.p99_ms),
                        3.0,
                        true,
                    );
                }
                goal(
                    format!("{at}, overload {load}×: sluice time-outs"),
                    run.timeouts as f64,
                    0.0,
                    true,
                );
            }
            let writes = |c: &str| {
                self.runs
                    .iter()
                    .find(|r| r.workload == "writes" && r.contender == c && r.rtt_ms == rtt)
            };
            if let (false, Some(ceiling)) = (linked, writes("direct-batched")) {
                for (c, share) in [("sluice", 0.5), ("sluice-batch", 0.8)] {
                    if let Some(r) = writes(c) {
                        goal(
                            format!("{at}, writes: {c} / direct-batched (the batched ceiling)"),
                            ratio(r.goodput, ceiling.goodput),
                            share,
                            false,
                        );
                    }
                }
            }
            if let (false, Some(cpu)) =
                (linked, writes("sluice").and_then(|r| r.cpu_us_per_mutation))
            {
                goal(
                    format!("{at}, writes: Sluice's CPU µs per unconditional mutation"),
                    cpu,
                    20.0,
                    true,
                );
            }
            let yardstick = |c: &str| {
                self.runs
                    .iter()
                    .find(|r| r.workload == "yardstick" && r.contender == c && r.rtt_ms == rtt)
            };
            if let (Some(bench), Some(pgbench)) =
                (yardstick("direct-lock"), yardstick("pgbench-lock"))
            {
                goal(
                    format!("{at}, yardstick: {YARDSTICK_GOAL}"),
                    ratio(bench.goodput, pgbench.goodput),
                    0.85,
                    false,
                );
            }
        }
        goals
    }

    pub fn write(&self, dir: &Path) -> ToolResult<()> {
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
        };
        write("bench.json", &serde_json::to_vec_pretty(self)?)?;
        write("BENCH.md", self.markdown().as_bytes())?;
        for rtt in self.rtts() {
            // Loopback's plots keep their names; a link's are named by it.
            let (suffix, title) = if rtt > 0.0 {
                (format!("-r{rtt}ms"), format!(", R={rtt} ms"))
            } else {
                (String::new(), String::new())
            };
            let contenders = ["direct-occ", "direct-lock", "sluice-fifo", "sluice"];
            let thetas: Vec<f64> = super::THETAS.to_vec();
            let series = |figure: &dyn Fn(&RunRecord) -> f64| -> Vec<Series> {
                contenders
                    .iter()
                    .map(|c| Series {
                        name: (*c).to_owned(),
                        points: thetas
                            .iter()
                            .enumerate()
                            .filter_map(|(i, t)| {
                                self.find("hot", Some(*t), None, c, rtt)
                                    .map(|r| (i as f64, figure(r)))
                            })
                            .collect(),
                    })
                    .collect()
            };
            let ticks: Vec<(f64, String)> = thetas
                .iter()
                .enumerate()
                .map(|(i, t)| (i as f64, format!("{t}")))
                .collect();
            write(
                &format!("goodput-vs-skew{suffix}.svg"),
                Plot {
                    title: &format!("hot{title}: goodput against key skew"),
                    x_label: "Zipf θ",
                    y_label: "intents applied per second",
                    x_ticks: Some(ticks.clone()),
                    log_x: false,
                    log_y: false,
                    series: series(&|r| r.goodput),
                }
                .svg()
                .as_bytes(),
            )?;
            write(
                &format!("p99-vs-skew{suffix}.svg"),
                Plot {
                    title: &format!("hot{title}: p99 latency per intent against key skew"),
                    x_label: "Zipf θ",
                    y_label: "p99 ms (log)",
                    x_ticks: Some(ticks),
                    log_x: false,
                    log_y: true,
                    series: series(&|r| r.p99_ms),
                }
                .svg()
                .as_bytes(),
            )?;
            let cdf: Vec<Series> = contenders
                .iter()
                .filter_map(|c| self.find("hot", Some(0.99), None, c, rtt))
                .map(|r| Series {
                    name: r.contender.clone(),
                    points: r
                        .quantiles_ms
                        .iter()
                        .enumerate()
                        .map(|(i, ms)| (ms.max(0.01), i as f64 / 100.0))
                        .collect(),
                })
                .collect();
            write(
                &format!("latency-theta-0.99{suffix}.svg"),
                Plot {
                    title: &format!("hot θ=0.99{title}: latency distribution per intent"),
                    x_label: "ms (log)",
                    y_label: "share of intents at most",
                    x_ticks: None,
                    log_x: true,
                    log_y: false,
                    series: cdf,
                }
                .svg()
                .as_bytes(),
            )?;
        }
        Ok(())
    }

    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut md = String::new();
        let _ = writeln!(md, "# sluice bench\n");
        let _ = writeln!(
            md,
            "{} cores ({}), {:.0} GiB, {}; PostgreSQL {}; Sluice {}. {} run: {} s per run, {} repetition(s), contenders interleaved; each figure is the median over the repetitions. Reproduce with `sluice bench{}`.\n",
            m.cores,
            m.cpu,
            m.memory_gib,
            m.os,
            m.postgres,
            m.sluice,
            if m.quick { "Quick" } else { "Full" },
            m.run_seconds,
            m.repetitions,
            if m.quick { " --quick" } else { "" },
        );
        let _ = writeln!(
            md,
            "## Goals\n\n| goal | measured | target | met |\n|---|---:|---:|:---:|"
        );
        for g in &self.goals {
            let _ = writeln!(
                md,
                "| {} | {} | {} {} | {} |",
                g.goal,
                g.measured,
                if g.goal.contains("p99")
                    || g.goal.contains("wasted")
                    || g.goal.contains("time-outs")
                    || g.goal.contains("CPU")
                    || g.goal.contains("off R by")
                {
                    "≤"
                } else {
                    "≥"
                },
                g.target,
                if g.met { "yes" } else { "**no**" }
            );
        }
        if !self.links.is_empty() {
            let _ = writeln!(
                md,
                "\n## The link\n\nA relay in the bench holds the bytes of each direction for R/2, then forwards them in order, per connection, between every client and the service it talks to (PostgreSQL for the direct contenders, Sluice for the Sluice contenders). Sluice reaches PostgreSQL over loopback (`next-to-store`) except in the `own-tier` rows, where the link lies between Sluice and PostgreSQL too. R = 0 is loopback, no relay. Measured before the runs, idle, by {} one-byte ping-pongs; the relay's own CPU per intent is in the tables (column *relay*).\n\n| R ms | median ms | p99 ms | median / R |\n|---:|---:|---:|---:|",
                super::LINK_PINGS
            );
            for l in &self.links {
                let _ = writeln!(
                    md,
                    "| {} | {:.3} | {:.3} | {:.2} |",
                    l.rtt_ms,
                    l.median_ms,
                    l.p99_ms,
                    l.median_ms / l.rtt_ms.max(f64::MIN_POSITIVE)
                );
            }
        }
        for rtt in self.rtts() {
            for workload in [
                "hot",
                "overload",
                "external",
                "trace",
                "writes",
                "yardstick",
            ] {
                let rows: Vec<&RunRecord> = self
                    .runs
                    .iter()
                    .filter(|r| r.workload == workload && r.rtt_ms == rtt)
                    .collect();
                if rows.is_empty() {
                    continue;
                }
                let _ = writeln!(md, "\n## {workload}, R = {rtt} ms\n");
                if workload == "overload"
                    && let Some(c) = self.capacities.iter().find(|c| c.rtt_ms == rtt)
                {
                    let _ = writeln!(
                        md,
                        "Loads are multiples of Sluice's capacity on uniform keys at this round trip, measured first: {:.0} intents/s.\n",
                        c.goodput
                    );
                }
                if let Some(text) = about(workload) {
                    let _ = writeln!(md, "{text}\n");
                }
                table(&mut md, &rows);
            }
        }
        if !self.ablation.is_empty() {
            let _ = writeln!(
                md,
                "\n## Each feature's share (hot, θ = 0.99)\n\nFrom the plain queue (`sluice-fifo`) to everything (`sluice`), one feature turned on at a time, at each round trip; the share is the step's goodput gain over the whole gain.\n\n| R ms | configuration | goodput | step | share of the gain | p99 ms |\n|---:|---|---:|---:|---:|---:|"
            );
            for rtt in self.rtts() {
                let steps: Vec<&RunRecord> =
                    self.ablation.iter().filter(|r| r.rtt_ms == rtt).collect();
                let first = steps.first().map_or(0.0, |r| r.goodput);
                let last = steps.last().map_or(0.0, |r| r.goodput);
                let whole = last - first;
                let mut previous = first;
                for r in steps {
                    let step = r.goodput - previous;
                    let share = if whole.abs() > f64::EPSILON {
                        format!("{:.0}%", 100.0 * step / whole)
                    } else {
                        "–".into()
                    };
                    let _ = writeln!(
                        md,
                        "| {} | {} | {:.0} | {:+.0} | {} | {:.1} |",
                        r.rtt_ms, r.contender, r.goodput, step, share, r.p99_ms
                    );
                    previous = r.goodput;
                }
            }
        }
        let _ = writeln!(
            md,
            "\n## Plots\n\n![goodput](goodput-vs-skew.svg)\n![p99](p99-vs-skew.svg)\n![latency](latency-theta-0.99.svg)"
        );
        for rtt in self.rtts().into_iter().filter(|r| *r > 0.0) {
            let _ = writeln!(
                md,
                "![goodput, R={rtt} ms](goodput-vs-skew-r{rtt}ms.svg)\n![p99, R={rtt} ms](p99-vs-skew-r{rtt}ms.svg)\n![latency, R={rtt} ms](latency-theta-0.99-r{rtt}ms.svg)"
            );
        }
        md.push('\n');
        let _ = writeln!(md, "{}", NOTES);
        md
    }
}

/// What the numbers mean and what limits them, from profiling this build.
const NOTES: &str = "## Reading the numbers\n\n\
- *goodput*: client intents applied within the client time-out (2 s) per second of the run, each counted once however many retries it took. *wasted writes*: direct-occ's conditional updates that missed, direct-lock's aborted transactions, Sluice's lane commits that found the version moved. *client conflicts*: intents whose write found the document changed since the client's read (Sluice: answers that carry a `conflict`).\n\
- Every run ends with a lost-update check: the list entries (and version increments) in the run's collection equal the intents reported applied, or the benchmark fails.\n\
- Sluice, PostgreSQL and the load generator share the same cores; *cpu µs/mutation* is Sluice's own user+system time, read from `/proc`, per mutation sent (with the document read before it, where the intent has one).\n\
- A closed-loop client told 429 pauses 100 ms before its next intent. The overload loads are multiples of the capacity run (Sluice, uniform keys, the same clients without think time); *peak* is the highest goodput of the goodput-against-load curve.\n\n\
## What limits Sluice here\n\n\
- PostgreSQL's plans. Profiling the whole machine (`perf record -a -g`) under load showed PostgreSQL, not Sluice, taking most of the CPU: Sluice's prepared statements had cached plans made while its tables were empty (sequential scans) and kept them as the tables grew, so every resend check and document read scanned a whole table (8.4 of every 10 s of PostgreSQL's time). Sluice's sessions now plan with sequential scans off and keep generic plans; a test checks that no sequential scan reads a row as the tables grow. Unconditional writes through Sluice under `wrk`: 3,190/s before, about 7,900/s after.\n\
- Round trips. A PostgreSQL round trip costs both sides a `send` and a wake-up of the peer (the kernel's loopback path is the largest single item in Sluice's profile). A batch of lanes now commits in one statement (data-modifying CTEs: lock in key order, check versions, write documents, replies, accept-log deletions and, when the history shares the database, the history records: one transaction instead of two); a read batch is one statement; a lane starts from the cache of documents Sluice last committed; and the resend check of a synchronous mutation happens inside its lane's commit. An unconditional write now costs one HTTP exchange and a share of one group commit: about 9,500 writes/s under `wrk`, and Sluice's CPU per `hot` intent (a read and a write) fell from about 165 to about 110 µs.\n\
- What remains is the machine. The load generator, PostgreSQL and Sluice share two cores. An intent through Sluice costs two HTTP exchanges, encoded and decoded on both sides, and PostgreSQL keeps, beside the document, the stored reply that makes resends exactly-once and the history record (conflicts with whole documents); a direct client writes the document only. Where keys are spread out, that bookkeeping and the proxy's CPU bound the `sluice` contender. Where keys are hot, Sluice wastes no store writes while `direct-occ` wastes about one per intent applied, and the ablation table shows group commit and coalescing carrying its lead over the plain queue.\n\
- Group commit's goal (3× the one-row commits of 32 direct clients) assumes commits bound by the disk: here `pg_test_fsync` measures about 90 µs per flush, so PostgreSQL's own WAL flush batching gives 32 direct clients 10,000–15,000 commits/s, and three times that through an HTTP proxy on the same two cores is out of reach.\n\
- The overload figures move a lot from run to run here: the offered load is a multiple of the capacity measured first, and at 2× the refusals (fast 429s) cost CPU on the cores that Sluice, PostgreSQL and the load generator share.\n\
- The host CPU is busy for the whole benchmark; the dispatcher's load signal counts it only as far as the store's latency shows it (counted alone, it held lanes back and halved throughput).\n";

/// What a workload's table holds, where its name does not say.
fn about(workload: &str) -> Option<&'static str> {
    match workload {
        "writes" => Some(
            "Unconditional writes over uniform keys, no read and no think time: `direct-one-row` (32 clients, one-row transactions straight to PostgreSQL), `direct-batched` (the ceiling: one client, 100-row transactions), `sluice` (64 clients, one mutation per request) and `sluice-batch` (4 clients, `POST /v1/mutations:batch` of 100).",
        ),
        "yardstick" => Some(
            "The `direct-lock` transaction (read; `BEGIN`; `SELECT … FOR UPDATE`; `UPDATE`; `COMMIT`) with 64 clients and no think time, Zipf θ = 1.01 over the same documents, through the same link: by PostgreSQL's own `pgbench` (custom script, `random_zipfian`) and by the bench's `direct-lock`. Should the bench's fall more than 15% below pgbench's, its direct baseline is too weak and the bench fails.",
        ),
        _ => None,
    }
}

fn table(md: &mut String, rows: &[&RunRecord]) {
    let _ = writeln!(
        md,
        "| setting | contender | goodput/s | applied | wasted writes | client conflicts | p50 ms | p99 ms | p999 ms | time-outs | 429s | cpu µs/mutation | cpu µs/intent: sluice | postgres | client | relay |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let cpu = |c: Option<f64>| c.map_or("–".into(), |c| format!("{c:.0}"));
    for r in rows {
        let setting = match (r.theta, r.load) {
            (Some(t), _) => format!("θ={t}"),
            (_, Some(l)) => format!("{l}× load"),
            _ => "–".into(),
        };
        let contender = match r.placement.as_deref() {
            Some("own-tier") => format!("{} (own tier)", r.contender),
            _ => r.contender.clone(),
        };
        let _ = writeln!(
            md,
            "| {setting} | {contender} | {:.0} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
            r.goodput,
            r.applied,
            r.wasted_writes,
            r.client_conflicts,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.timeouts,
            r.rejected_429,
            cpu(r.cpu_us_per_mutation),
            cpu(r.cpu_us_per_intent.sluice),
            cpu(r.cpu_us_per_intent.postgres),
            cpu(r.cpu_us_per_intent.client),
            cpu(r.cpu_us_per_intent.relay),
        );
    }
}

struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

struct Plot<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    x_ticks: Option<Vec<(f64, String)>>,
    log_x: bool,
    log_y: bool,
    series: Vec<Series>,
}

const COLORS: [&str; 6] = [
    "#d62728", "#ff7f0e", "#7f7f7f", "#1f77b4", "#2ca02c", "#9467bd",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Plot<'_> {
    /// A line chart with axes, ticks and a legend, as plain SVG text.
    fn svg(&self) -> String {
        let (w, h) = (720.0, 420.0);
        let (left, right, top, bottom) = (80.0, 170.0, 40.0, 60.0);
        let tx = |v: f64| if self.log_x { v.max(1e-9).log10() } else { v };
        let ty = |v: f64| if self.log_y { v.max(1e-9).log10() } else { v };
        let all: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .collect();
        let (mut x0, mut x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
            (a.min(tx(p.0)), b.max(tx(p.0)))
        });
        let (mut y0, mut y1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
            (a.min(ty(p.1)), b.max(ty(p.1)))
        });
        if all.is_empty() {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if !self.log_y {
            y0 = y0.min(0.0);
        }
        if (x1 - x0).abs() < 1e-9 {
            x1 = x0 + 1.0;
        }
        if (y1 - y0).abs() < 1e-9 {
            y1 = y0 + 1.0;
        }
        y1 += (y1 - y0) * 0.05;
        let px = |v: f64| left + (tx(v) - x0) / (x1 - x0) * (w - left - right);
        let py = |v: f64| h - bottom - (ty(v) - y0) / (y1 - y0) * (h - top - bottom);
        let mut svg = String::new();
        let _ = write!(
            svg,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12"><rect width="{w}" height="{h}" fill="white"/><text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"##,
            (w - right + left) / 2.0,
            escape(self.title)
        );
        let _ = write!(
            svg,
            r##"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>"##,
            h - bottom,
            w - right,
            h - bottom,
            h - bottom
        );
        let x_ticks: Vec<(f64, String)> = match &self.x_ticks {
            Some(t) => t.clone(),
            None => ticks(x0, x1, self.log_x),
        };
        for (v, label) in x_ticks {
            let x = px(v);
            let _ = write!(
                svg,
                r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="black"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
                h - bottom,
                h - bottom + 5.0,
                h - bottom + 18.0,
                escape(&label)
            );
        }
        for (v, label) in ticks(y0, y1, self.log_y) {
            let y = py(v);
            let _ = write!(
                svg,
                r##"<line x1="{}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                left,
                w - right,
                left - 6.0,
                y + 4.0,
                escape(&label)
            );
        }
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle">{}</text><text transform="translate(18 {}) rotate(-90)" text-anchor="middle">{}</text>"##,
            (w - right + left) / 2.0,
            h - 18.0,
            escape(self.x_label),
            (h - bottom + top) / 2.0,
            escape(self.y_label)
        );
        for (i, s) in self.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let points: Vec<String> = s
                .points
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
                .collect();
            let _ = write!(
                svg,
                r##"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"##,
                points.join(" ")
            );
            for (x, y) in &s.points {
                let _ = write!(
                    svg,
                    r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"##,
                    px(*x),
                    py(*y)
                );
            }
            let ly = top + 20.0 + 20.0 * i as f64;
            let _ = write!(
                svg,
                r##"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"##,
                w - right + 15.0,
                w - right + 40.0,
                w - right + 46.0,
                ly + 4.0,
                escape(&s.name)
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// Tick positions (in data units) and labels over a transformed range.
fn ticks(lo: f64, hi: f64, log: bool) -> Vec<(f64, String)> {
    if log {
        let (a, b) = (lo.floor() as i32, hi.ceil() as i32);
        return (a..=b)
            .map(|e| 10f64.powi(e))
            .filter(|v| v.log10() >= lo - 1e-9 && v.log10() <= hi + 1e-9)
            .map(|v| (v, format_number(v)))
            .collect();
    }
    let span = hi - lo;
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| span / s <= 6.0)
        .unwrap_or(magnitude * 10.0);
    let mut v = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while v <= hi + step * 1e-9 {
        out.push((v, format_number(v)));
        v += step;
    }
    out
}

fn format_number(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{:.0}", v)
    } else if v.abs() >= 1.0 || v == 0.0 {
        format!("{}", (v * 100.0).round() / 100.0)
    } else {
        format!("{}", (v * 10000.0).round() / 10000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(contender: &str, theta: f64, goodput: f64, p99: f64) -> Sample {
        Sample {
            workload: "hot".into(),
            theta: Some(theta),
            load: None,
            contender: contender.into(),
            goodput,
            applied: goodput as u64,
            wasted_writes: 0,
            client_conflicts: 0,
            p50_ms: p99 / 2.0,
            p99_ms: p99,
            p999_ms: p99 * 2.0,
            timeouts: 0,
            rejected_429: 0,
            cpu_us_per_mutation: None,
            rtt_ms: 1.0,
            placement: (contender.starts_with("sluice")).then(|| "next-to-store".into()),
            cpu_us_per_intent: CpuPerIntent::default(),
            quantiles_ms: vec![1.0, 2.0],
        }
    }

    #[test]
    fn figures_are_medians_over_repetitions_and_goals_are_ratios() {
        let samples = vec![
            sample("sluice", 0.99, 900.0, 10.0),
            sample("direct-occ", 0.99, 100.0, 50.0),
            sample("direct-lock", 0.99, 200.0, 40.0),
            sample("sluice", 0.99, 1200.0, 30.0),
            sample("direct-occ", 0.99, 300.0, 70.0),
            sample("direct-lock", 0.99, 250.0, 20.0),
            sample("sluice", 0.99, 1000.0, 20.0),
            sample("direct-occ", 0.99, 200.0, 60.0),
            sample("direct-lock", 0.99, 150.0, 30.0),
        ];
        let machine = Machine::here("15".into(), true, Duration::from_secs(1), 3);
        let report = BenchReport::new(machine, Vec::new(), &samples, &[], &[]);
        assert_eq!(report.runs.len(), 3, "one record per contender and setting");
        let sluice = report
            .find("hot", Some(0.99), None, "sluice", 1.0)
            .expect("sluice");
        assert_eq!(sluice.goodput, 1000.0);
        assert_eq!(sluice.p99_ms, 20.0);
        let ratio = report
            .goals
            .iter()
            .find(|g| g.goal == "R=1 ms, hot θ=0.99: sluice goodput / direct-occ's")
            .expect("the 3× goal");
        assert_eq!(ratio.measured, 5.0);
        assert!(ratio.met);
        let p99 = report
            .goals
            .iter()
            .find(|g| g.goal == "R=1 ms, hot θ=0.99: sluice p99 / direct-occ's")
            .expect("the p99 goal");
        assert!((p99.measured - 20.0 / 60.0).abs() < 1e-3 && p99.met);
        let json: serde_json::Value = serde_json::to_value(&report).expect("json");
        let run = &json["runs"][0];
        for field in [
            "workload",
            "theta",
            "load",
            "contender",
            "goodput",
            "applied",
            "wasted_writes",
            "client_conflicts",
            "p50_ms",
            "p99_ms",
            "p999_ms",
            "timeouts",
            "rejected_429",
            "cpu_us_per_mutation",
            "rtt_ms",
            "placement",
            "cpu_us_per_intent",
        ] {
            assert!(run.get(field).is_some(), "runs[] has {field}");
        }
        assert!(run.get("quantiles_ms").is_none());
    }

    #[test]
    fn plots_are_svg_with_every_series() {
        let plot = Plot {
            title: "t <1>",
            x_label: "x",
            y_label: "y",
            x_ticks: None,
            log_x: true,
            log_y: false,
            series: vec![
                Series {
                    name: "a".into(),
                    points: vec![(0.5, 0.0), (50.0, 1.0)],
                },
                Series {
                    name: "b".into(),
                    points: vec![(1.0, 0.5)],
                },
            ],
        };
        let svg = plot.svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("t &lt;1&gt;"));
        assert!(svg.contains(">10<"), "a decade tick on the log axis");
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }
}
