//! Process-wide state: settings, the registry, the fabric, the connection table. All
//! created on first need (a program that never opens a TCP connection never touches
//! the registry), except the settings, read before main.

use rdmasock_transport::config::{Config, Forced};
use rdmasock_transport::fabric::Fabric;
use rdmasock_transport::kmod::Kmod;
use rdmasock_transport::registry::Registry;
use rdmasock_transport::shm::Shm;
use rdmasock_transport::stats::Table;
use rdmasock_transport::sys;
use rdmasock_transport::wait::SpinPolicy;
use std::sync::{Arc, OnceLock};

static CONFIG: OnceLock<Config> = OnceLock::new();
static REGISTRY: OnceLock<Option<Arc<Registry>>> = OnceLock::new();
static FABRIC: OnceLock<Option<Box<dyn Fabric>>> = OnceLock::new();
static STATS: OnceLock<Option<Table>> = OnceLock::new();
static POLICY: OnceLock<SpinPolicy> = OnceLock::new();

/// The process whose memory this is (set before main and in a forked child). A vfork
/// child runs in its parent's memory until it execs: what it does to its own fd table
/// must not be written into the parent's bookkeeping.
static OWNER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

pub fn set_owner() {
    let pid = sys::getpid();
    OWNER.store(pid, std::sync::atomic::Ordering::Relaxed);
    sys::note_pid(pid);
}

/// Are we a vfork (or clone) child borrowing our parent's memory? One getpid system
/// call, once the process has made such a child through our symbols (crate::vfork).
pub fn foreign() -> bool {
    crate::vfork::borrowed() && sys::getpid() != OWNER.load(std::sync::atomic::Ordering::Relaxed)
}

pub fn config() -> &'static Config {
    CONFIG.get_or_init(Config::from_env)
}

/// The shim does nothing but pass calls through.
pub fn off() -> bool {
    config().off
}

/// Connections may be upgraded (not off, not forced to TCP).
pub fn upgrades() -> bool {
    !config().off && config().transport != Forced::Tcp
}

/// The registry, only if it is already open (never opens it).
pub fn registry_if_any() -> Option<&'static Arc<Registry>> {
    REGISTRY.get().and_then(|r| r.as_ref())
}

pub fn registry() -> Option<&'static Arc<Registry>> {
    REGISTRY
        .get_or_init(|| match Registry::open(&config().dir) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                crate::log_at!(rdmasock_transport::config::LogLevel::Error, "registry {} unusable: {e}", config().dir);
                None
            }
        })
        .as_ref()
}

/// The fabric this process offers and claims on, chosen once (ARCHITECTURE.md §3):
/// kmod when the mailbox driver is there (or forced), else shm. Listeners are found
/// through the registry either way.
/// The fabric, if this process has chosen one already.
pub fn fabric_if_any() -> Option<&'static dyn Fabric> {
    FABRIC.get().and_then(|f| f.as_deref())
}

pub fn fabric() -> Option<&'static dyn Fabric> {
    FABRIC
        .get_or_init(|| {
            let reg = registry()?;
            let ring = config().ring_size;
            let kmod = match config().transport {
                Forced::Kmod => true,
                Forced::Auto => Kmod::available(),
                _ => false,
            };
            if kmod {
                if !Kmod::available() {
                    crate::log_at!(rdmasock_transport::config::LogLevel::Error, "RDMASOCK_TRANSPORT=kmod but /dev/rdmasock is not usable");
                    return None;
                }
                return Some(Box::new(Kmod::new(ring)) as Box<dyn Fabric>);
            }
            Some(Box::new(Shm::new(reg.clone(), ring)) as Box<dyn Fabric>)
        })
        .as_deref()
}

pub fn stats() -> Option<&'static Table> {
    STATS.get_or_init(|| registry().and_then(|r| Table::create(r).ok())).as_ref()
}

/// The stats table, only if it already exists (never creates one).
pub fn stats_if_any() -> Option<&'static Table> {
    STATS.get().and_then(|t| t.as_ref())
}

pub fn policy() -> &'static SpinPolicy {
    POLICY.get_or_init(|| SpinPolicy { budget: config().spin, cpus: sys::online_cpus() })
}
