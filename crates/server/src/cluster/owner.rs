//! One process's share of the partitions: which it owns now, under which
//! epoch, and until when it may believe so.
//!
//! Each [`Ownership::tick`] announces the process, reads the live members,
//! computes the placement every member computes ([`assign`]), gives up the
//! partitions placed elsewhere, renews the ones it keeps and asks for the
//! ones placed on it. A partition is decided here only while
//! [`Ownership::fence_for`] returns its fence: after the store's fence was
//! raised to the lease's epoch (so no earlier owner can still write), and
//! before the lease may have run out by this process's own clock. The
//! store's check in the commit is what makes a process that was paused
//! between the two safe; this one only keeps a live process from trying.

use super::{ClusterError, Member, SharedCoordinator, assign, partition_of};
use crate::clock::SharedClock;
use crate::model::DocKey;
use crate::store::{Fence, SharedStore};
use futures_util::future::join_all;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// How the partitions are leased. Every process of a cluster must use the
/// same `partitions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnershipConfig {
    pub partitions: u32,
    /// A lease's (and a member's announcement's) time-to-live. A process
    /// that stops renewing loses its partitions to the others this long
    /// after its last renewal.
    pub lease: Duration,
}

impl OwnershipConfig {
    /// How often to renew: three chances within one lease.
    pub fn tick_every(&self) -> Duration {
        self.lease / 3
    }

    /// A lease is trusted for this long after its renewal was *sent*, less
    /// a tenth for the two clocks' rates (Redis's and this process's).
    fn trusted_for(&self) -> Duration {
        self.lease - self.lease / 10
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX)
    }
}

/// What one tick changed, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Partitions owned from this tick on, with their epochs.
    pub gained: Vec<(u32, u64)>,
    /// Partitions given up (placed elsewhere) or lost (a renewal refused).
    pub lost: Vec<u32>,
    /// How many partitions this process owns after the tick.
    pub owned: usize,
}

pub struct Ownership {
    coordinator: SharedCoordinator,
    store: SharedStore,
    clock: SharedClock,
    me: String,
    address: String,
    config: OwnershipConfig,
    /// The epoch held per partition; 0 for none (epochs start at 1).
    held: Vec<AtomicU64>,
    /// Until when (in `clock.elapsed()` ms) the held leases may be trusted.
    trusted_until_ms: AtomicU64,
    /// The members the last tick saw.
    members: Mutex<Vec<Member>>,
    /// Each partition's member as the last tick placed it.
    placement: Mutex<Vec<String>>,
    /// Ticks do not overlap.
    ticking: tokio::sync::Mutex<()>,
}

impl Ownership {
    pub fn new(
        coordinator: SharedCoordinator,
        store: SharedStore,
        clock: SharedClock,
        me: impl Into<String>,
        address: impl Into<String>,
        config: OwnershipConfig,
    ) -> Self {
        Ownership {
            coordinator,
            store,
            clock,
            me: me.into(),
            address: address.into(),
            config,
            held: (0..config.partitions).map(|_| AtomicU64::new(0)).collect(),
            trusted_until_ms: AtomicU64::new(0),
            members: Mutex::new(Vec::new()),
            placement: Mutex::new(Vec::new()),
            ticking: tokio::sync::Mutex::new(()),
        }
    }

    pub fn member_id(&self) -> &str {
        &self.me
    }

    pub fn config(&self) -> OwnershipConfig {
        self.config
    }

    pub fn partition_of(&self, doc: &DocKey) -> u32 {
        partition_of(doc, self.config.partitions)
    }

    /// The fence a lane of `doc` commits under, if this process may decide
    /// it now.
    pub fn fence_for(&self, doc: &DocKey) -> Option<Fence> {
        self.fence_of(self.partition_of(doc))
    }

    /// The fence of `partition`, if this process may decide it now.
    pub fn fence_of(&self, partition: u32) -> Option<Fence> {
        let epoch = self
            .held
            .get(usize::try_from(partition).ok()?)?
            .load(Ordering::Acquire);
        (epoch != 0 && self.trusted()).then_some(Fence { partition, epoch })
    }

    /// The partitions owned now, with their epochs, in partition order.
    pub fn owned(&self) -> Vec<(u32, u64)> {
        if !self.trusted() {
            return Vec::new();
        }
        (0..self.config.partitions)
            .zip(&self.held)
            .filter_map(|(p, e)| Some((p, e.load(Ordering::Acquire))).filter(|(_, e)| *e != 0))
            .collect()
    }

    /// Every partition's current holder, as the coordinator says now.
    pub async fn holders(&self) -> Result<Vec<Option<super::Holder>>, ClusterError> {
        join_all((0..self.config.partitions).map(|p| self.coordinator.holder(p)))
            .await
            .into_iter()
            .collect()
    }

    /// The live members as the last tick saw them.
    pub fn members(&self) -> Vec<Member> {
        self.members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The member the last tick placed `partition` on: who decides it, or
    /// will once the lease moved.
    pub fn placed_on(&self, partition: u32) -> Option<String> {
        let placement = self
            .placement
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        usize::try_from(partition)
            .ok()
            .and_then(|p| placement.get(p).cloned())
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn trusted(&self) -> bool {
        self.elapsed_ms() < self.trusted_until_ms.load(Ordering::Acquire)
    }

    fn set_held(&self, partition: u32, epoch: u64) {
        if let Some(slot) = usize::try_from(partition)
            .ok()
            .and_then(|p| self.held.get(p))
        {
            slot.store(epoch, Ordering::Release);
        }
    }

    /// One round of announcing, placing, renewing, giving up and acquiring;
    /// see the module's documentation. On an error the partitions held stay
    /// held until their trust runs out (a coordinator that is down for less
    /// than a lease costs nothing).
    pub async fn tick(&self) -> Result<TickReport, ClusterError> {
        let _one = self.ticking.lock().await;
        let sent_at = self.elapsed_ms();
        let lease_ms = self.config.lease_ms();
        self.coordinator
            .heartbeat(&self.me, &self.address, lease_ms)
            .await?;
        let members = self.coordinator.members().await?;
        let mut ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
        if !ids.contains(&self.me.as_str()) {
            ids.push(&self.me);
        }
        let placement = assign(&ids, self.config.partitions);
        let mine = |p: u32| {
            usize::try_from(p)
                .ok()
                .and_then(|p| placement.get(p))
                .is_some_and(|owner| ids[*owner] == self.me)
        };
        let mut report = TickReport::default();

        // Give up first: the partitions' new owners are waiting for them.
        // Deciding stops before the release, so nothing is decided here
        // once another member may hold the lease.
        let held: Vec<(u32, u64)> = (0..self.config.partitions)
            .zip(&self.held)
            .map(|(p, e)| (p, e.load(Ordering::Acquire)))
            .filter(|(_, e)| *e != 0)
            .collect();
        let (keep, give): (Vec<_>, Vec<_>) = held.into_iter().partition(|(p, _)| mine(*p));
        for (p, _) in &give {
            self.set_held(*p, 0);
            report.lost.push(*p);
        }
        let released = join_all(
            give.iter()
                .map(|(p, e)| self.coordinator.release(*p, &self.me, *e)),
        )
        .await;
        // A release that failed only delays the next owner by one lease.
        drop(released);

        let renewed = join_all(
            keep.iter()
                .map(|(p, e)| self.coordinator.renew(*p, &self.me, *e, lease_ms)),
        )
        .await;
        let mut renew_failed = None;
        for ((p, _), renewed) in keep.iter().zip(renewed) {
            match renewed {
                Ok(true) => {}
                Ok(false) => {
                    // Someone else holds it now: this process was paused
                    // past its lease.
                    self.set_held(*p, 0);
                    report.lost.push(*p);
                }
                Err(e) => renew_failed = Some(e),
            }
        }
        if let Some(e) = renew_failed {
            return Err(e);
        }
        // Every lease kept was renewed at or after `sent_at`.
        self.trusted_until_ms.store(
            sent_at.saturating_add(
                u64::try_from(self.config.trusted_for().as_millis()).unwrap_or(u64::MAX),
            ),
            Ordering::Release,
        );

        let wanted: Vec<u32> = (0..self.config.partitions)
            .filter(|p| mine(*p) && self.fence_of_raw(*p) == 0)
            .collect();
        let acquired = join_all(wanted.iter().map(|p| self.acquire(*p, lease_ms))).await;
        for (p, acquired) in wanted.iter().zip(acquired) {
            if let Some(epoch) = acquired? {
                report.gained.push((*p, epoch));
            }
        }
        *self
            .placement
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = placement
            .iter()
            .map(|owner| ids[*owner].to_string())
            .collect();
        *self.members.lock().unwrap_or_else(PoisonError::into_inner) = members;
        report.owned = self
            .held
            .iter()
            .filter(|e| e.load(Ordering::Acquire) != 0)
            .count();
        Ok(report)
    }

    fn fence_of_raw(&self, partition: u32) -> u64 {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.held.get(p))
            .map_or(0, |e| e.load(Ordering::Acquire))
    }

    /// Takes `partition` if its lease is free: an epoch above the store's
    /// fence, then the fence raised to it, and only then owned.
    async fn acquire(&self, partition: u32, lease_ms: u64) -> Result<Option<u64>, ClusterError> {
        let store_err = |e: crate::store::StoreError| {
            ClusterError::Unavailable(format!("store, raising partition {partition}'s fence: {e}"))
        };
        let floor = self
            .store
            .raise_fence(partition, 0)
            .await
            .map_err(store_err)?;
        let Some(epoch) = self
            .coordinator
            .acquire(partition, &self.me, floor, lease_ms)
            .await?
        else {
            return Ok(None);
        };
        let fence = self
            .store
            .raise_fence(partition, epoch)
            .await
            .map_err(store_err)?;
        if fence != epoch {
            // The store is ahead of the coordinator (it lost its data
            // between our read and the grant): the next tick asks again
            // with the higher floor.
            let _ = self.coordinator.release(partition, &self.me, epoch).await;
            return Ok(None);
        }
        self.set_held(partition, epoch);
        Ok(Some(epoch))
    }

    /// Gives every partition up and leaves (a graceful exit): the others
    /// take them at their next tick instead of after a lease.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        let _one = self.ticking.lock().await;
        let held: Vec<(u32, u64)> = (0..self.config.partitions)
            .map(|p| (p, self.fence_of_raw(p)))
            .filter(|(_, e)| *e != 0)
            .collect();
        for (p, _) in &held {
            self.set_held(*p, 0);
        }
        for (p, e) in &held {
            self.coordinator.release(*p, &self.me, *e).await?;
        }
        self.coordinator.leave(&self.me).await
    }
}
