//! The per-user registry: a directory on tmpfs (0700, owned by the user) holding small
//! records, each alive exactly as long as its owner holds a lock on it.
//!
//! * `l-<netns>-<port>-<pid>-<nonce>`: a listening shim (a [`ListenerRecord`]).
//! * `o-<inode>`: a connecting shim's offer, named by its socket's inode (an
//!   [`OfferRecord`]); the accepting shim learns that inode from the kernel (sock_diag).
//! * `p-<pid>-<nonce>`: a process's connection table, for `rdmasock stat`.
//!
//! Liveness: the owner holds `flock(LOCK_SH)` on the record's open file description for
//! as long as the record is meant to exist. The lock is shared by forked children (same
//! description) and disappears with the last holder, whatever way it dies; anyone who can
//! take `LOCK_EX` on a record finds it dead and removes it ([`Registry::sweep`]). Records
//! are written under a temporary name, locked, then renamed into place, so a record is
//! never visible unlocked.

use crate::layout::{ListenerRecord, ListenerRepr, OfferRecord, OfferRepr, LISTENER_LEN, OFFER_LEN};
use crate::sys;
use std::io;
use std::os::fd::AsRawFd;
use crate::sys::Fd;

pub struct Registry {
    dir: String,
    netns: u64,
    /// The live listeners of our namespace (record name and content) as of the
    /// directory's modification time: every connect asks, and a scan of the directory
    /// costs far more than a stat. A new record changes the time, so a cached answer is
    /// never short of a listener; a cached listener for the port asked about is checked
    /// to be alive before it is believed.
    listeners_seen: parking_lot::Mutex<Option<((i64, i64), Vec<(String, ListenerRepr)>)>>,
}

/// A record this process owns (holds locked). Give it up with [`Registry::release`]
/// (removed if no other process still holds it) or [`Held::remove`] (removed now).
pub struct Held {
    path: String,
    fd: Fd,
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
        if !private || st.st_uid != sys::getuid() {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        // Offers live in their own directory: they come and go with every connection,
        // and the top directory's modification time is what keeps the listener cache.
        match sys::mkdir(&format!("{dir}/{OFFERS}"), 0o700) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        Ok(Registry { dir: dir.to_string(), netns: sys::netns_id(), listeners_seen: parking_lot::Mutex::new(None) })
    }

    pub fn dir(&self) -> &str {
        &self.dir
    }

    /// Write `bytes` as record `name`, locked shared, atomically visible.
    fn publish(&self, name: &str, bytes: &[u8]) -> io::Result<Held> {
        self.publish_in(&self.dir, name, bytes)
    }

    /// As [`publish`](Self::publish), in directory `dir` (the registry or its offer
    /// directory; the temporary is made there too, so that only `dir` changes).
    fn publish_in(&self, dir: &str, name: &str, bytes: &[u8]) -> io::Result<Held> {
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
        Ok(Held { path: format!("{}/{}", dir, name), fd })
    }

    pub fn register_listener(&self, l: &ListenerRepr) -> io::Result<Held> {
        let name = format!("l-{}-{}-{}-{:x}", self.netns, l.port, l.pid, sys::random_u64());
        self.publish(&name, &l.emit())
    }

    /// Live listeners registered for `port` in our network namespace. Dead ones found on
    /// the way are removed.
    pub fn listeners(&self, port: u16) -> Vec<ListenerRepr> {
        let stamp = |st: libc::stat| (st.st_mtime, st.st_mtime_nsec);
        let Ok(before) = sys::lstat(&self.dir).map(stamp) else { return Vec::new() };
        let cached: Option<Vec<(String, ListenerRepr)>> = match self.listeners_seen.lock().as_ref() {
            Some((seen, list)) if *seen == before => Some(list.iter().filter(|(_, l)| l.port == port).cloned().collect()),
            _ => None,
        };
        if let Some(hits) = cached {
            let alive = hits.iter().all(|(name, _)| {
                let path = format!("{}/{}", self.dir, name);
                sys::open(&path, libc::O_RDONLY, 0).is_ok_and(|fd| !self.reap_if_dead(&path, &fd))
            });
            if alive {
                return hits.into_iter().map(|(_, l)| l).collect();
            }
        }
        let all = self.scan_listeners();
        // The scan may have reaped dead records, which changes the time: stamp after.
        if let Ok(after) = sys::lstat(&self.dir).map(stamp) {
            *self.listeners_seen.lock() = Some((after, all.clone()));
        }
        all.into_iter().filter(|(_, l)| l.port == port).map(|(_, l)| l).collect()
    }

    fn scan_listeners(&self) -> Vec<(String, ListenerRepr)> {
        let prefix = format!("l-{}-", self.netns);
        let mut out = Vec::new();
        for name in self.names() {
            if !name.starts_with(&prefix) {
                continue;
            }
            let path = format!("{}/{}", self.dir, name);
            let Ok(fd) = sys::open(&path, libc::O_RDONLY, 0) else { continue };
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

    pub fn post_offer(&self, inode: u64, o: &OfferRepr) -> io::Result<Held> {
        self.publish_in(&self.offer_dir(), &offer_name(inode), &o.emit())
    }

    /// The offer made by the client socket with this inode, if there is a live one. The
    /// caller removes it once it has decided ([`Registry::remove_offer`]).
    pub fn find_offer(&self, inode: u64) -> Option<OfferRepr> {
        let path = format!("{}/{}", self.offer_dir(), offer_name(inode));
        let fd = sys::open(&path, libc::O_RDONLY, 0).ok()?;
        if self.reap_if_dead(&path, &fd) {
            return None;
        }
        let mut b = [0u8; OFFER_LEN];
        sys::pread_exact(&fd, &mut b, 0).ok()?;
        OfferRecord::new_checked(&b[..]).ok()?.parse().ok()
    }

    pub fn remove_offer(&self, inode: u64) {
        let _ = sys::unlink(&format!("{}/{}", self.offer_dir(), offer_name(inode)));
    }

    pub fn publish_table(&self, len: u64) -> io::Result<Held> {
        let name = format!("p-{}-{:x}", sys::getpid(), sys::random_u64());
        let held = self.publish(&name, &[])?;
        sys::ftruncate(&held.fd, len)?;
        Ok(held)
    }

    /// Connection tables of live processes, as open files (for `rdmasock stat`).
    pub fn tables(&self) -> Vec<(String, Fd)> {
        let mut out = Vec::new();
        for name in self.names() {
            if !name.starts_with("p-") {
                continue;
            }
            let path = format!("{}/{}", self.dir, name);
            if let Ok(fd) = sys::open(&path, libc::O_RDONLY, 0) {
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
        let Held { path, fd } = held;
        drop(fd);
        if let Ok(fd) = sys::open(&path, libc::O_RDONLY, 0) {
            self.reap_if_dead(&path, &fd);
        }
    }

    /// Remove every record whose owner is gone (and temporaries of dead writers), in the
    /// registry and its offer directory.
    pub fn sweep(&self) -> usize {
        let mut n = 0;
        for dir in [self.dir.clone(), self.offer_dir()] {
            for name in names_in(&dir) {
                if name == OFFERS {
                    continue;
                }
                // A temporary is briefly unlocked between its creation and its lock: only
                // its writer's death makes it garbage.
                if let Some(pid) = name.strip_prefix(".t-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<i32>().ok()) {
                    if sys::process_exists(pid) {
                        continue;
                    }
                }
                let path = format!("{}/{}", dir, name);
                if let Ok(fd) = sys::open(&path, libc::O_RDONLY, 0) {
                    if self.reap_if_dead(&path, &fd) {
                        n += 1;
                    }
                }
            }
        }
        n
    }

    /// If nobody holds the record's lock, its owner is dead: remove it. Checks that the
    /// name still refers to the file we locked before unlinking it.
    fn reap_if_dead(&self, path: &str, fd: &Fd) -> bool {
        match sys::flock(fd, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(true) => {
                let same = match (sys::fstat(fd.as_raw_fd()), sys::lstat(path)) {
                    (Ok(a), Ok(b)) => a.st_ino == b.st_ino && a.st_dev == b.st_dev,
                    _ => false,
                };
                if same {
                    let _ = sys::unlink(path);
                }
                true
            }
            _ => false,
        }
    }

    fn names(&self) -> Vec<String> {
        names_in(&self.dir)
    }
}

fn names_in(dir: &str) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect(),
        Err(_) => Vec::new(),
    }
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
        let l = ListenerRepr { addr: [0; 16], port: 5555, flags: 0, pid: sys::getpid() };
        let held = reg.register_listener(&l).unwrap();
        assert_eq!(reg.listeners(5555), vec![l]);
        assert!(reg.listeners(5556).is_empty());
        assert_eq!(reg.sweep(), 0, "a held record is alive");
        // Dropping the fd without removing the file simulates a crashed owner.
        let path = held.path().to_string();
        drop(held.into_fd());
        assert!(std::path::Path::new(&path).exists());
        assert!(reg.listeners(5555).is_empty());
        assert!(!std::path::Path::new(&path).exists(), "dead record reaped on lookup");
        std::fs::remove_dir(format!("{dir}/{OFFERS}")).unwrap();
        std::fs::remove_dir(&dir).unwrap();
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
