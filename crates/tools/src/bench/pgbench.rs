//! PostgreSQL's own `pgbench` as the yardstick: the `direct-lock`
//! transaction as a custom script, `random_zipfian` over the same
//! documents, through the same link. If the bench's own `direct-lock` falls
//! well below it, the direct baseline is too weak to compare against.

use super::load::Tally;
use super::{CLIENTS, DOCS};
use crate::tool::{Context, ToolResult, bail};
use std::path::Path;
use std::time::Duration;

/// pgbench's Zipf parameter: it refuses anything below 1.001.
pub(super) const YARDSTICK_THETA: f64 = 1.01;

/// What `direct-lock` does for one intent without think time: read, then
/// lock, write and commit. `:k` is drawn 1…DOCS (1 the hottest, as `doc-0`
/// is the bench's).
fn script(collection: &str) -> String {
    let doc = "'doc-' || (:k - 1)";
    let coll = collection.replace('\'', "''");
    format!(
        "\\set k random_zipfian(1, {DOCS}, {YARDSTICK_THETA})\n\
         SELECT version, item::text FROM sluice_documents WHERE collection = '{coll}' AND key = {doc};\n\
         BEGIN;\n\
         SELECT version, item::text FROM sluice_documents WHERE collection = '{coll}' AND key = {doc} FOR UPDATE;\n\
         UPDATE sluice_documents SET version = version + 1, updated_ms = 0, item = json_build_object('owner', 'pgbench-' || :client_id, 'entries', (item->'entries')::jsonb || to_jsonb('pgbench-' || :client_id || '-' || :k))::json WHERE collection = '{coll}' AND key = {doc};\n\
         END;\n"
    )
}

/// Runs pgbench with `CLIENTS` clients for `run` (whole seconds, at least
/// one) against `url` and tallies every transaction from its log.
pub(super) async fn run(
    pgbench: &Path,
    url: &str,
    collection: &str,
    run: Duration,
    dir: &Path,
) -> ToolResult<Tally> {
    let script_path = dir.join(format!("{collection}.pgbench.sql"));
    std::fs::write(&script_path, script(collection))
        .with_context(|| format!("writing {}", script_path.display()))?;
    let prefix = dir.join(format!("{collection}.pgbench-log"));
    let seconds = run.as_secs_f64().round().max(1.0) as u64;
    let output = tokio::process::Command::new(pgbench)
        .arg("--no-vacuum")
        .arg("--file")
        .arg(&script_path)
        .args(["--client", &CLIENTS.to_string(), "--jobs", "2"])
        .args(["--time", &seconds.to_string(), "--protocol", "prepared"])
        .arg("--log")
        .arg(format!("--log-prefix={}", prefix.display()))
        .arg(url)
        .output()
        .await
        .with_context(|| format!("running {}", pgbench.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let tps = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .with_context(|| format!("no tps in pgbench's output:\n{stdout}"))?;
    let mut tally = Tally::default();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(&format!("{collection}.pgbench-log")) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path())?;
        for line in text.lines() {
            // client_id transaction_no time script_no time_epoch time_us
            let latency_us: u64 = line
                .split_whitespace()
                .nth(2)
                .and_then(|t| t.parse().ok())
                .with_context(|| format!("a pgbench log line that does not parse: {line:?}"))?;
            let latency = Duration::from_micros(latency_us);
            tally.add(
                super::intent::Ended {
                    applied: true,
                    ..Default::default()
                },
                latency,
            );
        }
        let _ = std::fs::remove_file(entry.path());
    }
    let _ = std::fs::remove_file(&script_path);
    if tally.applied == 0 {
        bail!("pgbench logged no transaction:\n{stdout}");
    }
    // pgbench's own rate leaves out its connection time; the run's length
    // is the one that makes its transactions that rate.
    tally.duration = Some(Duration::from_secs_f64(
        tally.applied as f64 / tps.max(1e-9),
    ));
    Ok(tally)
}
