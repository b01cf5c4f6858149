//! Reading a trace, as `sluice replay` and `sluice bench` both do: a file,
//! plain or gzipped, of JSON Lines, one API mutation each. Below both, so
//! neither imports the other.

use crate::tool::{Context, ToolResult};
use serde_json::{Map, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// Opens a trace, plain or gzipped (told apart by the gzip magic number).
pub fn open_trace(path: &Path) -> ToolResult<Box<dyn BufRead + Send>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    trace_reader(file)
}

/// Reads a trace from any source, plain or gzipped.
pub fn trace_reader(mut source: impl Read + Send + 'static) -> ToolResult<Box<dyn BufRead + Send>> {
    let mut magic = [0u8; 2];
    let n = source.read(&mut magic)?;
    let head = std::io::Cursor::new(magic[..n].to_vec());
    let reader = head.chain(source);
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(
            reader,
        ))))
    } else {
        Ok(Box::new(BufReader::new(reader)))
    }
}

/// One mutation of a trace.
pub struct TraceLine {
    pub id: String,
    pub client: String,
    pub key: String,
    pub op: crate::model::Op,
    pub value: Option<Map<String, Value>>,
    pub base_version: Option<u64>,
    pub raw: Map<String, Value>,
}

impl TraceLine {
    pub fn parse(text: &str) -> Result<TraceLine, String> {
        let raw: Map<String, Value> =
            serde_json::from_str(text).map_err(|e| format!("not a JSON object: {e}"))?;
        let text_field = |name: &str| {
            raw.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("no string field {name:?}"))
        };
        let op = text_field("op")?;
        Ok(TraceLine {
            id: text_field("id")?,
            client: raw
                .get("client")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            key: text_field("key")?,
            op: crate::model::Op::parse(&op).ok_or_else(|| format!("unknown op {op:?}"))?,
            value: raw.get("value").and_then(Value::as_object).cloned(),
            base_version: raw.get("base_version").and_then(Value::as_u64),
            raw,
        })
    }
}
