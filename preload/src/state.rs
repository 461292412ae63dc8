//! Process-wide state: settings, the registry, the fabrics, the connection table. All
//! created on first need (a program that never opens a TCP connection never touches
//! the registry), except the settings, read before main.

use rdmasock_transport::choice::{fabric_id, FabricSet};
use rdmasock_transport::config::Config;
use rdmasock_transport::discovery::{Discovery, RegistryDiscovery, TableDiscovery};
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
static FABRICS: OnceLock<Fabrics> = OnceLock::new();
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

/// Connections may be upgraded (not off, some fabric allowed).
pub fn upgrades() -> bool {
    !config().off && !config().fabrics.is_empty()
}

/// The registry, only if it is already open (never opens it).
pub fn registry_if_any() -> Option<&'static Arc<Registry>> {
    REGISTRY.get().and_then(|r| r.as_ref())
}

pub fn registry() -> Option<&'static Arc<Registry>> {
    REGISTRY
        .get_or_init(|| {
            use rdmasock_transport::config::LogLevel;
            match Registry::open_first(&config().registry_dirs()) {
                Ok((r, passed)) => {
                    for (d, e) in passed {
                        crate::log_at!(LogLevel::Info, "registry {d} unusable ({e}); using {}", r.dir());
                    }
                    Some(Arc::new(r))
                }
                Err(passed) => {
                    for (d, e) in passed {
                        crate::log_at!(LogLevel::Error, "registry {d} unusable: {e}");
                    }
                    None
                }
            }
        })
        .as_ref()
}

/// The fabrics this process has: every one present on the machine, whatever the
/// settings allow (a fabric not allowed still refuses its offers at once, rather than
/// let a client wait out its claim deadline). Which one carries a connection is
/// chosen per connection (`rdmasock_transport::choice`).
pub struct Fabrics {
    list: Vec<Box<dyn Fabric>>,
    /// Those of them the settings allow.
    usable: FabricSet,
}

impl Fabrics {
    /// Registration: one line per fabric, in no particular order (the rule of
    /// `choice` orders them). A fabric that cannot be had here is simply absent.
    fn build() -> Fabrics {
        let ring = config().ring_size;
        let list: Vec<Box<dyn Fabric>> = [
            registry().map(|reg| Box::new(Shm::new(reg.clone(), ring)) as Box<dyn Fabric>),
            Kmod::available().then(|| Box::new(Kmod::new(ring)) as Box<dyn Fabric>),
        ]
        .into_iter()
        .flatten()
        .collect();
        let present = FabricSet(list.iter().fold(0, |m, f| m | f.id()));
        let usable = present.and(config().fabrics);
        let missing = config().fabrics.and(FabricSet::ALL).without(present.0);
        if config().fabrics != FabricSet::ALL && usable.is_empty() && !missing.is_empty() {
            crate::log_at!(
                rdmasock_transport::config::LogLevel::Error,
                "RDMASOCK_TRANSPORT={} but none of it is usable here{}",
                config().fabrics.names(),
                if missing.has(fabric_id::KMOD) { " (/dev/rdmasock is missing or of another version)" } else { "" }
            );
        }
        if config().transport_typo {
            crate::log_at!(rdmasock_transport::config::LogLevel::Error, "RDMASOCK_TRANSPORT names a fabric this build does not know: using auto");
        }
        Fabrics { list, usable }
    }

    /// The fabric with this id, if present (allowed or not).
    pub fn get(&self, id: u8) -> Option<&dyn Fabric> {
        self.list.iter().find(|f| f.id() == id).map(|f| &**f)
    }

    /// The fabrics present and allowed.
    pub fn usable(&self) -> FabricSet {
        self.usable
    }

    /// Every fabric present.
    pub fn all(&self) -> impl Iterator<Item = &dyn Fabric> {
        self.list.iter().map(|f| &**f)
    }
}

/// The ways listeners are found (rdmasock_transport::discovery), in the order a
/// client asks them: the registry (our own user's listeners, with their adverts), then
/// each fabric's own listener table. Each with the fabric it is for (None: any).
pub fn discoveries() -> &'static [(Option<u8>, Box<dyn Discovery>)] {
    static D: OnceLock<Vec<(Option<u8>, Box<dyn Discovery>)>> = OnceLock::new();
    D.get_or_init(|| {
        let mut v: Vec<(Option<u8>, Box<dyn Discovery>)> = Vec::new();
        if let Some(reg) = registry() {
            v.push((None, Box::new(RegistryDiscovery { reg: reg.clone() })));
        }
        for f in fabrics().all().filter(|f| f.has_listener_table()) {
            v.push((Some(f.id()), Box::new(TableDiscovery { fabric: f })));
        }
        v
    })
}

/// The discoveries that apply to a process whose usable fabrics are `mine`: the
/// registry always, a fabric's table only when that fabric is usable.
pub fn discoveries_for(mine: FabricSet) -> impl Iterator<Item = &'static dyn Discovery> {
    discoveries().iter().filter(move |(only, _)| only.is_none_or(|id| mine.has(id))).map(|(_, d)| &**d)
}

/// The fabrics, if this process has looked for them already.
pub fn fabrics_if_any() -> Option<&'static Fabrics> {
    FABRICS.get()
}

pub fn fabrics() -> &'static Fabrics {
    FABRICS.get_or_init(Fabrics::build)
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
