//! The Helm chart (`charts/redis-probe`, used by `charts/example-app`) against the code and the
//! kustomize tree: the sidecar it renders is the one the inject Component renders and runs on
//! what the binary serves and reads; its rules and dashboard are the kustomize tree's files;
//! versions agree; and a render that names a ConfigMap the app does not have fails with a
//! message. Renders offline with `scripts/helm` (helm-python-sdk) and `kubectl kustomize`.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Runs `cmd` in the project's root; `Err` with what it printed when it fails.
fn run(cmd: &str) -> Result<String, String> {
    support::require_tool("kubectl", "scripts/install-deps --test");
    support::require_tool("python3", "scripts/install-deps --test");
    let out = Command::new("bash")
        .args(["-o", "pipefail", "-c", cmd])
        .current_dir(ROOT)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match out.status.success() {
        true => Ok(text),
        false => Err(text + &String::from_utf8_lossy(&out.stderr)),
    }
}

/// The objects a render command prints, as JSON.
fn objects(render: &str) -> Vec<Value> {
    let to_json = "python3 -c 'import sys, json, yaml; \
                   json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)'";
    let out = run(&format!("{render} | {to_json}")).unwrap_or_else(|e| panic!("{render}: {e}"));
    serde_json::from_str::<Vec<Value>>(&out).unwrap()
}

fn helm(chart: &str, values: &str) -> Vec<Value> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), values).unwrap();
    let f = file.path().display();
    objects(&format!(
        "scripts/helm template {chart} --name shop-api -f {f}"
    ))
}

fn kind<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn sidecar(workload: &Value) -> &Value {
    workload["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "redis-probe")
        .unwrap_or_else(|| panic!("no redis-probe sidecar in {workload}"))
}

#[test]
fn versions_agree_across_crate_chart_image_and_runbooks() {
    let chart = read("charts/redis-probe/Chart.yaml");
    assert!(
        chart.contains(&format!("\nversion: {VERSION}\n")),
        "{chart}"
    );
    assert!(
        chart.contains(&format!("\nappVersion: \"{VERSION}\"\n")),
        "{chart}"
    );
    let values = read("charts/redis-probe/values.yaml");
    assert!(
        values.contains(&format!("  tag: \"{VERSION}\"\n")),
        "{values}"
    );
    assert!(read("Dockerfile").contains(&format!("ARG VERSION={VERSION}\n")));
    // One runbook address for both trees, at this version's docs.
    let base =
        format!("https://github.com/redis-probe/redis-probe/blob/v{VERSION}/docs/runbooks.md");
    assert!(
        values.contains(&format!("runbookBaseUrl: {base}\n")),
        "{values}"
    );
    assert!(read("k8s/monitoring/runbooks.yaml").contains(&format!("baseUrl: {base}\n")));
    let runbooks = read("docs/runbooks.md");
    for line in read("k8s/monitoring/redis-probe.rules.yaml")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook_url: "))
    {
        let (at, anchor) = line.split_once('#').unwrap();
        assert_eq!(at, base);
        assert!(
            runbooks.contains(&format!("id=\"{anchor}\"")),
            "docs/runbooks.md has no anchor {anchor}"
        );
    }
}

/// The chart's sidecar is the inject Component's (same port, probes, resources, security), and
/// both run on what the binary serves and reads.
#[test]
fn chart_sidecar_is_the_inject_components_and_the_binarys() {
    let chart = helm("charts/example-app", "");
    let kustomize = objects("kubectl kustomize k8s/variants/inject-example");
    let deployment = kind(&chart, "Deployment")[0];
    let from_chart = sidecar(deployment);
    let injected = kind(&kustomize, "Deployment");
    let from_kustomize = sidecar(injected[0]);
    for field in [
        "restartPolicy",
        "ports",
        "startupProbe",
        "livenessProbe",
        "resources",
        "securityContext",
    ] {
        assert_eq!(
            from_chart[field], from_kustomize[field],
            "{field} differs between the chart and the inject Component"
        );
    }
    assert_eq!(
        from_chart["image"],
        format!("ghcr.io/redis-probe/redis-probe:{VERSION}")
    );
    let keys: Vec<&str> = redis_probe::config::KEYS.iter().map(|k| k.env).collect();
    let listen = redis_probe::config::keys::PROBE_LISTEN
        .default_value()
        .unwrap();
    let port: u64 = listen.rsplit(':').next().unwrap().parse().unwrap();
    for c in [from_chart, from_kustomize] {
        for e in c["env"].as_array().unwrap() {
            let name = e["name"].as_str().unwrap();
            assert!(keys.contains(&name), "{name} is not a redis-probe variable");
            if name == "PROBE_LISTEN" {
                assert_eq!(e["value"], format!("[::]:{port}"));
            }
        }
        assert_eq!(c["ports"][0]["containerPort"], port);
        for probe in ["startupProbe", "livenessProbe"] {
            assert_eq!(c[probe]["httpGet"]["path"], "/livez", "{probe}");
        }
    }
    // The app's readiness is the sidecar's /readyz, in both.
    for w in [deployment, injected[0]] {
        let app = &w["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(app["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(app["readinessProbe"]["httpGet"]["port"], port);
    }
    // StatefulSets take it too.
    let statefulset = kind(&kustomize, "StatefulSet");
    assert_eq!(sidecar(statefulset[0])["image"], from_kustomize["image"]);
}

/// The chart's PrometheusRule and dashboard are the kustomize tree's files, and its runbook
/// links follow `runbookBaseUrl`.
#[test]
fn chart_rules_and_dashboard_are_the_kustomize_trees() {
    let chart = helm("charts/redis-probe", "");
    let kustomize = objects("kubectl kustomize k8s");
    let rules = |objs: &[Value]| kind(objs, "PrometheusRule")[0]["spec"].clone();
    assert_eq!(rules(&chart), rules(&kustomize));
    let dashboard = |objs: &[Value]| {
        kind(objs, "ConfigMap")
            .into_iter()
            .find(|c| {
                c["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .ends_with("dashboard")
            })
            .map(|c| c["data"]["grafana-dashboard.json"].clone())
            .unwrap()
    };
    assert_eq!(dashboard(&chart), dashboard(&kustomize));
    assert_eq!(
        kind(&chart, "PodMonitor")[0]["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );

    let own = helm(
        "charts/redis-probe",
        "runbookBaseUrl: https://wiki.example.com/redis\nmonitoring:\n  release: \"\"\n",
    );
    let text = kind(&own, "PrometheusRule")[0].to_string();
    let urls: Vec<&str> = text.split("\"runbook_url\":\"").skip(1).collect();
    assert_eq!(
        urls.len(),
        read("k8s/monitoring/redis-probe.rules.yaml")
            .matches("runbook_url")
            .count()
    );
    for u in urls {
        assert!(
            u.starts_with("https://wiki.example.com/redis#runbook-"),
            "{u}"
        );
    }
    assert!(kind(&own, "PodMonitor")[0]["metadata"]["labels"]["release"].is_null());
}

/// A render whose sidecar names a ConfigMap the app does not have fails the project's checks,
/// naming it; so do a chart render with no ConfigMap named and the inject Component without
/// its names.
#[test]
fn a_render_missing_the_apps_configmap_fails_with_a_message() {
    let values = "redisProbe:\n  redis:\n    configMap: not-the-apps\n";
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), values).unwrap();
    let render = tempfile::NamedTempFile::new().unwrap();
    let (f, r) = (file.path().display(), render.path().display());
    run(&format!(
        "scripts/helm template charts/example-app -f {f} > {r}"
    ))
    .unwrap();
    let err = run(&format!(
        "scripts/check-refs {r} --external Secret/shop-api-redis-auth"
    ))
    .unwrap_err();
    assert!(
        err.contains("needs ConfigMap not-the-apps, which this render does not hold"),
        "{err}"
    );
    run(&format!("scripts/helm template charts/example-app > {r}")).unwrap();
    run(&format!(
        "scripts/check-refs {r} --external Secret/shop-api-redis-auth"
    ))
    .unwrap();

    let none = "redisProbe:\n  redis:\n    configMap: \"\"\n";
    std::fs::write(file.path(), none).unwrap();
    let err = run(&format!("scripts/helm template charts/example-app -f {f}")).unwrap_err();
    assert!(err.contains("redisProbe.redis.configMap"), "{err}");

    let copy = tempfile::tempdir().unwrap();
    let k8s = copy.path().join("k8s");
    run(&format!("cp -r k8s {}", copy.path().display())).unwrap();
    let example = k8s.join("variants/inject-example/kustomization.yaml");
    let text = std::fs::read_to_string(&example).unwrap();
    std::fs::write(&example, text.replace("  - redis-probe-inject.yaml\n", "")).unwrap();
    let err = run(&format!(
        "kubectl kustomize {}",
        example.parent().unwrap().display()
    ))
    .unwrap_err();
    assert!(err.contains("redis-probe-inject"), "{err}");
}
