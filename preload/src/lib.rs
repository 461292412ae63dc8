//! librdmasock.so: loaded with LD_PRELOAD, it intercepts a program's socket calls and
//! carries TCP connections between two shimmed processes of one host over the shm
//! fabric, leaving every other connection on kernel TCP, untouched.
//!
//! Layers: [`hooks`] (the exported symbols, declared once) -> [`imp`] and [`poll`]
//! (what each call does) -> [`table`] (which fds are ours) and [`sock`] (what they are)
//! -> the transport crate (fabrics, rendezvous, rings). See ARCHITECTURE.md.
#![deny(unsafe_code)]

mod epoll;
pub mod hooks;
mod imp;
pub mod log;
mod poll;
mod sock;
mod state;
mod stdio;
mod table;
mod vfork;

use rdmasock_transport::sys;

/// Runs before main (and before most other constructors): read the settings, resolve
/// libc's functions, and set up fork handling, so that no hook ever races its own
/// initialisation.
#[allow(unsafe_code)]
extern "C" fn init() {
    hooks::real();
    vfork::resolve();
    state::config();
    state::set_owner();
    sys::set_fd_observer(|fd, open| table::INTERNAL.set(fd, open));
    // SAFETY: registering plain extern "C" handlers.
    unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) };
}

#[allow(unsafe_code)]
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

/// Runs at exit: give up this process's registry records (a listener's record stays if
/// a forked child still holds it).
extern "C" fn fini() {
    if state::config().summary {
        if let Some(line) = sock::decisions_summary() {
            log::emit(format_args!("summary {line}"));
        }
    }
    for (_, e) in table::all() {
        if let sock::Entry::Listener(l) = e {
            l.release();
        }
    }
    if let Some(t) = state::stats_if_any() {
        t.remove();
    }
}

#[allow(unsafe_code)]
#[used]
#[link_section = ".fini_array"]
static FINI: extern "C" fn() = fini;

/// Hold the fd table across fork, so that the child never inherits it half-changed;
/// before that, every fabric connection learns that its side may be shared by two
/// processes from now on, and no socket is plain any more.
extern "C" fn fork_prepare() {
    for (_, e) in table::all() {
        if let sock::Entry::Conn(c) = e {
            c.before_fork();
            if let Some(Some(s)) = c.decided.get() {
                s.before_fork();
            }
        }
    }
    std::mem::forget(table::TABLE.write());
    // Both processes may now set options on every socket, each unseen by the other.
    table::fork_begins();
}

#[allow(unsafe_code)]
extern "C" fn fork_parent() {
    // SAFETY: fork_prepare left the write lock held by this thread.
    unsafe { table::TABLE.force_unlock_write() };
}

#[allow(unsafe_code)]
extern "C" fn fork_child() {
    // SAFETY: as fork_parent; the child has only this thread.
    unsafe { table::TABLE.force_unlock_write() };
    state::set_owner();
    sock::forget_decisions();
    rdmasock_transport::wait::forget_thread_event();
    rdmasock_transport::wait::locks_after_fork_child();
    if let (Some(t), Some(reg)) = (state::stats_if_any(), state::registry()) {
        // The connections this child holds (each once: dups share one Conn).
        let mut keep: Vec<_> = table::all()
            .into_iter()
            .filter_map(|(_, e)| match e {
                sock::Entry::Conn(c) => c.slot_fill(),
                _ => None,
            })
            .collect();
        keep.sort_by_key(|(id, _)| id.0);
        keep.dedup_by_key(|(id, _)| id.0);
        t.fork_child(reg, &keep);
    }
    if let Some(fs) = state::fabrics_if_any() {
        for f in fs.all() {
            f.after_fork_child();
        }
    }
    for (_, e) in table::all() {
        if let sock::Entry::Conn(c) = e {
            if let Some(Some(s)) = c.decided.get() {
                s.after_fork_child();
            }
        }
    }
}
