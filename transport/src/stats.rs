//! Per-process connection tables, read by `rdmasock stat`.
//!
//! Each shimmed process owns one table of fixed slots that only it writes (relaxed
//! counters; the reader tolerates torn views of a slot being reused), in a sealed memfd
//! (nobody can shrink it under a mapping, so no access can fault, and it takes no room
//! in the registry's tmpfs, which any user can fill: issue 21.3). Its registry record
//! `p-<pid>-<nonce>` names the memfd (pid, fd, inode); `rdmasock stat` takes it from
//! the owner (pidfd_getfd or /proc) and checks inode, size and seals before mapping it.
//! Layout (drawn in docs/protocol.md):
//!
//! ```text
//! header (64 B): magic "RDST", version u32, pid u32, slots u32
//! slot (128 B): state u32 | role u8 path u8 reason u8 _ | fd i32 | _ u32
//!               local ip [16] | local port u16 | peer port u16 | _ u32
//!               peer ip [16] | bytes_in u64 | bytes_out u64 | _ [56]
//! ```
#![allow(unsafe_code)]

use crate::addr::SockAddr;
use crate::fabric::Reason;
use crate::registry::{Held, Registry};
use crate::sys::{self, Mapping};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

pub const TABLE_MAGIC: u32 = u32::from_le_bytes(*b"RDST");
pub const TABLE_VERSION: u32 = 2;
/// The record `p-<pid>-<nonce>`: magic "RDSR", version, pid, the memfd's fd, its inode.
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"RDSR");
pub const RECORD_LEN: usize = 24;

fn record(pid: u32, fd: i32, ino: u64) -> [u8; RECORD_LEN] {
    let mut b = [0u8; RECORD_LEN];
    b[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&TABLE_VERSION.to_le_bytes());
    b[8..12].copy_from_slice(&pid.to_le_bytes());
    b[12..16].copy_from_slice(&fd.to_le_bytes());
    b[16..24].copy_from_slice(&ino.to_le_bytes());
    b
}

/// (pid, fd, inode) of a record, if it is one.
fn parse_record(b: &[u8; RECORD_LEN]) -> Option<(u32, i32, u64)> {
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    if u32_at(0) != RECORD_MAGIC || u32_at(4) != TABLE_VERSION {
        return None;
    }
    let pid = u32_at(8);
    let fd = u32_at(12) as i32;
    let ino = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
    (pid != 0 && fd >= 0).then_some((pid, fd, ino))
}
pub const SLOTS: usize = 4096;
const HEADER: usize = 64;

#[repr(C)]
pub struct Slot {
    /// 0 free, 1 being filled, 2 live. Written by the owner only (Release after filling).
    pub state: AtomicU32,
    pub role: u8,
    pub path: u8,
    pub reason: u8,
    pub _pad0: u8,
    pub fd: i32,
    pub _pad1: u32,
    pub local_ip: [u8; 16],
    pub local_port: u16,
    pub peer_port: u16,
    pub _pad2: u32,
    pub peer_ip: [u8; 16],
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub _pad3: [u8; 56],
}

const _: () = {
    assert!(std::mem::size_of::<Slot>() == 128);
    assert!(std::mem::offset_of!(Slot, local_ip) == 16);
    assert!(std::mem::offset_of!(Slot, peer_ip) == 40);
    assert!(std::mem::offset_of!(Slot, bytes_in) == 56);
};

pub const ROLE_CLIENT: u8 = 1;
pub const ROLE_SERVER: u8 = 2;
pub const PATH_SHM: u8 = 1;
pub const PATH_TCP: u8 = 2;
pub const PATH_PENDING: u8 = 3;
pub const PATH_KMOD: u8 = 4;

/// The slot's path byte of a connection on fabric `name` ([`crate::fabric::Stream::fabric`]).
pub fn path_code(fabric: &str) -> u8 {
    match fabric {
        "kmod" => PATH_KMOD,
        _ => PATH_SHM,
    }
}

/// What `rdmasock stat` calls a path byte.
pub fn path_name(code: u8) -> &'static str {
    match code {
        PATH_SHM => "shm",
        PATH_KMOD => "kmod",
        PATH_PENDING => "pending",
        _ => "tcp",
    }
}

pub const TABLE_LEN: usize = HEADER + SLOTS * std::mem::size_of::<Slot>();

/// This process's table. One per process; re-created in a forked child.
pub struct Table {
    /// The record, the table's mapping and its memfd; replaced only in a forked child
    /// or at exit.
    own: parking_lot::Mutex<(Option<Held>, Option<Mapping>, Option<sys::Fd>)>,
    /// Where the slots are now (null: no table). Slot accesses read only this.
    base: AtomicPtr<u8>,
    next: AtomicU32,
}

/// A slot handle: an index, resolved against the table's current base on every use (so
/// that a forked child writes its own copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotId(pub u32);

impl Table {
    pub fn create(reg: &Registry) -> std::io::Result<Table> {
        let mfd = crate::wait::hide_fd(sys::sealed_memfd("rdmasock-stats", TABLE_LEN as u64)?);
        let ino = sys::fstat(mfd.as_raw_fd())?.st_ino;
        let map = Mapping::shared(mfd.as_raw_fd(), TABLE_LEN)?;
        let held = reg.publish_table(&record(sys::getpid(), mfd.as_raw_fd(), ino))?;
        let t = Table {
            base: AtomicPtr::new(map.as_ptr()),
            own: parking_lot::Mutex::new((Some(held), Some(map), Some(mfd))),
            next: AtomicU32::new(0),
        };
        // SAFETY: the header fits in the mapping; only this process writes it.
        unsafe {
            let h = t.base.load(Ordering::Relaxed) as *mut u32;
            h.write(TABLE_MAGIC);
            h.add(1).write(TABLE_VERSION);
            h.add(2).write(sys::getpid());
            h.add(3).write(SLOTS as u32);
        }
        Ok(t)
    }

    /// In a forked child (one thread): make a table of our own and fill in the slots of
    /// the connections this process holds (`keep`: slot, what to write; the parent's
    /// slots are not copied: by now the parent may have closed and reused them). Its
    /// byte counts start at 0: each holder counts what it moves, and `rdmasock stat`
    /// adds the holders' counts up (the parent's row keeps what came before the fork).
    pub fn fork_child(&self, reg: &Registry, keep: &[(SlotId, SlotFill)]) {
        if self.own.try_lock().is_none() {
            // SAFETY: held by a parent thread that does not exist here.
            unsafe { self.own.force_unlock() };
        }
        let mut own = self.own.lock();
        let (held, old) = (own.0.take(), own.1.take());
        // The parent's memfd is the parent's: our copy of its fd goes.
        drop(own.2.take());
        // The parent's record stays the parent's: forget our copy of its lock.
        if let Some(h) = held {
            drop(h.into_fd());
        }
        self.base.store(std::ptr::null_mut(), Ordering::Release);
        if let Ok(t) = Table::create(reg) {
            let mut tn = t.own.lock();
            self.base.store(t.base.load(Ordering::Relaxed), Ordering::Release);
            *own = (tn.0.take(), tn.1.take(), tn.2.take());
            for (id, f) in keep {
                if let Some(s) = self.slot(*id) {
                    self.fill(s, f);
                    s.state.store(2, Ordering::Release);
                }
            }
        }
        drop(old);
    }

    fn fill(&self, s: &Slot, f: &SlotFill) {
        // SAFETY: the slot is ours (state 1, or in a child's fresh table); plain bytes.
        unsafe {
            let p = s as *const Slot as *mut Slot;
            (*p).role = f.role;
            (*p).path = f.path;
            (*p).reason = f.reason as u8;
            (*p).fd = f.fd;
            (*p).local_ip = f.local.map(|a| a.ip_bytes()).unwrap_or([0; 16]);
            (*p).local_port = f.local.map(|a| a.port()).unwrap_or(0);
            (*p).peer_ip = f.peer.map(|a| a.ip_bytes()).unwrap_or([0; 16]);
            (*p).peer_port = f.peer.map(|a| a.port()).unwrap_or(0);
        }
    }

    /// Remove the table's record (at exit). The mapping stays: other threads may still
    /// be counting until the process is gone.
    pub fn remove(&self) {
        let mut own = self.own.lock();
        if let Some(h) = own.0.take() {
            h.remove();
        }
    }

    fn slot(&self, id: SlotId) -> Option<&Slot> {
        let base = self.base.load(Ordering::Acquire);
        if base.is_null() || id.0 as usize >= SLOTS {
            return None;
        }
        // SAFETY: index checked; the mapping lives until remove()/fork_child replace it,
        // which only happen when no other thread runs (exit, fork child).
        Some(unsafe { &*(base.add(HEADER + id.0 as usize * std::mem::size_of::<Slot>()) as *const Slot) })
    }

    /// Take a free slot and fill it.
    pub fn alloc(&self, fd: i32, role: u8, path: u8, reason: Reason, local: Option<SockAddr>, peer: Option<SockAddr>) -> Option<SlotId> {
        let start = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        for k in 0..SLOTS {
            let id = SlotId(((start + k) % SLOTS) as u32);
            let s = self.slot(id)?;
            if s.state.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                self.fill(s, &SlotFill { fd, role, path, reason, local, peer });
                s.bytes_in.store(0, Ordering::Relaxed);
                s.bytes_out.store(0, Ordering::Relaxed);
                s.state.store(2, Ordering::Release);
                return Some(id);
            }
        }
        None
    }

    pub fn set_path(&self, id: SlotId, path: u8, reason: Reason) {
        if let Some(s) = self.slot(id) {
            // SAFETY: the slot is ours (live); single-byte fields.
            unsafe {
                let p = s as *const Slot as *mut Slot;
                (*p).path = path;
                (*p).reason = reason as u8;
            }
        }
    }

    pub fn set_fd(&self, id: SlotId, fd: i32) {
        if let Some(s) = self.slot(id) {
            // SAFETY: as set_path.
            unsafe { (*(s as *const Slot as *mut Slot)).fd = fd };
        }
    }

    pub fn add_in(&self, id: SlotId, n: u64) {
        if let Some(s) = self.slot(id) {
            s.bytes_in.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn add_out(&self, id: SlotId, n: u64) {
        if let Some(s) = self.slot(id) {
            s.bytes_out.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn free(&self, id: SlotId) {
        if let Some(s) = self.slot(id) {
            s.state.store(0, Ordering::Release);
        }
    }
}

/// What a slot says of its connection (all but the counters).
#[derive(Debug, Clone, Copy)]
pub struct SlotFill {
    pub fd: i32,
    pub role: u8,
    pub path: u8,
    pub reason: Reason,
    pub local: Option<SockAddr>,
    pub peer: Option<SockAddr>,
}

/// A connection as `rdmasock stat` shows it: one row per connection end, however many
/// processes hold it (a socket inherited across fork is one connection).
#[derive(Debug, Clone)]
pub struct Row {
    /// Every process holding it, with its fd there, lowest pid first (never empty).
    pub holders: Vec<(u32, i32)>,
    pub role: &'static str,
    pub path: &'static str,
    pub reason: &'static str,
    pub local: SockAddr,
    pub peer: SockAddr,
    /// Bytes carried by the fabric (counted by the holders) plus those carried by kernel
    /// TCP (the kernel's count: a connection on TCP from the start or moved back).
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Read every live process's table (reaping dead ones): one row per connection end,
/// with the kernel's byte counts added for those on TCP.
pub fn read_all(reg: &Registry) -> Vec<Row> {
    let mut rows = merge(read_slots(reg));
    for r in &mut rows {
        if r.path == "tcp" {
            if let Some((i, o)) = crate::diag::tcp_bytes(r.local, r.peer) {
                r.bytes_in += i;
                r.bytes_out += o;
            }
        }
    }
    rows
}

/// Rows of the same connection end (same role and addresses, in several processes: a
/// socket shared across fork) become one; its fabric counters add up (each process
/// counted what it moved).
fn merge(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort_by_key(|r| (r.local.to_string(), r.peer.to_string(), r.role, r.pid()));
    let mut out: Vec<Row> = Vec::new();
    for r in rows {
        match out.last_mut() {
            // Unknown addresses (zero ports) are never merged.
            Some(l) if l.role == r.role && l.local == r.local && l.peer == r.peer && r.local.port() != 0 && r.peer.port() != 0 => {
                l.holders.extend(r.holders);
                l.bytes_in += r.bytes_in;
                l.bytes_out += r.bytes_out;
                // A holder that saw it move back to TCP knows best.
                if r.path == "tcp" {
                    l.path = r.path;
                    l.reason = r.reason;
                }
            }
            _ => out.push(r),
        }
    }
    for r in &mut out {
        r.holders.sort_unstable();
        r.holders.dedup();
    }
    out
}

impl Row {
    /// The first process holding it (lowest pid), and its fd there.
    pub fn pid(&self) -> u32 {
        self.holders[0].0
    }

    pub fn fd(&self) -> i32 {
        self.holders[0].1
    }
}

fn read_slots(reg: &Registry) -> Vec<Row> {
    let mut rows = Vec::new();
    for (_, fd) in reg.tables() {
        let mut b = [0u8; RECORD_LEN];
        let Some((owner, mfd, ino)) = sys::pread_exact(&fd, &mut b, 0).ok().and_then(|_| parse_record(&b)) else { continue };
        // Checked: the inode the record names, the exact size, the seals (so no read can
        // fault, whatever the owner does).
        let Ok(map) = sys::map_peer_sealed(owner, mfd, ino, TABLE_LEN as u64) else { continue };
        let h = map.as_ptr() as *const u32;
        // SAFETY: the mapping is TABLE_LEN bytes, at least the header.
        let (magic, version, pid) = unsafe { (h.read(), h.add(1).read(), h.add(2).read()) };
        if magic != TABLE_MAGIC || version != TABLE_VERSION || pid != owner {
            continue;
        }
        for i in 0..SLOTS {
            // SAFETY: inside the mapping.
            let s = unsafe { &*(map.as_ptr().add(HEADER + i * std::mem::size_of::<Slot>()) as *const Slot) };
            if s.state.load(Ordering::Acquire) != 2 {
                continue;
            }
            rows.push(Row {
                holders: vec![(pid, s.fd)],
                role: if s.role == ROLE_SERVER { "server" } else { "client" },
                path: path_name(s.path),
                reason: Reason::from_u8(s.reason).as_str(),
                local: SockAddr::from_bytes(s.local_ip, s.local_port),
                peer: SockAddr::from_bytes(s.peer_ip, s.peer_port),
                bytes_in: s.bytes_in.load(Ordering::Relaxed),
                bytes_out: s.bytes_out.load(Ordering::Relaxed),
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_listed_and_freed() {
        let dir = format!("/tmp/rdmasock-stattest-{:x}", sys::random_u64());
        let reg = Registry::open(&dir).unwrap();
        let t = Table::create(&reg).unwrap();
        let a = SockAddr("127.0.0.1:1000".parse().unwrap());
        let b = SockAddr("[::1]:2000".parse().unwrap());
        let id = t.alloc(7, ROLE_CLIENT, PATH_SHM, Reason::None, Some(a), Some(b)).unwrap();
        t.add_in(id, 5);
        t.add_out(id, 6);
        let id2 = t.alloc(8, ROLE_SERVER, PATH_TCP, Reason::PeerNotShim, Some(a), Some(a)).unwrap();
        let rows = read_all(&reg);
        assert_eq!(rows.len(), 2);
        let r = rows.iter().find(|r| r.fd() == 7).unwrap();
        assert_eq!((r.path, r.role, r.bytes_in, r.bytes_out), ("shm", "client", 5, 6));
        assert_eq!((r.local, r.peer), (a, b));
        assert_eq!(rows.iter().find(|r| r.fd() == 8).unwrap().reason, "peer-not-shim");
        t.free(id);
        t.free(id2);
        assert!(read_all(&reg).is_empty());
        t.remove();
        assert_eq!(reg.sweep(), 0);
        std::fs::remove_file(format!("{dir}/gen")).unwrap();
        std::fs::remove_dir(format!("{dir}/{}", crate::registry::OFFERS)).unwrap();
        std::fs::remove_dir(&dir).unwrap();
    }
}
