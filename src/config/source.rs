//! The figment providers: the environment restricted to [`KEYS`] as raw strings, and the
//! built-in defaults.

use std::collections::BTreeMap;

use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

use super::keys::KEYS;

pub(super) const ENV_SOURCE: &str = "environment";
pub(super) const DEFAULT_SOURCE: &str = "built-in default";

/// The environment restricted to [`KEYS`], as a figment provider of raw strings.
#[derive(Debug, Clone, Default)]
pub struct EnvVars(BTreeMap<String, String>);

impl EnvVars {
    /// The process environment.
    pub fn from_process() -> Self {
        Self::from_iter(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for EnvVars {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_SOURCE)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let pairs = KEYS.iter().filter_map(|k| {
            // An empty value, common in shared ConfigMaps, means "not set".
            let v = self.get(k.env).filter(|v| !v.is_empty())?;
            Some((k.path, v.to_string()))
        });
        Ok(Profile::Default.collect(nest_all(pairs)))
    }
}

/// Every key's built-in default.
pub(super) struct Defaults;

impl Provider for Defaults {
    fn metadata(&self) -> Metadata {
        Metadata::named(DEFAULT_SOURCE)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let pairs = KEYS
            .iter()
            .filter_map(|k| Some((k.path, k.default_value()?.to_string())));
        Ok(Profile::Default.collect(nest_all(pairs)))
    }
}

/// Turns `("redis.tls.enabled", "true")` pairs into nested dictionaries.
fn nest_all(pairs: impl Iterator<Item = (&'static str, String)>) -> Dict {
    let mut root = Dict::new();
    for (path, v) in pairs {
        let (parents, leaf) = path.rsplit_once('.').unwrap_or(("", path));
        let mut dict = &mut root;
        for part in parents.split('.').filter(|p| !p.is_empty()) {
            let entry = dict
                .entry(part.to_string())
                .or_insert_with(|| Value::from(Dict::new()));
            let Value::Dict(_, inner) = entry else {
                unreachable!("keys never nest under a value")
            };
            dict = inner;
        }
        dict.insert(leaf.to_string(), Value::from(v));
    }
    root
}
