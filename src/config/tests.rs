//! The configuration's unit tests: every key read, every bad value refused by name.

use super::*;

fn env(pairs: &[(&str, &str)]) -> EnvVars {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_sources(&env(pairs), None)
}

fn problems(pairs: &[(&str, &str)]) -> Vec<String> {
    load(pairs)
        .expect_err("expected a configuration error")
        .problems
}

#[test]
fn defaults() {
    let c = load(&[("REDIS_ADDRESS", "clustercfg.example:6379")]).unwrap();
    assert_eq!(
        c.redis.addresses,
        vec![HostPort {
            host: "clustercfg.example".into(),
            port: 6379
        }]
    );
    assert!(c.redis.cluster_mode);
    assert_eq!(c.redis.dial_timeout, Duration::from_secs(5));
    assert_eq!(c.redis.read_timeout, Duration::from_secs(3));
    assert_eq!(c.probe.interval, Duration::from_secs(5));
    assert_eq!(c.probe.jitter, 0.2);
    assert_eq!(c.probe.attempts, 3);
    assert_eq!(c.probe.attempt_timeout, Duration::from_secs(2));
    assert_eq!(c.probe.retry_backoff, Duration::from_millis(500));
    assert_eq!(c.probe.failure_threshold, 3);
    assert_eq!(c.probe.success_threshold, 1);
    assert_eq!(c.probe.open_duration, Duration::from_secs(5));
    assert_eq!(c.probe.open_duration_max, Duration::from_secs(30));
    assert_eq!(c.probe.on_failure, OnFailure::Unready);
    assert_eq!(c.listen, "[::]:8081".parse().unwrap());
    assert_eq!(c.log.format, LogFormat::Json);
    assert!(c.redis.tls.is_none());
    assert_eq!(c.redis.password, PasswordSource::None);
}

#[test]
fn seed_deployment_settings_are_accepted() {
    let c = load(&[
        (
            "REDIS_ADDRESS",
            "clustercfg.traffic-tacos-redis.w6eqga.apn2.cache.amazonaws.com:6379",
        ),
        ("REDIS_CLUSTER_MODE", "true"),
        ("REDIS_TLS_ENABLED", "true"),
        ("REDIS_ROUTE_BY_LATENCY", "true"),
        ("REDIS_READ_ONLY", "true"),
        ("REDIS_POOL_SIZE", "1000"),
        ("REDIS_POOL_TIMEOUT", "10s"),
        ("REDIS_MIN_IDLE_CONNS", "100"),
        ("REDIS_MAX_CONN_AGE", "30m"),
        ("REDIS_PASSWORD_FROM_SECRETS", "true"),
        ("AWS_SECRET_NAME", "traffic-tacos/redis/auth-token"),
        ("REDIS_DIAL_TIMEOUT", "10s"),
        ("REDIS_READ_TIMEOUT", "5s"),
        ("REDIS_WRITE_TIMEOUT", "5s"),
    ])
    .unwrap();
    assert_eq!(c.redis.app_pool.size, Some(1000));
    assert_eq!(
        c.redis.app_pool.max_conn_age,
        Some(Duration::from_secs(1800))
    );
    assert!(c.redis.app_pool.read_only && c.redis.app_pool.route_by_latency);
    assert!(c.redis.tls.is_some());
    // No password source: a warning, not an error.
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
}

#[test]
fn expected_shards_are_a_count_or_bounds() {
    let shards = |v: &str| {
        load(&[("REDIS_ADDRESS", "a:1"), ("PROBE_EXPECTED_SHARDS", v)])
            .map(|c| c.observe.expected_shards.unwrap())
            .map_err(|e| e.problems)
    };
    assert_eq!(shards("5"), Ok(ShardRange { min: 5, max: 5 }));
    assert_eq!(shards("3..10"), Ok(ShardRange { min: 3, max: 10 }));
    assert!(shards("3..10").unwrap().contains(3) && !shards("3..10").unwrap().contains(11));
    assert_eq!(shards("3..10").unwrap().to_string(), "3..10");
    for bad in ["0", "10..3", "3..", "..3", "3...10", "501", "-1"] {
        let p = shards(bad).unwrap_err();
        assert!(
            p[0].starts_with(&format!("PROBE_EXPECTED_SHARDS={bad}")),
            "{p:?}"
        );
    }
}

#[test]
fn bad_values_name_variable_and_value() {
    let p = problems(&[("REDIS_ADDRESS", "a:1"), ("PROBE_EXPECTED_SHARDS", "abc")]);
    assert_eq!(
        p,
        vec!["PROBE_EXPECTED_SHARDS=abc: expected a shard count N or a range MIN..MAX (1 to 500)"]
    );
    let p = problems(&[("REDIS_ADDRESS", "a:1"), ("PROBE_INTERVAL", "5 parsecs")]);
    assert_eq!(
        p,
        vec!["PROBE_INTERVAL=\"5 parsecs\": expected a duration such as 500ms, 1.5s, 10s or 1h30m"]
    );
    let p = problems(&[("REDIS_ADDRESS", "a:1"), ("REDIS_TLS_ENABLED", "maybe")]);
    assert_eq!(
        p,
        vec!["REDIS_TLS_ENABLED=maybe: expected true or false (or 1, t, T, TRUE, True, 0, f, ...)"]
    );
}

#[test]
fn every_problem_is_reported() {
    let p = problems(&[
        ("PROBE_EXPECTED_SHARDS", "-1"),
        ("PROBE_JITTER", "1.5"),
        ("PROBE_ATTEMPTS", "0"),
        ("PROBE_ON_FAILURE", "panic"),
        ("PROBE_LISTEN", "nowhere"),
        ("PROBE_OPEN_DURATION", "10s"),
        ("PROBE_OPEN_DURATION_MAX", "5s"),
    ]);
    let joined = p.join("\n");
    for needle in [
        "REDIS_ADDRESS is required",
        "PROBE_EXPECTED_SHARDS=-1: expected a shard count N or a range MIN..MAX (1 to 500)",
        "PROBE_JITTER=1.5: must be at least 0 and less than 1",
        "PROBE_ATTEMPTS=0: must be at least 1",
        "PROBE_ON_FAILURE=panic: expected unready or degraded",
        "PROBE_LISTEN=nowhere: expected an address",
        "PROBE_OPEN_DURATION_MAX=5s: must not be less than PROBE_OPEN_DURATION=10s",
    ] {
        assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
    }
}

#[test]
fn addresses() {
    let c = load(&[("REDIS_ADDRESS", "10.0.0.1:7000, 10.0.0.2:7001,[::1]:7002")]).unwrap();
    let shown: Vec<String> = c.redis.addresses.iter().map(ToString::to_string).collect();
    assert_eq!(shown, vec!["10.0.0.1:7000", "10.0.0.2:7001", "[::1]:7002"]);
    for bad in ["redis", "redis:", "redis:0", "redis:99999", ":6379"] {
        let p = problems(&[("REDIS_ADDRESS", bad)]);
        assert!(
            p[0].starts_with(&format!("REDIS_ADDRESS={bad}: expected")),
            "{p:?}"
        );
    }
}

#[test]
fn standalone_takes_one_address() {
    let p = problems(&[
        ("REDIS_ADDRESS", "a:1,b:2"),
        ("REDIS_CLUSTER_MODE", "false"),
    ]);
    assert!(
        p[0].starts_with("REDIS_ADDRESS=a:1,b:2: a list of addresses needs"),
        "{p:?}"
    );
}

#[test]
fn numeric_password_stays_a_string_and_is_never_printed() {
    let c = load(&[("REDIS_ADDRESS", "a:1"), ("REDIS_PASSWORD", "007")]).unwrap();
    assert_eq!(c.redis.password, PasswordSource::Inline(Secret::new("007")));
    let rendered = c.render();
    assert!(rendered.contains("REDIS_PASSWORD=<redacted>"), "{rendered}");
    assert!(!rendered.contains("007"));
    assert!(!format!("{c:?}").contains("007"));
}

#[test]
fn service_link_variables_are_ignored() {
    let c = load(&[
        ("REDIS_ADDRESS", "a:1"),
        ("REDIS_PORT", "tcp://10.0.0.1:6379"),
        ("REDIS_SERVICE_HOST", "10.0.0.1"),
        ("REDIS_PORT_6379_TCP", "tcp://10.0.0.1:6379"),
    ])
    .unwrap();
    let a = HostPort {
        host: "a".into(),
        port: 1,
    };
    assert_eq!(c.redis.addresses, vec![a]);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn empty_values_mean_unset() {
    let c = load(&[
        ("REDIS_ADDRESS", "a:1"),
        ("REDIS_USERNAME", ""),
        ("PROBE_INTERVAL", ""),
    ])
    .unwrap();
    assert_eq!(c.redis.username, None);
    assert_eq!(c.probe.interval, Duration::from_secs(5));
}

#[test]
fn file_and_environment_layers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("probe.toml");
    std::fs::write(
        &path,
        "[redis]\naddress = \"file:6379\"\npool_size = 50\n[probe]\ninterval = \"2s\"\nattempts = 5\n",
    )
    .unwrap();
    let c = Config::from_sources(&env(&[("PROBE_ATTEMPTS", "4")]), Some(&path)).unwrap();
    assert_eq!(c.redis.addresses[0].host, "file");
    assert_eq!(c.redis.app_pool.size, Some(50));
    assert_eq!(c.probe.interval, Duration::from_secs(2));
    assert_eq!(c.probe.attempts, 4, "the environment wins over the file");

    std::fs::write(
        &path,
        "[redis]\naddress = \"file:6379\"\n[probe]\nattempts = \"many\"\n",
    )
    .unwrap();
    let p = Config::from_sources(&env(&[]), Some(&path))
        .unwrap_err()
        .problems;
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("probe.attempts = \"many\" in "), "{p:?}");
    assert!(p[0].ends_with("expected an unsigned integer"), "{p:?}");

    let p = Config::from_sources(&env(&[("PROBE_CONFIG", "/nonexistent.toml")]), None).unwrap_err();
    assert!(p.problems[0].contains("/nonexistent.toml"), "{p:?}");
}

#[test]
fn tls_files_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("ca.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let p = problems(&[
        ("REDIS_ADDRESS", "a:1"),
        ("REDIS_TLS_ENABLED", "true"),
        ("REDIS_TLS_CA_FILE", empty.to_str().unwrap()),
        ("REDIS_TLS_CERT_FILE", "/nonexistent/cert.pem"),
    ]);
    let joined = p.join("\n");
    assert!(
        joined.contains(&format!(
            "REDIS_TLS_CA_FILE={}: holds no PEM certificate",
            empty.display()
        )),
        "{joined}"
    );
    assert!(
        joined.contains("REDIS_TLS_CERT_FILE=/nonexistent/cert.pem: cannot read the file"),
        "{joined}"
    );
}

#[test]
fn password_file_trailing_newline() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("token");
    std::fs::write(&f, "s3cret\n").unwrap();
    let c = load(&[
        ("REDIS_ADDRESS", "a:1"),
        ("REDIS_PASSWORD_FILE", f.to_str().unwrap()),
    ])
    .unwrap();
    assert_eq!(c.redis.password, PasswordSource::File(f.clone()));
    assert_eq!(read_password_file(&f).unwrap().expose(), "s3cret");
    let p = problems(&[
        ("REDIS_ADDRESS", "a:1"),
        ("REDIS_PASSWORD", "x"),
        ("REDIS_PASSWORD_FILE", f.to_str().unwrap()),
    ]);
    assert!(p[0].contains("both set"), "{p:?}");
}

#[test]
fn the_apps_settings_never_stop_start_up() {
    // Valid for the Go app (strconv.ParseBool, time.ParseDuration): read the same way.
    let c = load(&[
        ("REDIS_ADDRESS", "a:1"),
        ("REDIS_READ_ONLY", "t"),
        ("REDIS_ROUTE_BY_LATENCY", "1"),
        ("REDIS_MAX_CONN_AGE", "1h30m"),
        ("REDIS_DIAL_TIMEOUT", "1.5s"),
        ("REDIS_TLS_ENABLED", "True"),
    ])
    .unwrap();
    assert!(c.redis.app_pool.read_only && c.redis.app_pool.route_by_latency);
    assert_eq!(
        c.redis.app_pool.max_conn_age,
        Some(Duration::from_secs(5400))
    );
    assert_eq!(c.redis.dial_timeout, Duration::from_millis(1500));
    assert!(c.redis.tls.is_some());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    // Not readable by the sidecar: a warning each, and the default.
    let c = load(&[
        ("REDIS_ADDRESS", "a:1"),
        ("REDIS_READ_ONLY", "yes"),
        ("REDIS_POOL_SIZE", "abc"),
        ("REDIS_DIAL_TIMEOUT", "soon"),
    ])
    .unwrap();
    assert!(!c.redis.app_pool.read_only);
    assert_eq!(c.redis.app_pool.size, None);
    assert_eq!(c.redis.dial_timeout, Duration::from_secs(5));
    let app: Vec<&Warning> = c
        .warnings
        .iter()
        .filter(|w| w.kind == WarningKind::AppSetting)
        .collect();
    assert_eq!(app.len(), 3, "{app:?}");
    let said = |prefix: &str| app.iter().any(|w| w.message.starts_with(prefix));
    assert!(
        said("REDIS_READ_ONLY=yes: expected true or false"),
        "{app:?}"
    );
    assert!(
        said("REDIS_DIAL_TIMEOUT=soon: expected a duration"),
        "{app:?}"
    );
    let shown = c.render();
    assert!(shown.contains("REDIS_DIAL_TIMEOUT=5s"), "{shown}");
    // The sidecar's own settings still stop it.
    let p = problems(&[("REDIS_ADDRESS", "a:1"), ("REDIS_CLUSTER_MODE", "yes")]);
    assert!(
        p[0].starts_with("REDIS_CLUSTER_MODE=yes: expected true"),
        "{p:?}"
    );
}

#[test]
fn absurd_values_are_errors_not_panics() {
    let p = problems(&[
        ("REDIS_ADDRESS", "a:1"),
        ("PROBE_ATTEMPTS", "1000000000"),
        ("PROBE_INTERVAL", "100000years"),
        ("PROBE_OPEN_DURATION_MAX", "500000000000y"),
        ("PROBE_FAILURE_THRESHOLD", "99999999999999999999"),
    ]);
    let joined = p.join("\n");
    for needle in [
        "PROBE_ATTEMPTS=1000000000: must be at most 1000",
        "PROBE_INTERVAL=100000years: must be at most 24h",
        "PROBE_OPEN_DURATION_MAX=500000000000y: ",
        "PROBE_FAILURE_THRESHOLD=99999999999999999999: expected an unsigned integer",
    ] {
        assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
    }
}

#[test]
fn secrets_in_bad_input_are_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("probe.toml");
    std::fs::write(
        &path,
        "[redis]\naddress = \"a:1\"\npassword = \"s3cr\\qet\"\n",
    )
    .unwrap();
    let p = Config::from_sources(&env(&[]), Some(&path))
        .unwrap_err()
        .problems;
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("not valid TOML at line 3, column"), "{p:?}");
    assert!(!p[0].contains("s3cr"), "{p:?}");

    for url in ["redis://:hunter2@host:6379", "default:hunter2@host:6379"] {
        let p = problems(&[("REDIS_ADDRESS", url)]);
        assert!(
            p[0].starts_with("REDIS_ADDRESS (value not shown): "),
            "{p:?}"
        );
        assert!(!p.join(" ").contains("hunter2"), "{p:?}");
    }

    let c = load(&[
        ("REDIS_ADDRESS", "a:1"),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://u:tok3n@collector.example?key=tok3n",
        ),
    ])
    .unwrap();
    let shown = format!("{}{:?}", c.render(), c.warnings);
    assert!(!shown.contains("tok3n"), "{shown}");
    assert!(
        shown.contains(
            "OTEL_EXPORTER_OTLP_ENDPOINT=https://<redacted>@collector.example?<redacted>"
        ),
        "{shown}"
    );
}
