//! `sluice replay`: send a mutation trace through the public HTTP API, keep
//! each key's order, and measure what came back (conflicts, the predictor's
//! quality, throughput, latency).
//!
//! A trace is JSON Lines (plain or gzipped), one API mutation per line, in
//! event order (see `shared/traces/README.md`). The next mutation of a key is
//! sent only after the previous one was answered; up to `concurrency` keys are
//! in flight at once. Refusals that mean "not now" (429, 503) are retried after
//! `Retry-After`, so a replay loses nothing.

use crate::predict::quality::{QualityReport, summarize};
use crate::tool::{Context, ToolResult, bail};
pub use crate::trace::{open_trace, trace_reader};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Lines read ahead while their keys are busy; past this the reader waits.
const PENDING_LINES_MAX: usize = 200_000;
/// Attempts for a mutation refused with 429 or 503 before the replay fails.
const RETRIES_MAX: u32 = 50;

#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub trace: PathBuf,
    pub url: String,
    pub handler: Option<String>,
    pub concurrency: usize,
    /// Event-time speed-up; `None` sends as fast as answers come.
    pub speed: Option<f64>,
    pub out: Option<PathBuf>,
    /// `{"id", "conflict"}` lines to compare the conflict flags against.
    pub labels: Option<PathBuf>,
    pub progress: bool,
}

/// One line of `--out`.
#[derive(Clone, Debug, Serialize)]
pub struct ResultLine {
    pub id: String,
    pub outcome: String,
    pub version: Option<u64>,
    pub score: Option<f64>,
    pub conflict: bool,
    pub queued_ms: Option<f64>,
    pub latency_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub mutations: u64,
    pub conflicts: u64,
    pub conflict_rate: f64,
    pub errors: u64,
    pub retries: u64,
    pub auc: Option<f64>,
    pub log_loss: Option<f64>,
    pub brier: Option<f64>,
    pub expected_calibration_error: Option<f64>,
    pub calibration: Vec<crate::predict::quality::CalibrationBin>,
    pub seconds: f64,
    pub throughput: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// With `--labels`: how many conflict flags differ from the labels, and
    /// how many mutations had no label.
    pub label_mismatches: Option<u64>,
    pub unlabeled: Option<u64>,
}

struct Line {
    key: String,
    collection: String,
    /// Which of several servers the line goes to (a hash of its client).
    client_hash: u64,
    ts_ms: Option<i64>,
    body: String,
}

struct Done {
    key: String,
    result: ToolResult<ResultLine>,
    retries: u32,
}

/// Reads every line of a trace as `replay` and `bench` do, and says how
/// many mutations it holds, or the first reason it cannot be replayed.
pub fn check_trace(reader: impl BufRead) -> ToolResult<usize> {
    let mut count = 0;
    for (number, text) in reader.lines().enumerate() {
        let text = text?;
        if text.trim().is_empty() {
            continue;
        }
        parse_line(&text, number + 1)?;
        crate::trace::TraceLine::parse(&text)
            .map(|_| ())
            .map_err(|e| crate::tool::ToolError::new(format!("line {}: {e}", number + 1)))?;
        count += 1;
    }
    Ok(count)
}

fn parse_line(text: &str, number: usize) -> ToolResult<Line> {
    let value: Value =
        serde_json::from_str(text).with_context(|| format!("trace line {number} is not JSON"))?;
    let field = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_owned);
    let (Some(collection), Some(key)) = (field("collection"), field("key")) else {
        bail!("trace line {number} has no collection or key");
    };
    let client = field("client").unwrap_or_default();
    Ok(Line {
        key: format!("{collection}\u{0}{key}"),
        collection,
        client_hash: fnv1a(client.as_bytes()),
        ts_ms: value.get("ts_ms").and_then(Value::as_i64),
        body: text.to_owned(),
    })
}

/// FNV-1a: a client always goes to the same server, in every run.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn load_labels(path: &Path) -> ToolResult<HashMap<String, bool>> {
    let mut labels = HashMap::new();
    for (i, line) in open_trace(path)?.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line)
            .with_context(|| format!("label line {} is not JSON", i + 1))?;
        if let (Some(id), Some(conflict)) = (v["id"].as_str(), v["conflict"].as_bool()) {
            labels.insert(id.to_owned(), conflict);
        }
    }
    Ok(labels)
}

async fn send(http: reqwest::Client, url: String, line: Line) -> Done {
    let mut retries = 0;
    loop {
        let started = Instant::now();
        let response = http
            .post(format!("{url}/v1/mutations"))
            .header("content-type", "application/json")
            .body(line.body.clone())
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                return Done {
                    key: line.key,
                    result: Err(e.into()),
                    retries,
                };
            }
        };
        let status = response.status().as_u16();
        if matches!(status, 429 | 503) && retries < RETRIES_MAX {
            let wait = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1);
            retries += 1;
            tokio::time::sleep(Duration::from_millis((wait * 1000).min(5_000))).await;
            continue;
        }
        let body: ToolResult<Value> = response.json().await.map_err(Into::into);
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let result = body.and_then(|b| {
            if let Some(outcome) = b["outcome"].as_str() {
                Ok(ResultLine {
                    id: b["id"].as_str().unwrap_or_default().to_owned(),
                    outcome: outcome.to_owned(),
                    version: b["version"].as_u64(),
                    score: b["score"].as_f64(),
                    conflict: !b["conflict"].is_null(),
                    queued_ms: b["queued_ms"].as_f64(),
                    latency_ms,
                })
            } else if status == 404 {
                let id = serde_json::from_str::<Value>(&line.body)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                Ok(ResultLine {
                    id,
                    outcome: "not_found".into(),
                    version: None,
                    score: None,
                    conflict: false,
                    queued_ms: None,
                    latency_ms,
                })
            } else {
                bail!("HTTP {status}: {b}")
            }
        });
        return Done {
            key: line.key,
            result,
            retries,
        };
    }
}

/// Which keys are busy and which lines wait behind them.
#[derive(Default)]
struct Schedule {
    in_flight: usize,
    busy: HashSet<String>,
    pending: HashMap<String, VecDeque<Line>>,
    pending_total: usize,
}

impl Schedule {
    /// A line to send now, or `None` when its key is busy (then it waits).
    fn offer(&mut self, line: Line) -> Option<Line> {
        if self.busy.contains(&line.key) {
            self.pending
                .entry(line.key.clone())
                .or_default()
                .push_back(line);
            self.pending_total += 1;
            None
        } else {
            self.busy.insert(line.key.clone());
            self.in_flight += 1;
            Some(line)
        }
    }

    /// The key's answer came: its next line, if one waits, goes now.
    fn finish(&mut self, key: &str) -> Option<Line> {
        match self.pending.get_mut(key).and_then(VecDeque::pop_front) {
            Some(next) => {
                self.pending_total -= 1;
                Some(next)
            }
            None => {
                self.in_flight -= 1;
                self.pending.remove(key);
                self.busy.remove(key);
                None
            }
        }
    }
}

/// What came back, accumulated.
struct Tally {
    pairs: Vec<(f64, bool)>,
    latencies: Vec<f64>,
    mutations: u64,
    conflicts: u64,
    errors: u64,
    retries: u64,
    labels: Option<HashMap<String, bool>>,
    mismatches: u64,
    unlabeled: u64,
    out: Option<std::io::BufWriter<std::fs::File>>,
}

impl Tally {
    fn record(&mut self, done: &Done, bar: &ProgressBar) -> ToolResult<()> {
        self.retries += u64::from(done.retries);
        bar.inc(1);
        let result = match &done.result {
            Ok(result) => result,
            Err(e) => {
                self.errors += 1;
                bar.println(format!("error: {e:#}"));
                return Ok(());
            }
        };
        self.mutations += 1;
        self.conflicts += u64::from(result.conflict);
        self.latencies.push(result.latency_ms);
        if let Some(score) = result.score {
            self.pairs.push((score, result.conflict));
        }
        if let Some(labels) = &self.labels {
            match labels.get(&result.id) {
                Some(expected) if *expected != result.conflict => self.mismatches += 1,
                Some(_) => {}
                None => self.unlabeled += 1,
            }
        }
        if let Some(out) = self.out.as_mut() {
            serde_json::to_writer(&mut *out, result)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }
}

/// Replays the trace against `options.url` and returns the summary.
pub async fn replay(options: &ReplayOptions) -> ToolResult<Summary> {
    let total = open_trace(&options.trace)?
        .lines()
        .filter(|l| l.as_ref().is_ok_and(|t| !t.trim().is_empty()))
        .count();
    let bar = if options.progress {
        ProgressBar::new(total as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let out = match &options.out {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => None,
    };
    let mut tally = Tally {
        pairs: Vec::with_capacity(total),
        latencies: Vec::with_capacity(total),
        mutations: 0,
        conflicts: 0,
        errors: 0,
        retries: 0,
        labels: options.labels.as_deref().map(load_labels).transpose()?,
        mismatches: 0,
        unlabeled: 0,
        out,
    };
    let concurrency = options.concurrency.max(1);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    // Several servers (a cluster, or processes side by side): each client's
    // mutations go to one of them.
    let urls: Vec<String> = options
        .url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.is_empty() {
        bail!("--url names no server");
    }
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let spawn = |line: Line| {
        let url = urls[(line.client_hash % urls.len() as u64) as usize].clone();
        let (http, tx) = (http.clone(), done_tx.clone());
        tokio::spawn(async move {
            let _ = tx.send(send(http, url, line).await);
        });
    };
    let mut schedule = Schedule::default();
    let mut configured: HashSet<String> = HashSet::new();
    let started = Instant::now();
    let mut first_ts: Option<i64> = None;

    for (number, text) in open_trace(&options.trace)?.lines().enumerate() {
        let text = text?;
        if text.trim().is_empty() {
            continue;
        }
        let line = parse_line(&text, number + 1)?;
        if let (Some(speed), Some(ts)) = (options.speed, line.ts_ms) {
            let t0 = *first_ts.get_or_insert(ts);
            let due = Duration::from_secs_f64(((ts - t0).max(0) as f64 / 1000.0) / speed);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        if let Some(handler) = &options.handler
            && configured.insert(line.collection.clone())
        {
            for url in &urls {
                configure(&http, url, &line.collection, handler).await?;
            }
        }
        // Take in what has come back, then wait while the key limit or the
        // read-ahead bound is reached.
        loop {
            let must_wait =
                schedule.in_flight >= concurrency || schedule.pending_total > PENDING_LINES_MAX;
            let done = if must_wait {
                Some(done_rx.recv().await.context("replay workers stopped")?)
            } else {
                done_rx.try_recv().ok()
            };
            let Some(done) = done else { break };
            tally.record(&done, &bar)?;
            if let Some(next) = schedule.finish(&done.key) {
                spawn(next);
            }
        }
        if let Some(line) = schedule.offer(line) {
            spawn(line);
        }
    }
    while schedule.in_flight > 0 {
        let done = done_rx.recv().await.context("replay workers stopped")?;
        tally.record(&done, &bar)?;
        if let Some(next) = schedule.finish(&done.key) {
            spawn(next);
        }
    }
    if let Some(mut out) = tally.out.take() {
        out.flush()?;
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let quality: QualityReport = summarize(&tally.pairs);
    tally.latencies.sort_by(f64::total_cmp);
    let mutations = tally.mutations;
    Ok(Summary {
        mutations,
        conflicts: tally.conflicts,
        conflict_rate: if mutations > 0 {
            tally.conflicts as f64 / mutations as f64
        } else {
            0.0
        },
        errors: tally.errors,
        retries: tally.retries,
        auc: quality.auc,
        log_loss: quality.log_loss,
        brier: quality.brier,
        expected_calibration_error: quality.expected_calibration_error,
        calibration: quality.calibration,
        seconds,
        throughput: if seconds > 0.0 {
            mutations as f64 / seconds
        } else {
            0.0
        },
        latency_p50_ms: percentile(&tally.latencies, 0.50),
        latency_p99_ms: percentile(&tally.latencies, 0.99),
        label_mismatches: tally.labels.as_ref().map(|_| tally.mismatches),
        unlabeled: tally.labels.as_ref().map(|_| tally.unlabeled),
    })
}

async fn configure(
    http: &reqwest::Client,
    url: &str,
    collection: &str,
    handler: &str,
) -> ToolResult<()> {
    let handler: Value = serde_json::from_str(handler).unwrap_or_else(|_| json!(handler));
    let response = http
        .put(format!("{url}/v1/collections/{collection}"))
        .json(&json!({ "handler": handler }))
        .send()
        .await
        .with_context(|| format!("configuring collection {collection}"))?;
    if !response.status().is_success() {
        bail!(
            "configuring collection {collection}: HTTP {}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

/// The `q` quantile of sorted values (nearest rank), 0 when there are none.
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Where the summary goes: next to `--out`, as `NAME.summary.json`.
pub fn summary_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "replay".into());
    out.with_file_name(format!("{stem}.summary.json"))
}

impl Summary {
    /// The human-readable block printed at the end of a replay.
    pub fn render(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("n/a".to_string(), |x| format!("{x:.4}"));
        let mut text = format!(
            "mutations        {}\nconflicts        {} ({:.2}%)\nerrors           {}\nretries          {}\nAUC              {}\nlog loss         {}\nBrier            {}\ncalibration err. {}\nthroughput       {:.0} mutations/s over {:.1} s\nlatency          p50 {:.2} ms, p99 {:.2} ms\n",
            self.mutations,
            self.conflicts,
            self.conflict_rate * 100.0,
            self.errors,
            self.retries,
            opt(self.auc),
            opt(self.log_loss),
            opt(self.brier),
            opt(self.expected_calibration_error),
            self.throughput,
            self.seconds,
            self.latency_p50_ms,
            self.latency_p99_ms,
        );
        if let (Some(m), Some(u)) = (self.label_mismatches, self.unlabeled) {
            text.push_str(&format!(
                "labels           {m} conflict flags differ, {u} mutations unlabeled\n"
            ));
        }
        text
    }
}
