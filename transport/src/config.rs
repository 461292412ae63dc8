//! Settings: every one is an `RDMASOCK_*` environment variable, read once at start-up.
//! The table in README.md lists them; keep the two in step.

use std::time::Duration;

use crate::choice::FabricSet;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Off,
    Error,
    Info,
    Debug,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// RDMASOCK_OFF=1: pass every call straight through.
    pub off: bool,
    /// RDMASOCK_TRANSPORT=auto|tcp|LIST (e.g. `kmod,shm`): the fabrics this process
    /// may use (of those it has); `tcp`: none, every connection stays on kernel TCP.
    pub fabrics: FabricSet,
    /// RDMASOCK_TRANSPORT named a fabric this build does not know (then: auto).
    pub transport_typo: bool,
    /// RDMASOCK_CROSS_USER=0: never pair with another user's process (kmod would).
    pub cross_user: bool,
    /// RDMASOCK_SPIN_US: bound on busy-waiting before blocking.
    pub spin: Duration,
    /// RDMASOCK_RING_SIZE: bytes per direction.
    pub ring_size: u64,
    /// RDMASOCK_LOG
    pub log: LogLevel,
    /// RDMASOCK_LOG=summary: no line per connection, one line at exit counting the
    /// decisions (errors are still logged).
    pub summary: bool,
    /// RDMASOCK_DIR: the registry directory, if set (else [`Config::registry_dirs`]'s
    /// defaults).
    pub dir: Option<String>,
    /// RDMASOCK_CLAIM_TIMEOUT_MS: how long a client waits for the server's shim to claim.
    pub claim_timeout: Duration,
}

pub const DEFAULT_RING: u64 = 1 << 20;
pub const DEFAULT_SPIN_US: u64 = 50;
pub const DEFAULT_CLAIM_MS: u64 = 200;

impl Config {
    pub fn from_env() -> Config {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Build from any key lookup (tests pass a map). Bad values fall back to defaults:
    /// a typo in a setting must never break the program it runs under.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Config {
        let num = |k: &str, d: u64| get(k).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(d);
        let ring = num("RDMASOCK_RING_SIZE", DEFAULT_RING);
        let (fabrics, known) = FabricSet::parse(get("RDMASOCK_TRANSPORT").as_deref().unwrap_or("auto"));
        Config {
            off: matches!(get("RDMASOCK_OFF").as_deref().map(str::trim), Some("1" | "yes" | "true" | "on")),
            fabrics,
            transport_typo: !known,
            cross_user: !matches!(get("RDMASOCK_CROSS_USER").as_deref().map(str::trim), Some("0" | "no" | "false" | "off")),
            spin: Duration::from_micros(num("RDMASOCK_SPIN_US", DEFAULT_SPIN_US).min(1_000_000)),
            ring_size: if crate::layout::ring_size_ok(ring) { ring } else { DEFAULT_RING },
            log: match get("RDMASOCK_LOG").as_deref().map(str::trim) {
                Some("off") | Some("0") => LogLevel::Off,
                Some("info") => LogLevel::Info,
                Some("debug") => LogLevel::Debug,
                _ => LogLevel::Error,
            },
            summary: get("RDMASOCK_LOG").as_deref().map(str::trim) == Some("summary"),
            dir: get("RDMASOCK_DIR").filter(|d| d.starts_with('/')),
            claim_timeout: Duration::from_millis(num("RDMASOCK_CLAIM_TIMEOUT_MS", DEFAULT_CLAIM_MS).clamp(1, 60_000)),
        }
    }
}

impl Config {
    /// The registry directories to try, in order; the first that opens is used.
    /// RDMASOCK_DIR alone if set. Otherwise a place no other user can take first
    /// (issue 21.6: anyone can create `/dev/shm/rdmasock-<uid>` before its owner does):
    /// - root: `/run/rdmasock` (only root writes `/run`); `/dev/shm/rdmasock-0` only
    ///   where `/run` is not usable (a minimal initramfs).
    /// - another user: `/dev/shm/rdmasock-<uid>`, and where that is taken (made by someone
    ///   else), `/run/user/<uid>/rdmasock`, the login manager's runtime directory only that
    ///   user writes. Both are tried in the same order by every process of the user, so
    ///   they agree on one while the machine's state stays as it is.
    pub fn registry_dirs(&self) -> Vec<String> {
        match &self.dir {
            Some(d) => vec![d.clone()],
            None => default_registry_dirs(crate::sys::getuid()),
        }
    }
}

pub fn default_registry_dirs(uid: u32) -> Vec<String> {
    if uid == 0 {
        vec!["/run/rdmasock".into(), "/dev/shm/rdmasock-0".into()]
    } else {
        vec![format!("/dev/shm/rdmasock-{uid}"), format!("/run/user/{uid}/rdmasock")]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn defaults_and_overrides() {
        let d = Config::from_lookup(|_| None);
        assert!(!d.off);
        assert_eq!(d.fabrics, FabricSet::ALL);
        assert!(d.cross_user && !d.transport_typo);
        assert_eq!(d.ring_size, DEFAULT_RING);
        let m: HashMap<&str, &str> = [("RDMASOCK_OFF", "1"), ("RDMASOCK_TRANSPORT", "tcp"), ("RDMASOCK_RING_SIZE", "65536"),
            ("RDMASOCK_LOG", "debug"), ("RDMASOCK_DIR", "/tmp/x"), ("RDMASOCK_SPIN_US", "7"), ("RDMASOCK_CROSS_USER", "0")].into();
        let c = Config::from_lookup(|k| m.get(k).map(|v| v.to_string()));
        assert!(c.off);
        assert_eq!(c.fabrics, FabricSet::NONE);
        assert!(!c.cross_user);
        assert_eq!(c.ring_size, 65536);
        assert_eq!(c.log, LogLevel::Debug);
        assert_eq!(c.dir.as_deref(), Some("/tmp/x"));
        assert_eq!(c.registry_dirs(), ["/tmp/x"]);
        assert_eq!(c.spin, Duration::from_micros(7));
    }

    #[test]
    fn bad_values_fall_back() {
        let m: HashMap<&str, &str> = [("RDMASOCK_RING_SIZE", "1000"), ("RDMASOCK_DIR", "relative"), ("RDMASOCK_TRANSPORT", "shm,verbz")].into();
        let c = Config::from_lookup(|k| m.get(k).map(|v| v.to_string()));
        assert_eq!((c.fabrics, c.transport_typo), (FabricSet::ALL, true));
        assert_eq!(c.ring_size, DEFAULT_RING);
        assert_eq!(c.dir, None);
        assert_eq!(default_registry_dirs(0), ["/run/rdmasock", "/dev/shm/rdmasock-0"]);
        assert_eq!(default_registry_dirs(1000), ["/dev/shm/rdmasock-1000", "/run/user/1000/rdmasock"]);
    }
}
