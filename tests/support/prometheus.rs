//! A real Prometheus server (Debian's `prometheus`) started by a test: it scrapes the given
//! sidecars, evaluates the shipped rule file, and is asked through its HTTP API.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub struct Prometheus {
    pub addr: SocketAddr,
    _dir: TempDir,
    child: Child,
}

/// One scrape target: its address and the `pod` label it gets.
pub struct Target {
    pub addr: SocketAddr,
    pub pod: String,
}

/// One active alert as `/api/v1/alerts` shows it.
#[derive(Debug, Clone)]
pub struct Alert {
    pub name: String,
    pub state: String,
    pub labels: serde_json::Map<String, serde_json::Value>,
    pub annotations: serde_json::Map<String, serde_json::Value>,
    pub value: String,
}

impl Target {
    /// Each sidecar as a target, labelled pod `a`, `b`, ... in order.
    pub fn pods(sidecars: &[&super::Sidecar]) -> Vec<Target> {
        sidecars
            .iter()
            .zip('a'..)
            .map(|(s, pod)| Target {
                addr: s.addr,
                pod: pod.to_string(),
            })
            .collect()
    }
}

impl Prometheus {
    /// Scrapes `targets` as job `job` every `every` (also the rule evaluation interval), with
    /// `rules` loaded.
    pub async fn start(targets: &[Target], job: &str, every: &str, rules: &Path) -> Prometheus {
        let bin = super::require_tool(
            "prometheus",
            "sudo apt-get install -y prometheus (or scripts/install-deps)",
        );
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_ports(1)[0];
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let statics: String = targets
            .iter()
            .map(|t| {
                format!(
                    "      - targets: ['{}']\n        labels: {{pod: '{}', namespace: 'test'}}\n",
                    t.addr, t.pod
                )
            })
            .collect();
        let config = format!(
            "global:\n  scrape_interval: {every}\n  evaluation_interval: {every}\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: {job}\n    static_configs:\n{statics}",
            rules = rules.display()
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("prometheus.log")).unwrap(),
            ));
        super::die_with_parent(&mut cmd);
        let child = super::spawn_from_lasting_thread(cmd).expect("starting prometheus");
        let p = Prometheus {
            addr,
            _dir: dir,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if super::http_get_opt(addr, "/-/ready").await.map(|r| r.0) == Some(200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str) -> serde_json::Value {
        // HTTP/1.0: the reply comes whole, never chunked.
        let raw =
            super::http_raw(self.addr, format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await;
        let (status, body) = super::parse_response(&raw);
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {status} {e}:\n{body}"));
        assert_eq!(v["status"], "success", "{path}: {body}");
        v["data"].clone()
    }

    /// The result vector of an instant query.
    pub async fn query(&self, q: &str) -> Vec<serde_json::Value> {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode(q)))
            .await;
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Every series of `metric` from `start` to `end` (Unix seconds) at `step` seconds, each as
    /// its label set (`{k="v",...}`, no name) and promtool's value notation (`_` where the
    /// series has no sample).
    pub async fn query_range(
        &self,
        metric: &str,
        start: u64,
        end: u64,
        step: u64,
    ) -> Vec<(String, String)> {
        let data = self
            .api(&format!(
                "/api/v1/query_range?query={}&start={start}&end={end}&step={step}",
                encode(metric)
            ))
            .await;
        let mut out = vec![];
        for series in data["result"].as_array().cloned().unwrap_or_default() {
            let mut labels: Vec<String> = series["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| k.as_str() != "__name__")
                .map(|(k, v)| format!("{k}={:?}", v.as_str().unwrap_or("")))
                .collect();
            labels.sort();
            let mut at = std::collections::HashMap::new();
            for v in series["values"].as_array().into_iter().flatten() {
                let t = v[0].as_f64().unwrap_or(0.0).round() as u64;
                at.insert(t, v[1].as_str().unwrap_or("_").to_string());
            }
            let values: Vec<String> = (0..=(end - start) / step)
                .map(|k| at.get(&(start + k * step)).cloned().unwrap_or("_".into()))
                .collect();
            out.push((format!("{{{}}}", labels.join(",")), values.join(" ")));
        }
        out
    }

    /// Pending and firing alerts.
    pub async fn alerts(&self) -> Vec<Alert> {
        let data = self.api("/api/v1/alerts").await;
        data["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|a| Alert {
                name: a["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                state: a["state"].as_str().unwrap_or("").to_string(),
                labels: a["labels"].as_object().cloned().unwrap_or_default(),
                annotations: a["annotations"].as_object().cloned().unwrap_or_default(),
                value: a["value"].as_str().unwrap_or("").to_string(),
            })
            .collect()
    }

    /// Every rule group's rules with their health; `Err` lists rules that are not `ok`
    /// (failed, or not evaluated yet), or says there are none.
    pub async fn rule_health(&self) -> Result<usize, String> {
        let data = self.api("/api/v1/rules").await;
        let mut n = 0;
        let mut bad = vec![];
        for g in data["groups"].as_array().cloned().unwrap_or_default() {
            for r in g["rules"].as_array().cloned().unwrap_or_default() {
                n += 1;
                if r["health"] != "ok" {
                    bad.push(format!("{}: {} {}", r["name"], r["health"], r["lastError"]));
                }
            }
        }
        match (n, bad.is_empty()) {
            (0, _) => Err("no rules loaded".into()),
            (n, true) => Ok(n),
            _ => Err(bad.join("\n")),
        }
    }

    /// Targets whose last scrape succeeded.
    pub async fn targets_up(&self) -> usize {
        let data = self.api("/api/v1/targets").await;
        data["activeTargets"]
            .as_array()
            .map(|t| t.iter().filter(|t| t["health"] == "up").count())
            .unwrap_or(0)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
