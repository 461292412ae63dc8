//! A listener's mailbox: shared slots where connecting shims post their offers for the
//! accepting shim, instead of a file per connection (creating, writing and removing a
//! file in the registry cost a connection about a tenth of its set-up time).
//!
//! The listening process creates it at `listen` as a sealed memfd (nobody can shrink it
//! under a mapping, so no access can fault) and names it in its listener record by fd
//! number and inode. A client maps it once, through /proc/PID/fd, and keeps it. Clients
//! write slots; the listener's processes (the one that registered it and its forked
//! children, which inherit the mapping) only read them. Layout in docs/protocol.md §3.
//!
//! Nothing read from it is trusted: a slot holds a copy of an offer record, parsed and
//! checked as one, and the claim checks everything the record names against the kernel.
//! A slot is taken by compare-and-swap on its owner word, written under a sequence
//! count (odd while written), and freed by its owner once it has decided; the slots of
//! a client that died are taken over by the next client that finds no free one.
#![allow(unsafe_code)]

use crate::layout::{self, MboxHeader, MboxSlot, OfferRecord, OfferRepr, MBOX_SLOTS, OFFER_LEN};
use crate::sys::{self, Fd, Mapping};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{fence, Ordering};

pub struct Mailbox {
    map: Mapping,
    /// The creator's memfd (clients open it through /proc); clients keep none.
    fd: Option<Fd>,
    ino: u64,
}

impl Mailbox {
    /// A new, empty mailbox (the listening side).
    pub fn create() -> io::Result<Mailbox> {
        let len = layout::mailbox_len();
        let fd = crate::wait::hide_fd(sys::sealed_memfd("rdmasock-mailbox", len as u64)?);
        let ino = sys::fstat(fd.as_raw_fd())?.st_ino;
        let map = Mapping::shared(fd.as_raw_fd(), len)?;
        // SAFETY: a fresh mapping of the right size that nobody else sees yet.
        unsafe {
            let h = map.as_ptr() as *mut MboxHeader;
            std::ptr::addr_of_mut!((*h).magic).write(layout::MBOX_MAGIC);
            std::ptr::addr_of_mut!((*h).version).write(layout::MBOX_VERSION);
            std::ptr::addr_of_mut!((*h).slots).write(MBOX_SLOTS as u32);
        }
        Ok(Mailbox { map, fd: Some(fd), ino })
    }

    /// Map the mailbox a listener record names (the connecting side), checked: the
    /// inode the record gives, the exact size, the seals, and the header.
    pub fn open(pid: u32, fd: i32, ino: u64) -> io::Result<Mailbox> {
        let map = sys::map_peer_sealed(pid, fd, ino, layout::mailbox_len() as u64)?;
        // SAFETY: checked size, at least a header long.
        let h = unsafe { &*(map.as_ptr() as *const MboxHeader) };
        if h.magic != layout::MBOX_MAGIC || h.version != layout::MBOX_VERSION || h.slots as usize != MBOX_SLOTS {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(Mailbox { map, fd: None, ino })
    }

    /// The creator's fd, to name in the listener record.
    pub fn fd(&self) -> Option<RawFd> {
        self.fd.as_ref().map(|f| f.as_raw_fd())
    }

    pub fn ino(&self) -> u64 {
        self.ino
    }

    fn header(&self) -> &MboxHeader {
        // SAFETY: the mapping starts with the header (checked size).
        unsafe { &*(self.map.as_ptr() as *const MboxHeader) }
    }

    /// A process of the listener runs as another user than its registrant: say so to
    /// clients.
    pub fn mark_other_user(&self) {
        self.header().flags.fetch_or(layout::MBOX_OTHER_USER, Ordering::Relaxed);
    }

    /// Has a process of the listener said it runs as another user?
    pub fn accepts_as_other_user(&self) -> bool {
        self.header().flags.load(Ordering::Relaxed) & layout::MBOX_OTHER_USER != 0
    }

    fn slot(&self, i: usize) -> &MboxSlot {
        // SAFETY: i < MBOX_SLOTS (every caller reduces modulo it), and the mapping was
        // checked to hold the header and every slot.
        unsafe { &*((self.map.as_ptr().add(layout::MBOX_HEADER_SIZE) as *const MboxSlot).add(i)) }
    }

    /// Post the offer of the client socket `inode` made by process `pid` (ours); `None`
    /// if every slot is taken by a live process. Returns the slot, for
    /// [`Mailbox::remove`].
    pub fn post(&self, inode: u64, pid: u32, rec: &[u8; OFFER_LEN]) -> Option<usize> {
        let start = home(inode);
        for reclaim in [false, true] {
            for k in 0..MBOX_SLOTS {
                let i = (start + k) % MBOX_SLOTS;
                let s = self.slot(i);
                let o = s.owner.load(Ordering::Relaxed);
                let free = o == 0 || (reclaim && o != pid && !sys::process_exists(o as i32));
                if free && s.owner.compare_exchange(o, pid, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    self.write(s, inode, rec);
                    return Some(i);
                }
            }
        }
        None
    }

    /// Seqlock write: odd while the words change (a slot taken over from a dead writer
    /// may already be odd).
    fn write(&self, s: &MboxSlot, inode: u64, rec: &[u8; OFFER_LEN]) {
        let w = s.seq.load(Ordering::Relaxed) | 1;
        s.seq.store(w, Ordering::Relaxed);
        fence(Ordering::Release);
        s.inode.store(inode, Ordering::Relaxed);
        for (word, chunk) in s.rec.iter().zip(rec.chunks_exact(8)) {
            word.store(u64::from_le_bytes(chunk.try_into().expect("8 bytes")), Ordering::Relaxed);
        }
        s.seq.store(w.wrapping_add(1), Ordering::Release);
    }

    /// Free our slot (the offer is decided, or dropped).
    pub fn remove(&self, slot: usize, inode: u64) {
        let s = self.slot(slot % MBOX_SLOTS);
        if s.owner.load(Ordering::Relaxed) != sys::pid() || s.inode.load(Ordering::Relaxed) != inode {
            return;
        }
        let w = s.seq.load(Ordering::Relaxed) | 1;
        s.seq.store(w, Ordering::Relaxed);
        fence(Ordering::Release);
        s.inode.store(0, Ordering::Relaxed);
        s.seq.store(w.wrapping_add(1), Ordering::Release);
        s.owner.store(0, Ordering::Release);
    }

    /// The offer posted for client socket `inode`, if any (checked as a record).
    pub fn find(&self, inode: u64) -> Option<OfferRepr> {
        let start = home(inode);
        for k in 0..MBOX_SLOTS {
            let s = self.slot((start + k) % MBOX_SLOTS);
            if s.inode.load(Ordering::Relaxed) != inode {
                continue;
            }
            // Seqlock read: a copy taken while the count stayed even and unchanged.
            for _ in 0..4 {
                let s1 = s.seq.load(Ordering::Acquire);
                if s1 & 1 != 0 {
                    std::hint::spin_loop();
                    continue;
                }
                let ino = s.inode.load(Ordering::Relaxed);
                let mut b = [0u8; OFFER_LEN];
                for (chunk, word) in b.chunks_exact_mut(8).zip(s.rec.iter()) {
                    chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
                }
                fence(Ordering::Acquire);
                if s.seq.load(Ordering::Relaxed) != s1 {
                    continue;
                }
                if ino == inode {
                    if let Some(r) = OfferRecord::new_checked(&b[..]).ok().and_then(|r| r.parse().ok()) {
                        return Some(r);
                    }
                }
                break;
            }
        }
        None
    }
}

/// Where the search for a socket's slot starts (spreads concurrent clients).
fn home(inode: u64) -> usize {
    (inode.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize % MBOX_SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(nonce: u64) -> [u8; OFFER_LEN] {
        OfferRepr::sample(nonce, sys::getpid()).emit()
    }

    #[test]
    fn posted_offers_are_found_by_inode_and_removed() {
        let mb = Mailbox::create().unwrap();
        let peer = Mailbox::open(sys::getpid(), mb.fd().unwrap(), mb.ino()).unwrap();
        let a = peer.post(1001, sys::getpid(), &rec(1)).unwrap();
        let b = peer.post(1002, sys::getpid(), &rec(2)).unwrap();
        assert_eq!(mb.find(1001).unwrap().nonce, 1);
        assert_eq!(mb.find(1002).unwrap().nonce, 2);
        assert_eq!(mb.find(1003), None);
        peer.remove(a, 1001);
        assert_eq!(mb.find(1001), None);
        assert_eq!(mb.find(1002).unwrap().nonce, 2);
        peer.remove(b, 1002);
        assert_eq!(mb.find(1002), None);
    }

    #[test]
    fn a_full_mailbox_refuses_and_a_bad_record_is_not_found() {
        let mb = Mailbox::create().unwrap();
        let slots: Vec<usize> = (0..MBOX_SLOTS as u64).map(|i| mb.post(5000 + i, sys::getpid(), &rec(i)).unwrap()).collect();
        assert_eq!(mb.post(9999, sys::getpid(), &rec(0)), None);
        mb.remove(slots[7], 5007);
        let again = mb.post(9999, sys::getpid(), &rec(77)).unwrap();
        assert_eq!(again, slots[7]);
        assert_eq!(mb.find(9999).unwrap().nonce, 77);
        // Scribbled content parses as nothing.
        let mut junk = rec(1);
        junk[0] ^= 0xff;
        let j = {
            mb.remove(again, 9999);
            mb.post(4242, sys::getpid(), &junk).unwrap()
        };
        assert_eq!(mb.find(4242), None);
        mb.remove(j, 4242);
    }

    #[test]
    fn a_mailbox_is_opened_only_with_its_inode() {
        let mb = Mailbox::create().unwrap();
        assert!(Mailbox::open(sys::getpid(), mb.fd().unwrap(), mb.ino() + 1).is_err());
    }
}
