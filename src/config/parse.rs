//! How a key's value is read: a raw type that figment extracts (with the words used when it does
//! not), then a check of the value itself. Each key names its parser in [`super::keys`].

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;

use super::{HostPort, Secret};

/// A value type figment can extract, with the words used when a value does not parse.
pub trait FieldType: DeserializeOwned {
    const EXPECTED: &'static str;
}

impl FieldType for u32 {
    const EXPECTED: &'static str = "an unsigned integer";
}
impl FieldType for bool {
    const EXPECTED: &'static str = "true or false";
}
impl FieldType for String {
    const EXPECTED: &'static str = "a string";
}

/// A number from a string or a TOML number. Parsed from the string itself: figment's lossy
/// conversion goes through `f32` and turns 0.2 into 0.20000000298.
pub struct Float(pub f64);

impl<'de> serde::Deserialize<'de> for Float {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Float;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Float, E> {
                s.trim()
                    .parse()
                    .map(Float)
                    .map_err(|_| E::custom("not a number"))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Float, E> {
                Ok(Float(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Float, E> {
                Ok(Float(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Float, E> {
                Ok(Float(v as f64))
            }
        }
        d.deserialize_any(V)
    }
}

impl FieldType for Float {
    const EXPECTED: &'static str = "a number";
}

/// A duration written like `500ms`, `10s` or `30m`.
#[derive(serde::Deserialize)]
#[serde(transparent)]
pub struct Dur(#[serde(with = "humantime_serde")] pub Duration);

impl FieldType for Dur {
    const EXPECTED: &'static str = "a duration such as 500ms, 10s or 30m";
}

/// Reads one key: extract [`Parser::Raw`], then [`Parser::check`] it. A check's error is the
/// text after `NAME=value: `.
pub trait Parser {
    type Raw: FieldType;
    type Out;
    /// The value is never printed.
    const SECRET: bool = false;
    fn check(raw: Self::Raw) -> Result<Self::Out, String>;
}

/// Any string.
pub struct Text;
impl Parser for Text {
    type Raw = String;
    type Out = String;
    fn check(raw: String) -> Result<String, String> {
        Ok(raw)
    }
}

/// A string that is never printed.
pub struct SecretText;
impl Parser for SecretText {
    type Raw = String;
    type Out = Secret;
    const SECRET: bool = true;
    fn check(raw: String) -> Result<Secret, String> {
        Ok(Secret::new(raw))
    }
}

/// `true` or `false`.
pub struct Flag;
impl Parser for Flag {
    type Raw = bool;
    type Out = bool;
    fn check(raw: bool) -> Result<bool, String> {
        Ok(raw)
    }
}

/// An unsigned integer, 0 included.
pub struct Unsigned;
impl Parser for Unsigned {
    type Raw = u32;
    type Out = u32;
    fn check(raw: u32) -> Result<u32, String> {
        Ok(raw)
    }
}

/// A count of at least 1.
pub struct Count;
impl Parser for Count {
    type Raw = u32;
    type Out = u32;
    fn check(raw: u32) -> Result<u32, String> {
        if raw == 0 {
            return Err("must be at least 1".into());
        }
        Ok(raw)
    }
}

/// Any duration, zero included.
pub struct Span;
impl Parser for Span {
    type Raw = Dur;
    type Out = Duration;
    fn check(raw: Dur) -> Result<Duration, String> {
        Ok(raw.0)
    }
}

/// A duration of more than zero.
pub struct Positive;
impl Parser for Positive {
    type Raw = Dur;
    type Out = Duration;
    fn check(raw: Dur) -> Result<Duration, String> {
        if raw.0.is_zero() {
            return Err("must be more than 0".into());
        }
        Ok(raw.0)
    }
}

/// A fraction in `[0, 1)`.
pub struct Unit;
impl Parser for Unit {
    type Raw = Float;
    type Out = f64;
    fn check(Float(f): Float) -> Result<f64, String> {
        if !(0.0..1.0).contains(&f) {
            return Err("must be at least 0 and less than 1".into());
        }
        Ok(f)
    }
}

/// `host:port`, or a comma-separated list of them.
pub struct Addresses;
impl Parser for Addresses {
    type Raw = String;
    type Out = Vec<HostPort>;
    fn check(raw: String) -> Result<Vec<HostPort>, String> {
        let parsed: Vec<HostPort> = raw
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(str::to_string)?;
        if parsed.is_empty() {
            return Err("expected host:port".into());
        }
        Ok(parsed)
    }
}

/// A socket address to listen on.
pub struct Listen;
impl Parser for Listen {
    type Raw = String;
    type Out = SocketAddr;
    fn check(raw: String) -> Result<SocketAddr, String> {
        raw.parse()
            .map_err(|_| "expected an address such as 0.0.0.0:8081".into())
    }
}

fn read_file(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the file: {e}"))
}

/// A file that can be read now (a password file is read again later).
pub struct ReadableFile;
impl Parser for ReadableFile {
    type Raw = String;
    type Out = PathBuf;
    fn check(raw: String) -> Result<PathBuf, String> {
        read_file(&raw)?;
        Ok(PathBuf::from(raw))
    }
}

/// A PEM file holding at least one certificate; its bytes.
pub struct CertFile;
impl Parser for CertFile {
    type Raw = String;
    type Out = Vec<u8>;
    fn check(raw: String) -> Result<Vec<u8>, String> {
        let pem = read_file(&raw)?;
        if !CertificateDer::pem_slice_iter(&pem).any(|c| c.is_ok()) {
            return Err("holds no PEM certificate".into());
        }
        Ok(pem)
    }
}

/// A PEM file holding a private key; its bytes.
pub struct KeyFile;
impl Parser for KeyFile {
    type Raw = String;
    type Out = Vec<u8>;
    fn check(raw: String) -> Result<Vec<u8>, String> {
        let pem = read_file(&raw)?;
        PrivateKeyDer::from_pem_slice(&pem).map_err(|_| "holds no PEM private key")?;
        Ok(pem)
    }
}

/// A name a TLS certificate can be verified against.
pub struct DnsName;
impl Parser for DnsName {
    type Raw = String;
    type Out = String;
    fn check(raw: String) -> Result<String, String> {
        rustls::pki_types::ServerName::try_from(raw.as_str())
            .map_err(|_| "expected a DNS name or an IP address")?;
        Ok(raw)
    }
}

/// An `http://` URL with a host (the app is in the same pod: https is not needed).
pub struct HttpUrl;
impl Parser for HttpUrl {
    type Raw = String;
    type Out = hyper::Uri;
    fn check(raw: String) -> Result<hyper::Uri, String> {
        match raw.parse::<hyper::Uri>() {
            Ok(u) if u.scheme_str() == Some("http") && u.host().is_some() => Ok(u),
            Ok(u) if u.scheme_str() == Some("https") => Err(
                "expected an http:// URL (the app is in the same pod; https is not needed)".into(),
            ),
            _ => Err("expected a URL such as http://127.0.0.1:8000/readyz".into()),
        }
    }
}

/// A log level or an `EnvFilter` directive.
pub struct LogLevel;
impl Parser for LogLevel {
    type Raw = String;
    type Out = String;
    fn check(raw: String) -> Result<String, String> {
        tracing_subscriber::EnvFilter::builder()
            .parse(&raw)
            .map_err(|_| "expected a level (error, warn, info, debug, trace) or a filter")?;
        Ok(raw)
    }
}

/// A closed set of words, each naming a value.
pub trait Choices: Copy + 'static {
    const CHOICES: &'static [(&'static str, Self)];
}

/// One of [`Choices::CHOICES`].
pub struct Choice<T>(std::marker::PhantomData<T>);
impl<T: Choices> Parser for Choice<T> {
    type Raw = String;
    type Out = T;
    fn check(raw: String) -> Result<T, String> {
        T::CHOICES
            .iter()
            .find(|(word, _)| *word == raw)
            .map(|(_, v)| *v)
            .ok_or_else(|| expected_one_of(T::CHOICES.iter().map(|(w, _)| *w)))
    }
}

/// `expected a or b`, `expected a, b or c`.
fn expected_one_of<'a>(words: impl Iterator<Item = &'a str>) -> String {
    let words: Vec<&str> = words.collect();
    match words.split_last() {
        Some((last, [])) => format!("expected {last}"),
        Some((last, rest)) => format!("expected {} or {last}", rest.join(", ")),
        None => "expected nothing".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_and_their_words() {
        assert_eq!(Count::check(0), Err("must be at least 1".into()));
        assert_eq!(Count::check(2), Ok(2));
        assert!(Positive::check(Dur(Duration::ZERO)).is_err());
        assert_eq!(Unit::check(Float(0.2)), Ok(0.2));
        assert!(Unit::check(Float(1.0)).is_err());
        assert_eq!(
            Addresses::check("a:1, b:2,".into()).unwrap().len(),
            2,
            "blank entries are skipped"
        );
        assert_eq!(
            Addresses::check(",".into()),
            Err("expected host:port".into())
        );
        assert!(
            HttpUrl::check("https://a/readyz".into())
                .unwrap_err()
                .contains("http://")
        );
        assert!(DnsName::check("not a name".into()).is_err());
    }

    #[test]
    fn choices_list_their_words() {
        assert_eq!(
            expected_one_of(["a", "b", "c"].into_iter()),
            "expected a, b or c"
        );
        assert_eq!(expected_one_of(["a", "b"].into_iter()), "expected a or b");
    }
}
