//! The `auth` workload: what authentication costs per request. Three Sluice
//! processes on the same store, one per `--auth` mode (none, an API key, an
//! HS256 JWT), each read by the same closed loop of clients asking for the
//! same documents; the modes take turns, rotating with each repetition, and
//! each process's CPU is read around its own turn. A read is the cheapest
//! request that is authenticated, so the differences are the credential's
//! cost (checked, looked up, limited), not a commit's noise.

use super::CLIENTS;
use super::child::{Features, SluiceChild};
use super::load::{Tally, join};
use super::report::AuthRecord;
use crate::tool::{Context, ToolResult, bail};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Documents the clients read, written once before the turns.
const READ_DOCS: u64 = 1_000;
/// The modes, in the order of the first repetition.
const MODES: [&str; 3] = ["none", "keys", "jwt"];

/// Per-client limits far above what the loop asks for: the limiter's check
/// is part of the cost measured, its refusals are not.
const LIMITS_ENV: [(&str, &str); 2] = [
    ("SLUICE_LIMITS__WRITER__REQUESTS_PER_S", "10000000"),
    ("SLUICE_LIMITS__WRITER__BURST", "10000000"),
];

/// A child serving in `mode`, and the `Authorization` value its clients send.
struct Served {
    mode: &'static str,
    child: SluiceChild,
    authorization: Option<String>,
}

pub(super) async fn measure(
    exe: &Path,
    postgres: &str,
    out: &Path,
    prefix: &str,
    run: Duration,
    repetitions: usize,
) -> ToolResult<Vec<AuthRecord>> {
    let dir = out.join("auth");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut served = Vec::new();
    for mode in MODES {
        served.push(start(exe, postgres, &dir, mode).await?);
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(2 * CLIENTS)
        .build()?;
    let collection: Arc<str> = format!("{prefix}-auth").into();
    write_documents(&http, &served[0].child.url, &collection).await?;

    let mut samples: Vec<(usize, AuthRecord)> = Vec::new();
    for repetition in 0..repetitions {
        for turn in 0..served.len() {
            let i = (turn + repetition) % served.len();
            let s = &served[i];
            let cpu_before = s.child.cpu_us();
            let started = Instant::now();
            let tally = reads(&http, s, &collection, run).await;
            let elapsed = started.elapsed().as_secs_f64();
            let cpu = match (cpu_before, s.child.cpu_us()) {
                (Some(before), Some(after)) => after.saturating_sub(before) as f64,
                _ => f64::NAN,
            };
            if let Some(e) = &tally.first_error {
                bail!(
                    "auth {}: {} of {} reads failed, the first: {e}",
                    s.mode,
                    tally.errors,
                    tally.mutations
                );
            }
            let served_ok = tally.applied.max(1) as f64;
            samples.push((
                i,
                AuthRecord {
                    mode: s.mode.to_owned(),
                    requests: tally.applied,
                    requests_per_s: tally.applied as f64 / elapsed,
                    cpu_us_per_request: cpu / served_ok,
                    p50_ms: tally.latency_ms(0.50),
                    p99_ms: tally.latency_ms(0.99),
                },
            ));
        }
    }
    Ok(MODES
        .iter()
        .enumerate()
        .map(|(i, mode)| {
            let mine: Vec<&AuthRecord> = samples
                .iter()
                .filter(|(j, _)| *j == i)
                .map(|(_, r)| r)
                .collect();
            AuthRecord::median_of(mode, &mine)
        })
        .collect())
}

/// Starts a child in `mode` and makes its clients' credential.
async fn start(exe: &Path, postgres: &str, dir: &Path, mode: &'static str) -> ToolResult<Served> {
    let log = dir.join(format!("sluice-auth-{mode}.log"));
    let (args, authorization) = match mode {
        "keys" => {
            let key = make_key(exe, postgres, dir)?;
            (vec!["--auth".to_owned(), "keys".to_owned()], Some(key))
        }
        "jwt" => {
            let (config, token) = jwt_setup(dir)?;
            let args = vec!["--config".to_owned(), config.display().to_string()];
            (args, Some(token))
        }
        _ => (Vec::new(), None),
    };
    let child =
        SluiceChild::start_with(exe, Some(postgres), Features::ALL, &log, &args, &LIMITS_ENV)
            .await?;
    Ok(Served {
        mode,
        child,
        authorization: authorization.map(|c| format!("Bearer {c}")),
    })
}

/// A writer's key on the store, made by `sluice keys create` as a user would.
fn make_key(exe: &Path, postgres: &str, dir: &Path) -> ToolResult<String> {
    let out = Command::new(exe)
        .args(["keys", "create", "--client", "bench", "--role", "writer"])
        .args(["--store", postgres, "--data-dir"])
        .arg(dir)
        .output()
        .context("running sluice keys create")?;
    if !out.status.success() {
        bail!(
            "sluice keys create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().last() {
        Some(key) if !key.is_empty() => Ok(key.to_owned()),
        _ => bail!("sluice keys create printed no key"),
    }
}

/// A configuration for HS256 tokens and a writer's token, valid for a day.
fn jwt_setup(dir: &Path) -> ToolResult<(std::path::PathBuf, String)> {
    let secret = "sluice-bench-shared-secret-of-32-bytes-at-least";
    let secret_file = dir.join("hs256.secret");
    std::fs::write(&secret_file, secret).context("writing the HS256 secret")?;
    let config = dir.join("sluice-jwt.toml");
    let text = format!(
        "auth = \"jwt\"\n\n[jwt]\nissuer = \"sluice-bench\"\naudience = \"sluice\"\nhs256_secret_file = {:?}\n",
        secret_file.display().to_string()
    );
    std::fs::write(&config, text).context("writing the JWT configuration")?;
    let now = crate::clock::wall_ms() / 1000;
    let claims = serde_json::json!({
        "sub": "bench", "role": "writer", "iss": "sluice-bench", "aud": "sluice",
        "iat": now, "exp": now + 86_400,
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .context("signing the bench's token")?;
    Ok((config, token))
}

/// The documents the reads ask for, written through the open child.
async fn write_documents(
    http: &reqwest::Client,
    url: &str,
    collection: &Arc<str>,
) -> ToolResult<()> {
    let mutations: Vec<serde_json::Value> = (0..READ_DOCS)
        .map(|i| {
            serde_json::json!({
                "id": format!("{collection}:seed{i}"),
                "client": "bench",
                "collection": &**collection,
                "key": format!("doc-{i}"),
                "op": "put",
                "value": {"n": i, "owner": "bench"},
            })
        })
        .collect();
    for chunk in mutations.chunks(500) {
        let response = http
            .post(format!("{url}/v1/mutations:batch"))
            .json(&serde_json::json!({ "mutations": chunk }))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "writing the auth workload's documents: {}",
                response.status()
            );
        }
    }
    Ok(())
}

/// `CLIENTS` clients reading documents one after another for `run`.
async fn reads(http: &reqwest::Client, s: &Served, collection: &Arc<str>, run: Duration) -> Tally {
    let deadline = Instant::now() + run;
    let mut tasks = JoinSet::new();
    for c in 0..CLIENTS as u64 {
        let (http, url) = (http.clone(), s.child.url.clone());
        let (collection, authorization) = (collection.clone(), s.authorization.clone());
        tasks.spawn(async move {
            let mut tally = Tally::default();
            let mut n = c;
            while Instant::now() < deadline {
                n = (n + CLIENTS as u64) % READ_DOCS;
                let mut request = http.get(format!("{url}/v1/documents/{collection}/doc-{n}"));
                if let Some(value) = &authorization {
                    request = request.header("authorization", value);
                }
                let started = Instant::now();
                let status = request.send().await.map(|r| r.status().as_u16());
                tally.mutations += 1;
                match status {
                    Ok(200) => {
                        tally.applied += 1;
                        tally.record_latency(started.elapsed());
                    }
                    Ok(other) => {
                        tally.errors += 1;
                        tally
                            .first_error
                            .get_or_insert(format!("a read answered {other}"));
                    }
                    Err(e) => {
                        tally.errors += 1;
                        tally.first_error.get_or_insert(e.to_string());
                    }
                }
            }
            tally
        });
    }
    join(tasks).await
}
