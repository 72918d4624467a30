//! [`Reader`]: reads keys one by one through their parsers and collects every problem, so a
//! bad configuration is reported whole, each problem as `NAME=value: what is wrong`.

use std::fmt;
use std::path::PathBuf;

use figment::Figment;
use figment::value::Value;

use super::keys::{Key, KeyInfo};
use super::parse::{FieldType, Invalid, Parser};
use super::source::{DEFAULT_SOURCE, ENV_SOURCE, EnvVars};
use super::{Warning, WarningKind};

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

/// Collects values, problems and warnings while reading keys one by one.
pub(super) struct Reader<'a> {
    pub figment: Figment,
    /// The built-in defaults alone, for an app setting that could not be read.
    pub defaults: Figment,
    pub env: &'a EnvVars,
    pub file: Option<PathBuf>,
    pub problems: Vec<String>,
    pub warnings: Vec<Warning>,
    pub effective: Vec<Setting>,
}

impl Reader<'_> {
    /// Reads `key` through its parser; `None` when unset or when it has a problem. A problem
    /// with the app's own setting (a lenient key) is a warning, and the default applies.
    pub fn get<P: Parser>(&mut self, key: Key<P>) -> Option<P::Out> {
        let problems = self.problems.len();
        let value = self
            .raw::<P::Raw>(key.info)
            .and_then(|raw| match P::check(raw) {
                Ok(v) => Some(v),
                Err(invalid) => {
                    self.invalid(key.info, invalid);
                    None
                }
            });
        if !key.lenient || self.problems.len() == problems {
            return value;
        }
        let found: Vec<String> = self.problems.drain(problems..).collect();
        for p in found {
            let message = format!("{p}; the app's own setting, so redis-probe ignores it");
            self.warn(WarningKind::AppSetting, message);
        }
        self.effective.retain(|s| s.key != key.info);
        let default = key.default_value()?;
        let raw = self.defaults.extract_inner_lossy::<P::Raw>(key.path).ok()?;
        self.effective.push(Setting {
            key: key.info,
            value: default.to_string(),
            source: "built-in default, the value given is not readable",
        });
        P::check(raw).ok()
    }

    pub fn warn(&mut self, kind: WarningKind, message: impl Into<String>) {
        self.warnings.push(Warning {
            kind,
            message: message.into(),
        });
    }

    fn invalid(&mut self, key: KeyInfo, invalid: Invalid) {
        let shown = if invalid.hide_value {
            format!("{} (value not shown)", key.env)
        } else {
            self.describe(key)
        };
        self.problems.push(format!("{shown}: {}", invalid.what));
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
        let redact = |v: String| {
            if key.secret {
                "<redacted>".into()
            } else {
                (key.shown)(&v)
            }
        };
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
                    let text = self
                        .figment
                        .find_value(key.path)
                        .map(|v| plain_text(&v))
                        .unwrap_or_default();
                    (key.shown)(&text)
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
