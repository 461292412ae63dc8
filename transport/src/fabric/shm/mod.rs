//! The shm fabric: peers in one kernel share a sealed memfd segment holding two rings,
//! and ring each other's doorbell pipe. The accepting shim opens the client's segment and
//! pipes through /proc/PID/fd (so nothing lives on the filesystem but the small offer
//! record, and everything is freed with the last process that maps it).
//!
//! When the ring's peer goes, the connection moves back to kernel TCP. The peer is gone
//! when every writer of our doorbell pipe is closed: all its processes closed the socket,
//! died, exec'd a program, or passed the socket on and closed their copy. Whichever it
//! was, the kernel socket now tells the truth: a FIN, a reset, or a live connection whose
//! other end a new program holds. So the survivor re-sends over TCP the bytes the peer
//! never consumed, reads what the peer left in the ring, and from then on hands every
//! call to the kernel socket. Nothing is lost or reordered, and EOF, ECONNRESET and EPIPE
//! are the kernel's own.
#![allow(unsafe_code)]

pub mod ring;

use crate::conn::KernelEnd;
use crate::fabric::{Caps, Fabric, Offer, Reason, Shutdown, Stream, StreamError};
use crate::layout::{self, pflags, state, wait, SegHeader, CLIENT, SERVER};
use crate::layout::ListenerRepr;
use crate::registry::{Posted, Registry};
use crate::ring::{Consumer, Corrupt, Producer};
use crate::sys::{self, Mapping};
use crate::wait::{hide_fd, xlock, Approach, LocalBell, SideLocks, SpinPolicy, XGuard};
use parking_lot::Mutex;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, RawFd};
use crate::sys::Fd;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::time::Duration;

/// The state bits (shared by every fabric: crate::tcpstate).
use crate::tcpstate::{self, bit as local, ConnState, RingIo};

/// How often a writer that never blocks checks that its peer still exists (read on the
/// coarse clock, every message: so once per kernel tick where the tick is longer).
const LIVENESS_CHECK_NS: u64 = 1_000_000;

pub struct ShmStream {
    map: Mapping,
    side: usize,
    tx: Mutex<Producer>,
    rx: Mutex<Consumer>,
    /// Our own reference to the kernel socket (a close-on-exec dup), for the move back
    /// to TCP when the peer goes.
    sock: ManuallyDrop<Fd>,
    /// Our doorbell's read end (blocking).
    bell_rx: ManuallyDrop<Fd>,
    /// The peer's doorbell's write end (non-blocking).
    bell_tx: ManuallyDrop<Fd>,
    /// The doorbell pipes' inodes (the client's, the server's), for the pool.
    bell_ino: (u64, u64),
    bell: LocalBell,
    flags: ConnState,
    last_liveness_ns: AtomicU64,
    /// SO_SNDBUF as the application asked for it (0: not set).
    sndbuf: AtomicU32,
    /// Our side may be used by several processes (set at fork, never cleared): our own
    /// indices are then taken up from the segment under the side's cross-process locks
    /// before each use, and waits are bounded (another process may read a doorbell
    /// byte meant for us).
    shared: AtomicBool,
    /// The cross-process locks of our side, in memory no peer maps (wait::SideLocks).
    locks: SideLocks,
    /// While RESENDING: the ring index from which bytes are still to be re-sent.
    resend_at: AtomicU64,
    /// Where the segment goes after a short, orderly connection.
    reuse: Option<Reuse>,
}

/// Where a segment goes after a short, orderly connection (see [`Pool`]).
enum Reuse {
    /// Client: the segment's memfd and inode, parked to be offered again once the
    /// server side has released it.
    Park { seg: Fd, ino: u64, pool: Arc<Pool> },
    /// Server: the client's pid and the segment's inode; the mapping is kept, so that
    /// the same client offering the segment again costs no open, mmap or page faults.
    Keep { peer: u32, ino: u64, pool: Arc<Pool> },
}

impl ShmStream {
    /// # Safety-relevant contract
    /// `map` is a validated segment of `segment_len(ring)` bytes.
    fn new(map: Mapping, side: usize, ring: u64, sock: Fd, bells: Bells, locks: SideLocks, reuse: Option<Reuse>) -> ShmStream {
        let base = map.as_ptr();
        let hdr = base as *const SegHeader;
        let data = |d: usize| unsafe { base.add((layout::SEG_HEADER_SIZE + d as u64 * ring) as usize) };
        // SAFETY: the mapping holds the header and both rings (checked by the caller) and
        // lives as long as the stream, which owns it; side d produces direction d.
        let (tx, rx) = unsafe {
            let txd = &(*hdr).dirs[side] as *const _;
            let rxd = &(*hdr).dirs[1 - side] as *const _;
            (Producer::new(txd, data(side), ring), Consumer::new(rxd, data(1 - side), ring))
        };
        ShmStream {
            map,
            side,
            tx: Mutex::new(tx),
            rx: Mutex::new(rx),
            sock: ManuallyDrop::new(sock),
            bell_rx: ManuallyDrop::new(bells.rx),
            bell_tx: ManuallyDrop::new(bells.tx),
            bell_ino: bells.ino,
            bell: LocalBell::default(),
            flags: ConnState::new(0),
            last_liveness_ns: AtomicU64::new(sys::coarse_now_ns()),
            shared: AtomicBool::new(false),
            sndbuf: AtomicU32::new(0),
            locks,
            resend_at: AtomicU64::new(0),
            reuse,
        }
    }

    /// How many unconsumed bytes the ring may hold: all of it, unless the application
    /// set socket buffer sizes on either end; then, as TCP, about our send buffer plus
    /// the peer's receive buffer (a side that set none counts with Linux's defaults).
    fn window(&self) -> u64 {
        const DEFAULT_SND: u64 = 16 << 10;
        const DEFAULT_RCV: u64 = 128 << 10;
        let snd = self.sndbuf.load(Ordering::Relaxed) as u64;
        let rcv = self.peer().rcvbuf.load(Ordering::Relaxed) as u64;
        if snd == 0 && rcv == 0 {
            return u64::MAX;
        }
        let snd = if snd == 0 { DEFAULT_SND } else { snd };
        let rcv = if rcv == 0 { DEFAULT_RCV } else { rcv.min(layout::RING_MAX) };
        snd + rcv
    }

    fn is_shared(&self) -> bool {
        self.shared.load(Ordering::Relaxed)
    }

    /// The producer, with our tail taken up from the segment if the side is shared.
    /// Lock order: the cross-process lock (if taken) before this mutex.
    fn view_tx(&self) -> parking_lot::MutexGuard<'_, Producer> {
        let mut g = self.tx.lock();
        if self.is_shared() {
            let _ = g.resync();
        }
        g.set_window(self.window());
        g
    }

    fn view_rx(&self) -> parking_lot::MutexGuard<'_, Consumer> {
        let mut g = self.rx.lock();
        if self.is_shared() {
            let _ = g.resync();
        }
        g
    }

    /// Exclusive production across the processes of our side (shared mode only).
    fn xl_tx(&self) -> Option<XGuard<'_>> {
        self.is_shared().then(|| xlock(self.locks.tx()))
    }

    fn xl_rx(&self) -> Option<XGuard<'_>> {
        self.is_shared().then(|| xlock(self.locks.rx()))
    }

    fn hdr(&self) -> &SegHeader {
        // SAFETY: the mapping starts with the header and outlives self.
        unsafe { &*(self.map.as_ptr() as *const SegHeader) }
    }

    fn me(&self) -> &layout::SideCtl {
        &self.hdr().sides[self.side]
    }

    fn peer(&self) -> &layout::SideCtl {
        &self.hdr().sides[1 - self.side]
    }

    fn has(&self, bit: u32) -> bool {
        self.flags.load(Ordering::Acquire) & bit != 0
    }

    /// Ring the peer if it announced it is blocked waiting for `what`. The SeqCst fence
    /// orders our preceding index store before the load of its wait word; it pairs with
    /// the SeqCst fetch_or in `arm` (Dekker: either it sees our index on its re-check, or
    /// we see its bit here).
    fn wake_peer(&self, what: u32) {
        self.wake_peer_on(self.bell_tx.as_raw_fd(), what);
    }

    fn wake_peer_on(&self, bell_tx: RawFd, what: u32) {
        fence(Ordering::SeqCst);
        let p = self.peer();
        if p.wait.load(Ordering::Relaxed) & what != 0 && p.wait.fetch_and(!what, Ordering::SeqCst) & what != 0 {
            let _ = sys::write(bell_tx, &[1]);
        }
    }

    /// The peer published an impossible index: reset the connection.
    fn broken(&self) -> StreamError {
        self.flags.fetch_or(local::BROKEN | local::PEER_GONE | local::ERR_RESET, Ordering::AcqRel);
        StreamError::Reset
    }

    /// Is the doorbell hung up, or has the peer left the ring? (one poll(2), zero
    /// timeout)
    fn probe_gone(&self) -> bool {
        if self.has(local::PEER_GONE) {
            return true;
        }
        if self.peer().flags.load(Ordering::Acquire) & layout::side::LEFT != 0 {
            self.ring_gone();
            return true;
        }
        let mut p = [libc::pollfd { fd: self.bell_rx.as_raw_fd(), events: 0, revents: 0 }];
        if matches!(sys::poll(&mut p, 0), Ok(1)) && p[0].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            self.ring_gone();
            return true;
        }
        false
    }

    /// Why a write cannot go into the ring, if it cannot (crate::tcpstate).
    fn write_refusal(&self) -> Option<StreamError> {
        tcpstate::write_refusal(self)
    }

    /// The peer is gone: re-send what it never consumed over the kernel socket (in
    /// order, before anything this side writes later), so that whoever holds the other
    /// end of the TCP connection now (the peer's kernel socket after exec or fd
    /// passing; or nobody, and the kernel answers with a reset) has the whole stream.
    /// Idempotent; producers of this process and side are excluded meanwhile.
    ///
    /// The re-send never blocks: a peer that stops reading its kernel socket (hostile,
    /// or a slow program it exec'd) must not stall this process's other connections
    /// (issue 21.2). What the kernel socket does not take now stays in the ring
    /// (RESENDING); every later write, readiness check or drop continues it, and only
    /// when all is in the kernel socket is the move done (MOVED).
    fn move_to_kernel(&self) {
        if self.has(local::MOVED) || self.has(local::BROKEN) {
            return;
        }
        if self.has(local::RESENDING) {
            self.continue_resend();
            return;
        }
        {
            let _x = self.xl_tx();
            let mut tx = self.view_tx();
            if self.has(local::MOVED | local::RESENDING) {
                return;
            }
            // What the kernel socket says (a reset it received, it reports itself).
            let end = KernelEnd::look(self.sock.as_raw_fd());
            if end.fin_only && tx.unconsumed().unwrap_or(0) > 0 {
                self.flags.fetch_or(local::ERR_RESET, Ordering::AcqRel);
            }
            match tx.head_checked() {
                Ok(head) if end.alive && head < tx.tail() => {
                    self.resend_at.store(head, Ordering::Relaxed);
                    self.flags.fetch_or(local::RESENDING, Ordering::AcqRel);
                }
                _ => {
                    self.finish_move();
                    return;
                }
            }
        }
        self.continue_resend();
    }

    /// Re-send, without blocking, what the move back still owes the kernel socket;
    /// finish the move once all of it is there. True when the move is done.
    fn continue_resend(&self) -> bool {
        let _x = self.xl_tx();
        let tx = self.view_tx();
        if !self.has(local::RESENDING) {
            return self.has(local::MOVED);
        }
        let mut at = self.resend_at.load(Ordering::Relaxed);
        let sock = self.sock.as_raw_fd();
        match tx.runs_from(at) {
            Ok(runs) => {
                'runs: for (mut ptr, mut len) in runs {
                    while len > 0 {
                        // SAFETY: the runs lie in the ring, mapped while we hold the stream.
                        match unsafe { sys::send_raw(sock, ptr, len, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) } {
                            Ok(n) => {
                                at += n as u64;
                                len -= n;
                                // SAFETY: n <= len, inside the run.
                                ptr = unsafe { ptr.add(n) };
                            }
                            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => break 'runs,
                            // The socket failed: the kernel reports it to the next call.
                            Err(_) => {
                                at = tx.tail();
                                break 'runs;
                            }
                        }
                    }
                }
            }
            Err(_) => at = tx.tail(),
        }
        self.resend_at.store(at, Ordering::Relaxed);
        if at < tx.tail() {
            return false;
        }
        self.flags.fetch_and(!local::RESENDING, Ordering::AcqRel);
        self.finish_move();
        true
    }

    /// The last step of the move back, under the transmit locks.
    fn finish_move(&self) {
        if self.has(local::WR_SHUT) {
            // Our half-close lived in the ring: give it to the kernel socket too.
            sys::shutdown_write(self.sock.as_raw_fd());
        }
        // Set under the transmit lock: a writer that takes it after us sees MOVED and
        // writes to the kernel socket, after the re-sent bytes.
        self.flags.fetch_or(local::MOVED, Ordering::AcqRel);
    }

    /// At drop, with the re-send unfinished: a thread of ours finishes it (a copy of
    /// the bytes, a dup of the socket), as the kernel goes on sending what a closed
    /// socket had queued; the closing call does not wait for a peer that is not reading.
    fn hand_off_resend(&mut self) {
        let at = self.resend_at.load(Ordering::Relaxed);
        let tx = self.tx.get_mut();
        let mut bytes = Vec::new();
        if let Ok(runs) = tx.runs_from(at) {
            for (ptr, len) in runs {
                // SAFETY: the runs lie in the ring, still mapped.
                bytes.extend_from_slice(unsafe { std::slice::from_raw_parts(ptr, len) });
            }
        }
        let shut = self.has(local::WR_SHUT);
        let Ok(sock) = crate::wait::hidden_dup(self.sock.as_raw_fd()) else { return };
        let work = move || {
            // SAFETY: bytes lives in this closure.
            unsafe { sys::send_all(sock.as_raw_fd(), bytes.as_ptr(), bytes.len()) };
            if shut {
                sys::shutdown_write(sock.as_raw_fd());
            }
        };
        let work = std::sync::Arc::new(parking_lot::Mutex::new(Some(work)));
        let w2 = work.clone();
        let spawned = std::thread::Builder::new().name("rdmasock-resend".into()).spawn(move || {
            if let Some(f) = w2.lock().take() {
                f();
            }
        });
        if spawned.is_err() {
            // No thread to be had: send here.
            if let Some(f) = work.lock().take() {
                f();
            }
        }
    }

    fn periodic_liveness(&self) {
        if self.liveness_due() {
            self.probe_gone();
        }
    }

    /// Has LIVENESS_CHECK_NS passed since the last look at the doorbell? (then the
    /// caller looks: the clock is reset)
    fn liveness_due(&self) -> bool {
        let now = sys::coarse_now_ns();
        if now.wrapping_sub(self.last_liveness_ns.load(Ordering::Relaxed)) > LIVENESS_CHECK_NS {
            self.last_liveness_ns.store(now, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// The peer set LEFT (it passed its socket on): noticed, as a hang-up is.
    fn peer_left(&self) -> bool {
        if self.peer().flags.load(Ordering::Acquire) & layout::side::LEFT != 0 {
            self.ring_gone();
            return true;
        }
        false
    }

    fn rx_avail(&self) -> Result<u64, Corrupt> {
        self.view_rx().available()
    }
}

impl RingIo for ShmStream {
    fn state(&self) -> &ConnState {
        &self.flags
    }

    fn ring_avail(&self) -> Result<u64, StreamError> {
        self.rx_avail().map_err(|_| self.broken())
    }

    fn tx_room(&self) -> bool {
        !matches!(self.view_tx().free(), Ok(0))
    }

    fn peer_wr_shut(&self) -> bool {
        self.rx.lock().peer_flags() & pflags::WR_SHUT != 0
    }

    fn peer_left(&self) -> bool {
        ShmStream::peer_left(self)
    }

    /// The doorbell's hang-up costs a system call to see: looked at most once per
    /// LIVENESS_CHECK_NS here. A read on an empty ring is the common case of a
    /// ping-pong, where the next bytes come within a microsecond; a hang-up is also seen
    /// by every wait (blocking calls, poll, select, epoll), which sets PEER_GONE.
    fn peer_gone_now(&self) -> bool {
        self.has(local::PEER_GONE) || ShmStream::peer_left(self) || self.liveness_due() && self.probe_gone()
    }

    fn before_poll(&self) {
        if !self.has(local::PEER_GONE) {
            ShmStream::peer_left(self);
        }
    }

    fn move_to_kernel(&self) {
        ShmStream::move_to_kernel(self)
    }

    fn continue_move(&self) {
        self.continue_resend();
    }

    fn kernel_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl Stream for ShmStream {
    fn fabric(&self) -> &'static str {
        "shm"
    }

    fn enqueue(&self, bufs: &[IoSlice<'_>]) -> Result<usize, StreamError> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        self.periodic_liveness();
        if self.flags.load(Ordering::Relaxed) & (local::WR_SHUT | local::PEER_GONE | local::ERR_RESET | local::BROKEN) != 0 {
            if let Some(e) = self.write_refusal() {
                return Err(e);
            }
        }
        if total == 0 {
            return Ok(0);
        }
        let n = {
            let _x = self.xl_tx();
            let mut tx = self.view_tx();
            if self.has(local::RESENDING) {
                return Err(StreamError::WouldBlock);
            }
            if self.has(local::MOVED | local::LEFT) {
                return Err(StreamError::Moved);
            }
            tx.write(bufs).map_err(|_| self.broken())?
        };
        if n == 0 {
            // Full: is anyone still reading?
            if self.probe_gone() {
                return self.enqueue(bufs);
            }
            return Err(StreamError::WouldBlock);
        }
        self.wake_peer(wait::DATA);
        Ok(n)
    }

    fn enqueue_from(&self, fill: &mut dyn FnMut(*mut u8, usize) -> io::Result<usize>) -> Result<usize, StreamError> {
        if let Some(e) = self.write_refusal() {
            return Err(e);
        }
        // The runs stay ours while the lock is dropped: the caller serialises producers
        // in this process, the side's lock across processes, and the consumer only ever
        // frees more space.
        let _x = self.xl_tx();
        let runs = {
            let mut tx = self.view_tx();
            if self.has(local::RESENDING) {
                return Err(StreamError::WouldBlock);
            }
            if self.has(local::MOVED | local::LEFT) {
                return Err(StreamError::Moved);
            }
            tx.free_runs().map_err(|_| self.broken())?
        };
        if runs[0].1 == 0 {
            drop(_x);
            if self.probe_gone() {
                return Err(self.write_refusal().unwrap_or(StreamError::Moved));
            }
            return Err(StreamError::WouldBlock);
        }
        let mut done = 0usize;
        for (ptr, len) in runs {
            if len == 0 {
                break;
            }
            match fill(ptr, len) {
                Ok(n) => {
                    let n = n.min(len);
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
            self.tx.lock().publish(done as u64);
            self.wake_peer(wait::DATA);
        }
        Ok(done)
    }

    fn dequeue(&self, bufs: &mut [IoSliceMut<'_>], peek: bool) -> Result<usize, StreamError> {
        if self.has(local::LEFT) {
            return Err(StreamError::Moved);
        }
        loop {
            let n = {
                let _x = self.xl_rx();
                self.view_rx().read(bufs, peek).map_err(|_| self.broken())?
            };
            if n > 0 {
                if !peek {
                    self.wake_peer(wait::SPACE);
                }
                return Ok(n);
            }
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
        loop {
            let x = self.xl_rx();
            let mut rx = self.view_rx();
            let runs = rx.data_runs().map_err(|_| self.broken())?;
            let mut done = 0usize;
            for (ptr, len) in runs {
                if len == 0 {
                    break;
                }
                match drain(ptr, len) {
                    Ok(n) => {
                        let n = n.min(len);
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
                rx.advance(done as u64);
                drop(rx);
                drop(x);
                self.wake_peer(wait::SPACE);
                return Ok(done);
            }
            drop(rx);
            drop(x);
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

    fn progress(&self) -> (u64, u64) {
        (self.view_rx().tail_seen(), self.view_tx().head_seen())
    }

    fn set_buffers(&self, snd: u32, rcv: u32) {
        self.sndbuf.store(snd, Ordering::Relaxed);
        self.me().rcvbuf.store(rcv, Ordering::Relaxed);
        // Our reader may now take less: wake a writer of the peer waiting for space.
        self.wake_peer(wait::SPACE);
    }

    fn take_error(&self) -> bool {
        self.flags.take_error()
    }

    fn rx_pending(&self) -> usize {
        self.rx_avail().unwrap_or(0) as usize
    }

    fn tx_pending(&self) -> usize {
        self.view_tx().unconsumed().unwrap_or(0) as usize
    }

    fn doorbell(&self) -> RawFd {
        self.bell_rx.as_raw_fd()
    }

    fn local_bell(&self) -> &LocalBell {
        &self.bell
    }

    fn arm(&self, interest: u32) {
        self.me().wait.fetch_or(interest, Ordering::SeqCst);
        // Pairs with the peer's fence in wake_peer: our bit before its index, or its
        // index before our re-check.
        fence(Ordering::SeqCst);
    }

    fn disarm(&self, interest: u32) {
        // Shared by several processes, a bit may be another process's announcement:
        // leave it (an extra ring costs a spurious wake-up, a missing one a hang).
        if !self.is_shared() {
            self.me().wait.fetch_and(!interest, Ordering::Relaxed);
        }
    }

    fn before_fork(&self) {
        self.shared.store(true, Ordering::Relaxed);
    }

    fn wait_cap(&self) -> Option<Duration> {
        self.is_shared().then_some(Duration::from_millis(20))
    }

    fn wake_local(&self) {
        // A leader sleeps in read(2) on our doorbell, whose only writers are the peer's:
        // write to it through a transient second write end (not kept, so that the
        // peer's exit still hangs the pipe up).
        let path = format!("/proc/self/fd/{}", self.bell_rx.as_raw_fd());
        if let Ok(w) = sys::open(&path, libc::O_WRONLY | libc::O_NONBLOCK, 0) {
            let _ = sys::write(w.as_raw_fd(), &[1]);
        }
        self.bell.woke();
    }

    fn ring_gone(&self) {
        if self.flags.fetch_or(local::PEER_GONE, Ordering::AcqRel) & local::PEER_GONE == 0 {
            crate::registry::note_peer_end();
            self.move_to_kernel();
        }
    }

    fn peer_gone(&self) -> bool {
        self.has(local::PEER_GONE)
    }

    fn moved(&self) -> bool {
        // Not while a reset is owed: it is ours to report (the kernel saw only a FIN).
        self.has(local::LEFT)
            || (self.has(local::MOVED) && !self.has(local::BROKEN | local::ERR_RESET) && matches!(self.rx_avail(), Ok(0)))
    }

    fn leave(&self) {
        if self.has(local::LEFT) || self.has(local::PEER_GONE) {
            return;
        }
        {
            // No write or read of ours is half done while we go.
            let _xt = self.xl_tx();
            let _t = self.view_tx();
            let _xr = self.xl_rx();
            let _r = self.view_rx();
            self.flags.fetch_or(local::LEFT | local::MOVED, Ordering::AcqRel);
            self.me().flags.fetch_or(layout::side::LEFT, Ordering::Release);
        }
        // Wake the peer wherever it waits: it moves back to TCP, re-sending what we had
        // not read.
        let _ = sys::write(self.bell_tx.as_raw_fd(), &[1]);
    }

    fn probe(&self) {
        self.probe_gone();
    }

    fn approach(&self, policy: &SpinPolicy) -> Approach {
        let my = sys::current_cpu();
        self.me().cpu.store(my, Ordering::Relaxed);
        let p = self.peer();
        let parked = p.wait.load(Ordering::Relaxed) != 0;
        policy.approach(parked, p.cpu.load(Ordering::Relaxed), my)
    }

    fn shutdown(&self, how: Shutdown) {
        if matches!(how, Shutdown::Read | Shutdown::Both) {
            self.flags.fetch_or(local::RD_SHUT, Ordering::AcqRel);
        }
        if matches!(how, Shutdown::Write | Shutdown::Both)
            && self.flags.fetch_or(local::WR_SHUT, Ordering::AcqRel) & local::WR_SHUT == 0
        {
            self.tx.lock().set_flags(pflags::WR_SHUT);
            self.wake_peer(wait::DATA);
        }
        // As Linux: threads blocked in recv or send on this socket return at once.
        self.wake_local();
    }


}

impl Drop for ShmStream {
    /// This process lets go of the connection. If it leaves bytes unread in the ring,
    /// the kernel socket must close with a reset, as Linux does for unread bytes in a
    /// receive queue (those bytes never were in the kernel's): SO_LINGER {1, 0} makes
    /// the kernel send it. The socket reference closes first, so the peer finds the
    /// reset or FIN in place when it learns that we went: from the doorbell's hang-up,
    /// or, where the doorbells are kept for the next connection, from our LEFT flag.
    /// A side shared with other processes (after fork) may be closed here while another
    /// process goes on reading: there the socket closes as it is.
    fn drop(&mut self) {
        if self.has(local::RESENDING) && !self.continue_resend() {
            self.hand_off_resend();
        }
        // SAFETY: taken once, here; nothing uses them afterwards.
        let (sock, rx, tx) = unsafe { (ManuallyDrop::take(&mut self.sock), ManuallyDrop::take(&mut self.bell_rx), ManuallyDrop::take(&mut self.bell_tx)) };
        if self.is_shared() {
            drop(sock);
            return;
        }
        let unread = !matches!(self.rx.get_mut().available(), Ok(0));
        if unread && !self.has(local::MOVED) {
            let _ = sys::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, libc::linger { l_onoff: 1, l_linger: 0 });
        }
        drop(sock);
        // A segment that carried a short, orderly connection is parked by the client,
        // and its mapping kept by the server, for the next connection between them;
        // with it, our ends of both doorbells.
        let clean = self.flags.load(Ordering::Relaxed) & (local::PEER_GONE | local::MOVED | local::LEFT | local::BROKEN | local::ERR_RESET) == 0;
        let moved = self.tx.get_mut().tail() + self.rx.get_mut().head();
        let reuse = if clean && !unread && moved <= POOL_MAX_BYTES { self.reuse.take() } else { None };
        if reuse.is_some() {
            // No hang-up will tell the peer: our flag does, and our ring if it sleeps
            // (every wait re-checks LEFT after announcing itself, §4.3 of ARCHITECTURE).
            self.me().flags.fetch_or(layout::side::LEFT, Ordering::Release);
            self.wake_peer_on(tx.as_raw_fd(), u32::MAX);
        }
        let server = self.hdr().server_pid.load(Ordering::Relaxed);
        if self.side == SERVER {
            // Our last access to the segment: the client may offer it again. Keeping the
            // mapping is not an access: it is next touched only after a new claim.
            self.me().flags.fetch_or(layout::side::RELEASED, Ordering::Release);
        }
        let owner = sys::pid();
        let bells = Bells { rx, tx, ino: self.bell_ino };
        match reuse {
            Some(Reuse::Park { seg, ino, pool }) => pool.parked.put(owner, Parked { seg, ino, map: self.map.take(), bells, server }),
            Some(Reuse::Keep { peer, ino, pool }) => pool.kept.put(owner, Kept { peer, ino, map: self.map.take(), bells }),
            None => drop(bells),
        }
    }
}

impl ShmStream {
    /// The receive ring was empty: what it means (crate::tcpstate).
    fn empty_outcome(&self) -> Result<Option<usize>, StreamError> {
        tcpstate::empty_outcome(self)
    }
}


/// The shm fabric.
pub struct Shm {
    reg: Arc<Registry>,
    ring: u64,
    pool: Arc<Pool>,
}

impl Shm {
    pub fn new(reg: Arc<Registry>, ring: u64) -> Shm {
        Shm { reg, ring, pool: Arc::new(Pool::default()) }
    }

    /// The offer of client socket `peer_inode`: in our listeners' mailboxes, as a file,
    /// or (a listening socket we did not register) in the mailbox of whoever did.
    fn find(&self, peer_inode: u64, sock: RawFd) -> Option<layout::OfferRepr> {
        self.reg.find_offer(peer_inode).or_else(|| {
            let port = sys::getsockname(sock).ok()?.port();
            self.reg.find_offer_in_listeners(peer_inode, port)
        })
    }
}

/// Segments parked at most, per process.
const POOL_MAX: usize = 4;
/// A segment that carried more than this (both directions) is not parked: its pages
/// would stay resident while it waits, and a long connection does not need a cheap
/// set-up.
const POOL_MAX_BYTES: u64 = 64 << 10;

/// Segments of finished connections, to be used again: creating, sizing, sealing,
/// mapping and first-touching a segment, and later unmapping and freeing it, is most of
/// what a fabric connection costs to set up.
///
/// A client parks its segment and offers it again once the server side has set RELEASED
/// (its last access; a server that forked, died or never claimed never sets it, and
/// such a segment is simply evicted). A server keeps the mapping of a segment it
/// released, keyed by the client's pid and the segment's inode (our mapping holds the
/// inode, so its number cannot name another object meanwhile): when that client offers
/// it again, the claim maps nothing. The offer is checked as any other (magic, nonce,
/// state), and the seals checked at the first mapping are permanent. Entries are used
/// only by the process that made them (a forked child drops its inherited copies).
struct Pool {
    parked: Shelf<Parked>,
    kept: Shelf<Kept>,
}

impl Default for Pool {
    fn default() -> Pool {
        Pool { parked: Shelf::new(POOL_MAX), kept: Shelf::new(KEEP_MAX) }
    }
}

/// Server mappings kept at most, per process (several clients may each have one).
const KEEP_MAX: usize = 8;

/// A client's parked segment, with our ends of its doorbells and the pid of the
/// server that holds the other ends (if it kept them).
struct Parked {
    seg: Fd,
    ino: u64,
    map: Mapping,
    bells: Bells,
    server: u32,
}

/// One side's doorbell ends: its own pipe's read end, the peer's pipe's write end; and
/// the two pipes' inodes (the client's, the server's), as an offer record names them.
///
/// Kept with a parked segment (client) or a kept mapping (server), they carry the next
/// connection between the same two processes: no pipe is made, moved, taken or closed.
/// A hang-up still means what it meant: the other process died, or dropped its ends
/// (evicted them, or its connection did not end cleanly).
struct Bells {
    rx: Fd,
    tx: Fd,
    ino: (u64, u64),
}

impl Bells {
    /// Can these ends carry another connection? Both pipes must still have their other
    /// end; a doorbell byte left from the last connection is drained (a spurious wake-up
    /// otherwise, and over many connections a full pipe).
    fn ready_again(&self) -> bool {
        let mut p = [
            libc::pollfd { fd: self.rx.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: self.tx.as_raw_fd(), events: 0, revents: 0 },
        ];
        if sys::poll(&mut p, 0).is_err() {
            return false;
        }
        let hung = |r: i16| r & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0;
        if hung(p[0].revents) || hung(p[1].revents) {
            return false;
        }
        !crate::wait::drain_after_poll(p[0].fd, p[0].revents)
    }
}

impl Parked {
    fn hdr(&self) -> &SegHeader {
        // SAFETY: a segment we created and checked, at least a header long.
        unsafe { &*(self.map.as_ptr() as *const SegHeader) }
    }
}

/// A server's kept mapping of client `peer`'s segment `ino`, with our doorbell ends.
struct Kept {
    peer: u32,
    ino: u64,
    map: Mapping,
    bells: Bells,
}

/// A few entries kept by this process for a later connection, the oldest evicted first.
/// Each is tagged with the pid that put it: a forked child drops what it inherited.
struct Shelf<T> {
    max: usize,
    items: Mutex<Vec<(u32, T)>>,
}

impl<T> Shelf<T> {
    fn new(max: usize) -> Shelf<T> {
        Shelf { max, items: Mutex::new(Vec::new()) }
    }

    fn put(&self, owner: u32, item: T) {
        let mut v = self.items.lock();
        if v.len() >= self.max {
            v.remove(0);
        }
        v.push((owner, item));
    }

    /// An entry of ours that `want`s, taken off the shelf.
    fn take(&self, owner: u32, want: impl Fn(&T) -> bool) -> Option<T> {
        let mut v = self.items.lock();
        if v.is_empty() {
            return None;
        }
        v.retain(|(o, _)| *o == owner);
        let i = v.iter().position(|(_, t)| want(t))?;
        Some(v.swap_remove(i).1)
    }

    /// In a forked child: close what the parent put (its doorbell ends above all: held
    /// here, they would keep the parent's peer from ever seeing the parent die).
    fn forget_others(&self, owner: u32) {
        self.items.lock().retain(|(o, _)| *o == owner);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.items.lock().len()
    }
}

struct ShmOffer {
    /// Where the offer was posted (a mailbox slot or a file), until it is removed.
    record: Mutex<Option<Posted>>,
    /// Until decided: the pipe ends the server opens through /proc.
    lent: Mutex<Vec<Fd>>,
    /// The segment's memfd (and inode), which the server opens through /proc; kept by
    /// the stream for the pool.
    seg: Mutex<Option<(Fd, u64)>>,
    pool: Arc<Pool>,
    map: Mutex<Option<Mapping>>,
    ring: u64,
    bell_rx: Mutex<Option<Fd>>,
    bell_tx: Mutex<Option<Fd>>,
    bell_ino: (u64, u64),
    sock: Mutex<Option<Fd>>,
    /// The stream's side locks, made with the offer: a process forked before first use
    /// makes its stream from this offer, and must share them with its parent.
    locks: Mutex<Option<SideLocks>>,
}

impl ShmOffer {
    fn hdr(&self) -> &SegHeader {
        let m = self.map.lock();
        let p = m.as_ref().map(|m| m.as_ptr()).expect("mapping present until into_stream");
        // SAFETY: the header lives at the start of the mapping, which lives in self
        // (taken only by into_stream, which consumes self).
        unsafe { &*(p as *const SegHeader) }
    }

    fn state(&self) -> &AtomicU32 {
        &self.hdr().state
    }

    fn client_wait(&self) -> &AtomicU32 {
        &self.hdr().sides[CLIENT].wait
    }

    fn finish(&self) {
        self.lent.lock().clear();
        if let Some(posted) = self.record.lock().take() {
            posted.remove();
        }
    }
}

impl Offer for ShmOffer {
    fn decision(&self, timeout: Duration) -> Option<bool> {
        let answer = |st: u32| match st {
            state::CLAIMED => Some(true),
            state::OFFERED => None,
            _ => Some(false),
        };
        if timeout.is_zero() {
            // Asked between yields while the server accepts: one load, no clock.
            return answer(self.state().load(Ordering::Acquire));
        }
        let deadline = sys::now_ns() + timeout.as_nanos() as u64;
        self.arm();
        loop {
            if let Some(a) = answer(self.state().load(Ordering::Acquire)) {
                return Some(a);
            }
            let now = sys::now_ns();
            if now >= deadline {
                return None;
            }
            let bell = self.bell_rx.lock().as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
            let mut p = [libc::pollfd { fd: bell, events: libc::POLLIN, revents: 0 }];
            let ms = ((deadline - now) / 1_000_000).max(1) as i32;
            if let Ok(1) = sys::poll(&mut p, ms) {
                if p[0].revents & libc::POLLIN != 0 {
                    let mut b = [0u8; 16];
                    let _ = sys::read(bell, &mut b);
                }
            }
        }
    }

    fn withdraw(&self) -> bool {
        let won = self
            .state()
            .compare_exchange(state::OFFERED, state::WITHDRAWN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won || self.state().load(Ordering::Acquire) != state::CLAIMED {
            self.finish();
            return true;
        }
        false
    }

    fn doorbell(&self) -> RawFd {
        self.bell_rx.lock().as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1)
    }

    fn arm(&self) {
        self.client_wait().fetch_or(wait::CLAIM, Ordering::SeqCst);
        // Pairs with the server's fence between its claim and its look at this word.
        fence(Ordering::SeqCst);
    }

    fn into_stream(self: Box<Self>) -> Arc<dyn Stream> {
        let this = self;
        // Nobody rings for the claim any more; the bit would read as a waiting client.
        this.client_wait().fetch_and(!wait::CLAIM, Ordering::Relaxed);
        this.finish();
        let map = this.map.lock().take().expect("mapping present");
        let rx = this.bell_rx.lock().take().expect("bell present");
        let tx = this.bell_tx.lock().take().expect("bell present");
        let sock = this.sock.lock().take().expect("socket present");
        let reuse = this.seg.lock().take().map(|(seg, ino)| Reuse::Park { seg, ino, pool: this.pool.clone() });
        let locks = this.locks.lock().take().expect("locks present");
        Arc::new(ShmStream::new(map, CLIENT, this.ring, sock, Bells { rx, tx, ino: this.bell_ino }, locks, reuse))
    }
}

impl Drop for ShmOffer {
    fn drop(&mut self) {
        // Undecided at drop (the connect failed, or the socket closed before first use):
        // withdraw, so that a server that already read the record cannot claim it.
        if self.map.lock().is_some() {
            let _ = self.state().compare_exchange(state::OFFERED, state::WITHDRAWN, Ordering::AcqRel, Ordering::Acquire);
        }
        if let Some(posted) = self.record.get_mut().take() {
            posted.remove();
        }
    }
}

/// Ring the client's doorbell once, for a server that refused or could not claim: the
/// client then reads the state word instead of waiting out its decision timeout.
fn ring_client(rec: &layout::OfferRepr) {
    if rec.client_bell_fd == layout::BELLS_KEPT {
        // Only a server that kept the doorbells could ring; the client also looks at the
        // state word every few milliseconds while it waits.
        return;
    }
    if let Ok((f, _)) = sys::peer_fd(rec.pid, rec.client_bell_fd, libc::O_WRONLY | libc::O_NONBLOCK) {
        let st = sys::fstat(f.as_raw_fd());
        if st.is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFIFO && st.st_ino == rec.client_bell_ino) {
            let _ = sys::write(f.as_raw_fd(), &[1]);
        }
    }
}

impl Fabric for Shm {
    fn name(&self) -> &'static str {
        "shm"
    }

    fn id(&self) -> u8 {
        crate::choice::fabric_id::SHM
    }

    fn caps(&self) -> Caps {
        Caps(Caps::SAME_KERNEL | Caps::SHARED_PAGES | Caps::POLLABLE_DOORBELL | Caps::KERNEL_VERIFIED_PEER)
    }

    fn offer(&self, sock: RawFd, to: Option<&ListenerRepr>) -> io::Result<Box<dyn Offer>> {
        let sock_inode = sys::fstat(sock)?.st_ino;
        let sock = crate::wait::hidden_dup(sock)?;
        let len = layout::segment_len(self.ring);
        let pid = sys::pid();
        let released = |p: &Parked| p.map.len() == len as usize && p.hdr().sides[SERVER].flags.load(Ordering::Acquire) & layout::side::RELEASED != 0;
        let (seg, seg_ino, map, bells) = match self.pool.parked.take(pid, released) {
            Some(p) => (p.seg, p.ino, p.map, Some((p.bells, p.server))),
            None => {
                let seg = hide_fd(sys::sealed_memfd("rdmasock", len)?);
                let map = Mapping::shared(seg.as_raw_fd(), len as usize)?;
                let ino = sys::fstat(seg.as_raw_fd())?.st_ino;
                (seg, ino, map, None)
            }
        };
        // The last connection's doorbells, if the one listener we offer to is the
        // process that kept their other ends (it claimed that connection) and still
        // has them.
        let kept = bells.filter(|(b, server)| to.is_some_and(|l| l.pid == *server) && b.ready_again()).map(|(b, _)| b);
        let nonce = sys::random_u64();
        // SAFETY: a fresh mapping, or a parked one whose server side has released it:
        // nobody else touches it until the offer is posted.
        unsafe { reset_header(map.as_ptr() as *mut SegHeader, nonce, self.ring, pid, sys::current_cpu()) };
        let (bell_rx, bell_tx, lent, (client_bell_fd, server_bell_fd), bell_ino) = match kept {
            Some(b) => {
                // SAFETY: the header of our own mapping, not yet offered.
                let h = unsafe { &*(map.as_ptr() as *const SegHeader) };
                h.kept_fds[0].store(b.rx.as_raw_fd(), Ordering::Relaxed);
                h.kept_fds[1].store(b.tx.as_raw_fd(), Ordering::Relaxed);
                (b.rx, b.tx, Vec::new(), (layout::BELLS_KEPT, layout::BELLS_KEPT), b.ino)
            }
            None => {
                let (c_r, c_w) = sys::doorbell_pipe()?;
                let (s_r, s_w) = sys::doorbell_pipe()?;
                let (c_r, c_w, s_r, s_w) = (hide_fd(c_r), hide_fd(c_w), hide_fd(s_r), hide_fd(s_w));
                let ino = |f: &Fd| sys::fstat(f.as_raw_fd()).map(|s| s.st_ino);
                let fds = (c_w.as_raw_fd(), s_r.as_raw_fd());
                let inos = (ino(&c_w)?, ino(&s_r)?);
                (c_r, s_w, vec![c_w, s_r], fds, inos)
            }
        };
        let rec = layout::OfferRepr {
            nonce,
            pid,
            seg_fd: seg.as_raw_fd(),
            client_bell_fd,
            server_bell_fd,
            client_bell_ino: bell_ino.0,
            server_bell_ino: bell_ino.1,
            ring_size: self.ring,
            seg_ino,
        };
        let locks = SideLocks::new()?;
        let record = self.reg.post_offer(sock_inode, &rec, to)?;
        Ok(Box::new(ShmOffer {
            record: Mutex::new(Some(record)),
            lent: Mutex::new(lent),
            seg: Mutex::new(Some((seg, seg_ino))),
            pool: self.pool.clone(),
            map: Mutex::new(Some(map)),
            ring: self.ring,
            bell_rx: Mutex::new(Some(bell_rx)),
            bell_tx: Mutex::new(Some(bell_tx)),
            bell_ino,
            sock: Mutex::new(Some(sock)),
            locks: Mutex::new(Some(locks)),
        }))
    }

    fn after_fork_child(&self) {
        let me = sys::getpid();
        self.pool.parked.forget_others(me);
        self.pool.kept.forget_others(me);
    }

    fn claim(&self, peer_inode: u64, sock: RawFd) -> Result<Arc<dyn Stream>, Reason> {
        let Some(rec) = self.find(peer_inode, sock) else { return Err(Reason::PeerNotShim) };
        // The client removes the record when it has decided (or the sweep, if it dies).
        claim_offer(&rec, sock, &self.pool)
    }

    fn refuse(&self, peer_inode: u64, _sock: RawFd) {
        let Some(rec) = self.reg.find_offer(peer_inode) else { return };
        if let Ok(map) = sys::map_peer_sealed(rec.pid, rec.seg_fd, rec.seg_ino, layout::segment_len(rec.ring_size)) {
            // SAFETY: a checked segment, at least a header long.
            let hdr = unsafe { &*(map.as_ptr() as *const SegHeader) };
            let ours = hdr.nonce == rec.nonce
                && hdr.state.compare_exchange(state::OFFERED, state::REFUSED, Ordering::AcqRel, Ordering::Acquire).is_ok();
            if ours {
                ring_client(&rec);
            }
        }
    }
}

/// Open and check everything an offer names, then claim it.
fn claim_offer(rec: &layout::OfferRepr, sock: RawFd, pool: &Arc<Pool>) -> Result<Arc<dyn Stream>, Reason> {
    let fail = |_| Reason::ClaimFailed;
    let locks = SideLocks::new().map_err(fail)?;
    let sock = crate::wait::hidden_dup(sock).map_err(fail)?;
    // The seals make the size permanent, so no access can ever fault (SIGBUS).
    let len = layout::segment_len(rec.ring_size);
    let ours = |k: &Kept| k.peer == rec.pid && k.ino == rec.seg_ino && k.map.len() == len as usize;
    let (map, kept_bells) = match pool.kept.take(sys::pid(), ours) {
        Some(k) => (k.map, Some(k.bells)),
        None => (sys::map_peer_sealed(rec.pid, rec.seg_fd, rec.seg_ino, len).map_err(fail)?, None),
    };
    // SAFETY: the mapping is at least a header long (checked size).
    let hdr = unsafe { &*(map.as_ptr() as *const SegHeader) };
    let refuse = |why| {
        if hdr.state.compare_exchange(state::OFFERED, state::REFUSED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            ring_client(rec);
        }
        why
    };
    if hdr.magic != layout::SEG_MAGIC || hdr.version != layout::SEG_VERSION || hdr.nonce != rec.nonce {
        // Not the segment this record was written for: its state is not ours to touch.
        return Err(Reason::ClaimFailed);
    }
    // Our writing end non-blocking, our reading end blocking (waits sleep in read(2)).
    // Either the client's very pipe ends (pidfd_getfd), whose flags are set here whatever
    // the client left in them, or new opens through /proc, non-blocking so that opening
    // could not hang on a FIFO without writers, the reading end then made blocking.
    let open_fifo = |fd: i32, ino: u64, flags: i32| -> Result<Fd, Reason> {
        let (f, same) = sys::peer_fd(rec.pid, fd, flags | libc::O_NONBLOCK).map_err(fail)?;
        let st = sys::fstat(f.as_raw_fd()).map_err(fail)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFIFO || st.st_ino != ino {
            return Err(Reason::ClaimFailed);
        }
        let want = flags & libc::O_NONBLOCK;
        if same || want == 0 {
            sys::fcntl(f.as_raw_fd(), libc::F_SETFL, want as libc::c_long).map_err(fail)?;
        }
        Ok(f)
    };
    let bell_ino = (rec.client_bell_ino, rec.server_bell_ino);
    let bells = if rec.client_bell_fd == layout::BELLS_KEPT {
        // The client uses the last connection's doorbells again: we must have kept ours.
        // Not polled here: the client offered through its ends just now, so a hang-up
        // means it died since, which the stream's first wait sees (as any death); a byte
        // left in our pipe costs one spurious wake-up.
        match kept_bells {
            Some(b) if b.ino == bell_ino => b,
            // Evicted since the client looked (a burst of closes: our shelf is short):
            // new ends of the same pipes, from the client's through /proc (a pidfd_getfd
            // would give its very ends, of the wrong direction), checked by inode.
            _ => {
                let reopen = |fd: i32, ino: u64, flags: i32| -> Result<Fd, Reason> {
                    let f = sys::open(&format!("/proc/{}/fd/{fd}", rec.pid), flags | libc::O_NONBLOCK, 0).map_err(fail)?;
                    let st = sys::fstat(f.as_raw_fd()).map_err(fail)?;
                    if st.st_mode & libc::S_IFMT != libc::S_IFIFO || st.st_ino != ino {
                        return Err(Reason::ClaimFailed);
                    }
                    sys::fcntl(f.as_raw_fd(), libc::F_SETFL, (flags & libc::O_NONBLOCK) as libc::c_long).map_err(fail)?;
                    Ok(f)
                };
                let (crx, ctx) = (hdr.kept_fds[0].load(Ordering::Relaxed), hdr.kept_fds[1].load(Ordering::Relaxed));
                let tx = reopen(crx, rec.client_bell_ino, libc::O_WRONLY | libc::O_NONBLOCK).map_err(refuse)?;
                let rx = reopen(ctx, rec.server_bell_ino, libc::O_RDONLY).map_err(refuse)?;
                Bells { rx: hide_fd(rx), tx: hide_fd(tx), ino: bell_ino }
            }
        }
    } else {
        let tx = open_fifo(rec.client_bell_fd, rec.client_bell_ino, libc::O_WRONLY | libc::O_NONBLOCK).map_err(refuse)?;
        let rx = open_fifo(rec.server_bell_fd, rec.server_bell_ino, libc::O_RDONLY).map_err(refuse)?;
        Bells { rx: hide_fd(rx), tx: hide_fd(tx), ino: bell_ino }
    };
    // Published with the claim: where the server runs, for the client's first wait.
    hdr.sides[SERVER].cpu.store(sys::current_cpu(), Ordering::Relaxed);
    if hdr.state.compare_exchange(state::OFFERED, state::CLAIMED, Ordering::AcqRel, Ordering::Acquire).is_err() {
        return Err(Reason::ClaimTimeout);
    }
    hdr.server_pid.store(sys::pid(), Ordering::Relaxed);
    // Ring only a client that sleeps for the answer (or may: a poll or epoll waiter);
    // one that spins or yields reads the state word. Dekker with the client's arm: our
    // claim before our look at its bit, its bit before its look at the state.
    fence(Ordering::SeqCst);
    let w = &hdr.sides[CLIENT].wait;
    if w.load(Ordering::Relaxed) & wait::CLAIM != 0 && w.fetch_and(!wait::CLAIM, Ordering::SeqCst) & wait::CLAIM != 0 {
        // Kept doorbells were not polled: a client that died since it armed has no
        // reader left, and a write would raise SIGPIPE here. (Its death reaches the
        // stream through the hang-up.)
        let mut p = [libc::pollfd { fd: bells.tx.as_raw_fd(), events: 0, revents: 0 }];
        let hung = matches!(sys::poll(&mut p, 0), Ok(1)) && p[0].revents & (libc::POLLERR | libc::POLLHUP) != 0;
        if !hung {
            let _ = sys::write(bells.tx.as_raw_fd(), &[1]);
        }
    }
    let reuse = Reuse::Keep { peer: rec.pid, ino: rec.seg_ino, pool: pool.clone() };
    Ok(Arc::new(ShmStream::new(map, SERVER, rec.ring_size, sock, bells, locks, Some(reuse))))
}

/// Make a segment header ready for a new offer: identity, and every shared word as a
/// fresh segment has it (a parked segment carries its last connection's).
///
/// # Safety
/// `h` points at the header of a mapped segment that no other process accesses.
unsafe fn reset_header(h: *mut SegHeader, nonce: u64, ring: u64, pid: u32, cpu: u32) {
    std::ptr::addr_of_mut!((*h).magic).write(layout::SEG_MAGIC);
    std::ptr::addr_of_mut!((*h).version).write(layout::SEG_VERSION);
    std::ptr::addr_of_mut!((*h).nonce).write(nonce);
    std::ptr::addr_of_mut!((*h).ring_size).write(ring);
    let h = &*h;
    h.client_pid.store(pid, Ordering::Relaxed);
    h.server_pid.store(0, Ordering::Relaxed);
    for f in &h.kept_fds {
        f.store(-1, Ordering::Relaxed);
    }
    for s in &h.sides {
        s.wait.store(0, Ordering::Relaxed);
        s.cpu.store(u32::MAX, Ordering::Relaxed);
        s.tx_lock.store(0, Ordering::Relaxed);
        s.rx_lock.store(0, Ordering::Relaxed);
        s.flags.store(0, Ordering::Relaxed);
        s.rcvbuf.store(0, Ordering::Relaxed);
    }
    // Where the client runs, so that a server waiting for its first bytes can spin or
    // yield for them rather than sleep (conn::wait_stream): the client writes right
    // after the claim.
    h.sides[CLIENT].cpu.store(cpu, Ordering::Relaxed);
    for d in &h.dirs {
        d.prod.tail.store(0, Ordering::Relaxed);
        d.prod.flags.store(0, Ordering::Relaxed);
        d.cons.head.store(0, Ordering::Relaxed);
    }
    // Publishes everything above to whoever later sees OFFERED.
    h.state.store(state::OFFERED, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry of its own, the fabric on it, and a loopback listener.
    fn setup() -> (String, Arc<Registry>, Shm, std::net::TcpListener) {
        let dir = format!("/tmp/rdmasock-shmtest-{}-{:x}", sys::getpid(), sys::random_u64());
        let reg = Arc::new(Registry::open(&dir).unwrap());
        let shm = Shm::new(reg.clone(), 64 << 10);
        (dir, reg, shm, std::net::TcpListener::bind("127.0.0.1:0").unwrap())
    }

    fn exchange(client: &dyn Stream, server: &dyn Stream, what: &str) {
        let mut buf = [0u8; 64];
        assert_eq!(client.enqueue(&[IoSlice::new(what.as_bytes())]).unwrap(), what.len());
        let n = server.dequeue(&mut [IoSliceMut::new(&mut buf)], false).unwrap();
        assert_eq!(&buf[..n], what.as_bytes());
        let back = what.to_uppercase();
        assert_eq!(server.enqueue(&[IoSlice::new(back.as_bytes())]).unwrap(), back.len());
        let n = client.dequeue(&mut [IoSliceMut::new(&mut buf)], false).unwrap();
        assert_eq!(&buf[..n], back.as_bytes());
    }

    /// Short orderly connections between the same two processes: the client offers its
    /// parked segment again, the server claims it through the mapping it kept, bytes
    /// come out right over a ring holding the last connection's bytes, and a stale
    /// record of the same segment (an older nonce) claims nothing.
    #[test]
    fn segments_and_mappings_are_used_again() {
        let (dir, reg, shm, l) = setup();
        let mut first: Option<layout::OfferRepr> = None;
        for round in 0..3 {
            let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            let inode = sys::fstat(c.as_raw_fd()).unwrap().st_ino;
            let offer = shm.offer(c.as_raw_fd(), None).unwrap();
            let rec = reg.find_offer(inode).expect("the offer is posted");
            if let Some(old) = &first {
                assert_eq!(rec.seg_ino, old.seg_ino, "round {round}: the parked segment is offered again");
                assert_ne!(rec.nonce, old.nonce);
            }
            if round == 2 {
                let stale = first.as_ref().unwrap();
                assert_eq!(claim_offer(stale, s.as_raw_fd(), &shm.pool).err(), Some(Reason::ClaimFailed));
            }
            let kept = shm.pool.kept.len();
            let server = shm.claim(inode, s.as_raw_fd()).unwrap();
            if round == 1 {
                assert_eq!((kept, shm.pool.kept.len()), (1, 0), "the claim took the kept mapping");
            }
            assert_eq!(offer.decision(Duration::from_secs(5)), Some(true));
            let client = offer.into_stream();
            exchange(&*client, &*server, &format!("round {round}, {}", "x".repeat(round * 7)));
            drop(server);
            drop(client);
            assert_eq!(shm.pool.parked.len(), 1);
            assert_eq!(shm.pool.kept.len(), 1);
            first.get_or_insert(rec);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Between the same two processes the doorbells of a finished connection carry the
    /// next one: the record names them as kept, and no pipe is made. A clean close then
    /// reaches the peer through LEFT (the connection moves to the kernel socket and reads
    /// its EOF, as after a hang-up). Ends whose other side went are not used again, and a
    /// server that no longer has the kept ends (evicted after the client looked) opens
    /// new ends of the same pipes instead of refusing.
    #[test]
    fn doorbells_are_used_again() {
        let (dir, reg, shm, l) = setup();
        let port = l.local_addr().unwrap().port();
        let me = ListenerRepr { addr: [0; 16], port, flags: 0, pid: sys::getpid(), mbox_fd: -1, mbox_ino: 0, fabrics: crate::choice::fabric_id::SHM };
        let held = reg.register_listener(&me).unwrap();
        let to = reg.listeners(port)[0];
        let mut first: Option<layout::OfferRepr> = None;
        for round in 0..5 {
            let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            let inode = sys::fstat(c.as_raw_fd()).unwrap().st_ino;
            let offer = shm.offer(c.as_raw_fd(), Some(&to)).unwrap();
            let rec = reg.find_offer(inode).expect("the offer is posted");
            let kept = (rec.client_bell_fd, rec.server_bell_fd) == (layout::BELLS_KEPT, layout::BELLS_KEPT);
            assert_eq!(kept, matches!(round, 1 | 2 | 4), "round {round}: {rec:?}");
            if kept {
                let old = first.as_ref().unwrap();
                assert_eq!((rec.client_bell_ino, rec.server_bell_ino), (old.client_bell_ino, old.server_bell_ino));
            } else {
                first = Some(rec);
            }
            if round == 4 {
                // The server lost its ends (as by eviction) after the client looked: it
                // opens new ends of the same pipes (the header names the client's), and
                // the connection is carried as any other.
                shm.pool.kept.forget_others(0);
                let server = shm.claim(inode, s.as_raw_fd()).expect("claimed through new ends of the kept pipes");
                assert_eq!(offer.decision(Duration::from_secs(5)), Some(true));
                let client = offer.into_stream();
                exchange(&*client, &*server, "round 4, the server's ends evicted");
                break;
            }
            let server = shm.claim(inode, s.as_raw_fd()).unwrap();
            assert_eq!(offer.decision(Duration::from_secs(5)), Some(true));
            let client = offer.into_stream();
            exchange(&*client, &*server, &format!("round {round}"));
            drop(s);
            drop(server);
            if round == 2 {
                // The server closed in order and kept its ends: no hang-up, LEFT instead.
                assert!(client.has_data());
                let mut buf = [0u8; 8];
                assert!(matches!(client.dequeue(&mut [IoSliceMut::new(&mut buf)], false), Err(StreamError::Moved)));
                assert_eq!(std::io::Read::read(&mut c, &mut buf).unwrap(), 0, "EOF from the kernel socket");
                drop(client);
                // Moved: the client lets its ends go, so the server's kept ends hang up
                // and the next offer makes new pipes.
                assert_eq!(shm.pool.parked.len(), 0);
                continue;
            }
            drop(client);
            // (Round 3: beside the server's kept entry of round 2, whose client is gone.)
            assert_eq!((shm.pool.parked.len(), shm.pool.kept.len()), (1, 1 + (round == 3) as usize));
        }
        reg.release(held);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
