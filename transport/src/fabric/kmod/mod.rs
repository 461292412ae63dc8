//! The kmod fabric: peers in one kernel, connected by the mailbox driver
//! (`mailbox-driver/`, `/dev/rdmasock`). No page is shared between the two processes.
//!
//! * Each side opens an endpoint (one open file of `/dev/rdmasock`) and registers with
//!   it its own receive ring, in its own memory. The peer moves bytes into that ring
//!   only through the driver's checked "RDMA write" ioctl, which copies them in and
//!   posts a completion (offset, length) into our mailbox.
//! * Ring indices live in the receiver's memory: our tail advances by the completions
//!   we take from the mailbox (checked: contiguous, never past our free space); our head
//!   is ours alone. The sender learns how much we consumed from credits: a value carried
//!   by each of our writes to it (`imm`), a notification when a quarter of the ring
//!   was freed or when it says it is blocked for space (its `arm(SPACE)`), and, when
//!   our endpoint is released for any reason (close, exec, death), the driver itself
//!   reads our consumed count from a word of our memory we registered as the *close
//!   value* and hands it to the peer: the sender always knows exactly what we consumed.
//! * The doorbell is the endpoint fd itself, in the driver's doorbell mode: readable
//!   while mail is queued (read(2) does not consume it), 0 from read(2) and POLLHUP once
//!   the peer is gone. Any readiness check first drains the mailbox
//!   ([`KmodStream::pump`]). Every write wakes the peer, so there are no wait bits to
//!   announce, except for space (`WANT_CREDIT`).
//! * Rendezvous is the kernel's: the client offers its TCP socket, the server names its
//!   accepted socket, and the driver pairs the endpoints when the sockets are the two
//!   ends of one connection (and, by default, of one uid).
//! * Teardown as the shm fabric: when the peer is gone (released, or it left the ring
//!   because its socket was passed on), the connection moves back to kernel TCP: we
//!   re-send from our copy of the transmit window (the *shadow*) what the peer never
//!   consumed, read what is left in our ring, then hand every call to the kernel socket.
//!
//! Limits: after fork, one process at a time may use a connection (the child that
//! inherits it, say); the ring is shared memory, so a child sees what the driver writes,
//! but indices and mail are taken by whichever process asks first.
#![allow(unsafe_code)]

pub mod uapi;

use crate::conn::KernelEnd;
use crate::fabric::{Caps, Fabric, Offer, Reason, Shutdown, Stream, StreamError};
use crate::layout::wait;
use crate::sys::{self, Fd};
use crate::wait::{hide_fd, Approach, LocalBell, SpinPolicy};
use parking_lot::Mutex;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Notification tags of the stream protocol (opaque to the driver).
mod tag {
    /// `imm`: how many of the peer's bytes we consumed (our receive head).
    pub const CREDIT: u32 = 1;
    /// The sender is blocked for space: credit whatever is consumed, at once.
    pub const WANT_CREDIT: u32 = 2;
    /// The sender shut down writing; `imm`: its total bytes sent.
    pub const SHUT_WR: u32 = 3;
    /// The sender left the ring (its socket was passed on); `imm`: its exact receive
    /// head. Both ends continue on kernel TCP.
    pub const LEFT: u32 = 4;
}

/// The state bits (shared by every fabric: crate::tcpstate).
use crate::tcpstate::{self, bit as local, ConnState, RingIo};

/// Messages taken per RECV.
const RECV_BATCH: usize = 32;

/// The memory the driver writes into (our receive ring) and reads at release (our
/// consumed count, in the word after the ring): shared anonymous memory, so that a
/// child that inherits the connection across fork sees what the driver writes.
struct RxMem {
    ptr: *mut u8,
    ring: usize,
}

// SAFETY: plain memory; the ring is read under the stream's rx lock and written only by
// the driver (on the peer's behalf) into space we have not announced as free... or by a
// misbehaving peer anywhere in the ring, which can only garble the bytes we read.
unsafe impl Send for RxMem {}
unsafe impl Sync for RxMem {}

const CTL_LEN: usize = 4096;

impl RxMem {
    fn new(ring: usize) -> io::Result<RxMem> {
        // SAFETY: a fresh anonymous mapping at an address the kernel picks.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring + CTL_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(RxMem { ptr: p as *mut u8, ring })
    }

    fn data(&self) -> *mut u8 {
        self.ptr
    }

    fn ctl(&self) -> *mut u8 {
        // SAFETY: the control page follows the ring inside the mapping.
        unsafe { self.ptr.add(self.ring) }
    }

    /// Our receive head: bytes of the peer's consumed. The driver reads it at release.
    fn head(&self) -> &AtomicU64 {
        // SAFETY: page-aligned, inside the mapping, lives as long as self.
        unsafe { &*(self.ctl() as *const AtomicU64) }
    }
}

impl Drop for RxMem {
    fn drop(&mut self) {
        // SAFETY: we own the mapping.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.ring + CTL_LEN) };
    }
}

/// An endpoint of the driver with our receive ring and close value registered. The
/// device fd closes before the memory is unmapped (field order).
struct Endpoint {
    dev: Fd,
    mem: RxMem,
    rx_region: u32,
}

impl Endpoint {
    fn open(ring: u64) -> io::Result<Endpoint> {
        let dev = hide_fd(sys::open(uapi::DEVICE, libc::O_RDWR, 0)?);
        uapi::set_flags(dev.as_raw_fd(), uapi::EPF_DOORBELL)?;
        let mem = RxMem::new(ring as usize)?;
        let rx_region = uapi::reg(dev.as_raw_fd(), mem.data(), ring)?;
        uapi::reg_with(dev.as_raw_fd(), mem.ctl(), 8, uapi::REG_CLOSE_VALUE)?;
        Ok(Endpoint { dev, mem, rx_region })
    }

    fn fd(&self) -> RawFd {
        self.dev.as_raw_fd()
    }
}

/// Our copy of the transmit window: what the peer has not consumed yet, for the move
/// back to kernel TCP.
struct Tx {
    tail: u64,
    shadow: Vec<u8>,
}

/// One side of a connection on the kmod fabric.
pub struct KmodStream {
    /// Our own reference to the kernel socket; closes before the endpoint (field
    /// order), so the peer finds our FIN or reset in place when it learns we are gone.
    sock: Fd,
    ep: Endpoint,
    /// Our receive ring's size.
    ring: u64,
    /// The peer's receive ring: its region id and size.
    tx_region: u32,
    tx_cap: u64,
    /// Bytes announced by the peer's completions.
    rx_tail: AtomicU64,
    /// Consumer lock (the head itself is `ep.mem.head()`).
    rx: Mutex<()>,
    /// The highest head the peer has been told.
    credited: AtomicU64,
    peer_wants_credit: AtomicBool,
    tx: Mutex<Tx>,
    /// Bytes written (mirror of `tx.tail`, published before each driver write).
    tx_tail: AtomicU64,
    /// Bytes of ours the peer consumed, as last told.
    tx_head: AtomicU64,
    want_sent: AtomicBool,
    /// Interests some local waiter announced (the union; cleared as the last one goes).
    armed: AtomicU32,
    /// Serialises taking and applying mail.
    mb: Mutex<()>,
    kstate: AtomicU32,
    peer_cpu: AtomicU32,
    peer_sleeping: AtomicU32,
    flags: ConnState,
    shared: AtomicBool,
    bell: LocalBell,
}

impl KmodStream {
    fn new(ep: Endpoint, sock: Fd, ring: u64) -> KmodStream {
        let info = uapi::info(ep.fd()).unwrap_or_default();
        let found = info.peer_region_len.iter().position(|&l| l > 0);
        let (tx_region, tx_cap) = match found {
            Some(i) => (i as u32, info.peer_region_len[i]),
            None => (0, 0),
        };
        let sane = (crate::layout::RING_MIN..=crate::layout::RING_MAX).contains(&tx_cap);
        // A peer already gone when we look (it closed before our first use of a claimed
        // offer) left no ring to write to; that is no protocol error: its bytes and its
        // close value are in our mailbox, and the connection moves back to TCP after them
        // (EOF or a reset as its kernel socket says, as Linux). Any other missing or
        // impossible ring is a reset.
        let flags = match (sane, info.state) {
            (true, _) => 0,
            (false, uapi::state::CLOSED) if found.is_none() => local::PEER_GONE,
            _ => local::BROKEN | local::PEER_GONE | local::ERR_RESET,
        };
        let tx_cap = if sane { tx_cap } else { 0 };
        KmodStream {
            sock,
            ep,
            ring,
            tx_region,
            tx_cap,
            rx_tail: AtomicU64::new(0),
            rx: Mutex::new(()),
            credited: AtomicU64::new(0),
            peer_wants_credit: AtomicBool::new(false),
            tx: Mutex::new(Tx { tail: 0, shadow: vec![0u8; tx_cap as usize] }),
            tx_tail: AtomicU64::new(0),
            tx_head: AtomicU64::new(0),
            want_sent: AtomicBool::new(false),
            armed: AtomicU32::new(0),
            mb: Mutex::new(()),
            kstate: AtomicU32::new(info.state),
            peer_cpu: AtomicU32::new(u32::MAX),
            peer_sleeping: AtomicU32::new(0),
            flags: ConnState::new(flags),
            shared: AtomicBool::new(false),
            bell: LocalBell::default(),
        }
    }

    fn fd(&self) -> RawFd {
        self.ep.fd()
    }

    fn has(&self, bit: u32) -> bool {
        self.flags.load(Ordering::Acquire) & bit != 0
    }

    fn set(&self, bits: u32) -> u32 {
        self.flags.fetch_or(bits, Ordering::AcqRel)
    }

    fn rx_head(&self) -> u64 {
        self.ep.mem.head().load(Ordering::Acquire)
    }

    fn rx_avail(&self) -> u64 {
        self.rx_tail.load(Ordering::Acquire).saturating_sub(self.rx_head())
    }

    fn tx_free(&self, tail: u64) -> u64 {
        self.tx_cap.saturating_sub(tail.saturating_sub(self.tx_head.load(Ordering::Acquire)))
    }

    /// The peer broke the protocol: reset the connection.
    fn broken(&self) -> StreamError {
        self.set(local::BROKEN | local::PEER_GONE | local::ERR_RESET);
        StreamError::Reset
    }

    /// Take every queued message and apply it (one RECV system call when the mailbox
    /// is empty). Learns completions, credits, the peer's half-close and its departure.
    pub fn pump(&self) {
        let g = self.mb.lock();
        let mut msgs = [uapi::Msg::default(); RECV_BATCH];
        let mut state = self.kstate.load(Ordering::Relaxed);
        let mut applied = 0;
        while let Ok(r) = uapi::recv(self.fd(), &mut msgs) {
            for m in &msgs[..r.count as usize] {
                self.apply(m);
            }
            applied += r.count;
            self.peer_cpu.store(r.peer_cpu, Ordering::Relaxed);
            self.peer_sleeping.store(r.peer_sleeping, Ordering::Relaxed);
            state = r.state;
            if r.pending == 0 || r.count == 0 {
                break;
            }
        }
        self.kstate.store(state, Ordering::Release);
        drop(g);
        // The driver reports the peer's release after everything it posted before.
        if state == uapi::state::CLOSED || self.has(local::PEER_LEFT) {
            self.gone();
        }
        if applied > 0 {
            // The mail we took may be what another thread of ours sleeps for: its
            // doorbell read returns only while mail is queued. Ring our own doorbell if
            // anyone waits. (Dekker with `arm`: either it sees what we applied on its
            // re-check, or we see its interest here.)
            fence(Ordering::SeqCst);
            if self.armed.load(Ordering::Relaxed) != 0 {
                let _ = uapi::ring_self(self.fd());
                self.bell.woke();
            }
        }
        self.maybe_credit();
    }

    fn apply(&self, m: &uapi::Msg) {
        match m.kind {
            uapi::msg::WRITE => {
                if m.info != self.ep.rx_region {
                    self.broken();
                    return;
                }
                let tail = self.rx_tail.load(Ordering::Relaxed);
                let used = tail.saturating_sub(self.rx_head());
                let in_order = m.len == 0 || m.offset == tail % self.ring;
                if !in_order || m.len > self.ring - used.min(self.ring) {
                    self.broken();
                    return;
                }
                self.rx_tail.store(tail + m.len, Ordering::Release);
                self.credit_in(m.imm);
            }
            uapi::msg::NOTIFY => match m.info {
                tag::CREDIT => self.credit_in(m.imm),
                tag::WANT_CREDIT => self.peer_wants_credit.store(true, Ordering::Relaxed),
                tag::SHUT_WR => {
                    self.set(local::PEER_WR_SHUT);
                }
                tag::LEFT => {
                    self.credit_final(m.imm);
                    self.set(local::PEER_LEFT);
                }
                _ => {}
            },
            uapi::msg::CLOSE if m.flags & uapi::msgf::VALUE != 0 => self.credit_final(m.imm),
            uapi::msg::REGION if m.info == self.tx_region && m.len == 0 => {
                self.broken();
            }
            _ => {}
        }
    }

    /// The peer says it consumed `v` of our bytes.
    fn credit_in(&self, v: u64) {
        if v > self.tx_tail.load(Ordering::Acquire) {
            self.broken();
            return;
        }
        if self.tx_head.fetch_max(v, Ordering::AcqRel) < v {
            self.want_sent.store(false, Ordering::Relaxed);
        }
    }

    /// The peer's exact, final consumption.
    fn credit_final(&self, v: u64) {
        self.credit_in(v);
        if !self.has(local::BROKEN) {
            self.set(local::FINAL_HEAD);
        }
    }

    /// Tell the peer what we consumed, when it asked or a quarter of the ring is free.
    fn maybe_credit(&self) {
        let head = self.rx_head();
        let credited = self.credited.load(Ordering::Relaxed);
        if head <= credited || self.has(local::PEER_GONE | local::LEFT) {
            return;
        }
        let want = self.peer_wants_credit.swap(false, Ordering::AcqRel);
        if !want && head - credited < self.ring / 4 {
            return;
        }
        if uapi::notify(self.fd(), tag::CREDIT, head, uapi::NOTIFY_REPLACE).is_ok() {
            self.credited.fetch_max(head, Ordering::AcqRel);
        } else if want {
            self.peer_wants_credit.store(true, Ordering::Relaxed);
        }
    }

    /// A notification that must arrive (a half-close, a departure): retried while the
    /// peer's mailbox is full, for up to a second.
    fn notify_reliably(&self, tag: u32, imm: u64) {
        let deadline = sys::now_ns() + 1_000_000_000;
        loop {
            match uapi::notify(self.fd(), tag, imm, 0) {
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && sys::now_ns() < deadline => {
                    std::thread::sleep(Duration::from_micros(200));
                }
                _ => return,
            }
        }
    }

    /// The peer is gone: move to kernel TCP.
    fn gone(&self) {
        if self.set(local::PEER_GONE) & local::PEER_GONE == 0 {
            self.move_to_kernel();
        }
    }

    /// Re-send over the kernel socket what the peer never consumed (in order, before
    /// anything written later), hand our half-close to it, and from then on let every
    /// write go there. As the shm fabric's: a FIN already on the socket with bytes of
    /// ours unconsumed is a reset (as Linux answers unread data with RST); a socket that
    /// is not alive gets nothing (its own error is the application's).
    fn move_to_kernel(&self) {
        if self.has(local::MOVED) || self.has(local::BROKEN) {
            return;
        }
        let tx = self.tx.lock();
        if self.has(local::MOVED) {
            return;
        }
        let end = KernelEnd::look(self.sock.as_raw_fd());
        let head = self.tx_head.load(Ordering::Acquire);
        let unconsumed = tx.tail.saturating_sub(head);
        if end.fin_only && unconsumed > 0 {
            self.set(local::ERR_RESET);
        }
        if end.alive && unconsumed > 0 {
            if self.has(local::FINAL_HEAD) {
                for (off, len) in runs(head, unconsumed, self.tx_cap) {
                    // SAFETY: off + len <= the shadow's length.
                    let ptr = unsafe { tx.shadow.as_ptr().add(off as usize) };
                    if !unsafe { sys::send_all(self.sock.as_raw_fd(), ptr, len as usize) } {
                        break;
                    }
                }
            } else {
                // Without the peer's exact count a re-send could repeat bytes: reset.
                self.set(local::ERR_RESET);
            }
        }
        if self.has(local::WR_SHUT) {
            sys::shutdown_write(self.sock.as_raw_fd());
        }
        drop(tx);
        self.set(local::MOVED);
    }

    /// Why a write cannot go into the ring, if it cannot (crate::tcpstate).
    fn write_refusal(&self) -> Option<StreamError> {
        tcpstate::write_refusal(self)
    }

    /// Write `len` bytes of the shadow at `tail` into the peer's ring (at most two
    /// driver writes: the ring wraps). Returns the bytes written.
    fn put(&self, tx: &mut Tx, len: u64) -> Result<u64, io::Error> {
        let imm = self.rx_head();
        let mut done = 0;
        for (off, n) in runs(tx.tail, len, self.tx_cap) {
            // Published first: a credit for these bytes may come back before we return.
            self.tx_tail.store(tx.tail + n, Ordering::Release);
            // SAFETY: off + n <= the shadow's length; the driver reads it with
            // copy_from_user.
            let r = unsafe {
                let src = tx.shadow.as_ptr().add(off as usize);
                uapi::write(self.fd(), src, n as usize, off, imm, self.tx_region, uapi::WRITE_COALESCE)
            };
            if let Err(e) = r {
                self.tx_tail.store(tx.tail, Ordering::Release);
                if done > 0 {
                    break;
                }
                return Err(e);
            }
            tx.tail += n;
            done += n;
        }
        self.credited.fetch_max(imm, Ordering::AcqRel);
        Ok(done)
    }

    /// A driver write failed: what the caller sees.
    fn write_error(&self, e: io::Error) -> StreamError {
        match e.raw_os_error() {
            Some(libc::EAGAIN) => StreamError::WouldBlock,
            Some(libc::EPIPE) | Some(libc::ENOTCONN) => {
                self.pump();
                self.write_refusal().unwrap_or(StreamError::Moved)
            }
            Some(libc::ERANGE) | Some(libc::ENOENT) | Some(libc::EACCES) | Some(libc::EINVAL) => self.broken(),
            Some(n) => StreamError::Io(n),
            None => StreamError::Io(libc::EIO),
        }
    }

    /// The receive ring was empty: what it means (crate::tcpstate).
    fn empty_outcome(&self) -> Result<Option<usize>, StreamError> {
        tcpstate::empty_outcome(self)
    }

    /// Copy out of the receive ring; the caller holds the rx lock.
    fn copy_out(&self, bufs: &mut [IoSliceMut<'_>], avail: u64) -> usize {
        let head = self.rx_head();
        let mut pos = head;
        let end = head + avail;
        let mut done = 0usize;
        for b in bufs.iter_mut() {
            let mut filled = 0usize;
            while filled < b.len() && pos < end {
                let off = pos % self.ring;
                let run = (self.ring - off).min(end - pos).min((b.len() - filled) as u64) as usize;
                // SAFETY: off + run <= ring, inside our mapping; the destination is the
                // caller's buffer.
                unsafe {
                    std::ptr::copy_nonoverlapping(self.ep.mem.data().add(off as usize), b.as_mut_ptr().add(filled), run);
                }
                filled += run;
                pos += run as u64;
            }
            done += filled;
            if pos == end {
                break;
            }
        }
        done
    }

    fn consume(&self, n: u64) {
        let head = self.rx_head() + n;
        self.ep.mem.head().store(head, Ordering::Release);
    }
}

/// The runs of `len` bytes from position `pos` of a ring of `cap` bytes: (offset, len).
fn runs(pos: u64, len: u64, cap: u64) -> impl Iterator<Item = (u64, u64)> {
    let off = if cap == 0 { 0 } else { pos % cap };
    let first = len.min(cap - off);
    [(off, first), (0, len - first)].into_iter().filter(|&(_, n)| n > 0)
}


impl RingIo for KmodStream {
    fn state(&self) -> &ConnState {
        &self.flags
    }

    fn ring_avail(&self) -> Result<u64, StreamError> {
        Ok(self.rx_avail())
    }

    fn tx_room(&self) -> bool {
        self.tx_free(self.tx_tail.load(Ordering::Acquire)) > 0
    }

    fn peer_wr_shut(&self) -> bool {
        self.has(local::PEER_WR_SHUT)
    }

    fn peer_left(&self) -> bool {
        self.has(local::PEER_LEFT)
    }

    /// Any readiness check first drains the mailbox (completions, credits, the peer's
    /// half-close and departure).
    fn refresh(&self) -> bool {
        self.pump();
        true
    }

    fn move_to_kernel(&self) {
        KmodStream::move_to_kernel(self)
    }

    fn kernel_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl Stream for KmodStream {
    fn fabric(&self) -> &'static str {
        "kmod"
    }

    fn enqueue(&self, bufs: &[IoSlice<'_>]) -> Result<usize, StreamError> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if self.flags.load(Ordering::Relaxed) & (local::WR_SHUT | local::PEER_GONE | local::ERR_RESET | local::BROKEN | local::LEFT) != 0 {
            if let Some(e) = self.write_refusal() {
                return Err(e);
            }
        }
        if total == 0 {
            return Ok(0);
        }
        let mut tx = self.tx.lock();
        let mut free = self.tx_free(tx.tail);
        if free < total as u64 {
            // Learn the peer's latest credit (and whether it is still there).
            drop(tx);
            self.pump();
            if let Some(e) = self.write_refusal() {
                return Err(e);
            }
            tx = self.tx.lock();
            free = self.tx_free(tx.tail);
        }
        if free == 0 {
            return Err(StreamError::WouldBlock);
        }
        // Copy into the shadow at the tail, then let the driver copy from there.
        let want = free.min(total as u64);
        let mut copied = 0u64;
        let tail = tx.tail;
        'outer: for b in bufs {
            let mut taken = 0usize;
            while taken < b.len() {
                if copied == want {
                    break 'outer;
                }
                let off = (tail + copied) % self.tx_cap;
                let n = ((self.tx_cap - off).min(want - copied) as usize).min(b.len() - taken);
                tx.shadow[off as usize..off as usize + n].copy_from_slice(&b[taken..taken + n]);
                taken += n;
                copied += n as u64;
            }
        }
        // However many slices: one driver write per run of the ring (at most two).
        match self.put(&mut tx, copied) {
            Ok(n) => Ok(n as usize),
            Err(e) => {
                drop(tx);
                Err(self.write_error(e))
            }
        }
    }

    fn enqueue_from(&self, fill: &mut dyn FnMut(*mut u8, usize) -> io::Result<usize>) -> Result<usize, StreamError> {
        if let Some(e) = self.write_refusal() {
            return Err(e);
        }
        let mut tx = self.tx.lock();
        let mut free = self.tx_free(tx.tail);
        if free == 0 {
            drop(tx);
            self.pump();
            if let Some(e) = self.write_refusal() {
                return Err(e);
            }
            tx = self.tx.lock();
            free = self.tx_free(tx.tail);
            if free == 0 {
                return Err(StreamError::WouldBlock);
            }
        }
        let mut done = 0u64;
        for (off, len) in runs(tx.tail, free, self.tx_cap) {
            // SAFETY: off + len <= the shadow's length; `fill` writes at most len bytes.
            let ptr = unsafe { tx.shadow.as_mut_ptr().add(off as usize) };
            match fill(ptr, len as usize) {
                Ok(n) => {
                    let n = (n as u64).min(len);
                    done += n;
                    if n < len {
                        break;
                    }
                }
                Err(_) if done > 0 => break,
                Err(e) => return Err(StreamError::Io(e.raw_os_error().unwrap_or(libc::EIO))),
            }
        }
        if done == 0 {
            return Ok(0);
        }
        // The source is consumed: these bytes must reach the peer, or, if it is gone,
        // the kernel socket (they are in the shadow for the move).
        let deadline = sys::now_ns() + 1_000_000_000;
        let mut left = done;
        while left > 0 {
            match self.put(&mut tx, left) {
                Ok(n) => left -= n,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && sys::now_ns() < deadline => {
                    drop(tx);
                    self.pump();
                    std::thread::sleep(Duration::from_micros(200));
                    tx = self.tx.lock();
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EPIPE) | Some(libc::ENOTCONN)) => {
                    // Count them written: the move re-sends the unconsumed shadow.
                    tx.tail += left;
                    self.tx_tail.store(tx.tail, Ordering::Release);
                    drop(tx);
                    self.pump();
                    return Ok(done as usize);
                }
                Err(e) => {
                    drop(tx);
                    let err = self.write_error(e);
                    return if done > left { Ok((done - left) as usize) } else { Err(err) };
                }
            }
        }
        Ok(done as usize)
    }

    fn dequeue(&self, bufs: &mut [IoSliceMut<'_>], peek: bool) -> Result<usize, StreamError> {
        if self.has(local::LEFT) {
            return Err(StreamError::Moved);
        }
        let mut pumped = false;
        loop {
            let rx = self.rx.lock();
            let avail = self.rx_avail();
            if avail == 0 && !pumped {
                drop(rx);
                self.pump();
                pumped = true;
                continue;
            }
            if avail > 0 {
                let n = self.copy_out(bufs, avail);
                if n > 0 || bufs.iter().all(|b| b.is_empty()) {
                    if !peek && n > 0 {
                        self.consume(n as u64);
                        drop(rx);
                        self.maybe_credit();
                    }
                    return Ok(n);
                }
            }
            drop(rx);
            if bufs.iter().all(|b| b.is_empty()) {
                return Ok(0);
            }
            if let Some(r) = self.empty_outcome()? {
                return Ok(r);
            }
        }
    }

    fn dequeue_into(&self, drain: &mut dyn FnMut(*const u8, usize) -> io::Result<usize>) -> Result<usize, StreamError> {
        if self.has(local::LEFT) {
            return Err(StreamError::Moved);
        }
        let mut pumped = false;
        loop {
            let rx = self.rx.lock();
            let avail = self.rx_avail();
            if avail == 0 && !pumped {
                drop(rx);
                self.pump();
                pumped = true;
                continue;
            }
            let mut done = 0u64;
            for (off, len) in runs(self.rx_head(), avail, self.ring) {
                // SAFETY: off + len <= ring, inside our mapping.
                let ptr = unsafe { self.ep.mem.data().add(off as usize) as *const u8 };
                match drain(ptr, len as usize) {
                    Ok(n) => {
                        let n = (n as u64).min(len);
                        done += n;
                        if n < len {
                            break;
                        }
                    }
                    Err(_) if done > 0 => break,
                    Err(e) => return Err(StreamError::Io(e.raw_os_error().unwrap_or(libc::EIO))),
                }
            }
            if done > 0 {
                self.consume(done);
                drop(rx);
                self.maybe_credit();
                return Ok(done as usize);
            }
            drop(rx);
            if let Some(r) = self.empty_outcome()? {
                return Ok(r);
            }
        }
    }

    fn has_data(&self) -> bool {
        tcpstate::has_data(self)
    }

    fn has_space(&self) -> bool {
        tcpstate::has_space(self)
    }

    fn poll_events(&self) -> i16 {
        tcpstate::poll_events(self)
    }

    fn take_error(&self) -> bool {
        self.flags.take_error()
    }

    fn progress(&self) -> (u64, u64) {
        (self.rx_tail.load(Ordering::Acquire), self.tx_head.load(Ordering::Acquire))
    }

    fn rx_pending(&self) -> usize {
        self.pump();
        self.rx_avail() as usize
    }

    fn tx_pending(&self) -> usize {
        self.tx_tail.load(Ordering::Acquire).saturating_sub(self.tx_head.load(Ordering::Acquire)) as usize
    }

    fn doorbell(&self) -> RawFd {
        self.fd()
    }

    fn local_bell(&self) -> &LocalBell {
        &self.bell
    }

    fn arm(&self, interest: u32) {
        self.armed.fetch_or(interest, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        // Every write of the peer posts mail, which makes the doorbell readable: only
        // space needs asking for (the peer credits at once when it knows we wait).
        if interest & wait::SPACE != 0
            && !self.has(local::PEER_GONE)
            && !self.want_sent.swap(true, Ordering::AcqRel)
            && uapi::notify(self.fd(), tag::WANT_CREDIT, 0, uapi::NOTIFY_REPLACE).is_err()
        {
            self.want_sent.store(false, Ordering::Relaxed);
        }
    }

    fn disarm(&self, interest: u32) {
        // Called for the interests no local waiter needs any more.
        self.armed.fetch_and(!interest, Ordering::Relaxed);
    }

    fn wake_local(&self) {
        let _ = uapi::ring_self(self.fd());
        self.bell.woke();
    }

    fn ring_gone(&self) {
        // The driver is the authority: take the mail (the release comes after it).
        self.pump();
    }

    fn probe(&self) {
        self.pump();
    }

    fn approach(&self, policy: &SpinPolicy) -> Approach {
        let my = sys::current_cpu();
        let parked = self.peer_sleeping.load(Ordering::Relaxed) > 0;
        policy.approach(parked, self.peer_cpu.load(Ordering::Relaxed), my)
    }

    fn before_fork(&self) {
        self.shared.store(true, Ordering::Relaxed);
    }

    fn wait_cap(&self) -> Option<Duration> {
        // Another process may take the mail that would have woken us.
        self.shared.load(Ordering::Relaxed).then_some(Duration::from_millis(20))
    }

    fn moved(&self) -> bool {
        self.has(local::LEFT) || (self.has(local::MOVED) && !self.has(local::BROKEN) && self.rx_avail() == 0)
    }

    fn peer_gone(&self) -> bool {
        self.has(local::PEER_GONE)
    }

    fn leave(&self) {
        if self.has(local::LEFT) || self.has(local::PEER_GONE) {
            return;
        }
        let head = {
            // No write or read of ours is half done while we go.
            let _t = self.tx.lock();
            let _r = self.rx.lock();
            self.set(local::LEFT | local::MOVED);
            self.rx_head()
        };
        // The peer re-sends over TCP what we had not consumed, exactly.
        self.notify_reliably(tag::LEFT, head);
    }

    fn shutdown(&self, how: Shutdown) {
        if matches!(how, Shutdown::Read | Shutdown::Both) {
            self.set(local::RD_SHUT);
        }
        if matches!(how, Shutdown::Write | Shutdown::Both) && self.set(local::WR_SHUT) & local::WR_SHUT == 0 {
            let tail = self.tx.lock().tail;
            if !self.has(local::PEER_GONE) {
                self.notify_reliably(tag::SHUT_WR, tail);
            }
        }
        // As Linux: threads blocked in recv or send on this socket return at once.
        self.wake_local();
    }
}

impl Drop for KmodStream {
    /// This process lets go of the connection. Bytes left unread make the kernel socket
    /// close with a reset, as Linux does for unread data (SO_LINGER {1, 0}). Then the
    /// socket reference closes, then the endpoint: the driver tells the peer, with our
    /// exact consumed count. A side shared with other processes closes as it is.
    fn drop(&mut self) {
        if self.shared.load(Ordering::Relaxed) {
            return;
        }
        if self.rx_avail() > 0 && !self.has(local::MOVED) {
            let _ = sys::setsockopt(self.sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, libc::linger { l_onoff: 1, l_linger: 0 });
        }
    }
}

/// A client's offer: an endpoint whose offer the driver holds.
struct KmodOffer {
    ep: Option<Endpoint>,
    sock: Option<Fd>,
    ring: u64,
}

impl KmodOffer {
    fn fd(&self) -> RawFd {
        self.ep.as_ref().map(|e| e.fd()).unwrap_or(-1)
    }
}

impl Offer for KmodOffer {
    fn decision(&self, timeout: Duration) -> Option<bool> {
        let deadline = sys::now_ns() + timeout.as_nanos() as u64;
        loop {
            match uapi::info(self.fd()).map(|i| i.state) {
                Ok(uapi::state::CONNECTED) | Ok(uapi::state::CLOSED) => return Some(true),
                Ok(uapi::state::OFFERED) => {}
                _ => return Some(false),
            }
            let now = sys::now_ns();
            if now >= deadline {
                return None;
            }
            // The driver posts ACCEPTED or REFUSED: the doorbell turns readable.
            let mut p = [libc::pollfd { fd: self.fd(), events: libc::POLLIN, revents: 0 }];
            let ms = ((deadline - now) / 1_000_000).max(1) as i32;
            let _ = sys::poll(&mut p, ms);
        }
    }

    fn withdraw(&self) -> bool {
        match uapi::withdraw(self.fd()) {
            Err(e) => e.raw_os_error() != Some(libc::EISCONN),
            Ok(()) => true,
        }
    }

    fn into_stream(self: Box<Self>) -> Arc<dyn Stream> {
        let mut this = self;
        let ep = this.ep.take().expect("endpoint present");
        let sock = this.sock.take().expect("socket present");
        Arc::new(KmodStream::new(ep, sock, this.ring))
    }

    fn doorbell(&self) -> RawFd {
        self.fd()
    }
}

/// The kmod fabric.
pub struct Kmod {
    ring: u64,
    /// An endpoint for refusals and listener lookups (any endpoint may do either).
    ctl: Mutex<Option<Fd>>,
    /// An idle endpoint with its ring, for the next claim: a claim that finds no offer
    /// (the client does not run the shim, or offered over another fabric) leaves it
    /// idle, and the next one uses it, so that an accept costs one ioctl, not an open,
    /// a ring and its pinning. Dropped in a forked child (the parent may use it).
    spare: Mutex<Option<Endpoint>>,
}

impl Kmod {
    /// A fabric whose receive rings have `ring` bytes (a power of two, 4 KiB..64 MiB).
    pub fn new(ring: u64) -> Kmod {
        Kmod { ring, ctl: Mutex::new(None), spare: Mutex::new(None) }
    }

    /// Is the driver loaded, usable by us, and of our ABI? (opens and closes the device)
    pub fn available() -> bool {
        match sys::open(uapi::DEVICE, libc::O_RDWR, 0) {
            Ok(f) => uapi::version(f.as_raw_fd()).is_ok_and(|v| v == uapi::ABI_VERSION),
            Err(_) => false,
        }
    }

    /// Run `f` on the control endpoint (opened on first need).
    fn with_ctl<R>(&self, f: impl FnOnce(RawFd) -> R) -> Option<R> {
        let mut ctl = self.ctl.lock();
        if ctl.is_none() {
            *ctl = sys::open(uapi::DEVICE, libc::O_RDWR, 0).ok().map(hide_fd);
        }
        ctl.as_ref().map(|c| f(c.as_raw_fd()))
    }
}

impl Fabric for Kmod {
    fn name(&self) -> &'static str {
        "kmod"
    }

    fn id(&self) -> u8 {
        crate::choice::fabric_id::KMOD
    }

    fn caps(&self) -> Caps {
        Caps(Caps::SAME_KERNEL | Caps::KERNEL_VERIFIED_PEER | Caps::POLLABLE_DOORBELL)
    }

    fn offer(&self, sock: RawFd, _to: Option<&crate::layout::ListenerRepr>) -> io::Result<Box<dyn Offer>> {
        let ep = Endpoint::open(self.ring)?;
        uapi::offer(ep.fd(), sock)?;
        let sock = crate::wait::hidden_dup(sock)?;
        Ok(Box::new(KmodOffer { ep: Some(ep), sock: Some(sock), ring: self.ring }))
    }

    fn claim(&self, peer_inode: u64, sock: RawFd) -> Result<Arc<dyn Stream>, Reason> {
        let ep = match self.spare.lock().take() {
            Some(ep) => ep,
            None => Endpoint::open(self.ring).map_err(|_| Reason::ClaimFailed)?,
        };
        match uapi::accept(ep.fd(), sock, 0, peer_inode) {
            Ok(_) => {}
            Err(e) => {
                // The endpoint is still idle: keep it for the next claim.
                *self.spare.lock() = Some(ep);
                return Err(match e.raw_os_error() {
                    Some(libc::ENOENT) => Reason::PeerNotShim,
                    Some(libc::EPERM) => Reason::PeerOtherUid,
                    _ => Reason::ClaimFailed,
                });
            }
        }
        // Paired: from here on a failure must not leave the peer waiting on a ring
        // nobody reads; dropping the endpoint tells it (CLOSE), and it moves back to TCP.
        let dup = crate::wait::hidden_dup(sock).map_err(|_| Reason::ClaimFailed)?;
        Ok(Arc::new(KmodStream::new(ep, dup, self.ring)))
    }

    fn refuse(&self, peer_inode: u64, sock: RawFd) {
        let _ = self.with_ctl(|ctl| uapi::accept(ctl, sock, uapi::ACCEPT_REFUSE, peer_inode));
    }

    fn has_listener_table(&self) -> bool {
        true
    }

    fn announce(&self, sock: RawFd) -> io::Result<Fd> {
        let ep = hide_fd(sys::open(uapi::DEVICE, libc::O_RDWR, 0)?);
        uapi::listen(ep.as_raw_fd(), sock)?;
        Ok(ep)
    }

    fn find(&self, dst: &crate::addr::SockAddr) -> Option<u32> {
        self.with_ctl(|ctl| uapi::find(ctl, dst.ip_bytes(), dst.port()).ok().map(|(uid, _)| uid)).flatten()
    }

    fn after_fork_child(&self) {
        // The parent's spare is the same open file: two processes must not pair it.
        drop(self.spare.lock().take());
    }
}

