//! The `redis-probe` binary: parses arguments, loads configuration, starts logging and runs the
//! library until SIGTERM or SIGINT. Everything else lives in the library.
//!
//! Exit status (also in `--help`):
//! - 0: stopped after SIGTERM/SIGINT; `--check-config` found the configuration valid;
//!   `diagnose` found nothing wrong.
//! - 1: a runtime failure (cannot listen, cannot start the runtime); `diagnose` found a problem.
//! - 2: bad arguments (usage).
//! - 64: bad configuration, every problem listed as `NAME=value: what is wrong`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use redis_probe::config::Config;
use redis_probe::diagnose::{self, Format};

/// Bad arguments.
const EXIT_USAGE: u8 = 2;
/// Bad configuration (sysexits.h EX_USAGE, kept from the first releases).
const EXIT_CONFIG: u8 = 64;

const USAGE: &str = "\
usage: redis-probe [--config FILE] [--check-config]
       redis-probe [--config FILE] diagnose [OPTIONS]
       redis-probe --help | --version | diagnose --help

Health-checks a Redis Cluster and serves /livez, /readyz and /metrics.
Configuration comes from the environment (REDIS_ADDRESS, REDIS_TLS_ENABLED, PROBE_LISTEN, ...)
over an optional TOML file (--config FILE or PROBE_CONFIG) over built-in defaults.

  --config FILE    read settings from a TOML file (also --config=FILE)
  --check-config   print every setting with its source (secrets redacted) and exit
  diagnose         connect, measure, print a report and exit (diagnose --help)
  --version        print the version
  --help           print this text

Exit status: 0 ok; 1 runtime failure; 2 bad arguments; 64 bad configuration.
";

const DIAGNOSE_USAGE: &str = "\
usage: redis-probe [--config FILE] diagnose [--duration 5s] [--format text|json]
                                            [--replicas N] [--probe-timeout 1s]

Connects with the sidecar's configuration, measures for --duration and prints a report:
reachability, topology, latency, connections, timeouts, OTLP, the sidecar's own timing.

  --duration D       how long to measure PING round trips (default 5s)
  --format F         text (default) or json
  --replicas N       pods of the Deployment, for the fleet's connection ceiling
  --probe-timeout D  the kubelet's readinessProbe timeoutSeconds, to compare timeouts with
  --config FILE      as for the sidecar

Values may follow with a space or with '=' (--duration=10s).
Exit status: 0 nothing wrong; 1 something wrong; 2 bad arguments; 64 bad configuration.
";

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Command {
    Run { check_config: bool },
    Diagnose(diagnose::Options),
    Help(&'static str),
    Version,
}

#[derive(Debug, PartialEq)]
struct Args {
    config: Option<PathBuf>,
    command: Command,
}

fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let mut config = None;
    let mut check_config = false;
    let mut diagnose: Option<diagnose::Options> = None;
    while let Some(arg) = p.next()? {
        match (arg, diagnose.as_mut()) {
            (Long("config"), _) => config = Some(p.value()?.into()),
            (Long("help") | Short('h'), None) => return help(config, USAGE),
            (Long("help") | Short('h'), Some(_)) => return help(config, DIAGNOSE_USAGE),
            (Long("version") | Short('V'), _) => return help(config, "").map(version),
            (Long("check-config"), None) => check_config = true,
            (Value(v), None) if v == "diagnose" && !check_config => {
                diagnose = Some(diagnose::Options::default());
            }
            (Long("duration"), Some(d)) => d.duration = p.value()?.parse_with(duration)?,
            (Long("probe-timeout"), Some(d)) => {
                d.probe_timeout = Some(p.value()?.parse_with(duration)?)
            }
            (Long("replicas"), Some(d)) => d.replicas = Some(p.value()?.parse()?),
            (Long("format"), Some(d)) => d.format = p.value()?.parse_with(format)?,
            (arg, _) => return Err(arg.unexpected()),
        }
    }
    let command = match diagnose {
        Some(d) => Command::Diagnose(d),
        None => Command::Run { check_config },
    };
    Ok(Args { config, command })
}

fn help(config: Option<PathBuf>, text: &'static str) -> Result<Args, lexopt::Error> {
    Ok(Args {
        config,
        command: Command::Help(text),
    })
}

fn version(mut a: Args) -> Args {
    a.command = Command::Version;
    a
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|_| "expected a duration such as 5s".to_string())
}

fn format(s: &str) -> Result<Format, String> {
    match s {
        "text" => Ok(Format::Text),
        "json" => Ok(Format::Json),
        _ => Err("expected text or json".into()),
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args_os().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("redis-probe: {e}\n\n{USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let check_config = match args.command {
        Command::Help(text) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            let (version, revision) = (env!("CARGO_PKG_VERSION"), env!("REDIS_PROBE_REVISION"));
            println!("redis-probe {version} (revision {revision})");
            return ExitCode::SUCCESS;
        }
        Command::Run { check_config } => check_config,
        Command::Diagnose(_) => false,
    };
    let config = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("invalid configuration:");
            for p in &e.problems {
                eprintln!("  {p}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if check_config {
        print!("{}", config.render());
        return ExitCode::SUCCESS;
    }
    match args.command {
        Command::Diagnose(opts) => run_diagnose(&config, &opts),
        _ => run_sidecar(&config),
    }
}

fn run_sidecar(config: &Config) -> ExitCode {
    redis_probe::logging::init(&config.log);
    for w in &redis_probe::start_warnings(config) {
        tracing::warn!(warning = %w, "configuration warning");
    }
    let runtime = match runtime(tokio::runtime::Builder::new_multi_thread().worker_threads(2)) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let code = runtime.block_on(async {
        let listener = match redis_probe::server::bind(config.listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listen = %config.listen, error = %e, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        let redis: Vec<String> = config
            .redis
            .addresses
            .iter()
            .map(|a| a.to_string())
            .collect();
        tracing::info!(
            listen = %config.listen,
            redis = %redis.join(","),
            tls = config.redis.tls.is_some(),
            cluster_mode = config.redis.cluster_mode,
            version = env!("CARGO_PKG_VERSION"),
            revision = env!("REDIS_PROBE_REVISION"),
            "redis-probe started"
        );
        match redis_probe::run(config, listener, shutdown_signal()).await {
            Ok(()) => {
                tracing::info!("redis-probe stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "redis-probe failed");
                ExitCode::FAILURE
            }
        }
    });
    // A host-name lookup blocked in the resolver (a black-holed DNS server) holds a blocking
    // thread that dropping the runtime would wait for: give it a second, not the kubelet's
    // whole grace period.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// Builds a tokio runtime, or says why not.
fn runtime(builder: &mut tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("redis-probe: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

/// Runs `diagnose` on a small runtime of its own; logs stay off so the report is the output.
fn run_diagnose(config: &Config, opts: &diagnose::Options) -> ExitCode {
    let runtime = match runtime(&mut tokio::runtime::Builder::new_current_thread()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let report = runtime.block_on(diagnose::run(config, opts));
    match opts.format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a report always serializes")
        ),
        Format::Text => print!("{}", diagnose::render_text(&report)),
    }
    if report.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        parse_args(args.iter().map(OsString::from)).map_err(|e| e.to_string())
    }

    fn diagnose_opts(args: &[&str]) -> diagnose::Options {
        match parse(args).unwrap().command {
            Command::Diagnose(d) => d,
            other => panic!("not diagnose: {other:?}"),
        }
    }

    #[test]
    fn values_follow_with_a_space_or_an_equals_sign() {
        let spaced = diagnose_opts(&["diagnose", "--duration", "2s", "--format", "json"]);
        let joined = diagnose_opts(&["diagnose", "--duration=2s", "--format=json"]);
        assert_eq!(spaced.duration, Duration::from_secs(2));
        assert_eq!(spaced.format, Format::Json);
        assert_eq!(joined.duration, spaced.duration);
        assert_eq!(joined.format, spaced.format);
        let a = parse(&["--config=/etc/p.toml", "--check-config"]).unwrap();
        assert_eq!(a.config, Some("/etc/p.toml".into()));
        assert_eq!(a.command, Command::Run { check_config: true });
        let d = diagnose_opts(&["--config", "f", "diagnose", "--replicas=72", "--config=g"]);
        assert_eq!(d.replicas, Some(72));
    }

    #[test]
    fn help_per_subcommand() {
        assert_eq!(parse(&["--help"]).unwrap().command, Command::Help(USAGE));
        assert_eq!(
            parse(&["diagnose", "-h"]).unwrap().command,
            Command::Help(DIAGNOSE_USAGE)
        );
        assert_eq!(parse(&["-V"]).unwrap().command, Command::Version);
    }

    #[test]
    fn bad_arguments_say_which() {
        let e = parse(&["--bogus"]).unwrap_err();
        assert!(e.contains("--bogus"), "{e}");
        let e = parse(&["diagnose", "--duration", "5 parsecs"]).unwrap_err();
        assert!(e.contains("expected a duration"), "{e}");
        let e = parse(&["diagnose", "--format=xml"]).unwrap_err();
        assert!(e.contains("expected text or json"), "{e}");
        assert!(parse(&["--config"]).is_err(), "a flag without its value");
        assert!(
            parse(&["--duration", "5s"]).is_err(),
            "diagnose flags belong to diagnose"
        );
        assert!(parse(&["diagnose", "--replicas", "many"]).is_err());
    }
}
