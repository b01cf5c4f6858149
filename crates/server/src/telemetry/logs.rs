//! Text logs that cannot be forged: every control character inside a line
//! (a key or a reason holding `\n`, `\r`, escapes) is written escaped, so a
//! log line is one event however hostile its fields. The formatter writes
//! one event per `write` ending in its newline, which alone stays raw.

use std::io::{self, Write};

/// Wraps the log's writer. `ansi`: colours are on (a terminal), so the
/// escape character the formatter itself writes passes.
pub struct Escaping<W> {
    inner: W,
    ansi: bool,
}

impl<W> Escaping<W> {
    pub fn new(inner: W, ansi: bool) -> Escaping<W> {
        Escaping { inner, ansi }
    }
}

impl<W: Write> Write for Escaping<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (body, newline) = match buf.split_last() {
            Some((b'\n', body)) => (body, true),
            _ => (buf, false),
        };
        let mut out = Vec::with_capacity(buf.len() + 8);
        for &byte in body {
            match byte {
                0x1b if self.ansi => out.push(byte),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{byte:02x}").as_bytes()),
                _ => out.push(byte),
            }
        }
        if newline {
            out.push(b'\n');
        }
        self.inner.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(line: &[u8], ansi: bool) -> String {
        let mut out = Vec::new();
        Escaping::new(&mut out, ansi)
            .write_all(line)
            .expect("write");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn control_characters_inside_a_line_are_escaped() {
        assert_eq!(
            escaped(b"key=a\nINFO forged line\r\x07 end\n", false),
            "key=a\\nINFO forged line\\r\\x07 end\n"
        );
        assert_eq!(
            escaped("é\t→\n".as_bytes(), false),
            "é\\t→\n",
            "text stays text"
        );
        assert_eq!(
            escaped(b"\x1b[1mbold\x1b[0m\n", false),
            "\\x1b[1mbold\\x1b[0m\n"
        );
        assert_eq!(
            escaped(b"\x1b[1mbold\x1b[0m\n", true),
            "\x1b[1mbold\x1b[0m\n"
        );
    }
}
