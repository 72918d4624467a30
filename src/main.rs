//! The `redis-probe` binary: parses arguments, loads configuration, starts logging and runs the
//! library until SIGTERM or SIGINT. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use redis_probe::config::Config;

/// sysexits.h EX_USAGE: bad configuration or arguments.
const EX_USAGE: u8 = 64;

const USAGE: &str = "\
usage: redis-probe [--config FILE] [--check-config]
       redis-probe diagnose [--config FILE] [--duration 5s] [--format text|json]
                            [--replicas N] [--probe-timeout 1s]

Health-checks a Redis Cluster and serves /livez, /readyz and /metrics.
Configuration comes from the environment (REDIS_ADDRESS, REDIS_TLS_ENABLED, PROBE_LISTEN, ...)
over an optional TOML file (--config FILE or PROBE_CONFIG) over built-in defaults.

  --config FILE    read settings from a TOML file
  --check-config   print the effective configuration (secrets redacted) and exit:
                   0 when valid, 64 with every problem listed when not
  diagnose         connect, measure for --duration, print a report and exit:
                   0 when nothing is wrong, 1 when something is, 64 on bad configuration.
                   --replicas N: pods of the Deployment, for the fleet's connection ceiling;
                   --probe-timeout: the kubelet's readinessProbe timeoutSeconds
  --version        print the version
  --help           print this text
";

struct Args {
    config: Option<PathBuf>,
    check_config: bool,
    diagnose: Option<redis_probe::diagnose::Options>,
}

fn duration_arg(flag: &str, v: Option<String>) -> Result<std::time::Duration, String> {
    let v = v.ok_or(format!("{flag} needs a value"))?;
    humantime::parse_duration(&v).map_err(|_| format!("{flag} {v}: expected a duration such as 5s"))
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        config: None,
        check_config: false,
        diagnose: None,
    };
    let mut it = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned());
    while let Some(a) = it.next() {
        match a.as_str() {
            "diagnose" if args.diagnose.is_none() => {
                args.diagnose = Some(redis_probe::diagnose::Options {
                    duration: std::time::Duration::from_secs(5),
                    json: false,
                    replicas: None,
                    probe_timeout: None,
                })
            }
            "--duration" | "--format" | "--replicas" | "--probe-timeout"
                if args.diagnose.is_some() =>
            {
                let d = args.diagnose.as_mut().expect("checked");
                match a.as_str() {
                    "--duration" => d.duration = duration_arg("--duration", it.next())?,
                    "--probe-timeout" => {
                        d.probe_timeout = Some(duration_arg("--probe-timeout", it.next())?)
                    }
                    "--replicas" => {
                        let v = it.next().ok_or("--replicas needs a number")?;
                        d.replicas = Some(
                            v.parse()
                                .map_err(|_| format!("--replicas {v}: expected a number"))?,
                        );
                    }
                    _ => match it.next().as_deref() {
                        Some("json") => d.json = true,
                        Some("text") => d.json = false,
                        other => {
                            return Err(format!(
                                "--format {}: expected text or json",
                                other.unwrap_or("")
                            ));
                        }
                    },
                }
            }
            "--config" => args.config = Some(it.next().ok_or("--config needs a file")?.into()),
            s if s.starts_with("--config=") => args.config = Some(s["--config=".len()..].into()),
            "--check-config" => args.check_config = true,
            "--help" | "-h" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "--version" | "-V" => {
                println!("redis-probe {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("redis-probe: {e}\n\n{USAGE}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let config = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("invalid configuration:");
            for p in &e.problems {
                eprintln!("  {p}");
            }
            return ExitCode::from(EX_USAGE);
        }
    };
    if args.check_config {
        print!("{}", config.render());
        return ExitCode::SUCCESS;
    }
    if let Some(opts) = args.diagnose {
        return diagnose(&config, &opts);
    }
    redis_probe::logging::init(&config.log);
    for w in &config.warnings {
        tracing::warn!(warning = %w, "configuration warning");
    }
    let runtime = match runtime(tokio::runtime::Builder::new_multi_thread().worker_threads(2)) {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listen = %config.listen, error = %e, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(
            listen = %config.listen,
            redis = %config.redis.addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            tls = config.redis.tls.is_some(),
            cluster_mode = config.redis.cluster_mode,
            version = env!("CARGO_PKG_VERSION"),
            "redis-probe started"
        );
        match redis_probe::run(&config, listener, shutdown_signal()).await {
            Ok(()) => {
                tracing::info!("redis-probe stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "redis-probe failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// Builds a tokio runtime, or says why not.
fn runtime(builder: &mut tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("redis-probe: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

/// Runs `diagnose` on a small runtime of its own; logs stay off so the report is the output.
fn diagnose(config: &Config, opts: &redis_probe::diagnose::Options) -> ExitCode {
    let runtime = match runtime(&mut tokio::runtime::Builder::new_current_thread()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let report = runtime.block_on(redis_probe::diagnose::run(config, opts));
    if opts.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a report always serializes")
        );
    } else {
        print!("{}", redis_probe::diagnose::render_text(&report));
    }
    if report.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
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
