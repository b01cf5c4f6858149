//! A setting's error in a person's words: where it was set, what was
//! wrong, and a valid example; and the environment's values as TOML.

use super::Config;
use std::path::Path;

/// Where the settings came from: a file and its text, and the environment
/// variables that set settings (dotted path, variable).
pub(super) struct Source<'a> {
    pub(super) file: Option<(&'a Path, &'a str)>,
    pub(super) from_env: &'a [(String, String)],
}

impl Source<'_> {
    /// Where the setting at `path` came from, as an error says it, and an
    /// assignment of `example` in that form.
    fn describe(&self, path: &str, example: &str) -> (String, String) {
        if let Some((_, var)) = self.from_env.iter().rev().find(|(p, _)| p == path) {
            let quoted = if example.starts_with('[') || example.starts_with('"') {
                format!("'{example}'")
            } else {
                example.to_owned()
            };
            return (
                format!("the environment variable {var}"),
                format!("{var}={quoted}"),
            );
        }
        let (section, key) = path.rsplit_once('.').unwrap_or(("", path));
        let assignment = if section.is_empty() {
            format!("{key} = {example}")
        } else {
            format!("{key} = {example} under [{section}]")
        };
        match self.file {
            Some((file, text)) => match line_of(text, section, key) {
                Some(line) => (format!("{}, line {line}", file.display()), assignment),
                None => (file.display().to_string(), assignment),
            },
            None => ("the configuration".into(), assignment),
        }
    }
}

/// The 1-based line of `key` in `section` ("" for the top level) of a TOML
/// text, when it is written there as `key = …`.
pub(super) fn line_of(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_owned();
        } else if current == section
            && let Some(rest) = line.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            return Some(i + 1);
        }
    }
    None
}

/// A valid value of the setting at `path`, as TOML: its default, or for a
/// list empty by default, a list like the one it takes.
pub(super) fn example_of(path: &str) -> String {
    let value = toml::Value::try_from(Config::default())
        .ok()
        .and_then(|defaults| {
            path.split('.')
                .try_fold(defaults, |v, key| v.get(key).cloned())
        });
    match (path, value) {
        ("webhook_allow", _) => r#"["127.0.0.1", "10.0.0.0/8"]"#.into(),
        ("cors_origins", _) => r#"["https://app.example.com"]"#.into(),
        (_, Some(toml::Value::Table(_))) | (_, None) => "…".into(),
        (_, Some(value)) => value.to_string(),
    }
}

/// A deserializer's message about the setting at `path` in a person's words:
/// the setting, where it came from, what was wrong, and a valid example.
pub(super) fn explain(path: &str, message: &str, source: &Source<'_>) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
        // The path ends at the field when the error is raised on its key.
        let parent = path
            .strip_suffix(field)
            .map(|p| p.trim_end_matches('.'))
            .unwrap_or(path);
        let parent = if parent == "." { "" } else { parent };
        let full = if parent.is_empty() {
            field.to_owned()
        } else {
            format!("{parent}.{field}")
        };
        let (from, _) = source.describe(&full, "");
        let mut said = format!("unknown setting {full:?} (from {from})");
        // A setting of a section written at the top level, or elsewhere.
        if let Ok(toml::Value::Table(defaults)) = toml::Value::try_from(Config::default()) {
            let home = defaults.iter().find_map(|(section, v)| {
                v.as_table()
                    .filter(|t| t.contains_key(field))
                    .map(|_| section.clone())
            });
            if let Some(section) = home.filter(|s| s != parent) {
                said.push_str(&format!(
                    "; it belongs under [{section}]: {field} = … in that section of the file, or SLUICE_{}__{} in the environment",
                    section.to_uppercase(),
                    field.to_uppercase()
                ));
                return said;
            }
        }
        let expected = expected.trim_start_matches(", ").trim();
        if !expected.is_empty() {
            said.push_str(&format!("; {expected}"));
        }
        return said;
    }
    let example = example_of(path);
    let (from, assignment) = source.describe(path, &example);
    let what = message
        .replace("expected usize", "expected a whole number")
        .replace("expected u64", "expected a whole number")
        .replace("expected u32", "expected a whole number")
        .replace("expected f64", "expected a number")
        .replace("expected a boolean", "expected true or false")
        .replace("expected a sequence", "expected a list");
    format!("setting {path:?} (from {from}): {what}; for example {assignment}")
}

/// An environment value as TOML would read it: integers, floats and booleans
/// by their text, anything else as a string.
pub(super) fn env_value(text: &str) -> toml::Value {
    // A list is written as TOML: SLUICE_WEBHOOK_ALLOW='["127.0.0.1"]'.
    if text.trim_start().starts_with('[')
        && let Ok(mut parsed) = format!("v = {text}").parse::<toml::Table>()
        && let Some(list) = parsed.remove("v")
    {
        return list;
    }
    if let Ok(i) = text.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(b) = text.parse::<bool>() {
        toml::Value::Boolean(b)
    } else if let Ok(f) = text.parse::<f64>() {
        toml::Value::Float(f)
    } else {
        toml::Value::String(text.to_owned())
    }
}

pub(super) fn set_path(
    table: &mut toml::Table,
    path: &[String],
    value: toml::Value,
) -> Result<(), String> {
    match path {
        [] => Err("empty name".into()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(inner) => set_path(inner, rest, value),
                _ => Err(format!("{first} is not a section")),
            }
        }
    }
}
