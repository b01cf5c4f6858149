//! A throwaway PostgreSQL for `sluice bench` when no `--postgres` is given:
//! `initdb` on a temporary directory, a free port, default settings (fsync
//! on: the benchmark measures commits as users would pay for them), stopped
//! and removed on drop.

use crate::tool::{Context, ToolResult, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct TempPostgres {
    root: PathBuf,
    bin: PathBuf,
    pub url: String,
}

/// The newest installed server's `bin` directory (Debian's layout).
fn server_bin() -> ToolResult<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (no /usr/lib/postgresql); install it or pass --postgres URL")?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).context(
        "no initdb under /usr/lib/postgresql/*/bin; install PostgreSQL or pass --postgres URL",
    )
}

fn is_root() -> bool {
    // The owner of /proc/self is the effective user.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// The `pgbench` next to the newest installed server, or the one on `PATH`.
pub fn pgbench_path() -> PathBuf {
    server_bin()
        .map(|bin| bin.join("pgbench"))
        .ok()
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("pgbench"))
}

/// PostgreSQL refuses to run as root; then it runs as `postgres`.
fn command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut c: Command, what: &str, log: &Path) -> ToolResult<()> {
    let status = c
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {what}"))?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        bail!("{what} failed ({status}):\n{text}");
    }
    Ok(())
}

/// A port nobody listens on right now.
pub fn free_port() -> ToolResult<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

impl TempPostgres {
    pub fn start() -> ToolResult<TempPostgres> {
        let bin = server_bin()?;
        let root = std::env::temp_dir().join(format!(
            "sluice-bench-pg-{}-{}",
            std::process::id(),
            crate::clock::wall_ms()
        ));
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&root)
                .status()
                .context("chown of the temporary PostgreSQL directory")?;
            if !status.success() {
                bail!("cannot hand {} to the postgres user", root.display());
            }
        }
        let data = root.join("data");
        let port = free_port()?;
        let pg = TempPostgres {
            url: format!("postgres://sluice@127.0.0.1:{port}/postgres"),
            root,
            bin,
        };
        let mut initdb = command(&pg.bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "sluice", "--auth=trust", "-E", "UTF8"]);
        let out = initdb.output().context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let server_log = pg.root.join("server.log");
        let mut ctl = command(&pg.bin.join("pg_ctl"));
        ctl.arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&server_log)
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=400",
                pg.root.display()
            ))
            .arg("start");
        run(ctl, "pg_ctl start", &server_log)?;
        Ok(pg)
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let _ = command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.root.join("data"))
            .args(["-m", "fast", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The postmaster of the server behind `pool`, when that server runs on
/// this machine: the parent of the backend serving this connection.
pub async fn postmaster_pid(pool: &sqlx::PgPool) -> Option<u32> {
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await
        .ok()?;
    let stat = Path::new("/proc").join(backend.to_string());
    let comm = std::fs::read_to_string(stat.join("comm")).ok()?;
    if !comm.starts_with("postgres") {
        return None;
    }
    let parent = super::child::stat_fields(&stat.join("stat"), &[1])? / 10_000;
    let parent = u32::try_from(parent).ok()?;
    let parent_comm = std::fs::read_to_string(format!("/proc/{parent}/comm")).ok()?;
    parent_comm.starts_with("postgres").then_some(parent)
}

/// User plus system CPU of a PostgreSQL server, in microseconds: the
/// postmaster's own, its children's that have exited (its `cutime` and
/// `cstime`) and its live children's (backends, the WAL writer, …).
pub fn server_cpu_us(postmaster: u32) -> Option<u64> {
    let mut total = super::child::stat_fields(
        Path::new(&format!("/proc/{postmaster}/stat")),
        &[11, 12, 13, 14],
    )?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        if !name
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let stat = entry.path().join("stat");
        let is_child = super::child::stat_fields(&stat, &[1])
            .is_some_and(|ppid| ppid / 10_000 == u64::from(postmaster));
        if is_child {
            total += super::child::stat_cpu_us(&stat).unwrap_or(0);
        }
    }
    Some(total)
}
