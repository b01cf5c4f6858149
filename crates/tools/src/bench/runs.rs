//! One run of the bench: its subject started or reset, its load driven,
//! its figures taken and its accounting checked.

use super::child::SluiceChild;
use super::intent::{Contender, Target};
use super::load::{
    Tally, closed_loop, direct_batched, external_writer, floor_requests, one_row_commits,
    open_loop, refusal_burst, sluice_writes, sqlite_batched, stall, trace_run,
};
use super::plan::{Job, Setting, Subject, Writer, setting_label, subject_name};
use super::{
    Bench, CLIENTS, DOCS, Found, STALL_SETTLE, Sample, THINK, accounting_problem, child, cluster,
    link, pgbench, postgres, report, rtt_duration, rtt_key,
};
use crate::clock::wall_ms;
use crate::tool::{Context, ToolResult, bail};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a run's staged intents may take to be decided after it.
const STAGED_DRAIN_MAX: Duration = Duration::from_secs(120);

impl Bench {
    /// Who the clients talk to, through the link when it has a round trip.
    fn target(&self, subject: Subject, rtt_ms: f64) -> ToolResult<Target> {
        let linked = rtt_ms > 0.0;
        let pool = if linked {
            &self.linked_direct
        } else {
            &self.direct
        };
        Ok(match subject {
            Subject::Contender(Contender::DirectOcc) => Target::Direct {
                pool: pool.clone(),
                lock: false,
            },
            Subject::Contender(Contender::DirectLock) | Subject::Pgbench => Target::Direct {
                pool: pool.clone(),
                lock: true,
            },
            Subject::Cluster => {
                let cluster = self.cluster.as_ref().context("no cluster was started")?;
                let urls: Vec<String> = if linked {
                    self.cluster_links
                        .iter()
                        .map(|l| format!("http://{}", l.addr))
                        .collect()
                } else {
                    cluster.members.iter().map(|m| m.url.clone()).collect()
                };
                Target::round_robin(
                    urls.into_iter()
                        .map(|url| Target::Sluice {
                            http: self.http.clone(),
                            url,
                        })
                        .collect(),
                )
            }
            other => {
                let url = if linked {
                    let link = self
                        .sluice_links
                        .get(&other)
                        .context("no link was made to this contender")?;
                    format!("http://{}", link.addr)
                } else {
                    self.children
                        .get(&other)
                        .context("no Sluice was started for this contender")?
                        .url
                        .clone()
                };
                Target::Sluice {
                    http: self.http.clone(),
                    url,
                }
            }
        })
    }

    /// CPU of each part of the machine so far (µs): Sluice (the run's
    /// child), PostgreSQL, the load generator (this process but its relay
    /// threads) and the relay.
    fn cpu(&self, subject: Subject) -> [Option<u64>; 4] {
        // A cluster's cost is its members' and its Redis's.
        let sluice = match subject {
            Subject::Cluster => self.cluster.as_ref().and_then(cluster::Cluster::cpu_us),
            _ => self.children.get(&subject).and_then(SluiceChild::cpu_us),
        };
        let postgres = self.postmaster.and_then(postgres::server_cpu_us);
        let relay = link::relay_cpu_us();
        // With the children it has reaped: pgbench, a client of its own.
        let client = child::stat_fields(Path::new("/proc/self/stat"), &[11, 12, 13, 14])
            .map(|all| all.saturating_sub(relay.unwrap_or(0)));
        [sluice, postgres, client, relay]
    }

    pub(super) async fn run_one(&mut self, job: Job) -> ToolResult<Sample> {
        let Job {
            setting,
            subject,
            rtt_ms,
        } = job;
        self.runs += 1;
        self.seed = self.seed.wrapping_add(0x9e37_79b9);
        let collection: Arc<str> = format!("{}-{}", self.prefix, self.runs).into();
        self.relay.set_rtt(rtt_duration(rtt_ms));
        let target = self.target(subject, rtt_ms)?;
        // The embedded Sluice's documents live in its SQLite file: loaded,
        // written by the ceiling and counted there.
        let embedded = match subject {
            Subject::Embedded => Some(self.embedded_file().await?),
            _ => None,
        };
        let documents = !matches!(setting, Setting::Trace);
        if documents {
            match &embedded {
                Some(file) => load_embedded_documents(file, &collection).await?,
                None => self.load_documents(&collection).await?,
            }
        }
        let shadow = subject == Subject::Variant(super::plan::SHADOW_VARIANT);
        for url in target.sluice_urls() {
            self.configure(url, &collection, shadow).await?;
        }
        let cpu_before = self.cpu(subject);
        let switches_before = self
            .children
            .get(&subject)
            .and_then(SluiceChild::ctx_switches);
        let wal_before = self.wal_bytes().await?;
        let counts_before = self.sluice_counts(&target).await?;
        let run = self.plan.run;
        let started = Instant::now();
        let mut external_writes = 0;
        // The refusal burst's CPU is read around the burst alone.
        let mut burst_cpu = None;
        let mut tally = match setting {
            Setting::Hot(theta) | Setting::Cluster(theta) => {
                closed_loop(
                    target.clone(),
                    &collection,
                    CLIENTS,
                    theta,
                    run,
                    THINK,
                    self.seed,
                )
                .await
            }
            Setting::Capacity => {
                closed_loop(
                    target.clone(),
                    &collection,
                    CLIENTS,
                    0.0,
                    run,
                    Duration::ZERO,
                    self.seed,
                )
                .await
            }
            Setting::Overload(load) => {
                let capacity = *self
                    .capacity
                    .get(&rtt_key(rtt_ms))
                    .context("overload runs after the capacity run")?;
                open_loop(
                    target.clone(),
                    &collection,
                    load * capacity,
                    run,
                    THINK,
                    self.seed,
                )
                .await
            }
            Setting::External => {
                let stop = Arc::new(AtomicBool::new(false));
                let writes = Arc::new(AtomicU64::new(0));
                let writer = tokio::spawn(external_writer(
                    self.admin.clone(),
                    collection.clone(),
                    stop.clone(),
                    writes.clone(),
                ));
                let tally = closed_loop(
                    target.clone(),
                    &collection,
                    CLIENTS,
                    0.99,
                    run,
                    THINK,
                    self.seed,
                )
                .await;
                stop.store(true, Ordering::Relaxed);
                writer.await.context("external writer")??;
                external_writes = writes.load(Ordering::Relaxed);
                tally
            }
            Setting::Trace => trace_run(target.clone(), &collection, self.trace.clone(), run).await,
            Setting::Writes(writer) => {
                let pool = match &target {
                    Target::Direct { pool, .. } => pool.clone(),
                    Target::Sluice { .. } | Target::RoundRobin { .. } => self.direct.clone(),
                };
                match writer {
                    Writer::SqliteBatched => {
                        let file = embedded
                            .clone()
                            .context("the SQLite ceiling needs a file")?;
                        sqlite_batched(file, &collection, run, self.seed).await
                    }
                    Writer::DirectOneRow => {
                        one_row_commits(pool, &collection, run, self.seed).await
                    }
                    Writer::DirectBatched => {
                        direct_batched(pool, &collection, run, self.seed).await
                    }
                    Writer::Sluice | Writer::SluiceBatch | Writer::SluiceSqlite => {
                        let batched = writer == Writer::SluiceBatch;
                        sluice_writes(target.clone(), &collection, run, batched, self.seed).await
                    }
                }
            }
            Setting::Floor => {
                let Target::Sluice { http, url } = &target else {
                    bail!("the floor needs a Sluice");
                };
                floor_requests(http, url, &collection, run).await
            }
            Setting::Refusals => {
                let Target::Sluice { http, url } = &target else {
                    bail!("the refusal burst needs a Sluice");
                };
                // The store stalls: Sluice's commits wait on the lock (its
                // reads do not), mutations stop leaving the queue, and the
                // door closes.
                let mut lock = self.admin.begin().await?;
                sqlx::query("LOCK TABLE sluice_documents IN EXCLUSIVE MODE")
                    .execute(&mut *lock)
                    .await
                    .context("locking the documents")?;
                let stalled = stall(http, url, &collection);
                tokio::time::sleep(STALL_SETTLE).await;
                let before = self.cpu(subject);
                let mut tally = refusal_burst(http, url, &collection, run).await;
                tally.duration = Some(started.elapsed());
                burst_cpu = Some((before, self.cpu(subject)));
                lock.rollback().await.context("unlocking the documents")?;
                for status in stalled.join_all().await {
                    match status? {
                        200 => {
                            tally.applied += 1;
                            tally.in_time += 1;
                        }
                        429 => tally.rejected_429 += 1,
                        other => bail!("a stalled mutation was answered {other}"),
                    }
                }
                tally
            }
            Setting::Yardstick => match subject {
                Subject::Pgbench => {
                    let url = if rtt_ms > 0.0 {
                        &self.linked_url
                    } else {
                        &self.url
                    };
                    pgbench::run(&self.pgbench, url, &collection, run, &self.out).await?
                }
                _ => {
                    closed_loop(
                        target.clone(),
                        &collection,
                        CLIENTS,
                        pgbench::YARDSTICK_THETA,
                        run,
                        Duration::ZERO,
                        self.seed,
                    )
                    .await
                }
            },
        };
        let elapsed = tally
            .duration
            .unwrap_or_else(|| started.elapsed())
            .max(Duration::from_millis(1));
        let cpu_after = self.cpu(subject);
        let switches_after = self
            .children
            .get(&subject)
            .and_then(SluiceChild::ctx_switches);
        let wal_after = self.wal_bytes().await?;
        let ((cpu_before, cpu_after), per_intent) = match burst_cpu {
            Some(burst) => (burst, tally.rejected_429),
            None => ((cpu_before, cpu_after), tally.applied),
        };
        if let Some(e) = &tally.first_error {
            bail!(
                "{} {}: {} intents failed; the first: {e}",
                setting_label(setting),
                subject_name(subject),
                tally.errors
            );
        }
        let counts = match (self.sluice_counts(&target).await?, counts_before) {
            (Some(after), Some(before)) => Some(after.since(&before)),
            _ => None,
        };
        let wasted = counts.map_or(tally.wasted, |c| c.stale);
        if !tally.staged.is_empty() {
            // Applied later, not in time: the accounting counts them, the
            // goodput does not.
            tally.staged_applied = self.follow_staged(&target, &tally.staged).await?;
            tally.applied += tally.staged_applied;
        }
        let shadow_agreement = if shadow {
            self.shadow_agreement(&target, &collection).await?
        } else {
            None
        };
        let found = match &embedded {
            Some(file) => {
                let found = embedded_found(file, &collection).await;
                file.close().await;
                found?
            }
            None => self.found(&collection).await?,
        };
        if let Err(e) = check_accounting(
            setting,
            subject,
            &collection,
            &tally,
            external_writes,
            found,
        ) {
            let clues = match embedded {
                Some(_) => String::new(),
                None => self.accounting_clues(&target, &collection, &tally).await,
            };
            bail!("{e}{clues}");
        }
        let per = |i: usize, n: u64| match (cpu_before[i], cpu_after[i]) {
            (Some(before), Some(after)) if n > 0 => {
                Some(after.saturating_sub(before) as f64 / n as f64)
            }
            _ => None,
        };
        // The SQLite ceiling writes the embedded Sluice's file while that
        // Sluice idles: its CPU is not the run's, and PostgreSQL takes no
        // part in either embedded run.
        let ceiling = setting == Setting::Writes(Writer::SqliteBatched);
        let cpu_us_per_mutation = per(0, tally.mutations).filter(|_| !ceiling);
        let per_applied = |before: Option<u64>, after: Option<u64>| match (before, after) {
            (Some(b), Some(a)) if tally.applied > 0 => {
                Some(a.saturating_sub(b) as f64 / tally.applied as f64)
            }
            _ => None,
        };
        let ctx_switches_per_intent = per_applied(switches_before, switches_after);
        // The refusal burst writes nothing of its own; SQLite is not
        // PostgreSQL.
        let wal_bytes_per_intent = per_applied(Some(wal_before), Some(wal_after))
            .filter(|_| !matches!(setting, Setting::Refusals | Setting::Floor))
            .filter(|_| embedded.is_none());
        let relay_ran = rtt_ms > 0.0;
        // Per applied intent; for the refusal burst, per refusal.
        let cpu_us_per_intent = report::CpuPerIntent {
            sluice: per(0, per_intent).filter(|_| !ceiling),
            postgres: per(1, per_intent).filter(|_| embedded.is_none()),
            client: per(2, per_intent),
            relay: per(3, per_intent).filter(|_| relay_ran),
        };
        let placement = match subject {
            Subject::OwnTier => Some("own-tier".to_owned()),
            Subject::Embedded if !ceiling => Some("embedded".to_owned()),
            Subject::Embedded => None,
            Subject::Contender(c) if !c.is_sluice() => None,
            Subject::Pgbench => None,
            _ => Some("next-to-store".to_owned()),
        };
        let (workload, theta, load) = match setting {
            Setting::Hot(t) => ("hot", Some(t), None),
            Setting::Capacity => ("overload", None, None),
            Setting::Overload(l) => ("overload", None, Some(l)),
            Setting::External => ("external", Some(0.99), None),
            Setting::Trace => ("trace", None, None),
            Setting::Writes(_) => ("writes", None, None),
            Setting::Yardstick => ("yardstick", Some(pgbench::YARDSTICK_THETA), None),
            Setting::Refusals => ("refusals", None, None),
            Setting::Floor => ("floor", None, None),
            Setting::Cluster(t) => ("cluster", Some(t), None),
        };
        let forecast_quality = (!tally.forecasts.is_empty())
            .then(|| sluice_server::predict::quality::summarize(&tally.forecasts));
        let contender = match setting {
            Setting::Writes(writer) => writer.name().to_owned(),
            _ => subject_name(subject),
        };
        Ok(Sample {
            workload: workload.to_owned(),
            theta,
            load,
            contender,
            goodput: tally.in_time as f64 / elapsed.as_secs_f64(),
            applied: tally.applied,
            wasted_writes: wasted,
            locked_lanes: counts.map(|c| c.locked),
            lock_held_ms: counts
                .filter(|c| c.locked > 0)
                .map(|c| c.lock_held_ms / c.locked as f64),
            leases: (!tally.forecasts.is_empty()).then_some(tally.leases),
            shadow_agreement,
            ctx_switches_per_intent,
            wal_bytes_per_intent,
            staged: (!tally.staged.is_empty()).then_some(tally.staged.len() as u64),
            staged_applied: (!tally.staged.is_empty()).then_some(tally.staged_applied),
            forecast_auc: forecast_quality.as_ref().and_then(|q| q.auc),
            forecast_ece: forecast_quality
                .as_ref()
                .and_then(|q| q.expected_calibration_error),
            client_conflicts: tally.conflicts,
            p50_ms: tally.latency_ms(0.5),
            p99_ms: tally.latency_ms(0.99),
            p999_ms: tally.latency_ms(0.999),
            timeouts: tally.timeouts,
            rejected_429: tally.rejected_429,
            cpu_us_per_mutation,
            rtt_ms,
            placement,
            cpu_us_per_intent,
            quantiles_ms: (0..=100)
                .map(|i| tally.latency_ms(f64::from(i) / 100.0))
                .collect(),
        })
    }

    /// `DOCS` documents at version 1, each `{"owner": null, "entries": []}`.
    async fn load_documents(&self, collection: &str) -> ToolResult<()> {
        sqlx::query(
            "INSERT INTO sluice_documents (collection, key, version, item, updated_ms)
             SELECT $1, 'doc-' || g, 1, '{\"owner\": null, \"entries\": []}'::json, $2
             FROM generate_series(0, $3 - 1) AS g",
        )
        .bind(collection)
        .bind(wall_ms())
        .bind(DOCS as i64)
        .execute(&self.admin)
        .await
        .context("loading the documents")?;
        Ok(())
    }

    /// Automerge, with `entries` a set: a stale append keeps every entry
    /// once; with `shadow`, the same logic as a script beside it.
    async fn configure(&self, url: &str, collection: &str, shadow: bool) -> ToolResult<()> {
        let mut config = serde_json::json!({"handler": "automerge", "set_fields": ["entries"]});
        if shadow {
            config["shadow_handler"] = serde_json::json!({"script": super::plan::SHADOW_SCRIPT});
        }
        let response = self
            .http
            .put(format!("{url}/v1/collections/{collection}"))
            .json(&config)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "configuring {collection}: {} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// The WAL PostgreSQL has written so far, in bytes: its insert position,
    /// exact at once (`pg_stat_wal`'s counters are flushed by each backend
    /// now and then).
    async fn wal_bytes(&self) -> ToolResult<u64> {
        let bytes: f64 = sqlx::query_scalar(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::float8",
        )
        .fetch_one(&self.admin)
        .await
        .context("reading PostgreSQL's WAL position")?;
        Ok(bytes as u64)
    }

    /// Waits until every staged intent is decided (promoted once the load
    /// is gone, or expired) and returns how many were applied.
    async fn follow_staged(&self, target: &Target, staged: &[(String, String)]) -> ToolResult<u64> {
        let Some(url) = target.sluice_urls().first().copied() else {
            return Ok(0);
        };
        let deadline = Instant::now() + STAGED_DRAIN_MAX;
        let mut applied = 0;
        for (client, id) in staged {
            loop {
                let response = self
                    .http
                    .get(format!("{url}/v1/mutations/{id}?client={client}"))
                    .send()
                    .await?;
                let status = response.status().as_u16();
                let answer: serde_json::Value = response.json().await?;
                // Decided: an outcome, or the error it was refused with.
                // Anything else (still staged or queued, or a 429 or 503
                // while the run's load drains) is asked again: taken for
                // "not applied", a refused question would leave an applied
                // intent uncounted.
                let decided =
                    status == 200 && (answer["outcome"].is_string() || answer["error"].is_object());
                if decided {
                    applied += u64::from(matches!(
                        answer["outcome"].as_str(),
                        Some("applied" | "merged")
                    ));
                    break;
                }
                if !matches!(status, 200 | 429 | 503) {
                    bail!("{client}/{id}: GET /v1/mutations answered {status}: {answer}");
                }
                if Instant::now() >= deadline {
                    bail!(
                        "{client}/{id} still undecided {STAGED_DRAIN_MAX:?} after its run ({status}: {answer})"
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(applied)
    }

    /// How often the shadow handler agreed with the live one in the run's
    /// collection (on the conflicts compared by the run's end).
    async fn shadow_agreement(&self, target: &Target, collection: &str) -> ToolResult<Option<f64>> {
        let Some(url) = target.sluice_urls().first().copied() else {
            return Ok(None);
        };
        let report: serde_json::Value = self
            .http
            .get(format!("{url}/v1/collections/{collection}/shadow-report"))
            .send()
            .await?
            .json()
            .await?;
        Ok(report["agreement_rate"].as_f64())
    }

    /// The stale commits of every Sluice behind `target` so far; `None`
    /// for the direct contenders.
    async fn sluice_counts(&self, target: &Target) -> ToolResult<Option<SluiceCounts>> {
        let urls = target.sluice_urls();
        if urls.is_empty() {
            return Ok(None);
        }
        let mut total = SluiceCounts::default();
        for url in urls {
            let stats: serde_json::Value = self
                .http
                .get(format!("{url}/v1/stats"))
                .send()
                .await?
                .json()
                .await?;
            let count = |v: &serde_json::Value, what: &str| {
                v.as_u64()
                    .with_context(|| format!("GET /v1/stats has no {what}"))
            };
            total.stale += count(&stats["commits_stale"], "commits_stale")?;
            total.locked += count(&stats["locking"]["locked_lanes"], "locking.locked_lanes")?;
            total.lock_held_ms += stats["locking"]["lock_held_ms"]
                .as_f64()
                .context("GET /v1/stats has no locking.lock_held_ms")?;
        }
        Ok(Some(total))
    }

    /// What a failed lost-update check has to go on: the entries the
    /// database holds twice, and those it holds that their clients were
    /// told were not applied, with what Sluice says of each now.
    async fn accounting_clues(&self, target: &Target, collection: &str, tally: &Tally) -> String {
        const SHOWN: usize = 5;
        let rows = sqlx::query_as::<_, (String, i64)>(
            "SELECT e, COUNT(*) FROM sluice_documents d, json_array_elements_text(d.item->'entries') e
             WHERE d.collection = $1 GROUP BY e",
        )
        .bind(collection)
        .fetch_all(&self.admin)
        .await;
        let held: std::collections::HashMap<String, i64> = match rows {
            Ok(rows) => rows.into_iter().collect(),
            Err(e) => return format!("\n(the entries could not be read: {e})"),
        };
        let mut clues = String::new();
        let twice: Vec<_> = held.iter().filter(|(_, n)| **n > 1).take(SHOWN).collect();
        if !twice.is_empty() {
            clues.push_str(&format!("\nentries held more than once: {twice:?}"));
        }
        let url = target.sluice_urls().first().map(|u| u.to_string());
        let mut shown = 0;
        for (client, entry, how) in tally
            .unapplied
            .iter()
            .filter(|(_, entry, _)| held.contains_key(entry))
        {
            if shown == SHOWN {
                break;
            }
            let said = match &url {
                Some(url) => match self
                    .http
                    .get(format!(
                        "{url}/v1/mutations/{collection}:{entry}?client={client}"
                    ))
                    .send()
                    .await
                {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(e) => format!("(not asked: {e})"),
                },
                None => String::new(),
            };
            // Staged ones applied once promoted were counted.
            if *how == "staged" && (said.contains("\"applied\"") || said.contains("\"merged\"")) {
                continue;
            }
            shown += 1;
            clues.push_str(&format!(
                "\nentry {entry} of {client} is held, but its intent {how}; Sluice says now: {said}"
            ));
        }
        clues
    }

    async fn found(&self, collection: &str) -> ToolResult<Found> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS docs,
                    COALESCE(SUM(json_array_length(item->'entries')), 0)::BIGINT AS entries,
                    COALESCE(SUM(version), 0)::BIGINT AS versions
             FROM sluice_documents WHERE collection = $1",
        )
        .bind(collection)
        .fetch_one(&self.admin)
        .await?;
        Ok(Found {
            docs: sqlx::Row::try_get(&row, "docs")?,
            entries: sqlx::Row::try_get(&row, "entries")?,
            versions: sqlx::Row::try_get(&row, "versions")?,
        })
    }

    /// Sluice's SQLite store file of the embedded subject, opened as Sluice
    /// opens it (WAL, `synchronous = FULL`), with one connection: a writer.
    async fn embedded_file(&self) -> ToolResult<SqlitePool> {
        let child = self
            .children
            .get(&Subject::Embedded)
            .context("no embedded Sluice was started")?;
        let options = SqliteConnectOptions::new()
            .filename(child.store_file())
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .context("opening the embedded Sluice's store file")
    }
}

/// `DOCS` documents at version 1 in the embedded store, as `load_documents`.
async fn load_embedded_documents(file: &SqlitePool, collection: &str) -> ToolResult<()> {
    sqlx::query(
        "INSERT INTO sluice_documents (collection, key, version, item, updated_ms)
         WITH RECURSIVE g(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM g WHERE n + 1 < $3)
         SELECT $1, 'doc-' || n, 1, '{\"owner\":null,\"entries\":[]}', $2 FROM g",
    )
    .bind(collection)
    .bind(wall_ms())
    .bind(DOCS as i64)
    .execute(file)
    .await
    .context("loading the documents into SQLite")?;
    Ok(())
}

/// What the embedded store holds of a collection, as `Bench::found`.
async fn embedded_found(file: &SqlitePool, collection: &str) -> ToolResult<Found> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS docs,
                COALESCE(SUM(json_array_length(item, '$.entries')), 0) AS entries,
                COALESCE(SUM(version), 0) AS versions
         FROM sluice_documents WHERE collection = $1",
    )
    .bind(collection)
    .fetch_one(file)
    .await
    .context("counting the embedded store's documents")?;
    Ok(Found {
        docs: sqlx::Row::try_get(&row, "docs")?,
        entries: sqlx::Row::try_get(&row, "entries")?,
        versions: sqlx::Row::try_get(&row, "versions")?,
    })
}

/// Every intent reported applied is in the database exactly once, and
/// nothing else is: a lost or doubled update fails the benchmark.
fn check_accounting(
    setting: Setting,
    subject: Subject,
    collection: &str,
    tally: &Tally,
    external_writes: u64,
    found: Found,
) -> ToolResult<()> {
    let applied = i64::try_from(tally.applied)?;
    let problem = match setting {
        Setting::Trace => accounting_problem("version increments", applied, found.versions),
        // Nothing reached a lane: nothing may have been written.
        Setting::Floor => accounting_problem("version increments", 0, found.versions - found.docs),
        Setting::Writes(_) | Setting::Refusals => {
            accounting_problem("version increments", applied, found.versions - found.docs)
        }
        Setting::External => {
            accounting_problem("list entries", applied, found.entries).or_else(|| {
                accounting_problem(
                    "version increments (with the external writer's)",
                    applied + i64::try_from(external_writes).unwrap_or(i64::MAX),
                    found.versions - found.docs,
                )
            })
        }
        _ => accounting_problem("list entries", applied, found.entries).or_else(|| {
            accounting_problem("version increments", applied, found.versions - found.docs)
        }),
    };
    match problem {
        Some(problem) => bail!(
            "lost-update check failed for {} {} (collection {collection}): {problem}",
            setting_label(setting),
            subject_name(subject)
        ),
        None => Ok(()),
    }
}

/// What the Sluices behind a target counted so far: stale commits, lanes
/// decided under a lock, and how long the locks were held in all.
#[derive(Clone, Copy, Debug, Default)]
struct SluiceCounts {
    stale: u64,
    locked: u64,
    lock_held_ms: f64,
}

impl SluiceCounts {
    fn since(&self, before: &SluiceCounts) -> SluiceCounts {
        SluiceCounts {
            stale: self.stale.saturating_sub(before.stale),
            locked: self.locked.saturating_sub(before.locked),
            lock_held_ms: (self.lock_held_ms - before.lock_held_ms).max(0.0),
        }
    }
}
