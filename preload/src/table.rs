//! The fd table: which application fds the shim manages, and its own internal fds.
//!
//! Two lock-free bitmaps answer the hot question "is this fd ours at all?" without a
//! lock, so calls on every other fd (files, pipes, sockets we do not manage) go straight
//! to libc. Entries themselves live in a vector under a reader-writer lock; writers
//! (connect, accept, listen, close, dup) take it exclusively, readers clone an Arc.
//!
//! * `DATA`: data calls (read, write, poll, ...) on this fd need the shim.
//! * `TRACKED`: close/dup on this fd need the shim (the fd has an entry).
//! * `INTERNAL`: the shim's own fd (a doorbell, a segment, a lock); the application
//!   cannot close it by accident.
//! * `PLAIN`: a TCP socket this process made (socket(2), or accept on a plain
//!   listener) whose buffer sizes and timeouts nobody set: they are Linux's defaults,
//!   known without a getsockopt. Cleared by any hook that sets one of them, closes or
//!   duplicates the fd, and for every fd at fork (another process could then set them).
//!
//! Lock order: TABLE before any connection lock; never the reverse.

use crate::sock::Entry;
use parking_lot::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

pub const MAX_FDS: usize = 1 << 20;
const WORDS: usize = MAX_FDS / 64;

pub struct Bitmap([AtomicU64; WORDS]);

impl Bitmap {
    const fn new() -> Bitmap {
        Bitmap([const { AtomicU64::new(0) }; WORDS])
    }
    #[inline]
    pub fn get(&self, fd: i32) -> bool {
        let fd = fd as usize;
        fd < MAX_FDS && self.0[fd / 64].load(Ordering::Relaxed) & (1 << (fd % 64)) != 0
    }
    pub fn set(&self, fd: i32, on: bool) {
        let fd = fd as usize;
        if fd >= MAX_FDS {
            return;
        }
        if on {
            self.0[fd / 64].fetch_or(1 << (fd % 64), Ordering::Relaxed);
        } else {
            self.0[fd / 64].fetch_and(!(1 << (fd % 64)), Ordering::Relaxed);
        }
    }
    /// Clear every bit.
    pub fn clear_all(&self) {
        for w in &self.0 {
            if w.load(Ordering::Relaxed) != 0 {
                w.store(0, Ordering::Relaxed);
            }
        }
    }
    /// Set bits in `first..=last` (clamped), ascending.
    pub fn set_in(&self, first: u32, last: u32) -> Vec<i32> {
        let last = (last as usize).min(MAX_FDS - 1);
        let mut out = Vec::new();
        let mut fd = first as usize;
        while fd <= last {
            let w = self.0[fd / 64].load(Ordering::Relaxed);
            if w == 0 {
                fd = (fd / 64 + 1) * 64;
                continue;
            }
            if w & (1 << (fd % 64)) != 0 {
                out.push(fd as i32);
            }
            fd += 1;
        }
        out
    }
}

pub static DATA: Bitmap = Bitmap::new();
pub static TRACKED: Bitmap = Bitmap::new();
pub static INTERNAL: Bitmap = Bitmap::new();
pub static PLAIN: Bitmap = Bitmap::new();

/// Forks begun (fork_prepare, under the table's write lock). A hook that makes a plain
/// socket reads it before the system call and sets the bit, under the read lock, only
/// if no fork began since: a socket made before a fork is shared with the child, and
/// the fork's clearing of every bit could otherwise come before the hook's setting.
static FORKS: AtomicU64 = AtomicU64::new(0);

pub fn forks() -> u64 {
    FORKS.load(Ordering::Acquire)
}

/// At fork_prepare, holding the write lock: no socket is plain any more.
pub fn fork_begins() {
    FORKS.fetch_add(1, Ordering::AcqRel);
    PLAIN.clear_all();
}

/// Mark `fd` plain (or not) for a socket made after [`forks`] read `since`.
pub fn set_plain(fd: i32, plain: bool, since: u64) {
    if !plain {
        PLAIN.set(fd, false);
        return;
    }
    let _r = TABLE.read();
    PLAIN.set(fd, forks() == since);
}

pub static TABLE: RwLock<Vec<Option<Entry>>> = RwLock::new(Vec::new());

pub fn get(fd: i32) -> Option<Entry> {
    if fd < 0 {
        return None;
    }
    TABLE.read().get(fd as usize).and_then(|e| e.clone())
}

/// Install `e` at `fd`, returning what was there.
pub fn insert(fd: i32, e: Entry) -> Option<Entry> {
    if fd < 0 || fd as usize >= MAX_FDS {
        return None;
    }
    let mut t = TABLE.write();
    if t.len() <= fd as usize {
        t.resize(fd as usize + 1, None);
    }
    let data = e.wants_data();
    DATA.set(fd, data);
    TRACKED.set(fd, true);
    if data {
        // A socket some epoll set may hold in its kernel list is now ours.
        crate::epoll::GEN.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
    t[fd as usize].replace(e)
}

pub fn remove(fd: i32) -> Option<Entry> {
    if fd < 0 || !TRACKED.get(fd) {
        return None;
    }
    let mut t = TABLE.write();
    DATA.set(fd, false);
    TRACKED.set(fd, false);
    t.get_mut(fd as usize).and_then(|e| e.take())
}

/// Every entry (for fork handling).
pub fn all() -> Vec<(i32, Entry)> {
    TABLE.read().iter().enumerate().filter_map(|(i, e)| e.clone().map(|e| (i as i32, e))).collect()
}
