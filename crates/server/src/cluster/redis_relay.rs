//! The distributed queue on Redis streams: `P{pN}:stream` per partition,
//! read through the consumer group `sluice` (`XREADGROUP` to take,
//! `XAUTOCLAIM` to claim, `XACK` then `XDEL` to acknowledge), and
//! `P{m:ID}:inbox` per member, capped with `MAXLEN ~`. Each key is its own
//! slot, so it works on a Redis Cluster as on one server.

use super::redis::Conn;
use super::relay::{Entry, INBOX_LEN, Relay, queued_name};
use super::{ClusterError, RedisTarget};
use async_trait::async_trait;
use redis::Script;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use std::sync::LazyLock;
use std::time::Duration;

const GROUP: &str = "sluice";
/// The longest an inbox read blocks; its connection waits this much more.
const RECEIVE_WAIT_MAX: Duration = Duration::from_secs(2);
const BODY: &str = "b";

static ACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return redis.call('XDEL', KEYS[1], ARGV[2])",
    )
});

pub struct RedisRelay {
    conn: Conn,
    /// Inbox reads block: they get a connection of their own.
    blocking: tokio::sync::Mutex<Conn>,
    prefix: String,
}

impl RedisRelay {
    pub async fn connect(target: &RedisTarget, prefix: &str) -> Result<Self, ClusterError> {
        if prefix.contains(['{', '}']) {
            return Err(ClusterError::Invalid(format!(
                "the key prefix {prefix:?} may not hold braces (Redis Cluster's hash tags)"
            )));
        }
        Ok(RedisRelay {
            conn: Conn::connect(target).await?,
            blocking: tokio::sync::Mutex::new(
                Conn::connect_timing_out(target, RECEIVE_WAIT_MAX + Duration::from_secs(2)).await?,
            ),
            prefix: prefix.to_string(),
        })
    }

    fn stream_key(&self, partition: u32) -> String {
        format!("{}{{p{partition}}}:stream", self.prefix)
    }

    fn inbox_key(&self, member: &str) -> String {
        format!("{}{{m:{member}}}:inbox", self.prefix)
    }

    /// A key of its own slot (braces in a client or id only pick the slot).
    fn queued_key(&self, client: &str, id: &str) -> String {
        format!("{}queued:{}", self.prefix, queued_name(client, id))
    }

    /// Runs `cmd`, creating the consumer group first if the stream has none.
    async fn in_group<T: redis::FromRedisValue>(
        &self,
        key: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, ClusterError> {
        match self.conn.query(cmd).await {
            Err(ClusterError::Unavailable(message)) if message.contains("NOGROUP") => {
                let created: Result<String, ClusterError> = self
                    .conn
                    .query(
                        redis::cmd("XGROUP")
                            .arg("CREATE")
                            .arg(key)
                            .arg(GROUP)
                            .arg("0")
                            .arg("MKSTREAM"),
                    )
                    .await;
                match created {
                    Ok(_) => {}
                    // Another member created it meanwhile.
                    Err(ClusterError::Unavailable(m)) if m.contains("BUSYGROUP") => {}
                    Err(e) => return Err(e),
                }
                self.conn.query(cmd).await
            }
            other => other,
        }
    }
}

fn entries(ids: Vec<StreamId>) -> Vec<Entry> {
    ids.into_iter()
        .map(|e| Entry {
            body: e.get::<String>(BODY).unwrap_or_default(),
            id: e.id,
        })
        .collect()
}

#[async_trait]
impl Relay for RedisRelay {
    async fn push(&self, partition: u32, body: &str) -> Result<String, ClusterError> {
        self.conn
            .query(
                redis::cmd("XADD")
                    .arg(self.stream_key(partition))
                    .arg("*")
                    .arg(BODY)
                    .arg(body),
            )
            .await
    }

    async fn take(
        &self,
        partition: u32,
        member: &str,
        count: usize,
    ) -> Result<Vec<Entry>, ClusterError> {
        let key = self.stream_key(partition);
        let read: Option<StreamReadReply> = self
            .in_group(
                &key,
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(member)
                    .arg("COUNT")
                    .arg(count)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(">"),
            )
            .await?;
        Ok(read
            .map(|r| r.keys.into_iter().flat_map(|k| entries(k.ids)).collect())
            .unwrap_or_default())
    }

    async fn claim(
        &self,
        partition: u32,
        member: &str,
        count: usize,
    ) -> Result<Vec<Entry>, ClusterError> {
        let key = self.stream_key(partition);
        let mut claimed = Vec::new();
        let mut start = "0-0".to_string();
        // XAUTOCLAIM scans a bounded part of the pending list per call.
        loop {
            let reply: StreamAutoClaimReply = self
                .in_group(
                    &key,
                    redis::cmd("XAUTOCLAIM")
                        .arg(&key)
                        .arg(GROUP)
                        .arg(member)
                        .arg(0)
                        .arg(&start)
                        .arg("COUNT")
                        .arg(count - claimed.len()),
                )
                .await?;
            claimed.extend(entries(reply.claimed));
            if reply.next_stream_id == "0-0" || claimed.len() >= count {
                return Ok(claimed);
            }
            start = reply.next_stream_id;
        }
    }

    async fn ack(&self, partition: u32, id: &str) -> Result<(), ClusterError> {
        let mut call = ACK.prepare_invoke();
        call.key(self.stream_key(partition)).arg(GROUP).arg(id);
        let _deleted: i64 = self.conn.script(&call).await?;
        Ok(())
    }

    async fn backlog(&self, partition: u32) -> Result<u64, ClusterError> {
        self.conn
            .query(redis::cmd("XLEN").arg(self.stream_key(partition)))
            .await
    }

    async fn send(&self, member: &str, body: &str) -> Result<(), ClusterError> {
        let _id: String = self
            .conn
            .query(
                redis::cmd("XADD")
                    .arg(self.inbox_key(member))
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(INBOX_LEN)
                    .arg("*")
                    .arg(BODY)
                    .arg(body),
            )
            .await?;
        Ok(())
    }

    async fn receive(
        &self,
        member: &str,
        after: &str,
        wait: Duration,
    ) -> Result<Vec<Entry>, ClusterError> {
        let wait_ms = wait.min(RECEIVE_WAIT_MAX).as_millis().max(1);
        let conn = self.blocking.lock().await;
        let read: Option<StreamReadReply> = conn
            .query(
                redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(1000)
                    .arg("BLOCK")
                    .arg(u64::try_from(wait_ms).unwrap_or(1))
                    .arg("STREAMS")
                    .arg(self.inbox_key(member))
                    .arg(after),
            )
            .await?;
        Ok(read
            .map(|r| r.keys.into_iter().flat_map(|k| entries(k.ids)).collect())
            .unwrap_or_default())
    }

    async fn drop_inbox(&self, member: &str) -> Result<(), ClusterError> {
        let _: i64 = self
            .conn
            .query(redis::cmd("DEL").arg(self.inbox_key(member)))
            .await?;
        Ok(())
    }

    async fn mark_queued(&self, client: &str, id: &str, ttl: Duration) -> Result<(), ClusterError> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let _: () = self
            .conn
            .query(
                redis::cmd("SET")
                    .arg(self.queued_key(client, id))
                    .arg(1)
                    .arg("PX")
                    .arg(ms),
            )
            .await?;
        Ok(())
    }

    async fn unmark_queued(&self, client: &str, id: &str) -> Result<(), ClusterError> {
        let _: i64 = self
            .conn
            .query(redis::cmd("DEL").arg(self.queued_key(client, id)))
            .await?;
        Ok(())
    }

    async fn is_queued(&self, client: &str, id: &str) -> Result<bool, ClusterError> {
        let n: i64 = self
            .conn
            .query(redis::cmd("EXISTS").arg(self.queued_key(client, id)))
            .await?;
        Ok(n > 0)
    }
}
