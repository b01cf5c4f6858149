//! What serde_json would silently change in a body, found before it parses
//! it: an integer beyond 64 bits (it would become a float), `-0` (it would
//! become `-0.0`), and a key given twice in one object (it would keep the
//! last). Sluice refuses them with the JSON path of the first, rather than
//! store something other than what was sent. Decimals are IEEE doubles, as
//! everywhere in JSON practice (I-JSON), and are kept as such.
//!
//! The scan reads the raw bytes once. It gives up silently on anything
//! malformed: serde's own error says better what is wrong there.

use std::collections::HashSet;

/// Nesting deeper than serde_json's own limit is refused by it anyway.
const DEPTH_MAX: usize = 128;

enum Stop {
    /// The body says something Sluice would not keep as sent.
    Inexact(String),
    /// Not JSON, or too deep: serde reports it.
    Malformed,
}

/// `Err` names the first value that would not be kept as sent.
pub(super) fn check(body: &[u8]) -> Result<(), String> {
    let mut scan = Scan {
        bytes: body,
        at: 0,
        path: Vec::new(),
    };
    match scan.value(0) {
        Ok(()) | Err(Stop::Malformed) => Ok(()),
        Err(Stop::Inexact(problem)) => Err(problem),
    }
}

struct Scan<'a> {
    bytes: &'a [u8],
    at: usize,
    path: Vec<Segment>,
}

enum Segment {
    Key(String),
    Index(usize),
}

impl Scan<'_> {
    fn path(&self) -> String {
        let mut out = String::new();
        for segment in &self.path {
            match segment {
                Segment::Key(key) if out.is_empty() => out.push_str(key),
                Segment::Key(key) => {
                    out.push('.');
                    out.push_str(key);
                }
                Segment::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        if out.is_empty() {
            "the body".into()
        } else {
            out
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn blank(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), Stop> {
        self.blank();
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(Stop::Malformed)
        }
    }

    fn value(&mut self, depth: usize) -> Result<(), Stop> {
        if depth > DEPTH_MAX {
            return Err(Stop::Malformed);
        }
        self.blank();
        match self.peek().ok_or(Stop::Malformed)? {
            b'{' => self.object(depth),
            b'[' => self.array(depth),
            b'"' => self.string().map(|_| ()),
            b'-' | b'0'..=b'9' => self.number(),
            b't' | b'f' | b'n' => {
                while self.peek().is_some_and(|b| b.is_ascii_alphabetic()) {
                    self.at += 1;
                }
                Ok(())
            }
            _ => Err(Stop::Malformed),
        }
    }

    fn object(&mut self, depth: usize) -> Result<(), Stop> {
        self.at += 1;
        let mut keys = HashSet::new();
        self.blank();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(());
        }
        loop {
            self.blank();
            let key = self.string()?;
            self.expect(b':')?;
            self.path.push(Segment::Key(key.clone()));
            if !keys.insert(key) {
                return Err(Stop::Inexact(format!(
                    "{} is given twice in one object",
                    self.path()
                )));
            }
            self.value(depth + 1)?;
            self.path.pop();
            self.blank();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(());
                }
                _ => return Err(Stop::Malformed),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), Stop> {
        self.at += 1;
        self.blank();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(());
        }
        let mut index = 0;
        loop {
            self.path.push(Segment::Index(index));
            self.value(depth + 1)?;
            self.path.pop();
            index += 1;
            self.blank();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(());
                }
                _ => return Err(Stop::Malformed),
            }
        }
    }

    /// A string, unescaped (keys are compared as their text, so `"a"` and
    /// `"\u0061"` are one key).
    fn string(&mut self) -> Result<String, Stop> {
        if self.peek() != Some(b'"') {
            return Err(Stop::Malformed);
        }
        let start = self.at;
        self.at += 1;
        let mut escaped = false;
        loop {
            match self.peek().ok_or(Stop::Malformed)? {
                b'\\' => {
                    escaped = true;
                    self.at += 2;
                }
                b'"' => {
                    self.at += 1;
                    break;
                }
                _ => self.at += 1,
            }
        }
        let raw = self.bytes.get(start..self.at).ok_or(Stop::Malformed)?;
        if !escaped {
            return std::str::from_utf8(&raw[1..raw.len() - 1])
                .map(str::to_owned)
                .map_err(|_| Stop::Malformed);
        }
        serde_json::from_slice(raw).map_err(|_| Stop::Malformed)
    }

    fn number(&mut self) -> Result<(), Stop> {
        let start = self.at;
        let mut integer = true;
        while let Some(b) = self.peek() {
            match b {
                b'0'..=b'9' | b'-' | b'+' => {}
                b'.' | b'e' | b'E' => integer = false,
                _ => break,
            }
            self.at += 1;
        }
        if !integer {
            return Ok(());
        }
        let text = std::str::from_utf8(&self.bytes[start..self.at]).map_err(|_| Stop::Malformed)?;
        let digits = text.strip_prefix('-').unwrap_or(text);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Stop::Malformed);
        }
        let kept = if text.starts_with('-') {
            text != "-0" && text.parse::<i64>().is_ok()
        } else {
            text.parse::<u64>().is_ok()
        };
        if kept {
            return Ok(());
        }
        Err(Stop::Inexact(if text == "-0" {
            format!(
                "{} is -0, which would be stored as -0.0; send 0",
                self.path()
            )
        } else {
            format!(
                "{} is {text}, an integer beyond 64 bits, which cannot be stored exactly (send it as a string)",
                self.path()
            )
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_would_change_is_named_by_its_path() {
        let refused = [
            (
                r#"{"value": {"n": 18446744073709551616}}"#,
                "value.n is 18446744073709551616",
            ),
            (
                r#"{"value": {"n": -9223372036854775809}}"#,
                "value.n is -9223372036854775809",
            ),
            (r#"{"value": {"a": [1, -0]}}"#, "value.a[1] is -0"),
            (r#"{"value": {"a": 1, "a": 2}}"#, "value.a is given twice"),
            (
                r#"{"value": {"a": 1, "\u0061": 2}}"#,
                "value.a is given twice",
            ),
            (r#"{"id": "x", "id": "y"}"#, "id is given twice"),
            (
                r#"{"mutations": [{}, {"value": {"x": {"y": 1, "y": 1}}}]}"#,
                "mutations[1].value.x.y",
            ),
        ];
        for (body, problem) in refused {
            let found = check(body.as_bytes()).expect_err(body);
            assert!(found.starts_with(problem), "{body}: {found}");
        }
    }

    #[test]
    fn what_is_kept_as_sent_passes() {
        for body in [
            r#"{"value": {"n": 18446744073709551615, "m": -9223372036854775808}}"#,
            r#"{"value": {"f": 1.5e300, "z": 0, "neg": -0.0, "e": 1e2, "s": "-0", "k": "\"a\""}}"#,
            r#"{"a": {"x": 1}, "b": {"x": 1}}"#,
            r#"[[], {}, "", true, false, null]"#,
            // Malformed: left to serde, which says what is wrong.
            r#"{"a": 1, "a""#,
            r#"{"a": 1-2}"#,
            "not json",
            "",
        ] {
            assert_eq!(check(body.as_bytes()), Ok(()), "{body}");
        }
        let deep = "[".repeat(100_000);
        assert_eq!(
            check(deep.as_bytes()),
            Ok(()),
            "too deep is serde's to refuse, without a stack overflow"
        );
    }
}
