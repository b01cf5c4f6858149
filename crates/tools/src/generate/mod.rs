//! `sluice gen`: synthetic mutation traces with known structure, in the
//! format of the real ones (see `shared/traces/README.md`), for tests and
//! benchmarks.
//!
//! The structure: documents drawn with a Zipf skew (YCSB's generator);
//! online clients that read a document, think for a moment and write it back
//! with the version they read; offline clients that keep writing from the
//! versions they had when they went offline; writers that never send a base
//! (as one that bypasses Sluice's conditional protocol would); and a daily
//! rhythm in the arrival rate. Conflicts follow from that structure alone,
//! and the labels say which mutations conflict when the trace is applied in
//! order.

use crate::rng::SplitMix64 as Rng;
use serde_json::json;
use std::io::Write;

#[derive(Clone, Debug)]
pub struct GenOptions {
    pub mutations: u64,
    pub keys: u64,
    pub clients: u64,
    /// Zipf exponent of key popularity; 0 is uniform.
    pub zipf: f64,
    /// Share of clients that are offline clients.
    pub offline_fraction: f64,
    /// Share of mutations written without a base version.
    pub unconditional_fraction: f64,
    /// Mean mutations per second at the daily peak.
    pub peak_rate: f64,
    /// Mean think time between an online client's read and its write.
    pub think_ms: f64,
    pub seed: u64,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            mutations: 100_000,
            keys: 10_000,
            clients: 500,
            zipf: 0.99,
            offline_fraction: 0.1,
            unconditional_fraction: 0.05,
            peak_rate: 20.0,
            think_ms: 2_000.0,
            seed: 1,
        }
    }
}

impl GenOptions {
    pub fn validate(&self) -> Result<(), String> {
        if self.keys == 0 || self.clients == 0 {
            return Err("--keys and --clients must be at least 1".into());
        }
        if !(0.0..=10.0).contains(&self.zipf) {
            return Err("--zipf must be from 0 to 10".into());
        }
        for (name, v) in [
            ("--offline-fraction", self.offline_fraction),
            ("--unconditional-fraction", self.unconditional_fraction),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be from 0 to 1"));
            }
        }
        if !(self.peak_rate > 0.0 && self.think_ms >= 0.0) {
            return Err("--peak-rate must be positive and --think-ms non-negative".into());
        }
        Ok(())
    }
}

/// Zipf over `0..n` by inverse CDF: exact, O(log n) per draw; 0 is the most
/// popular. The same distribution YCSB's generator approximates.
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: u64, theta: f64) -> Self {
        let mut cdf = Vec::with_capacity(n as usize);
        let mut total = 0.0;
        for i in 1..=n {
            total += 1.0 / (i as f64).powf(theta);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    pub fn draw(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        self.cdf.partition_point(|c| *c < u) as u64
    }
}

struct Client {
    /// While offline: since when (event ms) and until when.
    offline: Option<(i64, i64)>,
    is_offline_kind: bool,
}

/// What was generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenStats {
    /// Lines of the trace.
    pub mutations: u64,
    pub conflicts: u64,
    /// Writes sent to the bypass file instead of the trace.
    pub bypassed: u64,
}

/// Writes the trace (and, if given, the labels) and returns what it holds.
///
/// With `bypass`, the writers without a base really bypass Sluice: their
/// writes go to that file (same line format, no labels) instead of the
/// trace, and whoever replays the trace must apply them to the store
/// directly, interleaved by `ts_ms`, for the labels to hold. Without it they
/// are unconditional writes in the trace.
pub fn generate(
    options: &GenOptions,
    trace: &mut dyn Write,
    mut labels: Option<&mut dyn Write>,
    mut bypass: Option<&mut dyn Write>,
) -> crate::tool::ToolResult<GenStats> {
    options.validate().map_err(crate::tool::ToolError::new)?;
    let mut rng = Rng::new(options.seed);
    let zipf = Zipf::new(options.keys, options.zipf);
    // A random permutation, so the hottest keys are not all in one directory.
    let mut names: Vec<u64> = (0..options.keys).collect();
    for i in (1..names.len()).rev() {
        names.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut clients: Vec<Client> = (0..options.clients)
        .map(|_| Client {
            offline: None,
            is_offline_kind: false,
        })
        .collect();
    for client in &mut clients {
        client.is_offline_kind = rng.unit() < options.offline_fraction;
    }
    // Per key: the event time of each version's write (index v-1 is version v).
    let mut writes: Vec<Vec<i64>> = vec![Vec::new(); options.keys as usize];
    let version_at = |times: &Vec<i64>, at: i64| times.partition_point(|t| *t <= at) as u64;
    let mut now: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    let mut stats = GenStats {
        mutations: 0,
        conflicts: 0,
        bypassed: 0,
    };
    for i in 0..options.mutations {
        // A daily rhythm: the rate swings between 10% and 100% of the peak.
        let hour = (now / 3_600_000).rem_euclid(24) as f64;
        let rate = options.peak_rate
            * (0.55 + 0.45 * ((hour - 14.0) / 24.0 * std::f64::consts::TAU).cos());
        now += (rng.exponential(1000.0 / rate)).ceil() as i64;
        let k = zipf.draw(&mut rng) as usize;
        let c = rng.below(options.clients) as usize;
        let current = writes[k].len() as u64;
        let client = &mut clients[c];
        if client.is_offline_kind {
            match client.offline {
                Some((_, until)) if now >= until => client.offline = None,
                None if rng.unit() < 0.05 => {
                    let away = rng.exponential(3_600_000.0) as i64;
                    client.offline = Some((now, now + away));
                }
                _ => {}
            }
        }
        let unconditional = rng.unit() < options.unconditional_fraction;
        let base = if unconditional {
            None
        } else if let Some((since, _)) = client.offline {
            Some(version_at(&writes[k], since))
        } else {
            let read_at = now - rng.exponential(options.think_ms) as i64;
            Some(version_at(&writes[k], read_at))
        };
        let conflict = base.is_some_and(|b| b != current);
        let key = names[k];
        let mut line = json!({
            "id": format!("g{i}"),
            "ts_ms": now,
            "client": format!("{}{c}", if unconditional { "direct-" } else if client.is_offline_kind { "mobile-" } else { "web-" }),
            "collection": "gen",
            "key": format!("dir{}/doc-{key}", key % 32),
            "op": if current == 0 { "put" } else { "patch" },
            "value": {"n": i, "tags": [format!("t{}", i % 5)]},
        });
        if let Some(b) = base {
            line["base_version"] = json!(b);
        }
        if let (true, Some(bypass)) = (unconditional, bypass.as_deref_mut()) {
            serde_json::to_writer(&mut *bypass, &line)?;
            bypass.write_all(b"\n")?;
            writes[k].push(now);
            stats.bypassed += 1;
            continue;
        }
        serde_json::to_writer(&mut *trace, &line)?;
        trace.write_all(b"\n")?;
        if let Some(labels) = labels.as_deref_mut() {
            serde_json::to_writer(
                &mut *labels,
                &json!({"id": format!("g{i}"), "conflict": conflict}),
            )?;
            labels.write_all(b"\n")?;
        }
        writes[k].push(now);
        stats.mutations += 1;
        stats.conflicts += u64::from(conflict);
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(options: &GenOptions) -> (Vec<serde_json::Value>, Vec<serde_json::Value>, GenStats) {
        let (mut trace, mut labels) = (Vec::new(), Vec::new());
        let stats = generate(options, &mut trace, Some(&mut labels), None).expect("generate");
        let parse = |bytes: &[u8]| -> Vec<serde_json::Value> {
            String::from_utf8_lossy(bytes)
                .lines()
                .map(|l| serde_json::from_str(l).expect("JSON"))
                .collect()
        };
        (parse(&trace), parse(&labels), stats)
    }

    #[test]
    fn traces_are_reproducible_ordered_and_labelled() {
        let options = GenOptions {
            mutations: 5_000,
            keys: 200,
            ..GenOptions::default()
        };
        let (trace, labels, stats) = lines(&options);
        assert_eq!(
            lines(&options).0,
            trace,
            "the same seed gives the same trace"
        );
        assert_eq!((trace.len(), labels.len()), (5_000, 5_000));
        assert!(
            trace
                .windows(2)
                .all(|w| w[0]["ts_ms"].as_i64() <= w[1]["ts_ms"].as_i64())
        );
        // Replaying the labels' rule in order reproduces them.
        let mut versions = std::collections::HashMap::new();
        let mut conflicts = 0;
        for (line, label) in trace.iter().zip(&labels) {
            let v: &mut u64 = versions
                .entry(line["key"].as_str().expect("key").to_owned())
                .or_default();
            let conflict = line["base_version"].as_u64().is_some_and(|b| b != *v);
            assert_eq!(label["conflict"].as_bool(), Some(conflict));
            conflicts += u64::from(conflict);
            *v += 1;
        }
        assert_eq!(stats.conflicts, conflicts);
        assert!(conflicts > 50 && conflicts < 2_500, "{conflicts} conflicts");
    }

    #[test]
    fn skew_and_offline_clients_shape_the_conflicts() {
        let uniform = lines(&GenOptions {
            mutations: 4_000,
            zipf: 0.0,
            offline_fraction: 0.0,
            ..GenOptions::default()
        })
        .2;
        let skewed = lines(&GenOptions {
            mutations: 4_000,
            zipf: 1.2,
            offline_fraction: 0.0,
            ..GenOptions::default()
        })
        .2;
        let offline = lines(&GenOptions {
            mutations: 4_000,
            zipf: 1.2,
            offline_fraction: 0.5,
            ..GenOptions::default()
        })
        .2;
        assert!(
            uniform.conflicts < skewed.conflicts,
            "{uniform:?} {skewed:?}"
        );
        assert!(
            skewed.conflicts < offline.conflicts,
            "{skewed:?} {offline:?}"
        );
    }
}
