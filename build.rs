//! Stamps the binary with the source revision for `redis_probe_build_info{revision}`:
//! `REDIS_PROBE_REVISION` when set (a build from a tarball, an image build argument), else the
//! checkout's `git rev-parse --short=12 HEAD`, else `unknown`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=REDIS_PROBE_REVISION");
    for f in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(f).exists() {
            println!("cargo:rerun-if-changed={f}");
        }
    }
    let revision = std::env::var("REDIS_PROBE_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            let rev = String::from_utf8(out.stdout).ok()?.trim().to_string();
            (out.status.success() && !rev.is_empty()).then_some(rev)
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=REDIS_PROBE_REVISION={revision}");
}
