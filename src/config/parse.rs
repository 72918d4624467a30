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

/// Any scalar as the text it was written as: a string from the environment, or a TOML string,
/// boolean or number. Parsers that read values the way the Go app does start from this.
pub struct Scalar(pub String);

impl<'de> serde::Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, a boolean or a number")
            }
            fn visit_str<E>(self, s: &str) -> Result<Scalar, E> {
                Ok(Scalar(s.trim().to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl FieldType for Scalar {
    const EXPECTED: &'static str = "a string, a boolean or a number";
}

/// Go's `strconv.ParseBool`: `1 t T TRUE true True` and `0 f F FALSE false False`.
pub fn go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `time.ParseDuration` for durations of zero or more: decimal numbers with an optional
/// fraction, each with a unit (`ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`, `h`), written together
/// (`1h30m`, `1.5s`, `300ms`); a bare `0`. `None` for anything else, negative values and values
/// too large to hold.
pub fn go_duration(s: &str) -> Option<Duration> {
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(digits);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return None;
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let nanos_per = match unit {
            "ns" => 1e0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += number.parse::<f64>().ok()? * nanos_per;
        rest = next;
    }
    // Go's own limit: an int64 of nanoseconds (about 292 years).
    (total <= i64::MAX as f64).then(|| Duration::from_nanos(total as u64))
}

/// A duration as Go writes it, or as `humantime` does (`500ms`, `10s`, `30m`, `1h 30m`).
fn any_duration(s: &str) -> Option<Duration> {
    go_duration(s).or_else(|| humantime::parse_duration(s).ok())
}

const DURATION_WORDS: &str = "expected a duration such as 500ms, 1.5s, 10s or 1h30m";

/// The longest any of the sidecar's own durations may be: longer is a typing error, and it
/// keeps every sum and doubling of them far from overflowing.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Why a value was refused: the text after `NAME=value: `, and whether the value itself must
/// not be shown (it looked like it carried a credential).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub what: String,
    pub hide_value: bool,
}

impl Invalid {
    /// Refused, and the value is not repeated in the message.
    pub fn hiding_value(what: impl Into<String>) -> Self {
        Invalid {
            what: what.into(),
            hide_value: true,
        }
    }
}

impl From<String> for Invalid {
    fn from(what: String) -> Self {
        Invalid {
            what,
            hide_value: false,
        }
    }
}

impl From<&str> for Invalid {
    fn from(what: &str) -> Self {
        what.to_string().into()
    }
}

/// Reads one key: extract [`Parser::Raw`], then [`Parser::check`] it.
pub trait Parser {
    type Raw: FieldType;
    type Out;
    /// The value is never printed.
    const SECRET: bool = false;
    /// The app's own setting: a value the sidecar cannot read is a warning and the default,
    /// never a reason not to start (the app, which shares the ConfigMap, reads it its own way).
    const LENIENT: bool = false;
    fn check(raw: Self::Raw) -> Result<Self::Out, Invalid>;
    /// The value as `--check-config` and problems show it.
    fn shown(text: &str) -> String {
        text.to_string()
    }
}

/// The app's setting `P`: read the same way, but never fatal ([`Parser::LENIENT`]).
pub struct App<P>(std::marker::PhantomData<P>);
impl<P: Parser> Parser for App<P> {
    type Raw = P::Raw;
    type Out = P::Out;
    const LENIENT: bool = true;
    fn check(raw: P::Raw) -> Result<P::Out, Invalid> {
        P::check(raw)
    }
}

/// Any string.
pub struct Text;
impl Parser for Text {
    type Raw = String;
    type Out = String;
    fn check(raw: String) -> Result<String, Invalid> {
        Ok(raw)
    }
}

/// A string that is never printed.
pub struct SecretText;
impl Parser for SecretText {
    type Raw = String;
    type Out = Secret;
    const SECRET: bool = true;
    fn check(raw: String) -> Result<Secret, Invalid> {
        Ok(Secret::new(raw))
    }
}

/// A boolean as Go's `strconv.ParseBool` reads it (`true`, `1`, `t`, `False`, ...).
pub struct Flag;
impl Parser for Flag {
    type Raw = Scalar;
    type Out = bool;
    fn check(Scalar(s): Scalar) -> Result<bool, Invalid> {
        go_bool(&s)
            .ok_or_else(|| "expected true or false (or 1, t, T, TRUE, True, 0, f, ...)".into())
    }
}

/// A whole number of 0 or more, as Go's `strconv.Atoi` writes it (a leading `+` allowed).
pub struct Unsigned;
impl Parser for Unsigned {
    type Raw = Scalar;
    type Out = u32;
    fn check(Scalar(s): Scalar) -> Result<u32, Invalid> {
        s.strip_prefix('+')
            .unwrap_or(&s)
            .parse()
            .map_err(|_| "expected an unsigned integer".into())
    }
}

/// Shards the cluster should have: `N`, or `MIN..MAX` where shard auto scaling moves it
/// between bounds (Terraform's `min_node_groups..max_node_groups`).
pub struct ShardCount;
impl Parser for ShardCount {
    type Raw = Scalar;
    type Out = super::ShardRange;
    fn check(Scalar(s): Scalar) -> Result<super::ShardRange, Invalid> {
        const WORDS: &str = "expected a shard count N or a range MIN..MAX (1 to 500)";
        let one = |t: &str| -> Result<u32, Invalid> {
            match t
                .trim()
                .strip_prefix('+')
                .unwrap_or(t.trim())
                .parse::<u32>()
            {
                Ok(n) if (1..=500).contains(&n) => Ok(n),
                _ => Err(WORDS.into()),
            }
        };
        let (min, max) = match s.split_once("..") {
            Some((a, b)) => (one(a)?, one(b)?),
            None => {
                let n = one(&s)?;
                (n, n)
            }
        };
        if min > max {
            return Err(format!("{WORDS}; {min} is above {max}").into());
        }
        Ok(super::ShardRange { min, max })
    }
}

/// A count from 1 to `MAX`.
pub struct Count<const MAX: u32 = 1000>;
impl<const MAX: u32> Parser for Count<MAX> {
    type Raw = Scalar;
    type Out = u32;
    fn check(raw: Scalar) -> Result<u32, Invalid> {
        match Unsigned::check(raw)? {
            0 => Err("must be at least 1".into()),
            n if n > MAX => Err(format!("must be at most {MAX}").into()),
            n => Ok(n),
        }
    }
}

/// Any duration of zero or more, unbounded (the app's settings the sidecar only validates).
pub struct Span;
impl Parser for Span {
    type Raw = Scalar;
    type Out = Duration;
    fn check(Scalar(s): Scalar) -> Result<Duration, Invalid> {
        any_duration(&s).ok_or_else(|| DURATION_WORDS.into())
    }
}

/// A duration of more than zero and at most [`MAX_DURATION`].
pub struct Positive;
impl Parser for Positive {
    type Raw = Scalar;
    type Out = Duration;
    fn check(raw: Scalar) -> Result<Duration, Invalid> {
        match Span::check(raw)? {
            d if d.is_zero() => Err("must be more than 0".into()),
            d if d > MAX_DURATION => Err("must be at most 24h".into()),
            d => Ok(d),
        }
    }
}

/// A duration of at most [`MAX_DURATION`], where `0` turns the thing off (`None`).
pub struct OffOrPositive;
impl Parser for OffOrPositive {
    type Raw = Scalar;
    type Out = Option<Duration>;
    fn check(raw: Scalar) -> Result<Option<Duration>, Invalid> {
        match Span::check(raw)? {
            d if d.is_zero() => Ok(None),
            d if d > MAX_DURATION => Err("must be at most 24h".into()),
            d => Ok(Some(d)),
        }
    }
}

/// A fraction in `[0, 1)`.
pub struct Unit;
impl Parser for Unit {
    type Raw = Float;
    type Out = f64;
    fn check(Float(f): Float) -> Result<f64, Invalid> {
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
    fn check(raw: String) -> Result<Vec<HostPort>, Invalid> {
        if raw.contains("://") || raw.contains('@') {
            return Err(Invalid::hiding_value(
                "expected host:port, not a URL (the value is not shown: it may hold a password; set REDIS_PASSWORD or REDIS_PASSWORD_FILE)",
            ));
        }
        if raw.contains(['/', '?']) {
            return Err("expected host:port".into());
        }
        let parsed: Vec<HostPort> = raw
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(Invalid::from)?;
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
    fn check(raw: String) -> Result<SocketAddr, Invalid> {
        raw.parse()
            .map_err(|_| "expected an address such as 0.0.0.0:8081".into())
    }
}

fn read_file(path: &str) -> Result<Vec<u8>, Invalid> {
    std::fs::read(path).map_err(|e| format!("cannot read the file: {e}").into())
}

/// A file that can be read now (a password file is read again later).
pub struct ReadableFile;
impl Parser for ReadableFile {
    type Raw = String;
    type Out = PathBuf;
    fn check(raw: String) -> Result<PathBuf, Invalid> {
        read_file(&raw)?;
        Ok(PathBuf::from(raw))
    }
}

/// A PEM file read at start-up (and again when it changes): where it is, what it held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemFile {
    pub path: PathBuf,
    pub pem: Vec<u8>,
}

/// A PEM file holding at least one certificate.
pub struct CertFile;
impl Parser for CertFile {
    type Raw = String;
    type Out = PemFile;
    fn check(raw: String) -> Result<PemFile, Invalid> {
        let pem = read_file(&raw)?;
        if !CertificateDer::pem_slice_iter(&pem).any(|c| c.is_ok()) {
            return Err("holds no PEM certificate".into());
        }
        Ok(PemFile {
            path: raw.into(),
            pem,
        })
    }
}

/// A PEM file holding a private key.
pub struct KeyFile;
impl Parser for KeyFile {
    type Raw = String;
    type Out = PemFile;
    fn check(raw: String) -> Result<PemFile, Invalid> {
        let pem = read_file(&raw)?;
        PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|_| Invalid::from("holds no PEM private key"))?;
        Ok(PemFile {
            path: raw.into(),
            pem,
        })
    }
}

/// A name a TLS certificate can be verified against.
pub struct DnsName;
impl Parser for DnsName {
    type Raw = String;
    type Out = String;
    fn check(raw: String) -> Result<String, Invalid> {
        rustls::pki_types::ServerName::try_from(raw.as_str())
            .map_err(|_| Invalid::from("expected a DNS name or an IP address"))?;
        Ok(raw)
    }
}

/// An `http://` URL with a host (the app is in the same pod: https is not needed).
pub struct HttpUrl;
impl Parser for HttpUrl {
    type Raw = String;
    type Out = hyper::Uri;
    fn check(raw: String) -> Result<hyper::Uri, Invalid> {
        match raw.parse::<hyper::Uri>() {
            Ok(u) if u.scheme_str() == Some("http") && u.host().is_some() => Ok(u),
            Ok(u) if u.scheme_str() == Some("https") => Err(
                "expected an http:// URL (the app is in the same pod; https is not needed)".into(),
            ),
            _ => Err("expected a URL such as http://127.0.0.1:8000/readyz".into()),
        }
    }
    fn shown(text: &str) -> String {
        crate::otlp::redact_url(text)
    }
}

/// A URL kept as text (the OTLP endpoints): shown without user info or query.
pub struct UrlText;
impl Parser for UrlText {
    type Raw = String;
    type Out = String;
    fn check(raw: String) -> Result<String, Invalid> {
        Ok(raw)
    }
    fn shown(text: &str) -> String {
        crate::otlp::redact_url(text)
    }
}

/// A log level or an `EnvFilter` directive.
pub struct LogLevel;
impl Parser for LogLevel {
    type Raw = String;
    type Out = String;
    fn check(raw: String) -> Result<String, Invalid> {
        tracing_subscriber::EnvFilter::builder()
            .parse(&raw)
            .map_err(|_| {
                Invalid::from("expected a level (error, warn, info, debug, trace) or a filter")
            })?;
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
    fn check(raw: String) -> Result<T, Invalid> {
        T::CHOICES
            .iter()
            .find(|(word, _)| *word == raw)
            .map(|(_, v)| *v)
            .ok_or_else(|| expected_one_of(T::CHOICES.iter().map(|(w, _)| *w)).into())
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
        let s = |v: &str| Scalar(v.into());
        assert_eq!(<Count>::check(s("0")), Err("must be at least 1".into()));
        assert_eq!(<Count>::check(s("2")), Ok(2));
        assert_eq!(
            <Count>::check(s("1000000000")),
            Err("must be at most 1000".into())
        );
        assert!(Positive::check(s("0s")).is_err());
        assert!(Positive::check(s("100000years")).is_err());
        assert_eq!(Positive::check(s("1.5s")), Ok(Duration::from_millis(1500)));
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
                .what
                .contains("http://")
        );
        assert!(DnsName::check("not a name".into()).is_err());
        let url = Addresses::check("redis://:pw@h:6379".into()).unwrap_err();
        assert!(url.hide_value && !url.what.contains("pw"), "{url:?}");
    }

    #[test]
    fn booleans_as_go_reads_them() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(go_bool(t), Some(true), "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(go_bool(f), Some(false), "{f}");
        }
        for bad in ["yes", "tRUE", "", "2"] {
            assert_eq!(go_bool(bad), None, "{bad}");
        }
    }

    #[test]
    fn durations_as_go_reads_them() {
        let d = go_duration;
        assert_eq!(d("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(d("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(d("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(d("2µs"), Some(Duration::from_micros(2)));
        assert_eq!(d("2us"), Some(Duration::from_micros(2)));
        assert_eq!(d("0"), Some(Duration::ZERO));
        assert_eq!(d(".5s"), Some(Duration::from_millis(500)));
        for bad in ["", "5", "1d", "-1s", "1.2.3s", "s", "1h 30m", "9999999999h"] {
            assert_eq!(d(bad), None, "{bad}");
        }
        // What Go does not take, the sidecar's own keys still do (humantime).
        assert_eq!(any_duration("1h 30m"), Some(Duration::from_secs(5400)));
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
