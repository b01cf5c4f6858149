//! Cluster mode's coordination: who is alive, and who owns each partition.
//!
//! A [`Coordinator`] keeps two things every process must agree on:
//! - **members**: each process announces itself (its id and the address it
//!   serves on) at least once per time-to-live; a member not heard from
//!   within it is gone;
//! - **leases**: at most one member holds a partition's lease at a time, for
//!   a time-to-live it renews. Every grant carries an **epoch** that only
//!   grows (per partition): the fencing token the store's commit checks, so
//!   that a holder paused past its lease cannot write after the next holder
//!   began. The coordinator's mutual exclusion is what keeps two live
//!   members from deciding one partition; the store's check is what keeps a
//!   paused one from writing.
//!
//! Time is the coordinator's own (Redis's clock for Redis), so members'
//! clocks need not agree. Implementations: [`RedisCoordinator`] (a single
//! Redis or a Redis Cluster), and [`MemoryCoordinator`], the reference;
//! [`conformance`] checks both against the same rules.

pub mod conformance;
mod memory;
mod owner;
mod redis;
mod redis_relay;
mod relay;

pub use memory::MemoryCoordinator;
pub use owner::{Ownership, OwnershipConfig, TickReport};
pub use redis::{RedisCoordinator, RedisTarget};
pub use redis_relay::RedisRelay;
pub use relay::{Entry, INBOX_LEN, MemoryRelay, Relay, SharedRelay};
pub use sluice_core::partition::{assign, partition_of};

use async_trait::async_trait;
use std::sync::Arc;

/// A live member, as the others see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    /// Where it serves (`host:port`), for operators and forwarding.
    pub address: String,
    /// When it last announced itself, epoch ms of the coordinator's clock.
    pub last_seen_ms: i64,
}

/// A partition's current holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub member: String,
    pub epoch: u64,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum ClusterError {
    /// The coordinator did not answer, or answered with an error: nothing
    /// can be concluded about leases (a holder keeps deciding until its own
    /// lease time runs out, then stops).
    #[error("coordinator unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong (an id with a space, a zero time-to-live).
    #[error("invalid coordinator request: {0}")]
    Invalid(String),
}

/// Membership and partition leases; see the module's documentation.
///
/// `conformance::suite` checks of every implementation:
/// - a partition's lease is held by at most one member at a time, and a
///   holder that asks again gets the epoch it holds;
/// - a new grant's epoch is above every earlier one of that partition, and
///   at least the `floor` asked for (the store's highest fence, so that a
///   coordinator that lost its data cannot go back);
/// - only the holder of an epoch renews or releases it; a lease not renewed
///   within its time-to-live can be granted to another member;
/// - a member not heard from within its time-to-live is not listed, and one
///   that leaves is gone at once; members are listed by id.
#[async_trait]
pub trait Coordinator: Send + Sync + 'static {
    /// Announces `member` as alive at `address` for `ttl_ms`.
    async fn heartbeat(&self, member: &str, address: &str, ttl_ms: u64)
    -> Result<(), ClusterError>;
    /// The live members, by id.
    async fn members(&self) -> Result<Vec<Member>, ClusterError>;
    /// Removes `member` from the live members (a graceful exit).
    async fn leave(&self, member: &str) -> Result<(), ClusterError>;
    /// Grants `partition`'s lease to `member` for `ttl_ms` if nobody else
    /// holds it, with an epoch above the last one and above `floor`; the
    /// epoch it holds if it holds it already (the lease extended); `None`
    /// if another member holds it.
    async fn acquire(
        &self,
        partition: u32,
        member: &str,
        floor: u64,
        ttl_ms: u64,
    ) -> Result<Option<u64>, ClusterError>;
    /// Extends the lease if `member` still holds it at `epoch`.
    async fn renew(
        &self,
        partition: u32,
        member: &str,
        epoch: u64,
        ttl_ms: u64,
    ) -> Result<bool, ClusterError>;
    /// Gives the lease up if `member` still holds it at `epoch`.
    async fn release(&self, partition: u32, member: &str, epoch: u64)
    -> Result<bool, ClusterError>;
    /// Who holds `partition` now, if anyone.
    async fn holder(&self, partition: u32) -> Result<Option<Holder>, ClusterError>;
}

pub type SharedCoordinator = Arc<dyn Coordinator>;

/// Member ids go into Redis values separated by spaces: they may not hold
/// one, and are bounded.
pub(crate) fn check_member(member: &str) -> Result<(), ClusterError> {
    if member.is_empty() || member.len() > 128 || member.contains(char::is_whitespace) {
        return Err(ClusterError::Invalid(format!(
            "member id {member:?} must be 1 to 128 characters without spaces"
        )));
    }
    Ok(())
}

pub(crate) fn check_ttl(ttl_ms: u64) -> Result<(), ClusterError> {
    if ttl_ms == 0 || ttl_ms > 3_600_000 {
        return Err(ClusterError::Invalid(format!(
            "a time-to-live of {ttl_ms} ms is outside 1 ms to 1 hour"
        )));
    }
    Ok(())
}
