//! Event ids that reveal nothing of other clients. A stream's events are
//! numbered by the store's commit order, shared by every client, so plain
//! numbers would show alice the gaps bob's activity leaves. An id is the
//! number through a keyed permutation instead: a four-round Feistel network
//! with HMAC-SHA256 as its round function (a strong pseudorandom permutation
//! by Luby–Rackoff), keyed by a secret kept in the store. The server turns a
//! `Last-Event-ID` back into the number; to a client the ids are opaque.

use ring::hmac;

const ROUNDS: u8 = 4;

/// Encodes and decodes event ids under one secret.
pub(super) struct EventIds {
    key: hmac::Key,
}

impl EventIds {
    pub(super) fn new(secret: &str) -> Self {
        EventIds {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
        }
    }

    fn round(&self, round: u8, half: u32) -> u32 {
        let mut input = [0u8; 5];
        input[0] = round;
        input[1..].copy_from_slice(&half.to_be_bytes());
        let tag = hmac::sign(&self.key, &input);
        let bytes = tag.as_ref();
        u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
    }

    /// The id of event number `seq`: 16 hexadecimal digits.
    pub(super) fn encode(&self, seq: i64) -> String {
        let x = seq as u64;
        let (mut left, mut right) = ((x >> 32) as u32, x as u32);
        for round in 0..ROUNDS {
            (left, right) = (right, left ^ self.round(round, right));
        }
        format!("{:016x}", (u64::from(left) << 32) | u64::from(right))
    }

    /// The event number of an id this server gave, or `None` for text that
    /// is not an id.
    pub(super) fn decode(&self, id: &str) -> Option<i64> {
        let id = id.trim();
        if id.len() != 16 {
            return None;
        }
        let x = u64::from_str_radix(id, 16).ok()?;
        let (mut left, mut right) = ((x >> 32) as u32, x as u32);
        for round in (0..ROUNDS).rev() {
            (left, right) = (right ^ self.round(round, left), left);
        }
        i64::try_from((u64::from(left) << 32) | u64::from(right)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_decode_to_their_numbers_and_hide_them() {
        let ids = EventIds::new("a secret");
        let other = EventIds::new("another secret");
        let mut seen = std::collections::HashSet::new();
        for seq in (1..2_000).chain([0, i64::MAX, 1 << 40]) {
            let id = ids.encode(seq);
            assert_eq!(id.len(), 16);
            assert_eq!(ids.decode(&id), Some(seq), "{seq} → {id}");
            assert!(seen.insert(id.clone()), "{id} twice");
            assert_ne!(other.encode(seq), id, "the secret makes the id");
        }
        // Consecutive numbers give ids with nothing in common to compare.
        let (a, b) = (ids.encode(41), ids.encode(42));
        let prefix = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
        assert!(prefix < 6, "{a} and {b}");
        assert_eq!(ids.decode("not an id"), None);
        assert_eq!(ids.decode("zzzzzzzzzzzzzzzz"), None);
    }
}
