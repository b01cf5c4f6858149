//! One client intent, done the way each contender does it. All contenders
//! share this code's shape (read, think, write; retry as the contender
//! would), so the benchmark compares the write paths and nothing else.

use crate::resolve::merge::merge_patch;
use crate::trace::TraceLine;
use serde_json::{Map, Value, json};
use sqlx::postgres::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The contenders of `sluice bench`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Contender {
    DirectOcc,
    DirectLock,
    SluiceFifo,
    Sluice,
}

impl Contender {
    pub const ALL: [Contender; 4] = [
        Contender::DirectOcc,
        Contender::DirectLock,
        Contender::SluiceFifo,
        Contender::Sluice,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Contender::DirectOcc => "direct-occ",
            Contender::DirectLock => "direct-lock",
            Contender::SluiceFifo => "sluice-fifo",
            Contender::Sluice => "sluice",
        }
    }

    pub fn is_sluice(self) -> bool {
        matches!(self, Contender::SluiceFifo | Contender::Sluice)
    }
}

/// Retries of a direct client before it gives up on an intent.
pub(super) const DIRECT_RETRIES_MAX: u32 = 10;
/// Resends of a mutation Sluice answered 503 (same id: exactly-once).
const RESENDS_MAX: u32 = 10;

/// How one intent ended.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Ended {
    pub applied: bool,
    /// The write found the document changed since the client's read.
    pub conflict: bool,
    /// Store writes that did not stick: conditional updates that missed,
    /// aborted transactions.
    pub wasted: u32,
    pub rejected_429: bool,
    pub error: Option<String>,
    /// Sluice's forecast for the write, told at the read (`intent=write`),
    /// and whether the read earned a write lease.
    pub forecast: Option<f64>,
    pub leased: bool,
    /// Staged as a shadow write (202 `staged`): its (client, id), whose
    /// outcome the run follows up once the load is gone.
    pub staged: Option<(String, String)>,
}

impl Ended {
    pub(super) fn failed(error: impl std::fmt::Display) -> Ended {
        Ended {
            error: Some(error.to_string()),
            ..Ended::default()
        }
    }
}

/// Where intents go.
#[derive(Clone)]
pub(super) enum Target {
    Direct {
        pool: PgPool,
        lock: bool,
    },
    Sluice {
        http: reqwest::Client,
        url: String,
    },
    /// Several Sluice processes, each intent sent whole (its read and its
    /// write) to the next of them: a load balancer in the client.
    RoundRobin {
        targets: Arc<[Target]>,
        next: Arc<AtomicUsize>,
    },
}

/// The `hot` intent: set `owner`, append a unique `entry` to `entries`.
pub(super) struct Append<'a> {
    pub collection: &'a str,
    pub key: &'a str,
    pub client: &'a str,
    pub entry: &'a str,
    pub think: Duration,
}

fn appended(mut item: Map<String, Value>, client: &str, entry: &str) -> Map<String, Value> {
    item.insert("owner".into(), Value::String(client.into()));
    match item.get_mut("entries") {
        Some(Value::Array(entries)) => entries.push(Value::String(entry.into())),
        _ => {
            item.insert("entries".into(), json!([entry]));
        }
    }
    item
}

/// `(version, item)`; version 0 when the row does not exist.
async fn read_row(
    executor: impl sqlx::PgExecutor<'_>,
    collection: &str,
    key: &str,
    for_update: bool,
) -> Result<(i64, Option<Map<String, Value>>), sqlx::Error> {
    let sql = if for_update {
        "SELECT version, item::text AS item FROM sluice_documents WHERE collection = $1 AND key = $2 FOR UPDATE"
    } else {
        "SELECT version, item::text AS item FROM sluice_documents WHERE collection = $1 AND key = $2"
    };
    let row = sqlx::query(sql)
        .bind(collection)
        .bind(key)
        .fetch_optional(executor)
        .await?;
    let Some(row) = row else { return Ok((0, None)) };
    let version: i64 = sqlx::Row::try_get(&row, "version")?;
    let text: Option<String> = sqlx::Row::try_get(&row, "item")?;
    let item = text.and_then(|t| match serde_json::from_str(&t) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    });
    Ok((version, item))
}

/// Writes `item` as version `expected + 1` if the row is still at `expected`
/// (0: the row must not exist); whether it stuck.
async fn write_row(
    executor: impl sqlx::PgExecutor<'_>,
    collection: &str,
    key: &str,
    expected: i64,
    item: Option<&Map<String, Value>>,
) -> Result<bool, sqlx::Error> {
    let text = item.map(|m| Value::Object(m.clone()).to_string());
    let done = if expected == 0 {
        sqlx::query(
            "INSERT INTO sluice_documents (collection, key, version, item, updated_ms)
             VALUES ($1, $2, 1, $3::json, $4) ON CONFLICT (collection, key) DO NOTHING",
        )
        .bind(collection)
        .bind(key)
        .bind(text)
        .bind(crate::clock::wall_ms())
        .execute(executor)
        .await?
    } else {
        sqlx::query(
            "UPDATE sluice_documents SET version = $3 + 1, item = $4::json, updated_ms = $5
             WHERE collection = $1 AND key = $2 AND version = $3",
        )
        .bind(collection)
        .bind(key)
        .bind(expected)
        .bind(text)
        .bind(crate::clock::wall_ms())
        .execute(executor)
        .await?
    };
    Ok(done.rows_affected() == 1)
}

/// What a client wants done to one document, re-applicable to whatever it
/// finds: `None` from `apply` means there is nothing to do (a delete of
/// nothing).
pub(super) trait Change: Sync {
    fn apply(&self, current: Option<Map<String, Value>>) -> Option<Option<Map<String, Value>>>;
}

struct AppendChange<'a>(&'a Append<'a>);

impl Change for AppendChange<'_> {
    fn apply(&self, current: Option<Map<String, Value>>) -> Option<Option<Map<String, Value>>> {
        Some(Some(appended(
            current.unwrap_or_default(),
            self.0.client,
            self.0.entry,
        )))
    }
}

/// Optimistic: read, think, conditional update; on a miss re-read,
/// re-apply and retry. `base`, when the client had one, tells whether its
/// view was stale (a conflict the application had to handle).
async fn direct_occ(
    pool: &PgPool,
    collection: &str,
    key: &str,
    think: Duration,
    base: Option<i64>,
    change: &dyn Change,
) -> Ended {
    let mut ended = Ended::default();
    for attempt in 0..DIRECT_RETRIES_MAX {
        let (version, item) = match read_row(pool, collection, key, false).await {
            Ok(read) => read,
            Err(e) => return Ended::failed(e),
        };
        if attempt == 0 && !think.is_zero() {
            tokio::time::sleep(think).await;
        }
        if base.is_some_and(|b| b != version) {
            ended.conflict = true;
        }
        let Some(next) = change.apply(item) else {
            return ended;
        };
        match write_row(pool, collection, key, version, next.as_ref()).await {
            Ok(true) => {
                ended.applied = true;
                return ended;
            }
            Ok(false) => {
                ended.wasted += 1;
                ended.conflict = true;
            }
            Err(e) => return Ended::failed(e),
        }
    }
    ended
}

/// Pessimistic: read, think, then `BEGIN; SELECT … FOR UPDATE; UPDATE;
/// COMMIT`; a transaction that aborts is retried.
async fn direct_lock(
    pool: &PgPool,
    collection: &str,
    key: &str,
    think: Duration,
    base: Option<i64>,
    change: &dyn Change,
) -> Ended {
    let mut ended = Ended::default();
    let read = match read_row(pool, collection, key, false).await {
        Ok((version, _)) => version,
        Err(e) => return Ended::failed(e),
    };
    if !think.is_zero() {
        tokio::time::sleep(think).await;
    }
    let seen = base.unwrap_or(read);
    for _ in 0..DIRECT_RETRIES_MAX {
        let attempt = async {
            let mut tx = pool.begin().await?;
            let (version, item) = read_row(&mut *tx, collection, key, true).await?;
            let Some(next) = change.apply(item) else {
                tx.rollback().await?;
                return Ok::<_, sqlx::Error>((version, Some(false)));
            };
            // A missing row has nothing to lock: two inserters race, and
            // the loser's insert does nothing (a retry).
            let wrote = write_row(&mut *tx, collection, key, version, next.as_ref()).await?;
            if !wrote {
                tx.rollback().await?;
                return Ok((version, None));
            }
            tx.commit().await?;
            Ok((version, Some(true)))
        };
        match attempt.await {
            Ok((version, Some(applied))) => {
                ended.conflict |= version != seen;
                ended.applied = applied;
                return ended;
            }
            Ok((_, None)) => ended.wasted += 1,
            Err(e) if is_retryable(&e) => ended.wasted += 1,
            Err(e) => return Ended::failed(e),
        }
    }
    ended
}

/// Deadlocks and serialization failures abort a transaction that may simply
/// be run again.
fn is_retryable(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == "40P01" || code == "40001")
}

/// Sends one mutation to Sluice; a 503 is resent with the same id (Sluice
/// answers a resend exactly once), a 429 ends the intent.
async fn post_mutation(http: &reqwest::Client, url: &str, body: &Value) -> Ended {
    let mut ended = Ended::default();
    for resend in 0..=RESENDS_MAX {
        let response = match http
            .post(format!("{url}/v1/mutations"))
            .json(body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return Ended::failed(e),
        };
        let status = response.status().as_u16();
        let answer: Value = match response.json().await {
            Ok(v) => v,
            Err(e) => return Ended::failed(format!("answer {status} is not JSON: {e}")),
        };
        match status {
            200 => {
                ended.applied = true;
                ended.conflict = !answer["conflict"].is_null();
                return ended;
            }
            202 if answer["status"] == "staged" => {
                let client = body["client"].as_str().unwrap_or_default();
                let id = answer["id"].as_str().unwrap_or_default();
                ended.staged = Some((client.to_owned(), id.to_owned()));
                return ended;
            }
            // A rejection, or a delete of nothing: decided, not applied.
            409 => {
                ended.conflict = true;
                return ended;
            }
            404 => return ended,
            429 => {
                ended.rejected_429 = true;
                return ended;
            }
            503 if resend < RESENDS_MAX => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => return Ended::failed(format!("answer {status}: {answer}")),
        }
    }
    Ended::failed("503 after every resend")
}

impl Target {
    pub(super) fn round_robin(targets: Vec<Target>) -> Target {
        Target::RoundRobin {
            targets: targets.into(),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The Sluice processes behind this target (none for a direct one).
    pub(super) fn sluice_urls(&self) -> Vec<&str> {
        match self {
            Target::Direct { .. } => Vec::new(),
            Target::Sluice { url, .. } => vec![url.as_str()],
            Target::RoundRobin { targets, .. } => {
                targets.iter().flat_map(Target::sluice_urls).collect()
            }
        }
    }

    /// Where the next intent goes: this target, or the next of its own.
    fn pick(&self) -> &Target {
        match self {
            Target::RoundRobin { targets, next } if !targets.is_empty() => {
                targets[next.fetch_add(1, Ordering::Relaxed) % targets.len()].pick()
            }
            other => other,
        }
    }

    pub(super) async fn append(&self, intent: &Append<'_>) -> Ended {
        let change = AppendChange(intent);
        match self.pick() {
            Target::Direct { pool, lock: false } => {
                direct_occ(
                    pool,
                    intent.collection,
                    intent.key,
                    intent.think,
                    None,
                    &change,
                )
                .await
            }
            Target::Direct { pool, lock: true } => {
                direct_lock(
                    pool,
                    intent.collection,
                    intent.key,
                    intent.think,
                    None,
                    &change,
                )
                .await
            }
            Target::Sluice { http, url } => {
                let read = http
                    .get(format!(
                        "{url}/v1/documents/{}/{}?intent=write&client={}",
                        intent.collection, intent.key, intent.client
                    ))
                    .send()
                    .await;
                let doc: Value = match read {
                    Ok(r) if r.status().is_success() => match r.json().await {
                        Ok(v) => v,
                        Err(e) => return Ended::failed(e),
                    },
                    // Refused at the door: the intent ends as a write's 429 would.
                    Ok(r) if r.status().as_u16() == 429 => {
                        return Ended {
                            rejected_429: true,
                            ..Ended::default()
                        };
                    }
                    Ok(r) => return Ended::failed(format!("read answered {}", r.status())),
                    Err(e) => return Ended::failed(e),
                };
                if !intent.think.is_zero() {
                    tokio::time::sleep(intent.think).await;
                }
                let item = doc["item"].as_object().cloned();
                let value = appended(item.unwrap_or_default(), intent.client, intent.entry);
                let mut body = json!({
                    "id": format!("{}:{}", intent.collection, intent.entry),
                    "client": intent.client,
                    "collection": intent.collection,
                    "key": intent.key,
                    "op": "patch",
                    "base_version": doc["version"],
                    "value": value,
                });
                let lease = doc["lease"]["token"].as_str();
                if let Some(token) = lease {
                    body["lease"] = json!(token);
                }
                Ended {
                    forecast: doc["forecast"]["conflict_probability"].as_f64(),
                    leased: lease.is_some(),
                    ..post_mutation(http, url, &body).await
                }
            }
            Target::RoundRobin { .. } => Ended::failed("a round robin of no Sluice"),
        }
    }

    /// One line of a trace, against `collection` instead of the trace's.
    pub(super) async fn trace(&self, collection: &str, line: &TraceLine) -> Ended {
        let base = line.base_version.map(|b| b as i64);
        match self.pick() {
            Target::Direct { pool, lock } => {
                // Direct clients re-apply their change on a miss: `base` only
                // says whether their view was stale.
                if *lock {
                    direct_lock(pool, collection, &line.key, Duration::ZERO, base, line).await
                } else {
                    direct_occ(pool, collection, &line.key, Duration::ZERO, base, line).await
                }
            }
            Target::Sluice { http, url } => {
                let mut body = line.raw.clone();
                body.insert("collection".into(), Value::String(collection.into()));
                body.insert(
                    "id".into(),
                    Value::String(format!("{collection}:{}", line.id)),
                );
                post_mutation(http, url, &Value::Object(body)).await
            }
            Target::RoundRobin { .. } => Ended::failed("a round robin of no Sluice"),
        }
    }
}

impl Change for TraceLine {
    fn apply(&self, current: Option<Map<String, Value>>) -> Option<Option<Map<String, Value>>> {
        use crate::model::Op;
        match self.op {
            Op::Put => Some(Some(self.value.clone().unwrap_or_default())),
            Op::Patch => {
                let mut item = current.unwrap_or_default();
                if let Some(patch) = &self.value {
                    merge_patch(&mut item, patch);
                }
                Some(Some(item))
            }
            Op::Delete => current.map(|_| None),
        }
    }
}
