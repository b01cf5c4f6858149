//! Reservations of `(client, id)`: while a mutation is being decided, its
//! id is held, so a resend waits for the first one's answer instead of
//! deciding again, and a different mutation under the same id is told so.

use crate::model::DocKey;
use std::collections::HashMap;

/// A queued mutation as its client's pending list shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Pending {
    pub id: String,
    pub doc: DocKey,
    pub score: f64,
    /// When it arrived, ms since the epoch.
    pub received_ms: i64,
}

/// What reserving an id found.
#[derive(Clone, Debug, PartialEq)]
pub enum Reserve<A> {
    /// The id was free and is now held by the caller, who must `release` it.
    Fresh,
    /// Another mutation (another fingerprint) holds the id.
    Reused,
    /// The same mutation holds it: the caller is a resend. `queued` is the
    /// answer already given to an asynchronous send, if any.
    Held { queued: Option<A> },
}

/// The seam for reservations, in process or shared. `W` is what a resend
/// waits on (the sender of its answer), `A` an answer. The contract, which
/// `conformance::reservation_suite` checks of every implementation:
/// - an id is held by one fingerprint from `reserve` until `release`;
/// - `release` hands back every waiter that joined, once, and frees the id;
/// - `pending` lists a client's own marked mutations only, oldest first
///   (ties by id), at most `limit`; a released one is gone from it.
pub trait Reservations<W, A>: Send {
    fn reserve(&mut self, client: &str, id: &str, fingerprint: u64) -> Reserve<A>;
    /// Adds a resend's waiter to a held id; the waiter comes back when the
    /// id is not held.
    fn wait(&mut self, client: &str, id: &str, waiter: W) -> Result<(), W>;
    /// Records the answer an asynchronous send was given (its 202).
    fn mark_queued(&mut self, client: &str, id: &str, answer: A);
    /// Records the mutation as queued, for its client's pending list.
    fn mark_pending(&mut self, client: &str, pending: Pending);
    /// Frees the id and returns the waiters that joined it.
    fn release(&mut self, client: &str, id: &str) -> Vec<W>;
    /// The client's queued mutations, oldest first, at most `limit`.
    fn pending(&self, client: &str, limit: usize) -> Vec<Pending>;
    /// Ids `client` holds now: its mutations being decided or queued.
    fn held_by(&self, client: &str) -> usize;
    /// Ids held now.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Held<W, A> {
    fingerprint: u64,
    waiters: Vec<W>,
    queued: Option<A>,
    pending: Option<Pending>,
}

/// The in-process reservations: one map, under the engine's lock.
pub struct LocalReservations<W, A> {
    held: HashMap<(String, String), Held<W, A>>,
    /// Of `held`, how many each client holds (clients holding none absent).
    per_client: HashMap<String, usize>,
}

impl<W, A> Default for LocalReservations<W, A> {
    fn default() -> Self {
        LocalReservations {
            held: HashMap::new(),
            per_client: HashMap::new(),
        }
    }
}

fn key(client: &str, id: &str) -> (String, String) {
    (client.to_owned(), id.to_owned())
}

impl<W: Send, A: Clone + Send> Reservations<W, A> for LocalReservations<W, A> {
    fn reserve(&mut self, client: &str, id: &str, fingerprint: u64) -> Reserve<A> {
        match self.held.get(&key(client, id)) {
            Some(held) if held.fingerprint != fingerprint => Reserve::Reused,
            Some(held) => Reserve::Held {
                queued: held.queued.clone(),
            },
            None => {
                let held = Held {
                    fingerprint,
                    waiters: Vec::new(),
                    queued: None,
                    pending: None,
                };
                self.held.insert(key(client, id), held);
                *self.per_client.entry(client.to_owned()).or_default() += 1;
                Reserve::Fresh
            }
        }
    }

    fn wait(&mut self, client: &str, id: &str, waiter: W) -> Result<(), W> {
        match self.held.get_mut(&key(client, id)) {
            Some(held) => {
                held.waiters.push(waiter);
                Ok(())
            }
            None => Err(waiter),
        }
    }

    fn mark_queued(&mut self, client: &str, id: &str, answer: A) {
        if let Some(held) = self.held.get_mut(&key(client, id)) {
            held.queued = Some(answer);
        }
    }

    fn mark_pending(&mut self, client: &str, pending: Pending) {
        if let Some(held) = self.held.get_mut(&key(client, &pending.id)) {
            held.pending = Some(pending);
        }
    }

    fn release(&mut self, client: &str, id: &str) -> Vec<W> {
        let Some(held) = self.held.remove(&key(client, id)) else {
            return Vec::new();
        };
        if let Some(count) = self.per_client.get_mut(client) {
            *count -= 1;
            if *count == 0 {
                self.per_client.remove(client);
            }
        }
        held.waiters
    }

    fn held_by(&self, client: &str) -> usize {
        self.per_client.get(client).copied().unwrap_or(0)
    }

    fn pending(&self, client: &str, limit: usize) -> Vec<Pending> {
        let mut pending: Vec<Pending> = self
            .held
            .iter()
            .filter(|((owner, _), _)| owner == client)
            .filter_map(|(_, held)| held.pending.clone())
            .collect();
        pending.sort_by(|a, b| (a.received_ms, &a.id).cmp(&(b.received_ms, &b.id)));
        pending.truncate(limit);
        pending
    }

    fn len(&self) -> usize {
        self.held.len()
    }
}
