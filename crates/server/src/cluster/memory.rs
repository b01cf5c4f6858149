//! The reference coordinator: one process's maps on its clock. It serves
//! several engines in one process (the simulation, tests); it is not a
//! cluster across processes.

use super::{ClusterError, Coordinator, Holder, Member, check_member, check_ttl};
use crate::clock::SharedClock;
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

pub struct MemoryCoordinator {
    clock: SharedClock,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// id → (address, last seen, expires).
    members: BTreeMap<String, (String, i64, i64)>,
    /// partition → (holder, epoch, expires).
    leases: HashMap<u32, (String, u64, i64)>,
    /// partition → the last epoch granted.
    epochs: HashMap<u32, u64>,
}

impl MemoryCoordinator {
    pub fn new(clock: SharedClock) -> Self {
        MemoryCoordinator {
            clock,
            state: Mutex::new(State::default()),
        }
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section leaves the maps consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn expiry(now: i64, ttl_ms: u64) -> i64 {
    now.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX))
}

#[async_trait]
impl Coordinator for MemoryCoordinator {
    async fn heartbeat(
        &self,
        member: &str,
        address: &str,
        ttl_ms: u64,
    ) -> Result<(), ClusterError> {
        check_member(member)?;
        check_ttl(ttl_ms)?;
        let now = self.now();
        self.lock().members.insert(
            member.to_string(),
            (address.to_string(), now, expiry(now, ttl_ms)),
        );
        Ok(())
    }

    async fn members(&self) -> Result<Vec<Member>, ClusterError> {
        let now = self.now();
        let mut state = self.lock();
        state.members.retain(|_, (_, _, expires)| *expires > now);
        Ok(state
            .members
            .iter()
            .map(|(id, (address, seen, _))| Member {
                id: id.clone(),
                address: address.clone(),
                last_seen_ms: *seen,
            })
            .collect())
    }

    async fn leave(&self, member: &str) -> Result<(), ClusterError> {
        self.lock().members.remove(member);
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
        check_ttl(ttl_ms)?;
        let now = self.now();
        let mut state = self.lock();
        if let Some((holder, epoch, expires)) = state.leases.get_mut(&partition)
            && *expires > now
        {
            if holder == member {
                *expires = expiry(now, ttl_ms);
                return Ok(Some(*epoch));
            }
            return Ok(None);
        }
        let last = state.epochs.get(&partition).copied().unwrap_or(0);
        let epoch = last.max(floor) + 1;
        state.epochs.insert(partition, epoch);
        state
            .leases
            .insert(partition, (member.to_string(), epoch, expiry(now, ttl_ms)));
        Ok(Some(epoch))
    }

    async fn renew(
        &self,
        partition: u32,
        member: &str,
        epoch: u64,
        ttl_ms: u64,
    ) -> Result<bool, ClusterError> {
        check_ttl(ttl_ms)?;
        let now = self.now();
        let mut state = self.lock();
        match state.leases.get_mut(&partition) {
            Some((holder, held, expires))
                if holder == member && *held == epoch && *expires > now =>
            {
                *expires = expiry(now, ttl_ms);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(
        &self,
        partition: u32,
        member: &str,
        epoch: u64,
    ) -> Result<bool, ClusterError> {
        let now = self.now();
        let mut state = self.lock();
        match state.leases.get(&partition) {
            Some((holder, held, expires))
                if holder == member && *held == epoch && *expires > now =>
            {
                state.leases.remove(&partition);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn holder(&self, partition: u32) -> Result<Option<Holder>, ClusterError> {
        let now = self.now();
        Ok(self
            .lock()
            .leases
            .get(&partition)
            .filter(|(_, _, expires)| *expires > now)
            .map(|(member, epoch, _)| Holder {
                member: member.clone(),
                epoch: *epoch,
            }))
    }
}
