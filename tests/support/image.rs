//! The container image as users run it: built by `scripts/image` (buildah, the Dockerfile's
//! last stage over `scripts/image-rootfs`) into container storage of the test's own, and run
//! by podman with `runc`, read-only, as 65532, every capability dropped.
//!
//! Everything lives in one temp dir (storage `--root`, vfs driver): dropping [`Images`]
//! removes every container it started, then the dir.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

/// podman's default rlimits (nofile 1048576) are above the hard limits of these machines, and
/// runc then fails to start the container; these are a sidecar's needs and below them.
pub const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=4096:4096",
    "--ulimit",
    "nproc=4096:4096",
];

pub struct Images {
    dir: TempDir,
    pub tag: String,
    /// What `scripts/image` printed: ID, name and size.
    pub built: String,
}

impl Images {
    /// Builds the image from the binary the tests run (blocking: call from `spawn_blocking`).
    pub fn build() -> Images {
        for tool in ["buildah", "podman", "runc"] {
            super::require_tool(tool, "scripts/install-deps --test");
        }
        let dir = tempfile::Builder::new()
            .prefix("redis-probe-image-")
            .tempdir()
            .unwrap();
        // Files shared with the container: readable by its user, 65532.
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        let tag = format!("localhost/redis-probe:test-{}", std::process::id());
        let root = dir.path().join("storage");
        let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/image"))
            .args(["--binary", &super::bin(), "--tag", &tag, "--root"])
            .arg(&root)
            .output()
            .expect("running scripts/image");
        assert!(
            out.status.success(),
            "scripts/image failed:\n{}",
            text(&out)
        );
        let built = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Images { dir, tag, built }
    }

    /// podman on this test's storage.
    pub fn podman(&self) -> Command {
        let root = self.dir.path().join("storage");
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(&root)
            .arg("--runroot")
            .arg(root.join("run"))
            .args(["--storage-driver", "vfs"]);
        c
    }

    /// Runs podman with `args` and returns its output; fails the test when it fails.
    pub fn podman_ok(&self, args: &[&str]) -> String {
        let out = self.podman().args(args).output().expect("running podman");
        assert!(
            out.status.success(),
            "podman {args:?} failed:\n{}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Copies `file` where the container's user can read it; returns its path (the same
    /// inside the container, through [`Images::run_script`]'s mount).
    pub fn share(&self, file: &Path, name: &str) -> PathBuf {
        let to = self.dir.path().join("shared").join(name);
        std::fs::copy(file, &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).unwrap();
        to
    }

    /// A script that runs the image in the foreground as container `name`, in the host's
    /// network, read-only, as 65532, with no capability and no new privileges, passing on
    /// every `REDIS_*`, `PROBE_*`, `SSL_*` and `OTEL_*` variable it is given; `extra` goes
    /// before the image name (mounts). SIGTERM to it reaches the container (podman's signal
    /// proxy) and its exit status is the container's.
    pub fn run_script(&self, name: &str, extra: &[&str]) -> PathBuf {
        let root = self.dir.path().join("storage");
        let shared = self.dir.path().join("shared");
        let mut args = vec![
            "exec".to_string(),
            "/usr/bin/podman".into(),
            format!("--root '{}'", root.display()),
            format!("--runroot '{}'", root.join("run").display()),
            "--storage-driver vfs run --rm --runtime runc".into(),
            format!("--name {name}"),
            ULIMITS.join(" "),
            "--network host --read-only --user 65532:65532".into(),
            "--cap-drop ALL --security-opt no-new-privileges".into(),
            format!("-v '{0}:{0}:ro'", shared.display()),
            "--env 'REDIS_*' --env 'PROBE_*' --env 'SSL_*' --env 'OTEL_*'".into(),
        ];
        args.extend(extra.iter().map(|a| format!("'{a}'")));
        args.push(self.tag.clone());
        let script = self.dir.path().join(format!("{name}.sh"));
        std::fs::write(&script, format!("#!/bin/sh\n{}\n", args.join(" "))).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        script
    }

    /// `redis-probe diagnose --format json` run in container `name` (`podman exec`): whether it
    /// found nothing, its report, and everything it printed.
    pub fn diagnose(&self, name: &str) -> (bool, serde_json::Value, String) {
        let out = self
            .podman()
            .args(["exec", name, "/usr/local/bin/redis-probe", "diagnose"])
            .args(["--duration", "1s", "--format", "json"])
            .output()
            .unwrap();
        let json = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("diagnose JSON ({e}):\n{}", text(&out)));
        (out.status.success(), json, text(&out))
    }

    /// The process of container `name`, as the host sees it: `/proc/<pid>/status`.
    pub fn status_of(&self, name: &str) -> String {
        let pid = self.podman_ok(&["inspect", name, "--format", "{{.State.Pid}}"]);
        std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap()
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        let _ = self.podman().args(["rm", "--force", "--all"]).output();
        let _ = self.podman().args(["rmi", "--force", "--all"]).output();
    }
}

pub fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}
