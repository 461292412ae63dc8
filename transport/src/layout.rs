//! Every byte layout the shm fabric shares with another process, each with a version and
//! compile-time size/offset checks. Drawn in docs/protocol.md.
//!
//! Two kinds:
//! * the segment header ([`SegHeader`]), live shared memory: `#[repr(C)]`, fixed-width
//!   atomics only, every field says who writes it;
//! * registry records ([`OfferRecord`], [`ListenerRecord`]), small files written once by
//!   their owner and read by others: byte views in the manner of smoltcp, a `check` after
//!   which no accessor can fail, and an `emit`.
//!
//! Nothing read from either is trusted: indices are clamped by the ring, lengths and fd
//! numbers are checked against what the reader can verify with the kernel.

use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicU32, AtomicU64};

pub const SEG_MAGIC: u32 = u32::from_le_bytes(*b"RDSG");
pub const SEG_VERSION: u32 = 1;
/// The header occupies the first page; the two rings follow, page aligned.
pub const SEG_HEADER_SIZE: u64 = 4096;

pub const RING_MIN: u64 = 4096;
pub const RING_MAX: u64 = 64 << 20;

/// Rendezvous states of a segment's `state` word. Transitions (all by compare-and-swap):
/// OFFERED -> CLAIMED (server), OFFERED -> REFUSED (server), OFFERED -> WITHDRAWN (client).
pub mod state {
    pub const OFFERED: u32 = 1;
    pub const CLAIMED: u32 = 2;
    pub const WITHDRAWN: u32 = 3;
    pub const REFUSED: u32 = 4;
}

/// Bits of [`SideCtl::wait`]: what a side is blocked in the kernel waiting for.
pub mod wait {
    /// Waiting for its receive ring to gain data, EOF or a shutdown.
    pub const DATA: u32 = 1;
    /// Waiting for its transmit ring to gain space.
    pub const SPACE: u32 = 2;
    /// (Client, before the claim) waiting for the server's answer to its offer: the
    /// server rings the client's doorbell after its claim only if this is set. Set once
    /// (a waiter in poll or epoll may arm it and stay asleep), cleared by the client
    /// when it takes the stream.
    pub const CLAIM: u32 = 4;
}

/// Bits of [`ProducerLine::flags`].
pub mod pflags {
    /// The producer shut down its writing side (shutdown(SHUT_WR)): EOF after the data.
    pub const WR_SHUT: u32 = 1;
}

/// Side indices: the connecting side is 0, the accepting side 1. Direction `d` is
/// produced by side `d` and consumed by side `1 - d`.
pub const CLIENT: usize = 0;
pub const SERVER: usize = 1;

/// One side's control line. 128 bytes: x86_64 prefetches cache lines in adjacent pairs,
/// so 64-byte padding would still share a prefetch unit with the neighbouring field.
#[repr(C, align(128))]
pub struct SideCtl {
    /// `wait::*` bits. Set by the owning side (fetch_or, SeqCst) just before it blocks;
    /// cleared by the peer (fetch_and, SeqCst) when it rings the owner's doorbell, or by
    /// the owner when it stops waiting. The SeqCst RMW pairs with the peer's SeqCst fence
    /// between publishing an index and reading this word (Dekker: one of the two sees
    /// the other's write, so no wake-up is lost).
    pub wait: AtomicU32,
    /// The CPU the owning side last ran on, u32::MAX before it first waited (Relaxed: a
    /// hint for the spin decision only).
    pub cpu: AtomicU32,
    /// Unused, kept as 0 (version 1 layout). They held the side's cross-process locks,
    /// which the peer could take and hold; those now live in memory only the side's own
    /// processes map (`wait::SideLocks`).
    pub tx_lock: AtomicU32,
    pub rx_lock: AtomicU32,
    /// `side::*` bits, set by the owning side (Release); read by the peer (Acquire).
    pub flags: AtomicU32,
    /// The receive buffer the owning side's application asked for (SO_RCVBUF), 0 if
    /// none: the peer bounds what it queues by it (Relaxed; clamped by the reader).
    pub rcvbuf: AtomicU32,
}

/// Bits of [`SideCtl::flags`].
pub mod side {
    /// The side left the ring (its socket was passed to another process): from its
    /// last published indices on, the connection is kernel TCP's, as when its doorbell
    /// hangs up.
    pub const LEFT: u32 = 1;
    /// The server side is done with the segment for good: its last access, made by a
    /// stream that only one process used. The client may then reuse the segment for
    /// its next offer (shm.rs, `Pool`).
    pub const RELEASED: u32 = 2;
}

/// The producer's line of one direction.
#[repr(C, align(128))]
pub struct ProducerLine {
    /// Bytes ever produced. Written only by the producer (Release, after the bytes are
    /// copied in); read by the consumer with Acquire, pairing with that Release.
    pub tail: AtomicU64,
    /// `pflags::*`. Written by the producer (Release, after its last tail store);
    /// read by the consumer (Acquire) only once the ring is seen empty.
    pub flags: AtomicU32,
}

/// The consumer's line of one direction.
#[repr(C, align(128))]
pub struct ConsumerLine {
    /// Bytes ever consumed. Written only by the consumer (Release, after the bytes are
    /// copied out); read by the producer with Acquire, pairing with that Release, before
    /// it reuses the space.
    pub head: AtomicU64,
}

#[repr(C)]
pub struct DirCtl {
    pub prod: ProducerLine,
    pub cons: ConsumerLine,
}

#[repr(C)]
pub struct SegHeader {
    /// Written by the client before the offer is posted, never changed.
    pub magic: u32,
    pub version: u32,
    /// Equal to the offer record's nonce; ties the record to this segment.
    pub nonce: u64,
    /// Bytes per ring. Informational: each side uses its own validated copy.
    pub ring_size: u64,
    /// Rendezvous state (`state::*`), changed only by compare-and-swap (AcqRel).
    pub state: AtomicU32,
    /// The client's and the server's pid (informational).
    pub client_pid: AtomicU32,
    pub server_pid: AtomicU32,
    /// With an offer that reuses the last connection's doorbells (`BELLS_KEPT`): the
    /// client's fds of its ends (its doorbell's read end, the server's doorbell's write
    /// end), -1 otherwise. A server that no longer keeps its ends (it evicted them after
    /// the client looked) opens new ones from these through /proc, checked by the inodes
    /// of the record, instead of refusing. Written by the client before posting.
    pub kept_fds: [std::sync::atomic::AtomicI32; 2],
    pub _reserved: [u32; 21],
    pub sides: [SideCtl; 2],
    pub dirs: [DirCtl; 2],
}

const _: () = {
    assert!(offset_of!(SegHeader, state) == 24);
    assert!(offset_of!(SegHeader, kept_fds) == 36);
    assert!(offset_of!(SegHeader, sides) == 128);
    assert!(size_of::<SideCtl>() == 128);
    assert!(offset_of!(SideCtl, flags) == 16);
    assert!(offset_of!(SideCtl, rcvbuf) == 20);
    assert!(size_of::<DirCtl>() == 256);
    assert!(offset_of!(SegHeader, dirs) == 384);
    assert!(size_of::<SegHeader>() == 896);
    assert!((size_of::<SegHeader>() as u64) <= SEG_HEADER_SIZE);
};

/// Is `n` an acceptable ring size (a power of two within bounds)?
pub fn ring_size_ok(n: u64) -> bool {
    n.is_power_of_two() && (RING_MIN..=RING_MAX).contains(&n)
}

pub fn segment_len(ring: u64) -> u64 {
    SEG_HEADER_SIZE + 2 * ring
}

/// Read a little-endian integer from a fixed range of a record.
macro_rules! field_get {
    ($buf:expr, $ty:ty, $range:expr) => {
        <$ty>::from_le_bytes($buf[$range].try_into().expect("range matches type size"))
    };
}

/// The offer a connecting shim posts in the registry, named by its socket's inode
/// (`o-<inode>`): where the accepting shim finds the segment and the doorbells, as fd
/// numbers in the client's /proc/PID/fd, plus what it checks them against.
pub struct OfferRecord<T: AsRef<[u8]>> {
    buf: T,
}

mod offer_field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: usize = 4;
    pub const NONCE: Range<usize> = 8..16;
    pub const PID: Range<usize> = 16..20;
    pub const SEG_FD: Range<usize> = 20..24;
    /// The client's own doorbell (write end): the server rings it.
    pub const CLIENT_BELL_FD: Range<usize> = 24..28;
    /// The server's doorbell (read end): the server waits on it.
    pub const SERVER_BELL_FD: Range<usize> = 28..32;
    pub const CLIENT_BELL_INO: Range<usize> = 32..40;
    pub const SERVER_BELL_INO: Range<usize> = 40..48;
    pub const RING_SIZE: Range<usize> = 48..56;
    pub const SEG_INO: Range<usize> = 56..64;
    pub const LEN: usize = 64;
}

pub const OFFER_MAGIC: u32 = u32::from_le_bytes(*b"RDOF");
pub const OFFER_VERSION: u8 = 1;
pub const OFFER_LEN: usize = offer_field::LEN;
/// `client_bell_fd` and `server_bell_fd` of an offer that uses again the doorbells of
/// the segment's last connection, whose ends the claiming server kept (docs/protocol.md
/// §1.4): there is nothing to take from the client.
pub const BELLS_KEPT: i32 = -1;

/// The parsed form of an offer record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfferRepr {
    pub nonce: u64,
    pub pid: u32,
    pub seg_fd: i32,
    pub client_bell_fd: i32,
    pub server_bell_fd: i32,
    pub client_bell_ino: u64,
    pub server_bell_ino: u64,
    pub ring_size: u64,
    pub seg_ino: u64,
}

#[cfg(test)]
impl OfferRepr {
    /// A well-formed record with made-up fds and inodes, for tests of where records go.
    pub fn sample(nonce: u64, pid: u32) -> OfferRepr {
        OfferRepr {
            nonce,
            pid,
            seg_fd: 3,
            client_bell_fd: 4,
            server_bell_fd: 5,
            client_bell_ino: 6,
            server_bell_ino: 7,
            ring_size: 1 << 20,
            seg_ino: 8,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum RecordError {
    Truncated,
    Magic,
    Version,
    Value,
}

impl<T: AsRef<[u8]>> OfferRecord<T> {
    /// Wrap and check a buffer; afterwards no accessor can panic.
    pub fn new_checked(buf: T) -> Result<Self, RecordError> {
        let r = OfferRecord { buf };
        let b = r.buf.as_ref();
        if b.len() < OFFER_LEN {
            return Err(RecordError::Truncated);
        }
        if field_get!(b, u32, offer_field::MAGIC) != OFFER_MAGIC {
            return Err(RecordError::Magic);
        }
        if b[offer_field::VERSION] != OFFER_VERSION {
            return Err(RecordError::Version);
        }
        Ok(r)
    }

    pub fn parse(&self) -> Result<OfferRepr, RecordError> {
        let b = self.buf.as_ref();
        let repr = OfferRepr {
            nonce: field_get!(b, u64, offer_field::NONCE),
            pid: field_get!(b, u32, offer_field::PID),
            seg_fd: field_get!(b, i32, offer_field::SEG_FD),
            client_bell_fd: field_get!(b, i32, offer_field::CLIENT_BELL_FD),
            server_bell_fd: field_get!(b, i32, offer_field::SERVER_BELL_FD),
            client_bell_ino: field_get!(b, u64, offer_field::CLIENT_BELL_INO),
            server_bell_ino: field_get!(b, u64, offer_field::SERVER_BELL_INO),
            ring_size: field_get!(b, u64, offer_field::RING_SIZE),
            seg_ino: field_get!(b, u64, offer_field::SEG_INO),
        };
        let bells = (repr.client_bell_fd, repr.server_bell_fd);
        let fds_ok = repr.seg_fd >= 0 && (bells.0 >= 0 && bells.1 >= 0 || bells == (BELLS_KEPT, BELLS_KEPT));
        if repr.pid == 0 || !fds_ok || !ring_size_ok(repr.ring_size) {
            return Err(RecordError::Value);
        }
        Ok(repr)
    }
}

impl OfferRepr {
    pub fn emit(&self) -> [u8; OFFER_LEN] {
        let mut b = [0u8; OFFER_LEN];
        b[offer_field::MAGIC].copy_from_slice(&OFFER_MAGIC.to_le_bytes());
        b[offer_field::VERSION] = OFFER_VERSION;
        b[offer_field::NONCE].copy_from_slice(&self.nonce.to_le_bytes());
        b[offer_field::PID].copy_from_slice(&self.pid.to_le_bytes());
        b[offer_field::SEG_FD].copy_from_slice(&self.seg_fd.to_le_bytes());
        b[offer_field::CLIENT_BELL_FD].copy_from_slice(&self.client_bell_fd.to_le_bytes());
        b[offer_field::SERVER_BELL_FD].copy_from_slice(&self.server_bell_fd.to_le_bytes());
        b[offer_field::CLIENT_BELL_INO].copy_from_slice(&self.client_bell_ino.to_le_bytes());
        b[offer_field::SERVER_BELL_INO].copy_from_slice(&self.server_bell_ino.to_le_bytes());
        b[offer_field::RING_SIZE].copy_from_slice(&self.ring_size.to_le_bytes());
        b[offer_field::SEG_INO].copy_from_slice(&self.seg_ino.to_le_bytes());
        b
    }
}

/// A listener's mailbox (mailbox.rs): a header, then `MBOX_SLOTS` slots, each written by
/// the client that owns it and read by the listener's processes.
pub const MBOX_MAGIC: u32 = u32::from_le_bytes(*b"RDMB");
pub const MBOX_VERSION: u32 = 1;
pub const MBOX_SLOTS: usize = 256;
pub const MBOX_HEADER_SIZE: usize = 128;

#[repr(C)]
pub struct MboxHeader {
    /// Written by the creator before the listener record names the mailbox; never changed.
    pub magic: u32,
    pub version: u32,
    pub slots: u32,
    /// `MBOX_*` bits, set (fetch_or, Relaxed) by the listener's processes, read by
    /// clients before they post.
    pub flags: std::sync::atomic::AtomicU32,
}

/// [`MboxHeader::flags`]: a process accepting on this listener runs as another user
/// than the clients that find the listener in their registry (e.g. a server's worker
/// after it dropped privileges): clients choose as for another user's listener (kmod
/// if both have it, else TCP at once) instead of offering over shm and waiting out the
/// claim deadline, as the first of them had to.
pub const MBOX_OTHER_USER: u32 = 1;

/// One posted offer. 128 bytes, so that clients posting at once do not share lines.
#[repr(C, align(128))]
pub struct MboxSlot {
    /// Sequence count, odd while the owner changes `inode` and `rec` (seqlock: the owner
    /// stores it odd, fences (Release), writes, stores it even (Release); a reader loads
    /// it (Acquire), copies, fences (Acquire), and keeps the copy only if it is even and
    /// unchanged).
    pub seq: AtomicU32,
    /// The pid of the client that holds the slot, 0 if free. Taken by compare-and-swap
    /// from 0 (or from a pid that no longer exists), freed with a Release store of 0.
    pub owner: AtomicU32,
    /// The client socket's inode, as sock_diag will report it to the acceptor; 0: none.
    pub inode: AtomicU64,
    /// The offer record (`OfferRecord`, 64 bytes), as eight little-endian words.
    pub rec: [AtomicU64; 8],
}

pub fn mailbox_len() -> usize {
    MBOX_HEADER_SIZE + MBOX_SLOTS * std::mem::size_of::<MboxSlot>()
}

const _: () = {
    assert!(size_of::<MboxHeader>() <= MBOX_HEADER_SIZE);
    assert!(size_of::<MboxSlot>() == 128);
    assert!(offset_of!(MboxSlot, inode) == 8);
    assert!(offset_of!(MboxSlot, rec) == 16);
    assert!(OFFER_LEN == 64);
};

/// A listening shim's registration (`l-<netns>-<port>-<pid>-<nonce>`): the bound address,
/// so that a client connecting to another address on the same port does not offer.
pub struct ListenerRecord<T: AsRef<[u8]>> {
    buf: T,
}

mod listener_field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: usize = 4;
    /// Bit 0: IPV6_V6ONLY (an IPv6 wildcard listener that refuses IPv4).
    pub const FLAGS: usize = 5;
    pub const PORT: Range<usize> = 6..8;
    pub const ADDR: Range<usize> = 8..24;
    pub const PID: Range<usize> = 24..28;
    /// The listener's mailbox, as an fd number in the listener's /proc/PID/fd (-1: none)
    /// and the inode it must have.
    pub const MBOX_FD: Range<usize> = 28..32;
    pub const MBOX_INO: Range<usize> = 32..40;
    /// The fabrics the listener's process serves (`choice::fabric_id` bits): its advert.
    pub const FABRICS: usize = 40;
    /// 41..48: reserved, zero.
    pub const LEN: usize = 48;
}

pub const LISTENER_MAGIC: u32 = u32::from_le_bytes(*b"RDLS");
/// The listener record's version is the rendezvous protocol's: a shim of another
/// version sees no listener (its clients stay on TCP).
pub const LISTENER_VERSION: u8 = 3;
pub const LISTENER_LEN: usize = listener_field::LEN;
pub const LISTENER_V6ONLY: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerRepr {
    pub addr: [u8; 16],
    pub port: u16,
    pub flags: u8,
    pub pid: u32,
    pub mbox_fd: i32,
    pub mbox_ino: u64,
    /// The fabrics it serves (`choice::fabric_id` bits).
    pub fabrics: u8,
}

impl<T: AsRef<[u8]>> ListenerRecord<T> {
    pub fn new_checked(buf: T) -> Result<Self, RecordError> {
        let r = ListenerRecord { buf };
        let b = r.buf.as_ref();
        if b.len() < LISTENER_LEN {
            return Err(RecordError::Truncated);
        }
        if field_get!(b, u32, listener_field::MAGIC) != LISTENER_MAGIC {
            return Err(RecordError::Magic);
        }
        if b[listener_field::VERSION] != LISTENER_VERSION {
            return Err(RecordError::Version);
        }
        Ok(r)
    }

    pub fn parse(&self) -> ListenerRepr {
        let b = self.buf.as_ref();
        ListenerRepr {
            addr: b[listener_field::ADDR].try_into().expect("16 bytes"),
            port: field_get!(b, u16, listener_field::PORT),
            flags: b[listener_field::FLAGS],
            pid: field_get!(b, u32, listener_field::PID),
            mbox_fd: field_get!(b, i32, listener_field::MBOX_FD),
            mbox_ino: field_get!(b, u64, listener_field::MBOX_INO),
            fabrics: b[listener_field::FABRICS],
        }
    }
}

impl ListenerRepr {
    pub fn emit(&self) -> [u8; LISTENER_LEN] {
        let mut b = [0u8; LISTENER_LEN];
        b[listener_field::MAGIC].copy_from_slice(&LISTENER_MAGIC.to_le_bytes());
        b[listener_field::VERSION] = LISTENER_VERSION;
        b[listener_field::FLAGS] = self.flags;
        b[listener_field::PORT].copy_from_slice(&self.port.to_le_bytes());
        b[listener_field::ADDR].copy_from_slice(&self.addr);
        b[listener_field::PID].copy_from_slice(&self.pid.to_le_bytes());
        b[listener_field::MBOX_FD].copy_from_slice(&self.mbox_fd.to_le_bytes());
        b[listener_field::MBOX_INO].copy_from_slice(&self.mbox_ino.to_le_bytes());
        b[listener_field::FABRICS] = self.fabrics;
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Property test (issue 14.5): records a peer writes (offers in a mailbox or a file,
    /// listener records) parse without panicking whatever their bytes, and what parses
    /// is within the checked bounds. Random buffers, and valid records with random bytes
    /// flipped (which reach the value checks).
    #[test]
    fn records_of_any_bytes_parse_or_fail_cleanly() {
        let mut r = 0x5EED_u64;
        let mut next = move || {
            r = r.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = r;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let offer = sample_offer().emit();
        let listener = ListenerRepr { addr: [0; 16], port: 80, flags: 0, pid: 7, mbox_fd: 3, mbox_ino: 9, fabrics: 1 }.emit();
        for i in 0..200_000u32 {
            let mut b = vec![0u8; (next() % (2 * OFFER_LEN.max(LISTENER_LEN) as u64)) as usize];
            if i % 2 == 0 {
                b.iter_mut().for_each(|x| *x = next() as u8);
            } else {
                let base: &[u8] = if i % 4 == 1 { &offer } else { &listener };
                b = base.to_vec();
                for _ in 0..(next() % 4 + 1) {
                    let at = (next() % b.len() as u64) as usize;
                    b[at] = next() as u8;
                }
            }
            if let Ok(rec) = OfferRecord::new_checked(&b[..]) {
                if let Ok(o) = rec.parse() {
                    assert!(o.pid != 0 && o.seg_fd >= 0 && ring_size_ok(o.ring_size), "{o:?}");
                    assert!((o.client_bell_fd >= 0 && o.server_bell_fd >= 0) || (o.client_bell_fd, o.server_bell_fd) == (BELLS_KEPT, BELLS_KEPT));
                }
            }
            if let Ok(rec) = ListenerRecord::new_checked(&b[..]) {
                let _ = rec.parse();
            }
        }
    }

    fn sample_offer() -> OfferRepr {
        OfferRepr {
            nonce: 0x1122334455667788,
            pid: 4242,
            seg_fd: 900,
            client_bell_fd: 901,
            server_bell_fd: 902,
            client_bell_ino: 77,
            server_bell_ino: 78,
            ring_size: 1 << 20,
            seg_ino: 99,
        }
    }

    #[test]
    fn offer_round_trips() {
        let b = sample_offer().emit();
        assert_eq!(&b[0..4], b"RDOF");
        assert_eq!(b[4], 1);
        assert_eq!(&b[8..16], &0x1122334455667788u64.to_le_bytes());
        let r = OfferRecord::new_checked(&b[..]).unwrap();
        assert_eq!(r.parse().unwrap(), sample_offer());
        let kept = OfferRepr { client_bell_fd: BELLS_KEPT, server_bell_fd: BELLS_KEPT, ..sample_offer() };
        assert_eq!(OfferRecord::new_checked(&kept.emit()[..]).unwrap().parse().unwrap(), kept);
    }

    #[test]
    fn offer_rejects_bad_input() {
        let b = sample_offer().emit();
        assert_eq!(OfferRecord::new_checked(&b[..63]).err(), Some(RecordError::Truncated));
        let mut m = b;
        m[0] ^= 1;
        assert_eq!(OfferRecord::new_checked(&m[..]).err(), Some(RecordError::Magic));
        let mut v = b;
        v[4] = 2;
        assert_eq!(OfferRecord::new_checked(&v[..]).err(), Some(RecordError::Version));
        for bad in [OfferRepr { ring_size: 3000, ..sample_offer() }, OfferRepr { seg_fd: -1, ..sample_offer() },
                    OfferRepr { ring_size: RING_MAX * 2, ..sample_offer() }, OfferRepr { pid: 0, ..sample_offer() },
                    OfferRepr { client_bell_fd: BELLS_KEPT, ..sample_offer() }, OfferRepr { server_bell_fd: -2, ..sample_offer() }] {
            let e = bad.emit();
            assert_eq!(OfferRecord::new_checked(&e[..]).unwrap().parse().err(), Some(RecordError::Value));
        }
    }

    #[test]
    fn listener_round_trips() {
        let l = ListenerRepr { addr: [0; 16], port: 6379, flags: LISTENER_V6ONLY, pid: 7, mbox_fd: 900, mbox_ino: 77, fabrics: 3 };
        let b = l.emit();
        assert_eq!(&b[0..4], b"RDLS");
        assert_eq!(&b[6..8], &6379u16.to_le_bytes());
        assert_eq!(ListenerRecord::new_checked(&b[..]).unwrap().parse(), l);
        assert!(ListenerRecord::new_checked(&b[..31]).is_err());
    }
}
