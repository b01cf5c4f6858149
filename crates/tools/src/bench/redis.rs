//! The Redis of the `cluster` workload: the one given with `--redis`, or a
//! temporary `redis-server` started as deploy/redis.conf configures one (an
//! append-only file, flushed every second) on a free port and a directory
//! of its own, stopped when the run ends.

use crate::tool::{Context, ToolResult, bail};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(super) struct TempRedis {
    child: Child,
    root: PathBuf,
    pub url: String,
}

/// `redis-server` on the `PATH`, or where Debian puts it.
pub(super) fn server_bin() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
}

impl TempRedis {
    pub(super) fn start() -> ToolResult<TempRedis> {
        let Some(bin) = server_bin() else {
            bail!(
                "the cluster workload needs Redis: pass --redis redis://HOST:PORT, or install redis-server"
            );
        };
        let port = super::postgres::free_port()?;
        let root = std::env::temp_dir().join(format!(
            "sluice-bench-redis-{}-{}",
            std::process::id(),
            crate::clock::wall_ms()
        ));
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let log = std::fs::File::create(root.join("redis.log"))?;
        let child = Command::new(&bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .args(["--save", "", "--daemonize", "no"])
            .arg("--dir")
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let redis = TempRedis {
            child,
            root,
            url: format!("redis://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        while command(&redis.url, &["PING"]).is_err() {
            if started.elapsed() > Duration::from_secs(20) {
                bail!(
                    "redis-server did not answer within 20 s (see {})",
                    redis.root.join("redis.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(redis)
    }
}

impl Drop for TempRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The process id of the Redis at `url` (`INFO server`) when it runs on
/// this machine, so that its CPU can be read.
pub(super) fn server_pid(url: &str) -> Option<u32> {
    let host = reqwest::Url::parse(url).ok()?.host_str()?.to_owned();
    if !matches!(host.as_str(), "127.0.0.1" | "localhost" | "[::1]") {
        return None;
    }
    let info = command(url, &["INFO", "server"]).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

/// One command in RESP, its reply as text: enough for `PING` and `INFO`.
fn command(url: &str, args: &[&str]) -> ToolResult<String> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("the Redis URL {url}"))?;
    let host = parsed.host_str().unwrap_or("127.0.0.1");
    let port = parsed.port().unwrap_or(6379);
    let mut stream = TcpStream::connect((host, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut request = format!("*{}\r\n", args.len());
    for a in args {
        request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(request.as_bytes())?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if complete(&reply) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&reply).into_owned();
    if text.starts_with('-') {
        bail!("Redis answered {}", text.trim());
    }
    Ok(text)
}

/// Whether `reply` holds a whole simple or bulk string.
fn complete(reply: &[u8]) -> bool {
    let Some(end) = reply.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    match reply.first() {
        Some(b'$') => std::str::from_utf8(&reply[1..end])
            .ok()
            .and_then(|n| n.parse::<i64>().ok())
            .is_some_and(|n| n < 0 || reply.len() >= end + 2 + n as usize + 2),
        _ => true,
    }
}
