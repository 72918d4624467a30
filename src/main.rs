//! The `redis-probe` binary: parses arguments, loads configuration, starts logging and runs the
//! library until SIGTERM or SIGINT. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use redis_probe::config::Config;

/// sysexits.h EX_USAGE: bad configuration or arguments.
const EX_USAGE: u8 = 64;

const USAGE: &str = "\
usage: redis-probe [--config FILE] [--check-config]

Health-checks a Redis Cluster and serves /livez, /readyz and /metrics.
Configuration comes from the environment (REDIS_ADDRESS, REDIS_TLS_ENABLED, PROBE_LISTEN, ...)
over an optional TOML file (--config FILE or PROBE_CONFIG) over built-in defaults.

  --config FILE    read settings from a TOML file
  --check-config   print the effective configuration (secrets redacted) and exit:
                   0 when valid, 64 with every problem listed when not
  --version        print the version
  --help           print this text
";

struct Args {
    config: Option<PathBuf>,
    check_config: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        config: None,
        check_config: false,
    };
    let mut it = std::env::args_os().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_string_lossy().into_owned();
        match a.as_str() {
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
    redis_probe::logging::init(&config.log);
    for w in &config.warnings {
        tracing::warn!(warning = %w, "configuration warning");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("redis-probe: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
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

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "shutting down"),
    }
}
