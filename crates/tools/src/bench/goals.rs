//! The goals of `sluice bench`, each a ratio measured in one run and
//! named by its round trip.

use super::report::{BenchReport, Goal, RunRecord, YARDSTICK_GOAL};

impl BenchReport {
    /// The goals, each as a ratio measured in this run, at each round trip
    /// it has (`R=…` in the goal's name).
    pub(super) fn goals(&self) -> Vec<Goal> {
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
                at_most,
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
            // F: what a request costs Sluice before any of its own work;
            // the CPU goals are multiples of it.
            let floor = self
                .runs
                .iter()
                .find(|r| r.workload == "floor" && r.rtt_ms == rtt)
                .and_then(|r| r.cpu_us_per_intent.sluice);
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
                let floors = match theta {
                    0.0 => Some(4.0),
                    0.99 => Some(6.0),
                    _ => None,
                };
                if let (Some(max), Some(cpu), Some(f)) = (floors, s.cpu_us_per_intent.sluice, floor)
                {
                    goal(
                        format!("{at}, hot θ={theta}: Sluice's CPU per intent / F"),
                        ratio(cpu, f),
                        max,
                        true,
                    );
                }
                if !linked {
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
                if load == 2.0 {
                    goal(
                        format!("{at}, overload 2×: sluice time-outs"),
                        run.timeouts as f64,
                        0.0,
                        true,
                    );
                }
            }
            let writes = |c: &str| {
                self.runs
                    .iter()
                    .find(|r| r.workload == "writes" && r.contender == c && r.rtt_ms == rtt)
            };
            // The ceilings are one writer on the store's own machine: the
            // link changes nothing of theirs, so they are judged on loopback.
            let ceilings = [
                (
                    "direct-batched",
                    [("sluice", 0.25), ("sluice-batch", 0.5)].as_slice(),
                ),
                ("sqlite-batched", [("sluice-sqlite", 0.25)].as_slice()),
            ];
            for (ceiling, contenders) in ceilings {
                let Some(ceiling_run) = writes(ceiling).filter(|_| !linked) else {
                    continue;
                };
                for (c, share) in contenders {
                    if let Some(r) = writes(c) {
                        goal(
                            format!("{at}, writes: {c} / {ceiling} (the batched ceiling)"),
                            ratio(r.goodput, ceiling_run.goodput),
                            *share,
                            false,
                        );
                    }
                }
            }
            if let (Some(cpu), Some(f)) =
                (writes("sluice").and_then(|r| r.cpu_us_per_mutation), floor)
            {
                goal(
                    format!("{at}, writes: Sluice's CPU per unconditional mutation / F"),
                    ratio(cpu, f),
                    3.0,
                    true,
                );
            }
            if let (Some(mine), Some(theirs)) = (
                writes("sluice").and_then(|r| r.wal_bytes_per_intent),
                writes("direct-one-row").and_then(|r| r.wal_bytes_per_intent),
            ) {
                goal(
                    format!("{at}, writes: WAL bytes per sluice mutation / per direct-one-row row"),
                    ratio(mine, theirs),
                    2.0,
                    true,
                );
            }
            if let (Some(cpu), Some(f)) = (
                self.runs
                    .iter()
                    .find(|r| r.workload == "refusals" && r.rtt_ms == rtt)
                    .and_then(|r| r.cpu_us_per_intent.sluice),
                floor,
            ) {
                goal(
                    format!("{at}, refusals: Sluice's CPU per refusal / F"),
                    ratio(cpu, f),
                    1.5,
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

    /// The whole bench's wall time against its budget, once it is known,
    /// for a run of every workload the plan has on PostgreSQL.
    pub(super) fn time_goal(&self) -> Option<Goal> {
        let complete = [
            "hot",
            "overload",
            "external",
            "trace",
            "writes",
            "yardstick",
            "refusals",
            "floor",
        ]
        .iter()
        .all(|w| self.runs.iter().any(|r| r.workload == *w));
        let (budget, run) = if self.machine.quick {
            (300.0, "quick")
        } else {
            (1200.0, "full")
        };
        complete.then(|| Goal {
            goal: format!("the {run} bench's wall time, s"),
            measured: self.wall_s.round(),
            target: budget,
            at_most: true,
            met: self.wall_s <= budget,
        })
    }
}
