//! The Kubernetes manifests and example settings against the code: probe paths and ports the
//! binary serves, variable names it reads, example settings it accepts.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use redis_probe::config::KEYS;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn known_keys() -> BTreeSet<&'static str> {
    KEYS.iter().map(|k| k.env).collect()
}

/// Values after `key:` on lines of a YAML text.
fn yaml_values<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}:");
    text.lines()
        .filter_map(|l| {
            l.trim()
                .trim_start_matches("- ")
                .strip_prefix(prefix.as_str())
        })
        .map(|v| v.trim().trim_matches('"'))
        .collect()
}

#[test]
fn probe_paths_and_ports_are_what_the_binary_serves() {
    let default_port = redis_probe::config::keys::PROBE_LISTEN
        .default_value()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap();
    // Which files declare the sidecar's port and listen address: the plain-container variant
    // only moves the container defined by the base, so it has neither (and says so here).
    for (file, declares_port) in [
        ("k8s/base/deployment.yaml", true),
        ("k8s/inject/sidecar-patch.yaml", true),
        ("k8s/variants/plain-container/kustomization.yaml", false),
    ] {
        let text = read(file);
        let ports = yaml_values(&text, "containerPort");
        let listens = text
            .lines()
            .filter(|l| l.contains("name: PROBE_LISTEN"))
            .count();
        assert_eq!(
            !ports.is_empty(),
            declares_port,
            "{file}: containerPort {ports:?}"
        );
        assert_eq!(
            listens == 1,
            declares_port,
            "{file}: PROBE_LISTEN {listens} times"
        );
        let paths = yaml_values(&text, "path");
        assert!(!paths.is_empty(), "{file}");
        for p in paths
            .iter()
            .filter(|p| p.starts_with('/') && !p.starts_with("/spec") && !p.starts_with("/var"))
        {
            assert!(
                ["/livez", "/readyz", "/metrics"].contains(p),
                "{file}: {p} is not an endpoint"
            );
        }
        for port in yaml_values(&text, "containerPort") {
            if port != "8000" {
                assert_eq!(port, default_port, "{file}");
            }
        }
        for listen in text
            .lines()
            .skip_while(|l| !l.contains("name: PROBE_LISTEN"))
            .nth(1)
            .into_iter()
        {
            assert!(
                listen
                    .trim()
                    .trim_matches('"')
                    .ends_with(&format!(":{default_port}")),
                "{file}: {listen}"
            );
        }
    }
    let deployment = read("k8s/base/deployment.yaml");
    // Liveness of the sidecar is /livez, never /readyz: a Redis outage must not restart pods.
    let sidecar = deployment
        .split("containers:\n        - name: gateway-api")
        .next()
        .unwrap();
    let liveness = sidecar.split("livenessProbe:").nth(1).unwrap();
    assert!(
        liveness
            .trim_start()
            .starts_with("httpGet:\n              path: /livez"),
        "{liveness}"
    );
    // The app's readiness asks the sidecar.
    let app = deployment.split("- name: gateway-api").nth(1).unwrap();
    let readiness = app.split("readinessProbe:").nth(1).unwrap();
    assert!(
        readiness.contains("path: /readyz") && readiness.contains(&format!("port: {default_port}")),
        "{readiness}"
    );
    let monitor = read("k8s/monitoring/servicemonitor/servicemonitor.yaml");
    assert!(monitor.contains("path: /metrics") && monitor.contains("port: probe"));
    assert!(read("k8s/base/service.yaml").contains("name: probe"));
}

#[test]
fn variable_names_in_manifests_are_read_by_the_binary() {
    let keys = known_keys();
    let configmap = read("k8s/base/redis-configmap.yaml");
    let data: Vec<&str> = configmap
        .split("\ndata:\n")
        .nth(1)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.trim().split_once(':').map(|(k, _)| k))
        .collect();
    assert!(data.len() >= 14, "{data:?}");
    for k in data {
        assert!(
            keys.contains(k),
            "ConfigMap key {k} is not a redis-probe variable"
        );
    }
    for file in ["k8s/base/deployment.yaml", "k8s/inject/sidecar-patch.yaml"] {
        let text = read(file);
        for name in yaml_values(&text, "name")
            .into_iter()
            .filter(|n| n.starts_with("REDIS_") || n.starts_with("PROBE_"))
        {
            assert!(
                keys.contains(name),
                "{file}: {name} is not a redis-probe variable"
            );
        }
    }
}

fn check_config(env: &[(String, String)], args: &[&str]) -> String {
    let out = support::binary_command(None, env.iter().cloned())
        .args(args)
        .arg("--check-config")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}:\n{text}");
    text
}

#[test]
fn example_settings_pass_check_config() {
    let out = check_config(
        &[],
        &["--config", &format!("{ROOT}/examples/local-cluster.toml")],
    );
    assert!(out.contains("PROBE_EXPECTED_SHARDS=3"), "{out}");

    // The ElastiCache settings, with the token file pointed at a real file.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("auth-token");
    std::fs::write(&token, "token\n").unwrap();
    let keys = known_keys();
    let env: Vec<(String, String)> = read("examples/elasticache.env")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            assert!(
                keys.contains(k),
                "examples/elasticache.env: {k} is not a redis-probe variable"
            );
            let v = if k == "REDIS_PASSWORD_FILE" {
                token.display().to_string()
            } else {
                v.to_string()
            };
            (k.to_string(), v)
        })
        .collect();
    let out = check_config(&env, &[]);
    assert!(
        out.contains("REDIS_POOL_SIZE=1000") && out.contains("PROBE_EXPECTED_SHARDS=3..10"),
        "{out}"
    );
}

/// docs/settings.md's configuration table is the one the key table makes: a key added, renamed or
/// documented anew in `src/config/keys.rs` fails here until docs/settings.md says the same.
#[test]
fn settings_table_is_the_key_table() {
    const BEGIN: &str = "<!-- configuration table: generated from src/config/keys.rs -->\n";
    const END: &str = "<!-- end of configuration table -->";
    let readme = read("docs/settings.md");
    let start = readme
        .find(BEGIN)
        .expect("docs/settings.md has no configuration table marker")
        + BEGIN.len();
    let len = readme[start..]
        .find(END)
        .expect("docs/settings.md's table has no end marker");
    let expected = redis_probe::config::keys::markdown_table();
    assert!(
        readme[start..start + len] == expected,
        "docs/settings.md's configuration table differs from src/config/keys.rs; put this between the markers:\n{expected}"
    );
}
