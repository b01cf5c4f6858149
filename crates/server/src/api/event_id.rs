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

    fn permute(&self, x: u64) -> u64 {
        let (mut left, mut right) = ((x >> 32) as u32, x as u32);
        for round in 0..ROUNDS {
            (left, right) = (right, left ^ self.round(round, right));
        }
        (u64::from(left) << 32) | u64::from(right)
    }

    fn unpermute(&self, y: u64) -> u64 {
        let (mut left, mut right) = ((y >> 32) as u32, y as u32);
        for round in (0..ROUNDS).rev() {
            (left, right) = (right ^ self.round(round, left), left);
        }
        (u64::from(left) << 32) | u64::from(right)
    }

    /// The id of event number `seq`: 16 hexadecimal digits, the first 0–7.
    /// The permutation is walked until it lands below 2^63 (cycle walking),
    /// so ids and numbers are the same set, and every id a client may send
    /// stands for a number.
    pub(super) fn encode(&self, seq: i64) -> String {
        let mut y = self.permute(seq as u64 & MASK);
        while y > MASK {
            y = self.permute(y);
        }
        format!("{y:016x}")
    }

    /// The event number of an id, or `None` for text that is not one.
    pub(super) fn decode(&self, id: &str) -> Option<i64> {
        let id = id.trim();
        if id.len() != 16 {
            return None;
        }
        let y = u64::from_str_radix(id, 16).ok().filter(|y| *y <= MASK)?;
        let mut x = self.unpermute(y);
        while x > MASK {
            x = self.unpermute(x);
        }
        i64::try_from(x).ok()
    }
}

/// Event numbers and ids are below 2^63.
const MASK: u64 = i64::MAX as u64;

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
        assert_eq!(ids.decode("8000000000000000"), None, "past 2^63");
        // Any id of the described form stands for a number, and back.
        for id in ["0000000000000000", "7fffffffffffffff", "0123456789abcdef"] {
            let seq = ids.decode(id).expect("a number");
            assert_eq!(ids.encode(seq), id);
        }
    }
}
