//! Per-process connection tables, read by `rdmasock stat`.
//!
//! Each shimmed process owns one registry record `p-<pid>-<nonce>`: a sparse file of
//! fixed slots that only it writes (relaxed counters; the reader tolerates torn views of
//! a slot being reused). Layout (drawn in docs/protocol.md):
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
pub const TABLE_VERSION: u32 = 1;
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

pub const TABLE_LEN: usize = HEADER + SLOTS * std::mem::size_of::<Slot>();

/// This process's table. One per process; re-created in a forked child.
pub struct Table {
    /// The record and its mapping; replaced only in a forked child or at exit.
    own: parking_lot::Mutex<(Option<Held>, Option<Mapping>)>,
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
        let held = reg.publish_table(TABLE_LEN as u64)?;
        let map = Mapping::shared(held.fd().as_raw_fd(), TABLE_LEN)?;
        let t = Table {
            base: AtomicPtr::new(map.as_ptr()),
            own: parking_lot::Mutex::new((Some(held), Some(map))),
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

    /// In a forked child (one thread): make a table of our own holding a copy of the
    /// parent's slots.
    pub fn fork_child(&self, reg: &Registry) {
        if self.own.try_lock().is_none() {
            // SAFETY: held by a parent thread that does not exist here.
            unsafe { self.own.force_unlock() };
        }
        let mut own = self.own.lock();
        let (held, old) = (own.0.take(), own.1.take());
        // The parent's record stays the parent's: forget our copy of its lock.
        if let Some(h) = held {
            drop(h.into_fd());
        }
        self.base.store(std::ptr::null_mut(), Ordering::Release);
        if let Ok(t) = Table::create(reg) {
            let mut tn = t.own.lock();
            if let (Some(old), Some(new)) = (&old, &tn.1) {
                // SAFETY: both mappings are TABLE_LEN long; copy the slots only.
                unsafe { std::ptr::copy_nonoverlapping(old.as_ptr().add(HEADER), new.as_ptr().add(HEADER), TABLE_LEN - HEADER) };
            }
            self.base.store(t.base.load(Ordering::Relaxed), Ordering::Release);
            *own = (tn.0.take(), tn.1.take());
        }
        drop(old);
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
                // SAFETY: state 1 makes the slot ours; fields are plain bytes.
                unsafe {
                    let p = s as *const Slot as *mut Slot;
                    (*p).role = role;
                    (*p).path = path;
                    (*p).reason = reason as u8;
                    (*p).fd = fd;
                    (*p).local_ip = local.map(|a| a.ip_bytes()).unwrap_or([0; 16]);
                    (*p).local_port = local.map(|a| a.port()).unwrap_or(0);
                    (*p).peer_ip = peer.map(|a| a.ip_bytes()).unwrap_or([0; 16]);
                    (*p).peer_port = peer.map(|a| a.port()).unwrap_or(0);
                }
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

/// A connection as `rdmasock stat` shows it.
#[derive(Debug, Clone)]
pub struct Row {
    pub pid: u32,
    pub fd: i32,
    pub role: &'static str,
    pub path: &'static str,
    pub reason: &'static str,
    pub local: SockAddr,
    pub peer: SockAddr,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Read every live process's table (reaping dead ones).
pub fn read_all(reg: &Registry) -> Vec<Row> {
    let mut rows = Vec::new();
    for (_, fd) in reg.tables() {
        let Ok(map) = Mapping::shared_readonly(fd.as_raw_fd(), TABLE_LEN) else { continue };
        // SAFETY: TABLE_LEN bytes are mapped (the file was created that long; a shorter
        // file would fail the size check below before any slot is read).
        let st = sys::fstat(fd.as_raw_fd());
        if st.map(|s| (s.st_size as usize) < TABLE_LEN).unwrap_or(true) {
            continue;
        }
        let h = map.as_ptr() as *const u32;
        let (magic, version, pid) = unsafe { (h.read(), h.add(1).read(), h.add(2).read()) };
        if magic != TABLE_MAGIC || version != TABLE_VERSION {
            continue;
        }
        for i in 0..SLOTS {
            // SAFETY: inside the mapping.
            let s = unsafe { &*(map.as_ptr().add(HEADER + i * std::mem::size_of::<Slot>()) as *const Slot) };
            if s.state.load(Ordering::Acquire) != 2 {
                continue;
            }
            rows.push(Row {
                pid,
                fd: s.fd,
                role: if s.role == ROLE_SERVER { "server" } else { "client" },
                path: match s.path {
                    PATH_SHM => "shm",
                    PATH_PENDING => "pending",
                    _ => "tcp",
                },
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
        let r = rows.iter().find(|r| r.fd == 7).unwrap();
        assert_eq!((r.path, r.role, r.bytes_in, r.bytes_out), ("shm", "client", 5, 6));
        assert_eq!((r.local, r.peer), (a, b));
        assert_eq!(rows.iter().find(|r| r.fd == 8).unwrap().reason, "peer-not-shim");
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
