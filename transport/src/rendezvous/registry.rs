//! The per-user registry: a directory on tmpfs (0700, owned by the user) holding small
//! records, each alive exactly as long as its owner holds a lock on it.
//!
//! * `l-<netns>-<port>-<pid>-<nonce>`: a listening shim (a [`ListenerRecord`]).
//! * `offers/o-<inode>`: a connecting shim's offer, named by its socket's inode (an
//!   [`OfferRecord`]); the accepting shim learns that inode from the kernel (sock_diag).
//!   Offers live for one connect and are not locked (see [`Registry::post_offer`]).
//! * `p-<pid>-<nonce>`: a process's connection table, for `rdmasock stat`.
//!
//! Liveness of the others: the owner holds `flock(LOCK_SH)` on the record's open file description for
//! as long as the record is meant to exist. The lock is shared by forked children (same
//! description) and disappears with the last holder, whatever way it dies; anyone who can
//! take `LOCK_EX` on a record finds it dead and removes it ([`Registry::sweep`]). Records
//! are written under a temporary name, locked, then renamed into place, so a record is
//! never visible unlocked.

use crate::layout::{ListenerRecord, ListenerRepr, OfferRecord, OfferRepr, LISTENER_LEN, OFFER_LEN};
use crate::sys;
use std::io;
use std::os::fd::AsRawFd;
use crate::mailbox::Mailbox;
use std::sync::{Arc, Weak};
use crate::sys::Fd;

pub struct Registry {
    dir: String,
    netns: u64,
    /// The live listeners of our namespace (record name and content) as of a stamp of
    /// the directory ([`Registry::stamp`]): every connect asks, and a scan of the
    /// directory costs far more than reading the stamp. A new record changes the stamp,
    /// so a cached answer is never short of a listener; a cached listener may have died
    /// since (nobody moves the stamp for a death): a client whose claim is slow to come
    /// asks [`Registry::listener_alive`].
    listeners_seen: parking_lot::Mutex<Option<((i64, i64), Vec<Arc<Seen>>)>>,
    /// The directory's change counter (None where it cannot be opened: the directory's
    /// modification time stands in).
    gen: Option<Gen>,
    /// The mailboxes of our own listeners (and of those a fork inherited): where
    /// offers made to us are looked for first.
    own_boxes: parking_lot::Mutex<Vec<Weak<Mailbox>>>,
    /// Listeners' mailboxes we have posted to, by (pid, inode): mapped once, kept
    /// (at most `PEER_BOXES`; a mapping keeps its inode from being reused, so a key
    /// never names another mailbox).
    peer_boxes: parking_lot::Mutex<Vec<((u32, u64), Arc<Mailbox>)>>,
}

const PEER_BOXES: usize = 8;

/// The registry's change counter: the file `gen`, whose 8 bytes are rewritten with a
/// new random value after every change to the set of records (one published, released,
/// removed or reaped). A reader compares it with the value its cache was made at: one
/// `pread`, where a stat of the directory is a path walk (0.5 against 1.2 µs here), and
/// exact, where the directory's time is not: it moves in clock ticks of several ms, so
/// two changes within one tick looked like one, and a listener registered in the same
/// tick as the change a client had cached could stay unseen. A same-uid process that
/// scribbles on it causes rescans, or a stale cache: a new listener missed, so its
/// connections stay on TCP.
#[derive(Clone)]
struct Gen(Arc<Fd>);

/// The change counter's name in the registry directory.
pub const GEN: &str = "gen";

impl Gen {
    fn open(dir: &str) -> Option<Gen> {
        let fd = sys::open(&format!("{dir}/{GEN}"), libc::O_RDWR | libc::O_CREAT, 0o600).ok()?;
        Some(Gen(Arc::new(crate::wait::hide_fd(fd))))
    }

    fn read(&self) -> u64 {
        let mut b = [0u8; 8];
        // A file not written yet (or cut short by someone) reads as 0.
        match sys::pread_exact(&self.0, &mut b, 0) {
            Ok(()) => u64::from_ne_bytes(b),
            Err(_) => 0,
        }
    }

    fn bump(&self) {
        let _ = sys::pwrite_all(&self.0, &(sys::random_u64() | 1).to_ne_bytes(), 0);
    }
}

/// Where an offer was posted, to remove it once decided.
pub enum Posted {
    File(String),
    Slot(Arc<Mailbox>, usize, u64),
}

impl Posted {
    pub fn remove(self) {
        match self {
            Posted::File(path) => {
                let _ = sys::unlink(&path);
            }
            Posted::Slot(mb, slot, inode) => mb.remove(slot, inode),
        }
    }
}

/// A listener record as the cache knows it, with the record kept open (hidden, after
/// its first liveness check) so that checking it again is one `flock`.
struct Seen {
    name: String,
    repr: ListenerRepr,
    fd: parking_lot::Mutex<Option<Fd>>,
}

/// A record this process owns (holds locked). Give it up with [`Registry::release`]
/// (removed if no other process still holds it) or [`Held::remove`] (removed now).
pub struct Held {
    path: String,
    fd: Fd,
    /// A listener's mailbox (kept for as long as the listener is).
    mailbox: Option<Arc<Mailbox>>,
    gen: Option<Gen>,
}

impl Held {
    pub fn path(&self) -> &str {
        &self.path
    }
    pub fn fd(&self) -> &Fd {
        &self.fd
    }
    /// Remove the record now (the file is unlinked; the lock goes with the fd).
    pub fn remove(self) {
        let _ = sys::unlink(&self.path);
        if let Some(g) = &self.gen {
            g.bump();
        }
    }
    /// The lock without the duty to remove the name (tests use it to play a crash).
    pub fn into_fd(self) -> Fd {
        self.fd
    }
}

impl Registry {
    /// Open (creating if needed) the registry directory, refusing one that is not a
    /// private directory of ours: another user could otherwise plant records in it.
    pub fn open(dir: &str) -> io::Result<Registry> {
        match sys::mkdir(dir, 0o700) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        let st = sys::lstat(dir)?;
        let private = st.st_mode & libc::S_IFMT == libc::S_IFDIR && st.st_mode & 0o077 == 0;
        if !private || st.st_uid != sys::getuid() || !ancestors_safe(dir) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        // Offers live in their own directory: they come and go with every connection,
        // and the top directory's modification time is what keeps the listener cache.
        match sys::mkdir(&format!("{dir}/{OFFERS}"), 0o700) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        Ok(Registry {
            dir: dir.to_string(),
            netns: sys::netns_id(),
            listeners_seen: parking_lot::Mutex::new(None),
            gen: Gen::open(dir),
            own_boxes: parking_lot::Mutex::new(Vec::new()),
            peer_boxes: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// Open the first of `dirs` that is usable ([`Registry::open`]). Also returns, or
    /// on failure only returns, those passed over and why: a default location another
    /// user took first is reported (log, `rdmasock stat`), not silently skipped.
    pub fn open_first(dirs: &[String]) -> Result<(Registry, Vec<(String, io::Error)>), Vec<(String, io::Error)>> {
        let mut passed = Vec::new();
        for d in dirs {
            match Registry::open(d) {
                Ok(r) => return Ok((r, passed)),
                Err(e) => passed.push((d.clone(), e)),
            }
        }
        Err(passed)
    }

    pub fn dir(&self) -> &str {
        &self.dir
    }

    /// Write `bytes` as record `name`, locked shared, atomically visible.
    /// Write `bytes` as record `name`, locked shared, atomically visible (written under
    /// a temporary name, locked, then renamed into place).
    fn publish(&self, name: &str, bytes: &[u8]) -> io::Result<Held> {
        let dir = &self.dir;
        let tmp = format!("{}/.t-{}-{:x}", dir, sys::getpid(), sys::random_u64());
        // Kept open for the record's life: out of the application's fd range.
        let fd = crate::wait::hide_fd(sys::open(&tmp, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o600)?);
        let done = (|| {
            sys::flock(&fd, libc::LOCK_SH)?;
            sys::pwrite_all(&fd, bytes, 0)?;
            sys::rename(&tmp, &format!("{}/{}", dir, name))
        })();
        if let Err(e) = done {
            let _ = sys::unlink(&tmp);
            return Err(e);
        }
        if let Some(g) = &self.gen {
            g.bump();
        }
        Ok(Held { path: format!("{}/{}", dir, name), fd, mailbox: None, gen: self.gen.clone() })
    }

    /// Register a listener, with a new mailbox for the offers made to it (without one
    /// if it cannot be made: clients then post offer files).
    pub fn register_listener(&self, l: &ListenerRepr) -> io::Result<Held> {
        let name = format!("l-{}-{}-{}-{:x}", self.netns, l.port, l.pid, sys::random_u64());
        let mailbox = Mailbox::create().ok().map(Arc::new);
        let mut l = *l;
        (l.mbox_fd, l.mbox_ino) = match &mailbox {
            Some(mb) => (mb.fd().unwrap_or(-1), mb.ino()),
            None => (-1, 0),
        };
        let mut held = self.publish(&name, &l.emit())?;
        if let Some(mb) = &mailbox {
            let mut own = self.own_boxes.lock();
            own.retain(|w| w.strong_count() > 0);
            own.push(Arc::downgrade(mb));
        }
        held.mailbox = mailbox;
        Ok(held)
    }

    /// The mailbox of a listener we connect to, mapped on first use.
    fn peer_box(&self, l: &ListenerRepr) -> Option<Arc<Mailbox>> {
        if l.mbox_fd < 0 {
            return None;
        }
        let key = (l.pid, l.mbox_ino);
        let mut boxes = self.peer_boxes.lock();
        if let Some((_, mb)) = boxes.iter().find(|(k, _)| *k == key) {
            return Some(mb.clone());
        }
        let mb = Arc::new(Mailbox::open(l.pid, l.mbox_fd, l.mbox_ino).ok()?);
        if boxes.len() >= PEER_BOXES {
            boxes.remove(0);
        }
        boxes.push((key, mb.clone()));
        Some(mb)
    }

    /// Live listeners registered for `port` in our network namespace. Dead ones found on
    /// the way are removed.
    pub fn listeners(&self, port: u16) -> Vec<ListenerRepr> {
        let Some(before) = self.stamp() else { return Vec::new() };
        if let Some((seen, list)) = self.listeners_seen.lock().as_ref() {
            if *seen == before {
                // Not checked alive here: a client asks once it has waited a little for
                // the claim (`listener_alive`), which a live listener makes within
                // microseconds.
                return list.iter().filter(|l| l.repr.port == port).map(|l| l.repr).collect();
            }
        }
        let all: Vec<Arc<Seen>> = self
            .scan_listeners()
            .into_iter()
            .map(|(name, repr)| Arc::new(Seen { name, repr, fd: parking_lot::Mutex::new(None) }))
            .collect();
        let hits = all.iter().filter(|l| l.repr.port == port).map(|l| l.repr).collect();
        // The cache is as of the stamp read before the scan: a change during the scan
        // (our own reaping included) makes the next call scan again. Without the counter,
        // the scan's reaping changes the time: stamp after.
        let at = if self.gen.is_some() { Some(before) } else { self.stamp() };
        if let Some(at) = at {
            *self.listeners_seen.lock() = Some((at, all));
        }
        hits
    }

    /// Is this listener (as [`listeners`](Self::listeners) returned it) still held by
    /// its owner? One `flock` on the record kept open; a dead record is removed.
    pub fn listener_alive(&self, l: &ListenerRepr) -> bool {
        let seen = self.listeners_seen.lock().as_ref().and_then(|(_, list)| list.iter().find(|s| s.repr == *l).cloned());
        match seen {
            Some(s) => self.seen_alive(&s),
            // No longer cached (the set changed since): look again.
            None => self.listeners(l.port).contains(l),
        }
    }

    /// The directory's change counter, or (without one) its modification time.
    fn stamp(&self) -> Option<(i64, i64)> {
        match &self.gen {
            Some(g) => Some((g.read() as i64, -1)),
            None => sys::lstat(&self.dir).ok().map(|st| (st.st_mtime, st.st_mtime_nsec)),
        }
    }

    /// Is the cached listener record still held by its owner? Removes it if not (the
    /// change counter moves, so the next lookup scans).
    fn seen_alive(&self, l: &Seen) -> bool {
        // The path is made only when needed (to open, or to reap): every connect asks.
        let path = || format!("{}/{}", self.dir, l.name);
        let mut fd = l.fd.lock();
        if fd.is_none() {
            match open_record(&path()) {
                Ok(f) => *fd = Some(crate::wait::hide_fd(f)),
                Err(_) => return false,
            }
        }
        let dead = fd.as_ref().is_some_and(|f| self.lock_free(f) && self.reap(&path(), f));
        if dead {
            *fd = None;
        }
        !dead
    }

    fn scan_listeners(&self) -> Vec<(String, ListenerRepr)> {
        let prefix = format!("l-{}-", self.netns);
        let mut out = Vec::new();
        for name in self.names() {
            if !name.starts_with(&prefix) {
                continue;
            }
            let path = format!("{}/{}", self.dir, name);
            let Ok(fd) = open_record(&path) else { continue };
            if self.reap_if_dead(&path, &fd) {
                continue;
            }
            let mut b = [0u8; LISTENER_LEN];
            if sys::pread_exact(&fd, &mut b, 0).is_ok() {
                if let Ok(r) = ListenerRecord::new_checked(&b[..]) {
                    out.push((name, r.parse()));
                }
            }
        }
        out
    }

    fn offer_dir(&self) -> String {
        format!("{}/{OFFERS}", self.dir)
    }

    /// Post an offer record and return its path. Offers are not locked: one lives for
    /// a single connect, from before the kernel connect (so it is complete before the
    /// server can accept and look for it) to the client's decision, when the client
    /// removes it; a dead client's record is removed by [`Registry::sweep`] (its pid is
    /// in it). Written in place, not renamed: nobody reads it before the connect.
    ///
    /// With `to`, the listener the connection goes to, the offer goes into its mailbox
    /// instead, if it has one with a free slot.
    pub fn post_offer(&self, inode: u64, o: &OfferRepr, to: Option<&ListenerRepr>) -> io::Result<Posted> {
        if let Some(mb) = to.and_then(|l| self.peer_box(l)) {
            if let Some(slot) = mb.post(inode, o.pid, &o.emit()) {
                return Ok(Posted::Slot(mb, slot, inode));
            }
        }
        let path = format!("{}/{}", self.offer_dir(), offer_name(inode));
        let create = || sys::open(&path, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o600);
        let fd = match create() {
            // A live socket's inode is unique: a record under its name is a dead one's.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let _ = sys::unlink(&path);
                create()?
            }
            r => r?,
        };
        if let Err(e) = sys::pwrite_all(&fd, &o.emit(), 0) {
            let _ = sys::unlink(&path);
            return Err(e);
        }
        Ok(Posted::File(path))
    }

    /// Does the listener say that a process accepting on it runs as another user (its
    /// mailbox's `MBOX_OTHER_USER`)? Maps the mailbox if not yet mapped, as posting
    /// would.
    pub fn listener_accepts_as_other_user(&self, l: &ListenerRepr) -> bool {
        self.peer_box(l).is_some_and(|mb| mb.accepts_as_other_user())
    }

    /// This process accepts on one of its (inherited) listeners a client it cannot
    /// serve over shm (another user's, which found the listener in the registry it
    /// shares with the listener's registrant): mark the mailbox holding the offer, so
    /// that later clients choose as for another user's listener. Returns whether one
    /// was marked.
    pub fn mark_other_user_for(&self, inode: u64) -> bool {
        let own: Vec<Arc<Mailbox>> = self.own_boxes.lock().iter().filter_map(Weak::upgrade).collect();
        match own.iter().find(|mb| mb.find(inode).is_some()) {
            Some(mb) => {
                mb.mark_other_user();
                true
            }
            None => false,
        }
    }

    /// The offer made by the client socket with this inode, if there is one (the client
    /// removes it once it has decided).
    pub fn find_offer(&self, inode: u64) -> Option<OfferRepr> {
        let own: Vec<Arc<Mailbox>> = self.own_boxes.lock().iter().filter_map(Weak::upgrade).collect();
        if let Some(o) = own.iter().find_map(|mb| mb.find(inode)) {
            return Some(o);
        }
        read_offer(&format!("{}/{}", self.offer_dir(), offer_name(inode)))
    }

    /// The offer in the mailboxes of the listeners registered for `port`: for a process
    /// that accepts on a listening socket it did not register (one passed to it with
    /// SCM_RIGHTS), whose clients posted to the registering process's mailbox. Asked
    /// after [`find_offer`](Self::find_offer) found nothing.
    pub fn find_offer_in_listeners(&self, inode: u64, port: u16) -> Option<OfferRepr> {
        self.listeners(port).iter().filter_map(|l| self.peer_box(l)).find_map(|mb| mb.find(inode))
    }

    /// Publish the record of this process's connection table: `bytes` name the sealed
    /// memfd that holds it (stats.rs). The record is the table's liveness (its lock).
    pub fn publish_table(&self, bytes: &[u8]) -> io::Result<Held> {
        let name = format!("p-{}-{:x}", sys::getpid(), sys::random_u64());
        self.publish(&name, bytes)
    }

    /// Connection tables of live processes, as open files (for `rdmasock stat`).
    pub fn tables(&self) -> Vec<(String, Fd)> {
        let mut out = Vec::new();
        for name in self.names() {
            if !name.starts_with("p-") {
                continue;
            }
            let path = format!("{}/{}", self.dir, name);
            if let Ok(fd) = open_record(&path) {
                if !self.reap_if_dead(&path, &fd) {
                    out.push((name, fd));
                }
            }
        }
        out
    }

    /// Give up our hold on a record; it is removed unless another process (a forked
    /// child sharing a listener, say) still holds it.
    pub fn release(&self, held: Held) {
        let Held { path, fd, .. } = held;
        drop(fd);
        if let Ok(fd) = open_record(&path) {
            self.reap_if_dead(&path, &fd);
        }
    }

    /// Sweep (see [`sweep`](Self::sweep)) if one is due, as connections are decided and
    /// closed: soon after a peer's end was seen (its doorbell hung up: it may have been
    /// killed, leaving its records), else every [`SWEEP_EVERY_NS`], but never in a
    /// process's first [`SWEEP_EVERY_NS`] (a short-lived client pays nothing).
    pub fn sweep_if_due(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = sys::coarse_now_ns();
        let last = LAST_SWEEP_NS.load(Relaxed);
        if last == 0 {
            let _ = LAST_SWEEP_NS.compare_exchange(0, now, Relaxed, Relaxed);
            if !PEER_END_SEEN.load(Relaxed) {
                return;
            }
        }
        let since = now.saturating_sub(last);
        let due = since >= SWEEP_EVERY_NS || (PEER_END_SEEN.load(Relaxed) && since >= SWEEP_AFTER_END_NS);
        if due && LAST_SWEEP_NS.compare_exchange(last, now, Relaxed, Relaxed).is_ok() {
            PEER_END_SEEN.store(false, Relaxed);
            self.sweep();
        }
    }

    /// Remove every record whose owner is gone (and temporaries of dead writers), in the
    /// registry and its offer directory.
    pub fn sweep(&self) -> usize {
        LAST_SWEEP_NS.store(sys::coarse_now_ns(), std::sync::atomic::Ordering::Relaxed);
        let mut n = 0;
        for name in self.names() {
            if name == OFFERS || name == GEN {
                continue;
            }
            // A temporary is briefly unlocked between its creation and its lock: only
            // its writer's death makes it garbage.
            if let Some(pid) = name.strip_prefix(".t-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<i32>().ok()) {
                if sys::process_exists(pid) {
                    continue;
                }
            }
            let path = format!("{}/{}", self.dir, name);
            if let Ok(fd) = open_record(&path) {
                if self.reap_if_dead(&path, &fd) {
                    n += 1;
                }
            }
        }
        // Offers carry their client's pid. One that does not parse is being written
        // (between its creation and its one write) unless it is old.
        let dir = self.offer_dir();
        for name in names_in(&dir) {
            let path = format!("{dir}/{name}");
            let dead = match read_offer(&path) {
                Some(o) => !sys::process_exists(o.pid as i32),
                None => sys::lstat(&path).is_ok_and(|st| st.st_mtime < sys::wall_secs() - 10),
            };
            if dead && sys::unlink(&path).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// If nobody holds the record's lock, its owner is dead: remove it. Checks that the
    /// name still refers to the file we locked before unlinking it.
    fn reap_if_dead(&self, path: &str, fd: &Fd) -> bool {
        self.lock_free(fd) && self.reap(path, fd)
    }

    /// Can we take the record's lock exclusively (its owner is gone)? Once taken, we
    /// hold it until `fd` closes.
    fn lock_free(&self, fd: &Fd) -> bool {
        matches!(sys::flock(fd, libc::LOCK_EX | libc::LOCK_NB), Ok(true))
    }

    /// Remove the dead record we hold locked, if `path` still names it. Always true.
    fn reap(&self, path: &str, fd: &Fd) -> bool {
        let same = match (sys::fstat(fd.as_raw_fd()), sys::lstat(path)) {
            (Ok(a), Ok(b)) => a.st_ino == b.st_ino && a.st_dev == b.st_dev,
            _ => false,
        };
        if same && sys::unlink(path).is_ok() {
            if let Some(g) = &self.gen {
                g.bump();
            }
        }
        true
    }

    fn names(&self) -> Vec<String> {
        names_in(&self.dir)
    }
}

/// When this process last swept (0: never asked yet).
static LAST_SWEEP_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// A peer's end was seen since the last sweep.
static PEER_END_SEEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
const SWEEP_EVERY_NS: u64 = 2_000_000_000;
const SWEEP_AFTER_END_NS: u64 = 100_000_000;

/// A fabric saw a peer's end (its doorbell hung up): its records may be left behind.
pub fn note_peer_end() {
    PEER_END_SEEN.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Has a peer's end been seen since the last sweep? (a cheap look for hot paths)
pub fn peer_end_seen() -> bool {
    PEER_END_SEEN.load(std::sync::atomic::Ordering::Relaxed)
}

fn names_in(dir: &str) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Can nobody but us and root replace the registry directory? Every directory above it
/// (of its canonical path: symlinks resolved) must be owned by root or by us, and not
/// writable by group or others unless sticky (as /tmp and /dev/shm: there only an
/// entry's owner can rename it). Otherwise whoever owns a parent could swap the
/// registry under us and carry our connections over rings of theirs (issue 21.5).
fn ancestors_safe(dir: &str) -> bool {
    let Ok(canon) = std::fs::canonicalize(dir) else { return false };
    let me = sys::getuid();
    canon.ancestors().skip(1).all(|a| {
        let Some(a) = a.to_str() else { return false };
        match sys::lstat(a) {
            Ok(st) => {
                st.st_mode & libc::S_IFMT == libc::S_IFDIR
                    && (st.st_uid == 0 || st.st_uid == me)
                    && (st.st_mode & 0o022 == 0 || st.st_mode & libc::S_ISVTX != 0)
            }
            Err(_) => false,
        }
    })
}

/// Open a record to read it: never blocks (a FIFO or device put under a record's name by
/// another process would make a plain open wait for a writer: issue 21.4), never follows
/// a symlink, and refuses anything but a regular file.
fn open_record(path: &str) -> io::Result<Fd> {
    let fd = sys::open(path, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY, 0)?;
    match sys::fstat(fd.as_raw_fd()) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => Ok(fd),
        Ok(_) => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        Err(e) => Err(e),
    }
}

fn read_offer(path: &str) -> Option<OfferRepr> {
    let fd = open_record(path).ok()?;
    let mut b = [0u8; OFFER_LEN];
    sys::pread_exact(&fd, &mut b, 0).ok()?;
    OfferRecord::new_checked(&b[..]).ok()?.parse().ok()
}

/// The offer directory's name inside the registry.
pub const OFFERS: &str = "offers";

fn offer_name(inode: u64) -> String {
    format!("o-{inode}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_registry() -> (Registry, String) {
        let dir = format!("/tmp/rdmasock-regtest-{}-{:x}", sys::getpid(), sys::random_u64());
        (Registry::open(&dir).unwrap(), dir)
    }

    #[test]
    fn live_records_are_found_dead_ones_swept() {
        let (reg, dir) = tmp_registry();
        let l = ListenerRepr { addr: [0; 16], port: 5555, flags: 0, pid: sys::getpid(), mbox_fd: -1, mbox_ino: 0, fabrics: crate::choice::fabric_id::SHM };
        let held = reg.register_listener(&l).unwrap();
        let found = reg.listeners(5555);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].addr, found[0].port, found[0].flags, found[0].pid), (l.addr, l.port, l.flags, l.pid));
        assert!(found[0].mbox_fd >= 0 && found[0].mbox_ino != 0, "the record names its mailbox");
        assert!(reg.listeners(5556).is_empty());
        assert_eq!(reg.sweep(), 0, "a held record is alive");
        // Dropping the fd without removing the file simulates a crashed owner.
        let path = held.path().to_string();
        drop(held.into_fd());
        assert!(std::path::Path::new(&path).exists());
        // The cached answer is not checked at every lookup; a client asks when the claim
        // is slow to come.
        assert_eq!(reg.listeners(5555), found);
        assert!(!reg.listener_alive(&found[0]));
        assert!(!std::path::Path::new(&path).exists(), "dead record reaped when found dead");
        assert!(reg.listeners(5555).is_empty());
        remove_registry(&dir);
    }

    #[test]
    fn offers_go_to_the_listeners_mailbox_or_to_a_file() {
        let (reg, dir) = tmp_registry();
        let l = ListenerRepr { addr: [0; 16], port: 5557, flags: 0, pid: sys::getpid(), mbox_fd: -1, mbox_ino: 0, fabrics: crate::choice::fabric_id::SHM };
        let held = reg.register_listener(&l).unwrap();
        let to = reg.listeners(5557)[0];
        // Into the mailbox: no file.
        let p = reg.post_offer(4001, &OfferRepr::sample(11, sys::getpid()), Some(&to)).unwrap();
        assert!(matches!(p, Posted::Slot(..)));
        assert!(names_in(&reg.offer_dir()).is_empty());
        assert_eq!(reg.find_offer(4001).unwrap().nonce, 11);
        p.remove();
        assert_eq!(reg.find_offer(4001), None);
        // No listener named: a file, found the same way, gone once removed.
        let p = reg.post_offer(4002, &OfferRepr::sample(12, sys::getpid()), None).unwrap();
        assert!(matches!(p, Posted::File(_)));
        assert_eq!(reg.find_offer(4002).unwrap().nonce, 12);
        p.remove();
        assert_eq!(reg.find_offer(4002), None);
        // A dead client's file is swept; a live one's is not.
        let dead = reg.post_offer(4003, &OfferRepr::sample(13, i32::MAX as u32), None).unwrap();
        let live = reg.post_offer(4004, &OfferRepr::sample(14, sys::getpid()), None).unwrap();
        assert_eq!(reg.sweep(), 1);
        assert_eq!(reg.find_offer(4003), None);
        assert_eq!(reg.find_offer(4004).unwrap().nonce, 14);
        drop(dead);
        live.remove();
        reg.release(held);
        remove_registry(&dir);
    }

    /// What is left of a test's registry: the offer directory and the change counter.
    fn remove_registry(dir: &str) {
        let _ = std::fs::remove_file(format!("{dir}/{GEN}"));
        std::fs::remove_dir(format!("{dir}/{OFFERS}")).unwrap();
        std::fs::remove_dir(dir).unwrap();
    }

    /// A listener registered right after a client cached the listener set is seen at
    /// the next lookup (within one clock tick, which on kernels whose tmpfs times move
    /// in ticks, as Debian 12's 6.1, leaves the directory's time where it was), and one
    /// removed is gone.
    #[test]
    fn the_change_counter_shows_every_new_listener() {
        let (server, dir) = tmp_registry();
        let client = Registry::open(&dir).unwrap();
        for port in 6000..6040 {
            assert!(client.listeners(port).is_empty());
            let l = ListenerRepr { addr: [0; 16], port, flags: 0, pid: sys::getpid(), mbox_fd: -1, mbox_ino: 0, fabrics: crate::choice::fabric_id::SHM };
            let held = server.register_listener(&l).unwrap();
            assert_eq!(client.listeners(port).len(), 1, "port {port}: the new listener is seen");
            held.remove();
            assert!(client.listeners(port).is_empty(), "port {port}: the removed listener is gone");
        }
        remove_registry(&dir);
    }

    #[test]
    fn refuses_a_directory_others_can_write() {
        let dir = format!("/tmp/rdmasock-regtest-open-{:x}", sys::random_u64());
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        assert!(Registry::open(&dir).is_err());
        std::fs::remove_dir(&dir).unwrap();
    }
}
