//! The `cluster` workload's subject: `CLUSTER_MEMBERS` Sluice processes
//! joined in a cluster (`--redis`) on the bench's PostgreSQL, started as a
//! user starts them, with their defaults, and settled (every partition
//! owned, every member owning some) before the first run.

use super::child::{Features, SluiceChild};
use super::link::{Link, Relay};
use super::redis::{TempRedis, server_pid};
use super::{BenchOptions, CLUSTER_MEMBERS};
use crate::tool::{Context, ToolResult, bail};
use std::path::Path;
use std::time::{Duration, Instant};

pub(super) struct Cluster {
    pub members: Vec<SluiceChild>,
    /// The Redis they share, when the bench started it.
    _redis: Option<TempRedis>,
    /// Its process, when it runs on this machine: its CPU is the cluster's.
    pub redis_pid: Option<u32>,
}

impl Cluster {
    /// Starts the cluster and a link to each member.
    pub(super) async fn start_linked(
        options: &BenchOptions,
        postgres: &str,
        prefix: &str,
        relay: &Relay,
    ) -> ToolResult<(Cluster, Vec<Link>)> {
        let cluster = Cluster::start(
            &options.exe,
            postgres,
            options.redis.as_deref(),
            &options.out,
            prefix,
        )
        .await?;
        let mut links = Vec::new();
        for member in &cluster.members {
            let addr: std::net::SocketAddr = member
                .url
                .trim_start_matches("http://")
                .parse()
                .context("a cluster member's address")?;
            links.push(relay.link(addr)?);
        }
        Ok((cluster, links))
    }

    async fn start(
        exe: &Path,
        postgres: &str,
        redis: Option<&str>,
        out: &Path,
        prefix: &str,
    ) -> ToolResult<Cluster> {
        let (temp, url) = match redis {
            Some(url) => (None, url.to_owned()),
            None => {
                let temp = tokio::task::spawn_blocking(TempRedis::start).await??;
                let url = temp.url.clone();
                (Some(temp), url)
            }
        };
        let redis_pid = {
            let url = url.clone();
            tokio::task::spawn_blocking(move || server_pid(&url)).await?
        };
        // A prefix of this invocation's own: nothing of an earlier bench's
        // leases or streams on a shared Redis is in the way.
        let key_prefix = format!("{prefix}:");
        let args = vec!["--redis".to_owned(), url];
        let env = [("SLUICE_CLUSTER__PREFIX", key_prefix.as_str())];
        let mut members = Vec::with_capacity(CLUSTER_MEMBERS);
        for i in 0..CLUSTER_MEMBERS {
            let log = out.join(format!("sluice-cluster-{i}.log"));
            members.push(
                SluiceChild::start_with(exe, Some(postgres), Features::ALL, &log, &args, &env)
                    .await?,
            );
        }
        let cluster = Cluster {
            members,
            _redis: temp,
            redis_pid,
        };
        cluster.settled().await?;
        Ok(cluster)
    }

    /// Waits until every member owns some partitions and all are owned.
    async fn settled(&self) -> ToolResult<()> {
        let http = reqwest::Client::new();
        let url = &self.members[0].url;
        let started = Instant::now();
        let mut last = serde_json::Value::Null;
        while started.elapsed() < Duration::from_secs(30) {
            let view: serde_json::Value = http
                .get(format!("{url}/v1/cluster"))
                .send()
                .await?
                .json()
                .await
                .context("GET /v1/cluster")?;
            let partitions = view["partitions"].as_u64().unwrap_or(0) as usize;
            let owned: Vec<usize> = view["members"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .map(|m| m["partitions"].as_array().map_or(0, Vec::len))
                        .collect()
                })
                .unwrap_or_default();
            if owned.len() == self.members.len()
                && owned.iter().sum::<usize>() == partitions
                && owned.iter().all(|n| *n > 0)
            {
                return Ok(());
            }
            last = view;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the cluster did not settle on {CLUSTER_MEMBERS} members within 30 s: {last}")
    }

    /// User plus system CPU of the members and of Redis so far (µs).
    pub(super) fn cpu_us(&self) -> Option<u64> {
        let mut total = 0;
        for member in &self.members {
            total += member.cpu_us()?;
        }
        if let Some(pid) = self.redis_pid {
            total += super::child::process_cpu_us(pid)?;
        }
        Some(total)
    }
}
