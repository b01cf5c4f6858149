//! The coordinator on Redis: a single server, or a Redis Cluster.
//!
//! Each operation is one Lua script on one key's slot, so it is atomic on
//! either topology: a partition's lease (`P{pN}:lease`, "member epoch", with
//! a Redis expiry) and its epoch counter (`P{pN}:epoch`, never expiring)
//! share the hash tag `{pN}`; the members are one hash (`P{members}`). Times
//! are Redis's `TIME`, so members' clocks need not agree.

use super::{ClusterError, Coordinator, Holder, Member, check_member, check_ttl};
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, Script, ScriptInvocation};
use std::sync::LazyLock;
use std::time::Duration;

/// How long one Redis request may take before the coordinator is called
/// unavailable: well under a lease's time-to-live, so a holder learns in
/// time that it cannot renew.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where Redis is: one server, or seed nodes of a Redis Cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    Single(String),
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// One URL is a single server unless it answers that it is a cluster
    /// node (checked on connecting); several, comma-separated, are a
    /// cluster's seeds.
    pub fn parse(urls: &str) -> Result<RedisTarget, ClusterError> {
        let list: Vec<String> = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .collect();
        for url in &list {
            if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                return Err(ClusterError::Invalid(format!(
                    "{url:?} is not a Redis URL (redis://HOST:PORT)"
                )));
            }
        }
        match list.len() {
            0 => Err(ClusterError::Invalid("no Redis URL given".to_string())),
            1 => Ok(RedisTarget::Single(
                list.into_iter().next().unwrap_or_default(),
            )),
            _ => Ok(RedisTarget::Cluster(list)),
        }
    }
}

/// A connection on either topology; clones share it.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    pub(crate) async fn connect(target: &RedisTarget) -> Result<Conn, ClusterError> {
        Self::connect_timing_out(target, RESPONSE_TIMEOUT).await
    }

    /// A connection of its own whose requests may take `response_timeout`
    /// (a blocking read must not hold up anyone else's requests).
    pub(crate) async fn connect_timing_out(
        target: &RedisTarget,
        response_timeout: Duration,
    ) -> Result<Conn, ClusterError> {
        match target {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url.as_str()).map_err(invalid)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(response_timeout))
                    .set_number_of_retries(2);
                let mut conn = client
                    .get_connection_manager_with_config(config)
                    .await
                    .map_err(unavailable)?;
                // A cluster node named alone is a seed of its cluster.
                let info: String = redis::cmd("INFO")
                    .arg("cluster")
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                if info.contains("cluster_enabled:1") {
                    return Self::cluster(std::slice::from_ref(url), response_timeout).await;
                }
                Ok(Conn::Single(conn))
            }
            RedisTarget::Cluster(urls) => Self::cluster(urls, response_timeout).await,
        }
    }

    async fn cluster(urls: &[String], response_timeout: Duration) -> Result<Conn, ClusterError> {
        let client = ClusterClient::builder(urls.iter().map(String::as_str))
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(response_timeout)
            .retries(2)
            .build()
            .map_err(invalid)?;
        let conn = client.get_async_connection().await.map_err(unavailable)?;
        Ok(Conn::Cluster(conn))
    }

    pub(crate) async fn script<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, ClusterError> {
        match self.clone() {
            Conn::Single(mut c) => invocation.invoke_async(&mut c).await,
            Conn::Cluster(mut c) => invocation.invoke_async(&mut c).await,
        }
        .map_err(unavailable)
    }

    pub(crate) async fn query<T: FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, ClusterError> {
        match self.clone() {
            Conn::Single(mut c) => cmd.query_async(&mut c).await,
            Conn::Cluster(mut c) => cmd.query_async(&mut c).await,
        }
        .map_err(unavailable)
    }
}

fn unavailable(e: redis::RedisError) -> ClusterError {
    ClusterError::Unavailable(e.to_string())
}

fn invalid(e: redis::RedisError) -> ClusterError {
    ClusterError::Invalid(e.to_string())
}

/// Redis's clock in epoch ms, in a script.
const NOW: &str = "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}redis.call('HSET', KEYS[1], ARGV[1], (now + tonumber(ARGV[3])) .. ' ' .. now .. ' ' .. ARGV[2])
return now"
    ))
});

/// Lists the live members as id, "seen address" pairs, forgetting the dead.
static MEMBERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}local all = redis.call('HGETALL', KEYS[1])
local out = {{}}
for i = 1, #all, 2 do
  local v = all[i + 1]
  local sp = string.find(v, ' ', 1, true)
  if tonumber(string.sub(v, 1, sp - 1)) <= now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    table.insert(out, all[i])
    table.insert(out, string.sub(v, sp + 1))
  end
end
return out"
    ))
});

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local cur = redis.call('GET', KEYS[1])
if cur then
  local sp = string.find(cur, ' ', 1, true)
  if string.sub(cur, 1, sp - 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    return tonumber(string.sub(cur, sp + 1))
  end
  return false
end
local e = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[2])
if e <= floor then
  e = floor + 1
  redis.call('SET', KEYS[2], e)
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. e, 'PX', ARGV[3])
return e",
    )
});

static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0",
    )
});

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0",
    )
});

pub struct RedisCoordinator {
    conn: Conn,
    prefix: String,
}

impl RedisCoordinator {
    /// Connects; `prefix` starts every key (several clusters may share one
    /// Redis under different prefixes).
    pub async fn connect(target: &RedisTarget, prefix: &str) -> Result<Self, ClusterError> {
        if prefix.contains(['{', '}']) {
            return Err(ClusterError::Invalid(format!(
                "the key prefix {prefix:?} may not hold braces (Redis Cluster's hash tags)"
            )));
        }
        Ok(RedisCoordinator {
            conn: Conn::connect(target).await?,
            prefix: prefix.to_string(),
        })
    }

    fn lease_key(&self, partition: u32) -> String {
        format!("{}{{p{partition}}}:lease", self.prefix)
    }

    fn epoch_key(&self, partition: u32) -> String {
        format!("{}{{p{partition}}}:epoch", self.prefix)
    }

    fn members_key(&self) -> String {
        format!("{}{{members}}", self.prefix)
    }
}

fn ms(ttl_ms: u64) -> Result<u64, ClusterError> {
    check_ttl(ttl_ms)?;
    Ok(ttl_ms)
}

#[async_trait]
impl Coordinator for RedisCoordinator {
    async fn heartbeat(
        &self,
        member: &str,
        address: &str,
        ttl_ms: u64,
    ) -> Result<(), ClusterError> {
        check_member(member)?;
        let mut call = HEARTBEAT.prepare_invoke();
        call.key(self.members_key())
            .arg(member)
            .arg(address)
            .arg(ms(ttl_ms)?);
        let _now: i64 = self.conn.script(&call).await?;
        Ok(())
    }

    async fn members(&self) -> Result<Vec<Member>, ClusterError> {
        let mut call = MEMBERS.prepare_invoke();
        call.key(self.members_key());
        let pairs: Vec<(String, String)> = self.conn.script(&call).await?;
        let mut members = Vec::with_capacity(pairs.len());
        for (id, value) in pairs {
            let (seen, address) = value.split_once(' ').unwrap_or((value.as_str(), ""));
            let last_seen_ms = seen.parse().map_err(|_| {
                ClusterError::Unavailable(format!("member {id:?} has a malformed entry {value:?}"))
            })?;
            members.push(Member {
                id,
                address: address.to_string(),
                last_seen_ms,
            });
        }
        members.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(members)
    }

    async fn leave(&self, member: &str) -> Result<(), ClusterError> {
        let _: i64 = self
            .conn
            .query(redis::cmd("HDEL").arg(self.members_key()).arg(member))
            .await?;
        Ok(())
    }

    async fn acquire(
        &self,
        partition: u32,
        member: &str,
        floor: u64,
        ttl_ms: u64,
    ) -> Result<Option<u64>, ClusterError> {
        check_member(member)?;
        let mut call = ACQUIRE.prepare_invoke();
        call.key(self.lease_key(partition))
            .key(self.epoch_key(partition))
            .arg(member)
            .arg(floor)
            .arg(ms(ttl_ms)?);
        self.conn.script(&call).await
    }

    async fn renew(
        &self,
        partition: u32,
        member: &str,
        epoch: u64,
        ttl_ms: u64,
    ) -> Result<bool, ClusterError> {
        let mut call = RENEW.prepare_invoke();
        call.key(self.lease_key(partition))
            .arg(format!("{member} {epoch}"))
            .arg(ms(ttl_ms)?);
        let renewed: i64 = self.conn.script(&call).await?;
        Ok(renewed == 1)
    }

    async fn release(
        &self,
        partition: u32,
        member: &str,
        epoch: u64,
    ) -> Result<bool, ClusterError> {
        let mut call = RELEASE.prepare_invoke();
        call.key(self.lease_key(partition))
            .arg(format!("{member} {epoch}"));
        let released: i64 = self.conn.script(&call).await?;
        Ok(released == 1)
    }

    async fn holder(&self, partition: u32) -> Result<Option<Holder>, ClusterError> {
        let value: Option<String> = self
            .conn
            .query(redis::cmd("GET").arg(self.lease_key(partition)))
            .await?;
        value
            .map(|v| {
                let parsed = v
                    .split_once(' ')
                    .and_then(|(member, epoch)| Some((member, epoch.parse().ok()?)));
                match parsed {
                    Some((member, epoch)) => Ok(Holder {
                        member: member.to_string(),
                        epoch,
                    }),
                    None => Err(ClusterError::Unavailable(format!(
                        "partition {partition}'s lease is malformed: {v:?}"
                    ))),
                }
            })
            .transpose()
    }
}
