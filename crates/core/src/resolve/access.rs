//! Who may do what in one collection: rules that narrow or widen the
//! built-in roles, stored with the collection's configuration so that every
//! process on the store applies the same ones. The server decides what a
//! rule means for a caller (`sluice_server::auth`); this is the stored form
//! and its validation.

use serde::{Deserialize, Serialize};

/// How many entries one action's rule may list.
pub const ACCESS_ENTRIES_MAX: usize = 256;
/// The longest entry, in bytes.
pub const ACCESS_ENTRY_BYTES_MAX: usize = 256;

/// The roles an entry may name, as the server spells them.
const ROLES: [&str; 3] = ["admin", "writer", "reader"];

/// Per action, who may take it in this collection. An action left out
/// follows the caller's role; one listed is allowed to exactly the callers
/// its entries match (and to admins, who may do everything). An entry is
/// `"*"` (every authenticated caller), `"role:NAME"` or `"client:NAME"`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Access {
    /// Read its documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<Vec<String>>,
    /// Send mutations of its documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<Vec<String>>,
    /// Read and change its configuration (but not these rules: only an
    /// admin changes who may do what), and read its changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configure: Option<Vec<String>>,
    /// Read its conflicts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<String>>,
    /// List, retry and discard its quarantined mutations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<Vec<String>>,
}

/// One entry of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grantee<'a> {
    Anyone,
    Role(&'a str),
    Client(&'a str),
}

impl Access {
    pub fn is_empty(&self) -> bool {
        *self == Access::default()
    }

    /// Every action's rule, named as in the JSON.
    pub fn rules(&self) -> [(&'static str, Option<&[String]>); 5] {
        [
            ("read", self.read.as_deref()),
            ("write", self.write.as_deref()),
            ("configure", self.configure.as_deref()),
            ("history", self.history.as_deref()),
            ("quarantine", self.quarantine.as_deref()),
        ]
    }

    pub fn validate(&self) -> Result<(), String> {
        for (action, rule) in self.rules() {
            let Some(entries) = rule else { continue };
            if entries.len() > ACCESS_ENTRIES_MAX {
                return Err(format!(
                    "access.{action} lists more than {ACCESS_ENTRIES_MAX} entries"
                ));
            }
            for entry in entries {
                grantee(entry).map_err(|why| format!("access.{action} entry {entry:?} {why}"))?;
            }
        }
        Ok(())
    }
}

/// What `entry` grants to, or why it is not an entry.
pub fn grantee(entry: &str) -> Result<Grantee<'_>, &'static str> {
    if entry.len() > ACCESS_ENTRY_BYTES_MAX {
        return Err("is longer than 256 bytes");
    }
    if entry == "*" {
        return Ok(Grantee::Anyone);
    }
    match entry.split_once(':') {
        Some(("role", role)) if ROLES.contains(&role) => Ok(Grantee::Role(role)),
        Some(("role", _)) => Err("names no role: the roles are admin, writer and reader"),
        Some(("client", "")) => Err("names no client"),
        Some(("client", client)) => Ok(Grantee::Client(client)),
        _ => Err("is not \"*\", \"role:NAME\" or \"client:NAME\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_anyone_a_role_or_a_client() {
        assert_eq!(grantee("*"), Ok(Grantee::Anyone));
        assert_eq!(grantee("role:writer"), Ok(Grantee::Role("writer")));
        assert_eq!(grantee("client:a:b"), Ok(Grantee::Client("a:b")));
        for bad in ["", "role:root", "client:", "alice", "group:x", "**"] {
            assert!(grantee(bad).is_err(), "{bad:?}");
        }
        assert!(grantee(&format!("client:{}", "x".repeat(300))).is_err());
    }

    #[test]
    fn a_rule_is_bounded_and_says_which_entry_is_wrong() {
        let access = Access {
            write: Some(vec!["client:alice".into(), "role:boss".into()]),
            ..Access::default()
        };
        let why = access.validate().expect_err("role:boss");
        assert!(
            why.contains("access.write") && why.contains("role:boss"),
            "{why}"
        );
        let many = Access {
            read: Some(vec!["*".into(); ACCESS_ENTRIES_MAX + 1]),
            ..Access::default()
        };
        assert!(many.validate().is_err());
        assert!(Access::default().validate().is_ok() && Access::default().is_empty());
        let text = serde_json::to_string(&Access {
            history: Some(Vec::new()),
            ..Access::default()
        })
        .expect("serializes");
        assert_eq!(
            text, r#"{"history":[]}"#,
            "an empty rule is kept: nobody but admins"
        );
    }
}
