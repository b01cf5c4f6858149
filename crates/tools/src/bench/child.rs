//! Sluice as the benchmark runs it: the same binary a user runs, as a child
//! process (`sluice serve`), with its defaults except what a contender turns
//! off, so its CPU time can be read apart from the load generator's.

use crate::tool::{Context, ToolResult, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What a Sluice contender turns off (everything on is the default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    pub prediction: bool,
    pub priority: bool,
    pub coalescing: bool,
    pub group_commit: bool,
}

impl Features {
    pub const ALL: Features = Features {
        prediction: true,
        priority: true,
        coalescing: true,
        group_commit: true,
    };
    pub const NONE: Features = Features {
        prediction: false,
        priority: false,
        coalescing: false,
        group_commit: false,
    };

    /// The `SLUICE_*` settings that turn the missing features off.
    fn env(self) -> Vec<(&'static str, &'static str)> {
        let mut env = Vec::new();
        if !self.prediction {
            env.push(("SLUICE_PREDICTOR__ENABLED", "false"));
        }
        if !self.priority {
            env.push(("SLUICE_QUEUE__PRIORITY_BOOST_MS", "0"));
        }
        if !self.coalescing {
            env.push(("SLUICE_QUEUE__BATCH_LEN_MAX", "1"));
        }
        if !self.group_commit {
            env.push(("SLUICE_QUEUE__COMMIT_BATCH_MAX", "1"));
        }
        env
    }
}

pub(super) struct SluiceChild {
    child: Child,
    pub url: String,
    data_dir: PathBuf,
}

impl SluiceChild {
    /// Starts `exe serve` on PostgreSQL (`postgres` for store and history;
    /// `None`: its embedded default, SQLite files in its data directory),
    /// with more arguments to `serve` and more settings, and waits until it
    /// answers `/healthz`. Its log goes to `log`.
    pub(super) async fn start_with(
        exe: &Path,
        postgres: Option<&str>,
        features: Features,
        log: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> ToolResult<SluiceChild> {
        let port = super::postgres::free_port()?;
        let data_dir =
            std::env::temp_dir().join(format!("sluice-bench-{}-{port}", std::process::id()));
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(exe);
        // The child runs on its defaults: nothing of the caller's SLUICE_*.
        for (name, _) in std::env::vars() {
            if name.starts_with("SLUICE_") {
                command.env_remove(name);
            }
        }
        command
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(
                postgres
                    .map(|url| ["--store", url, "--history", url])
                    .into_iter()
                    .flatten(),
            )
            .arg("--data-dir")
            .arg(&data_dir)
            .args(args)
            .envs(features.env())
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let mut sluice = SluiceChild {
            child,
            url: format!("http://127.0.0.1:{port}"),
            data_dir,
        };
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Some(status) = sluice.child.try_wait()? {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                bail!("sluice serve exited at start ({status}):\n{text}");
            }
            let health = http
                .get(format!("{}/healthz", sluice.url))
                .timeout(Duration::from_millis(500))
                .send()
                .await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return Ok(sluice);
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("sluice serve did not become healthy within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The SQLite file of its embedded store.
    pub(super) fn store_file(&self) -> PathBuf {
        self.data_dir.join("store.db")
    }

    /// User plus system CPU time the child has used, in microseconds.
    pub(super) fn cpu_us(&self) -> Option<u64> {
        process_cpu_us(self.child.id())
    }

    /// Context switches of the child's live threads so far (voluntary and
    /// not): each a wake-up or a preemption.
    pub(super) fn ctx_switches(&self) -> Option<u64> {
        process_ctx_switches(self.child.id())
    }
}

/// From `/proc/PID/stat`: fields 14 and 15 (utime, stime) in clock ticks,
/// which Linux reports in units of 1/100 s whatever the kernel's HZ.
pub fn process_cpu_us(pid: u32) -> Option<u64> {
    stat_cpu_us(Path::new(&format!("/proc/{pid}/stat")))
}

/// The context switches of a process's live threads, from each
/// `/proc/PID/task/TID/status` (the process's own `status` counts its main
/// thread only).
pub(super) fn process_ctx_switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(status) = std::fs::read_to_string(task.ok()?.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        for line in status.lines() {
            if let Some(n) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += n.trim().parse::<u64>().ok()?;
            }
        }
    }
    Some(total)
}

/// Fields 14 and 15 of a `stat` file of `/proc` (a process's or a thread's).
pub(super) fn stat_cpu_us(path: &Path) -> Option<u64> {
    stat_fields(path, &[11, 12])
}

/// The sum of some clock-tick fields of a `stat` file, counted from field
/// 3 (the state) as 0, in microseconds.
pub(super) fn stat_fields(path: &Path, fields: &[usize]) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces; fields resume after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let all: Vec<&str> = rest.split_whitespace().collect();
    let mut ticks = 0u64;
    for i in fields {
        ticks += all.get(*i)?.parse::<u64>().ok()?;
    }
    Some(ticks * 10_000)
}

impl Drop for SluiceChild {
    fn drop(&mut self) {
        // SIGTERM would drain a queue the benchmark no longer waits for.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
