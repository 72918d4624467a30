//! The CPU this process may use, from its cgroup's CFS quota: cgroup v2 `cpu.max`, or v1
//! `cpu.cfs_quota_us` / `cpu.cfs_period_us`, the lowest along the cgroup and its ancestors
//! (a pod-level limit counts as much as the container's). Kubernetes turns
//! `resources.limits.cpu: 100m` into a quota of 10 ms per 100 ms period.
//!
//! Read from files: call it from a blocking thread.

use std::path::{Path, PathBuf};

/// Where the cgroup file systems are mounted in a pod and on a host.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// CPUs allowed by the quota (`0.1` for 100m); `None` when there is no quota, or no cgroup
/// file to read it from.
pub fn cpu_limit() -> Option<f64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    limit_from(&own, Path::new(CGROUP_ROOT), |p| {
        std::fs::read_to_string(p).ok()
    })
}

/// [`cpu_limit`] from the text of `/proc/self/cgroup`, with `read` for the cgroup files.
fn limit_from(own: &str, root: &Path, read: impl Fn(&Path) -> Option<String>) -> Option<f64> {
    let mut lowest: Option<f64> = None;
    let mut take = |cores: Option<f64>| {
        if let Some(c) = cores {
            lowest = Some(lowest.map_or(c, |l| l.min(c)));
        }
    };
    for line in own.lines() {
        // `0::/kubepods/...` (v2) or `4:cpu,cpuacct:/kubepods/...` (v1).
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            for dir in ancestors(root, path) {
                take(
                    read(&dir.join("cpu.max"))
                        .as_deref()
                        .and_then(parse_cpu_max),
                );
            }
        } else if controllers.split(',').any(|c| c == "cpu") {
            for mount in ["cpu,cpuacct", "cpu"] {
                for dir in ancestors(&root.join(mount), path) {
                    let quota = read(&dir.join("cpu.cfs_quota_us"));
                    let period = read(&dir.join("cpu.cfs_period_us"));
                    take(parse_v1(quota.as_deref(), period.as_deref()));
                }
            }
        }
    }
    lowest
}

/// `base/a/b`, `base/a`, `base`: the cgroup and its ancestors. In a pod with its own cgroup
/// namespace the path is `/` and `base` is the container's cgroup.
fn ancestors(base: &Path, path: &str) -> Vec<PathBuf> {
    let mut dirs = vec![base.to_path_buf()];
    let mut dir = base.to_path_buf();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != "..") {
        dir.push(part);
        dirs.push(dir.clone());
    }
    dirs.reverse();
    dirs
}

/// cgroup v2 `cpu.max`: `10000 100000`, or `max 100000` (no limit).
fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut fields = text.split_whitespace();
    cores(fields.next()?, fields.next().unwrap_or("100000"))
}

/// cgroup v1: a quota of `-1` is no limit.
fn parse_v1(quota: Option<&str>, period: Option<&str>) -> Option<f64> {
    cores(quota?, period?)
}

/// Quota over period, when both are positive numbers (`max` and `-1` are no limit).
fn cores(quota: &str, period: &str) -> Option<f64> {
    let quota: f64 = quota.trim().parse().ok()?;
    let period: f64 = period.trim().parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn files(pairs: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let map: HashMap<PathBuf, String> = pairs
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect();
        move |p| map.get(p).cloned()
    }

    #[test]
    fn v2_quota_of_the_cgroup_or_its_ancestors_the_lowest() {
        let root = Path::new("/cg");
        let own = "0::/kubepods/pod1/ctr\n";
        let read = files(&[
            ("/cg/kubepods/pod1/ctr/cpu.max", "max 100000\n"),
            ("/cg/kubepods/pod1/cpu.max", "20000 100000\n"),
            ("/cg/kubepods/cpu.max", "max 100000\n"),
        ]);
        assert_eq!(limit_from(own, root, read), Some(0.2));
        let read = files(&[
            ("/cg/kubepods/pod1/ctr/cpu.max", "10000 100000\n"),
            ("/cg/kubepods/pod1/cpu.max", "20000 100000\n"),
        ]);
        assert_eq!(limit_from(own, root, read), Some(0.1));
        // A container with its own cgroup namespace sees `/`.
        let read = files(&[("/cg/cpu.max", "50000 100000")]);
        assert_eq!(limit_from("0::/\n", root, read), Some(0.5));
        let read = files(&[("/cg/cpu.max", "max 100000")]);
        assert_eq!(limit_from("0::/\n", root, read), None);
    }

    #[test]
    fn v1_quota_through_either_mount_name() {
        let root = Path::new("/cg");
        let own = "5:memory:/x\n4:cpu,cpuacct:/bench\n";
        let read = files(&[
            ("/cg/cpu/bench/cpu.cfs_quota_us", "10000\n"),
            ("/cg/cpu/bench/cpu.cfs_period_us", "100000\n"),
            ("/cg/cpu/cpu.cfs_quota_us", "-1\n"),
            ("/cg/cpu/cpu.cfs_period_us", "100000\n"),
        ]);
        assert_eq!(limit_from(own, root, read), Some(0.1));
        let read = files(&[
            ("/cg/cpu,cpuacct/cpu.cfs_quota_us", "-1\n"),
            ("/cg/cpu,cpuacct/cpu.cfs_period_us", "100000\n"),
        ]);
        assert_eq!(limit_from(own, root, read), None);
    }

    #[test]
    fn unreadable_or_odd_files_are_no_limit() {
        let root = Path::new("/cg");
        assert_eq!(limit_from("", root, files(&[])), None);
        assert_eq!(limit_from("garbage", root, files(&[])), None);
        let read = files(&[("/cg/cpu.max", "0 100000"), ("/cg/a/cpu.max", "x y")]);
        assert_eq!(limit_from("0::/a/../..\n", root, read), None);
    }
}
