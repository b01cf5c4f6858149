//! The error of the command-line tools built on the library (`sluice bench`,
//! `sluice replay`, `sluice gen`). Their errors are shown to the person who
//! ran the command and never matched on, so one type carries what was being
//! done and why; the engine's boundaries keep their own typed errors.

use std::fmt;

/// What a tool was doing when it failed, and why.
#[derive(Debug)]
pub struct ToolError(String);

impl ToolError {
    pub fn new(message: impl Into<String>) -> ToolError {
        ToolError(message.into())
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// Not `std::error::Error`, so that any error converts into it with `?`
// (a blanket `From` would otherwise overlap `From<ToolError>`).
impl<E: std::error::Error> From<E> for ToolError {
    fn from(e: E) -> ToolError {
        ToolError(e.to_string())
    }
}

pub type ToolResult<T> = Result<T, ToolError>;

/// Adds what was being done to a failure.
pub trait Context<T> {
    fn context(self, doing: impl fmt::Display) -> ToolResult<T>;
    fn with_context<D: fmt::Display>(self, doing: impl FnOnce() -> D) -> ToolResult<T>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn context(self, doing: impl fmt::Display) -> ToolResult<T> {
        self.map_err(|e| ToolError(format!("{doing}: {e}")))
    }

    fn with_context<D: fmt::Display>(self, doing: impl FnOnce() -> D) -> ToolResult<T> {
        self.map_err(|e| ToolError(format!("{}: {e}", doing())))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, doing: impl fmt::Display) -> ToolResult<T> {
        self.ok_or_else(|| ToolError(doing.to_string()))
    }

    fn with_context<D: fmt::Display>(self, doing: impl FnOnce() -> D) -> ToolResult<T> {
        self.ok_or_else(|| ToolError(doing().to_string()))
    }
}

/// Returns early with a `ToolError` made from a format string.
macro_rules! bail {
    ($($message:tt)*) => {
        return Err($crate::tool::ToolError::new(format!($($message)*)))
    };
}
pub(crate) use bail;
