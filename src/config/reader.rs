//! [`Reader`]: reads keys one by one through their parsers and collects every problem, so a
//! bad configuration is reported whole, each problem as `NAME=value: what is wrong`.

use std::fmt;
use std::path::PathBuf;

use figment::Figment;
use figment::value::Value;

use super::keys::{Key, KeyInfo};
use super::parse::{FieldType, Parser};
use super::source::{DEFAULT_SOURCE, ENV_SOURCE, EnvVars};

/// One key's effective value as text (secrets redacted), for `--check-config`.
#[derive(Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: KeyInfo,
    pub value: String,
    /// `environment`, `built-in default` or `file`.
    pub source: &'static str,
}

impl fmt::Debug for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={:?} ({})", self.key.env, self.value, self.source)
    }
}

/// Collects values and problems while reading keys one by one.
pub(super) struct Reader<'a> {
    pub figment: Figment,
    pub env: &'a EnvVars,
    pub file: Option<PathBuf>,
    pub problems: Vec<String>,
    pub effective: Vec<Setting>,
}

impl Reader<'_> {
    /// Reads `key` through its parser; `None` when unset or when it has a problem.
    pub fn get<P: Parser>(&mut self, key: Key<P>) -> Option<P::Out> {
        let raw = self.raw::<P::Raw>(key.info)?;
        match P::check(raw) {
            Ok(v) => Some(v),
            Err(what) => {
                self.problem(key.info, what);
                None
            }
        }
    }

    /// As [`Reader::get`], and a problem when the key is unset.
    pub fn require<P: Parser>(&mut self, key: Key<P>) -> Option<P::Out> {
        let v = self.get(key);
        if v.is_none() && !self.figment.contains(key.path) {
            self.problems.push(format!(
                "{} is required (or {} in the config file)",
                key.env, key.path
            ));
        }
        v
    }

    /// Records a problem with `key` as `NAME=value: what`.
    pub fn problem(&mut self, key: KeyInfo, what: impl fmt::Display) {
        let p = format!("{}: {}", self.describe(key), what);
        self.problems.push(p);
    }

    /// Where `key`'s value came from, and that value, written for a person.
    pub fn describe(&self, key: KeyInfo) -> String {
        let redact = |v: String| if key.secret { "<redacted>".into() } else { v };
        match self.source(key) {
            ENV_SOURCE => format!(
                "{}={}",
                key.env,
                redact(shown(self.env.get(key.env).unwrap_or("")))
            ),
            DEFAULT_SOURCE => format!(
                "{}={} (default)",
                key.env,
                redact(shown(key.default_value().unwrap_or("")))
            ),
            _ => {
                let v = self
                    .figment
                    .find_value(key.path)
                    .map(|v| redact(toml_text(&v)))
                    .unwrap_or_default();
                let file = self
                    .file
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                format!("{} = {} in {}", key.path, v, file)
            }
        }
    }

    fn source(&self, key: KeyInfo) -> &'static str {
        match self
            .figment
            .find_metadata(key.path)
            .map(|m| m.name.as_ref())
        {
            Some(ENV_SOURCE) => ENV_SOURCE,
            Some(DEFAULT_SOURCE) => DEFAULT_SOURCE,
            _ => "file",
        }
    }

    fn raw<T: FieldType>(&mut self, key: KeyInfo) -> Option<T> {
        if !self.figment.contains(key.path) {
            return None;
        }
        match self.figment.extract_inner_lossy::<T>(key.path) {
            Ok(v) => {
                let value = if key.secret {
                    "<redacted>".to_string()
                } else {
                    self.figment
                        .find_value(key.path)
                        .map(|v| plain_text(&v))
                        .unwrap_or_default()
                };
                let source = self.source(key);
                self.effective.push(Setting { key, value, source });
                Some(v)
            }
            // A file that does not parse fails every key the same way: report it once.
            Err(e) if e.path.is_empty() => {
                let msg = e.to_string();
                if !self.problems.contains(&msg) {
                    self.problems.push(msg);
                }
                None
            }
            Err(_) => {
                self.problem(key, format_args!("expected {}", T::EXPECTED));
                None
            }
        }
    }
}

/// A value as a person would type it in the environment.
pub(super) fn shown(v: &str) -> String {
    if v.is_empty() || v.contains(char::is_whitespace) {
        format!("{v:?}")
    } else {
        v.to_string()
    }
}

fn plain_text(v: &Value) -> String {
    match v {
        Value::String(_, s) => s.clone(),
        other => toml_text(other),
    }
}

fn toml_text(v: &Value) -> String {
    match v {
        Value::String(_, s) => format!("{s:?}"),
        Value::Char(_, c) => format!("{c:?}"),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, n) => n
            .to_u128()
            .map(|u| u.to_string())
            .or_else(|| n.to_i128().map(|i| i.to_string()))
            .or_else(|| n.to_f64().map(|f| f.to_string()))
            .unwrap_or_default(),
        Value::Empty(..) => "null".into(),
        Value::Dict(..) => "a table".into(),
        Value::Array(..) => "an array".into(),
    }
}
