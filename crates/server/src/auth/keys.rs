//! API keys: `sluice_<id>_<secret>`, 64 random bits of id (how a key is
//! found, listed and revoked) and 256 of secret. The store keeps the
//! secret's SHA-256 only, so a copy of the database holds no usable key; a
//! key is random enough that a slow password hash would add nothing. The
//! secret's hash is compared in constant time.
//!
//! Each process caches what it looked up for [`CACHE_TTL`], misses too, so a
//! request costs no store round trip while its key is warm, and a key
//! created or revoked by `sluice keys` (or another process) takes effect
//! within that time everywhere.

use super::{Principal, Refused, Role};
use crate::clock::SharedClock;
use crate::store::{KeyRecord, SharedStore, StoreError};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use subtle::ConstantTimeEq;

const PREFIX: &str = "sluice_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;
/// How long a looked-up key (or its absence) is trusted before the store is
/// asked again: the longest a revocation waits to take effect.
pub const CACHE_TTL: Duration = Duration::from_secs(1);
/// Keys (and unknown ids) cached per process.
const CACHE_ENTRIES_MAX: usize = 4_096;
/// Store lookups of uncached key ids a process makes per second at most,
/// and at once: a flood of made-up keys costs the store this much and no
/// more, while keys already cached go on being served.
pub const LOOKUPS_PER_S: f64 = 500.0;
const LOOKUPS_BURST: f64 = 500.0;
/// The longest client name a key may carry (as a mutation's `client`).
pub const CLIENT_CHARS_MAX: usize = 128;

/// Why a key could not be verified.
#[derive(Debug)]
pub enum KeyError {
    Refused(Refused),
    Store(StoreError),
}

impl From<StoreError> for KeyError {
    fn from(e: StoreError) -> Self {
        KeyError::Store(e)
    }
}

/// A key just made: shown once, then only its hash exists.
pub struct NewKey {
    /// The whole key, to give to the client.
    pub key: String,
    /// What the store keeps.
    pub record: KeyRecord,
}

/// Makes a key for `client` with `role`; `Err` says what was wrong.
pub fn generate(client: &str, role: Role, now_ms: i64) -> Result<NewKey, String> {
    let chars = client.chars().count();
    if chars == 0 || chars > CLIENT_CHARS_MAX || client.contains('\0') {
        return Err(format!(
            "--client must be 1 to {CLIENT_CHARS_MAX} characters without NUL, got {chars}"
        ));
    }
    let mut bytes = [0u8; ID_BYTES + SECRET_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system's random number generator failed".to_owned())?;
    let (id, secret) = bytes.split_at(ID_BYTES);
    let (id, secret) = (hex(id), hex(secret));
    Ok(NewKey {
        key: format!("{PREFIX}{id}_{secret}"),
        record: KeyRecord {
            hash: hash(&secret),
            id,
            client: client.to_owned(),
            role: role.as_str().to_owned(),
            created_ms: now_ms,
            revoked_ms: None,
        },
    })
}

/// The id and the secret of a key, if it has a key's form.
pub fn parse(key: &str) -> Option<(&str, &str)> {
    let (id, secret) = key.strip_prefix(PREFIX)?.split_once('_')?;
    let is_hex = |s: &str, bytes: usize| {
        s.len() == bytes * 2 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    (is_hex(id, ID_BYTES) && is_hex(secret, SECRET_BYTES)).then_some((id, secret))
}

/// The id a `sluice keys revoke` argument names: a key id, or a whole key.
pub fn id_of(text: &str) -> Option<&str> {
    if let Some((id, _)) = parse(text) {
        return Some(id);
    }
    (text.len() == ID_BYTES * 2 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then_some(text)
}

fn hash(secret: &str) -> String {
    hex(digest::digest(&digest::SHA256, secret.as_bytes()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Does `secret` hash to `stored`? In constant time in the secret.
fn matches(stored: &str, secret: &str) -> bool {
    bool::from(hash(secret).as_bytes().ct_eq(stored.as_bytes()))
}

struct Cached {
    record: Option<KeyRecord>,
    at: Duration,
}

/// What the cache holds, and the budget of store lookups (a token bucket
/// on the engine's clock).
struct Entries {
    keys: HashMap<String, Cached>,
    lookups: f64,
    refilled: Duration,
}

/// The keys this process looked up recently.
pub struct KeyCache {
    store: SharedStore,
    clock: SharedClock,
    entries: Mutex<Entries>,
}

impl KeyCache {
    pub fn new(store: SharedStore, clock: SharedClock) -> KeyCache {
        let refilled = clock.elapsed();
        KeyCache {
            store,
            clock,
            entries: Mutex::new(Entries {
                keys: HashMap::new(),
                lookups: LOOKUPS_BURST,
                refilled,
            }),
        }
    }

    /// The principal a key stands for.
    pub async fn verify(&self, key: &str) -> Result<Principal, KeyError> {
        let (id, secret) = parse(key).ok_or(KeyError::Refused(Refused::Malformed))?;
        let unknown = || KeyError::Refused(Refused::Unknown);
        let record = self.lookup(id).await?.ok_or_else(unknown)?;
        // The secret first: without it, nobody learns whether an id was revoked.
        if !matches(&record.hash, secret) {
            return Err(unknown());
        }
        if record.revoked_ms.is_some() {
            return Err(KeyError::Refused(Refused::Revoked));
        }
        let role = Role::parse(&record.role).ok_or_else(unknown)?;
        Ok(Principal {
            subject: record.client,
            role,
        })
    }

    async fn lookup(&self, id: &str) -> Result<Option<KeyRecord>, KeyError> {
        let now = self.clock.elapsed();
        {
            let mut entries = self.lock();
            if let Some(hit) = entries.keys.get(id).filter(|c| now < c.at + CACHE_TTL) {
                return Ok(hit.record.clone());
            }
            let elapsed = now.saturating_sub(entries.refilled).as_secs_f64();
            entries.lookups = (entries.lookups + elapsed * LOOKUPS_PER_S).min(LOOKUPS_BURST);
            entries.refilled = now;
            if entries.lookups < 1.0 {
                return Err(KeyError::Refused(Refused::Busy));
            }
            entries.lookups -= 1.0;
        }
        let record = self.store.key(id).await?;
        let mut entries = self.lock();
        let keys = &mut entries.keys;
        if keys.len() >= CACHE_ENTRIES_MAX {
            // Made-up ids go first: a flood of them must not push out the
            // keys in use, which would then cost lookups of their own.
            keys.retain(|_, c| now < c.at + CACHE_TTL && c.record.is_some());
            if keys.len() >= CACHE_ENTRIES_MAX {
                keys.clear();
            }
        }
        keys.insert(
            id.to_owned(),
            Cached {
                record: record.clone(),
                at: now,
            },
        );
        Ok(record)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Every critical section leaves the map whole, so a poisoned lock
        // still guards valid data.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_parses_to_its_id_and_matches_only_its_own_hash() {
        let made = generate("alice", Role::Writer, 7).expect("generate");
        let (id, secret) = parse(&made.key).expect("a key has a key's form");
        assert_eq!(id, made.record.id);
        assert_eq!(id_of(&made.key), Some(id));
        assert_eq!(id_of(id), Some(id));
        assert!(matches(&made.record.hash, secret));
        assert!(!made.record.hash.contains(secret), "only the hash is kept");
        let other = generate("alice", Role::Writer, 7).expect("generate");
        assert_ne!(other.key, made.key, "keys are random");
        let (_, other_secret) = parse(&other.key).expect("form");
        assert!(!matches(&made.record.hash, other_secret));
        assert_eq!(made.record.role, "writer");
        assert_eq!(made.record.created_ms, 7);
    }

    #[tokio::test]
    async fn a_flood_of_made_up_keys_costs_the_store_a_bounded_number_of_lookups() {
        use crate::clock::ManualClock;
        use crate::store::{MemoryStore, Store};
        let store = std::sync::Arc::new(MemoryStore::new());
        let alice = generate("alice", Role::Writer, 0).expect("generate");
        store.put_key(&alice.record).await.expect("stored");
        let clock = ManualClock::new(0);
        let cache = KeyCache::new(store, clock.clone());
        assert_eq!(
            cache.verify(&alice.key).await.ok().map(|p| p.subject),
            Some("alice".to_owned())
        );
        let (mut unknown, mut busy) = (0, 0);
        for _ in 0..(CACHE_ENTRIES_MAX + 100) {
            let made_up = generate("mallory", Role::Admin, 0).expect("generate");
            match cache.verify(&made_up.key).await {
                Err(KeyError::Refused(Refused::Unknown)) => unknown += 1,
                Err(KeyError::Refused(Refused::Busy)) => busy += 1,
                other => panic!("a made-up key: {:?}", other.map(|p| p.subject)),
            }
        }
        assert_eq!(
            unknown as f64,
            LOOKUPS_BURST - 1.0,
            "the budget, then no more"
        );
        assert!(busy > 0);
        assert!(
            cache.verify(&alice.key).await.is_ok(),
            "a key in use is still served during the flood"
        );
        // A second later the budget is back, and alice's key is looked up again.
        clock.advance(Duration::from_secs(1));
        assert!(cache.verify(&alice.key).await.is_ok());
        let made_up = generate("mallory", Role::Admin, 0).expect("generate");
        assert!(matches!(
            cache.verify(&made_up.key).await,
            Err(KeyError::Refused(Refused::Unknown))
        ));
    }

    #[test]
    fn malformed_keys_and_clients_are_refused() {
        let made = generate("bob", Role::Reader, 0).expect("generate");
        assert!(parse(&made.key.to_uppercase()).is_none());
        assert!(parse(&made.key[..made.key.len() - 1]).is_none());
        assert!(parse(&format!("{}0", made.key)).is_none());
        assert!(parse("sluice__").is_none());
        assert!(parse("Bearer").is_none());
        assert!(id_of("not-an-id").is_none());
        assert!(generate("", Role::Admin, 0).is_err());
        assert!(generate("a\0b", Role::Admin, 0).is_err());
        assert!(generate(&"x".repeat(CLIENT_CHARS_MAX + 1), Role::Admin, 0).is_err());
        assert!(generate(&"é".repeat(CLIENT_CHARS_MAX), Role::Admin, 0).is_ok());
    }
}
