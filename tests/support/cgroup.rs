//! A CPU limit for one process, as Kubernetes sets `resources.limits.cpu`: a cgroup of its own
//! with a CFS quota (v2 `cpu.max`, or v1 `cpu.cfs_quota_us` under `/sys/fs/cgroup/cpu`). Needs
//! root; removed on drop, the process moved back to the root group first.

use std::path::{Path, PathBuf};

pub struct CpuLimit {
    dir: PathBuf,
    root: PathBuf,
}

impl CpuLimit {
    /// Moves `pid` into a new cgroup allowed `millicores` (100 for 100m) per 100 ms period.
    pub fn apply(pid: u32, millicores: u32) -> CpuLimit {
        let quota = u64::from(millicores) * 100;
        let name = format!("redis-probe-test-{}-{pid}", std::process::id());
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let root = if v2 {
            PathBuf::from("/sys/fs/cgroup")
        } else {
            PathBuf::from("/sys/fs/cgroup/cpu")
        };
        assert!(
            root.exists(),
            "no cgroup CPU controller at {} (the CPU-limit test needs cgroup v2, or v1 with cpu mounted there)",
            root.display()
        );
        let dir = root.join(name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "cannot make cgroup {} ({e}): the CPU-limit test runs as root",
                dir.display()
            )
        });
        let limit = CpuLimit { dir, root };
        if v2 {
            if !limit.dir.join("cpu.max").exists() {
                // The cpu controller is not enabled for the root's children yet.
                let _ = std::fs::write(limit.root.join("cgroup.subtree_control"), "+cpu");
            }
            limit.write("cpu.max", &format!("{quota} 100000"));
        } else {
            limit.write("cpu.cfs_period_us", "100000");
            limit.write("cpu.cfs_quota_us", &quota.to_string());
        }
        limit.write("cgroup.procs", &pid.to_string());
        limit
    }

    fn write(&self, file: &str, value: &str) {
        let path = self.dir.join(file);
        std::fs::write(&path, value)
            .unwrap_or_else(|e| panic!("cannot write {value} to {}: {e}", path.display()));
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
