//! Invariants checked in every build where checking is cheap (TigerBeetle's
//! habit): a broken one stops the process at once, where it broke. Going on
//! would decide more mutations on state that is already wrong, and a panic
//! would not do: in a spawned task it stops only that task (the dispatch
//! loop, silently), and under a lock it leaves the lock poisoned.
//!
//! Stopping loses nothing acknowledged: an accepted mutation is in the
//! accept log, a synchronous one unanswered until its reply is committed.

/// Stops the process, naming the invariant, unless `holds`.
#[inline]
#[track_caller]
pub fn hold(holds: bool, invariant: &str) {
    if !holds {
        broken(invariant);
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn broken(invariant: &str) -> ! {
    let at = std::panic::Location::caller();
    eprintln!("sluice: invariant broken at {at}: {invariant}");
    std::process::abort();
}
