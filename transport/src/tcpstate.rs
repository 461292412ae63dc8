//! The TCP-semantics state of a fabric connection, written once for every fabric.
//!
//! A connection side is in one of these states, and moves between them only as drawn
//! (each a set of [`bit`]s; several may hold at once, e.g. both directions shut):
//!
//! ```text
//!                 shutdown(RD)/(WR), the peer's SHUT_WR
//!   OPEN ─────────────────────────────────────────────▶ HALF-SHUT (each direction)
//!    │  the peer went (hang-up, release,                    │
//!    │  LEFT notice)                                        │
//!    ▼                                                      ▼
//!   PEER_GONE ── re-send what the peer never consumed ──▶ RESENDING ──▶ MOVED
//!    │          (shm: without blocking, continued by       (every call is the
//!    │           later calls; kmod: at once)                kernel socket's once
//!    │                                                      the ring is read)
//!   an impossible value from the peer ──▶ BROKEN + ERR_RESET (reset, reported once)
//!   our socket passed on (SCM_RIGHTS) ──▶ LEFT (every call is the kernel socket's)
//! ```
//!
//! What a call sees in each state is decided here, for every fabric: why a write is
//! refused ([`write_refusal`]), what an empty receive ring means ([`empty_outcome`]),
//! readiness ([`has_data`], [`has_space`]) and the poll mapping ([`poll_events`], as
//! Linux's `tcp_poll`). A fabric supplies only how its ring looks ([`RingIo`]).

use crate::fabric::{Shutdown, StreamError};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

/// The state bits (process-local: never in shared memory).
pub mod bit {
    /// shutdown(SHUT_RD) here.
    pub const RD_SHUT: u32 = 1;
    /// shutdown(SHUT_WR) here.
    pub const WR_SHUT: u32 = 2;
    /// The peer is gone (its doorbell hung up, its endpoint was released, or it left
    /// the ring).
    pub const PEER_GONE: u32 = 4;
    /// A reset is pending for the next call that can report it (ECONNRESET).
    pub const ERR_RESET: u32 = 8;
    /// What the peer never consumed was re-sent over the kernel socket: writes go
    /// there now, and reads too once the ring is empty.
    pub const MOVED: u32 = 16;
    /// The peer shut down writing (a fabric that learns it by message; shm reads the
    /// peer's ring flags instead).
    pub const PEER_WR_SHUT: u32 = 32;
    /// The peer broke the protocol (an impossible index or message); a reset.
    pub const BROKEN: u32 = 64;
    /// We left the ring (our socket was passed on): every call is the kernel socket's,
    /// and the peer re-sends what we had not consumed.
    pub const LEFT: u32 = 128;
    /// The move back is under way: what the peer never consumed is being re-sent,
    /// without blocking; writes wait until it is all in the kernel socket.
    pub const RESENDING: u32 = 256;
    /// The peer's exact consumption is known (kmod: its close value or LEFT notice).
    pub const FINAL_HEAD: u32 = 512;
    /// The peer left the ring (kmod: its LEFT notice).
    pub const PEER_LEFT: u32 = 1024;
}

/// One side's state word. Derefs to the atomic, for a fabric's own compound updates.
#[derive(Debug, Default)]
pub struct ConnState(AtomicU32);

impl std::ops::Deref for ConnState {
    type Target = AtomicU32;
    fn deref(&self) -> &AtomicU32 {
        &self.0
    }
}

impl ConnState {
    pub fn new(bits: u32) -> ConnState {
        ConnState(AtomicU32::new(bits))
    }

    /// The bits (Acquire).
    pub fn bits(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }

    /// Is any of `bits` set?
    pub fn has(&self, bits: u32) -> bool {
        self.bits() & bits != 0
    }

    /// Set `bits`; returns the bits before.
    pub fn set(&self, bits: u32) -> u32 {
        self.0.fetch_or(bits, Ordering::AcqRel)
    }

    /// Clear `bits`; returns the bits before.
    pub fn clear(&self, bits: u32) -> u32 {
        self.0.fetch_and(!bits, Ordering::AcqRel)
    }

    /// Consume the pending reset (as Linux: a socket error is reported once).
    pub fn take_error(&self) -> bool {
        self.clear(bit::ERR_RESET) & bit::ERR_RESET != 0
    }

    /// The peer broke the protocol: the connection is reset.
    pub fn broken(&self) -> StreamError {
        self.set(bit::BROKEN | bit::PEER_GONE | bit::ERR_RESET);
        StreamError::Reset
    }

    /// shutdown(2)'s transition. Returns whether the write side shut just now (the
    /// fabric then tells the peer).
    pub fn shut(&self, how: Shutdown) -> bool {
        if matches!(how, Shutdown::Read | Shutdown::Both) {
            self.set(bit::RD_SHUT);
        }
        matches!(how, Shutdown::Write | Shutdown::Both) && self.set(bit::WR_SHUT) & bit::WR_SHUT == 0
    }
}

/// What differs per fabric: how its rings look.
pub(crate) trait RingIo {
    fn state(&self) -> &ConnState;
    /// Bytes waiting in the receive ring; `Err`: the peer published an impossible
    /// index (the fabric has marked the connection broken).
    fn ring_avail(&self) -> Result<u64, StreamError>;
    /// The transmit ring has room.
    fn tx_room(&self) -> bool;
    /// The peer's half-close has reached us (ordered after its last bytes).
    fn peer_wr_shut(&self) -> bool;
    /// The peer left the ring (noticed as a hang-up is).
    fn peer_left(&self) -> bool;
    /// After the receive ring was seen empty: is the peer gone? (May look, at a
    /// bounded cost.)
    fn peer_gone_now(&self) -> bool {
        self.state().has(bit::PEER_GONE)
    }
    /// Take what the fabric has to tell (kmod: the mailbox), before a second look.
    /// Returns whether there can be anything new to see (false: no second look).
    fn refresh(&self) -> bool {
        false
    }
    /// Look (cheaply) whether the peer went, before a readiness report.
    fn before_poll(&self) {
        self.refresh();
    }
    /// Start the move back to kernel TCP (idempotent).
    fn move_to_kernel(&self);
    /// Continue an unfinished re-send (RESENDING); returns nothing: the state says.
    fn continue_move(&self) {}
    /// Our reference to the kernel socket.
    fn kernel_fd(&self) -> RawFd;
}

/// Why a write cannot go into the ring, if it cannot.
pub(crate) fn write_refusal(io: &impl RingIo) -> Option<StreamError> {
    let f = io.state().bits();
    if f & bit::WR_SHUT != 0 {
        return Some(StreamError::Pipe);
    }
    if f & bit::ERR_RESET != 0 {
        // As Linux: the pending error is reported once (ECONNRESET, consumed by the
        // caller with take_error).
        return Some(StreamError::Reset);
    }
    if f & bit::BROKEN != 0 {
        return Some(StreamError::Pipe);
    }
    if f & bit::LEFT != 0 {
        return Some(StreamError::Moved);
    }
    if f & bit::PEER_GONE != 0 {
        io.move_to_kernel();
        // An unfinished re-send: nothing may go to the kernel socket before it.
        return Some(if io.state().has(bit::RESENDING) { StreamError::WouldBlock } else { StreamError::Moved });
    }
    None
}

/// The receive ring was empty: end of stream, an error, the move to the kernel socket,
/// or nothing yet. `Ok(Some(0))`: EOF; `Ok(None)`: data appeared, try again.
pub(crate) fn empty_outcome(io: &impl RingIo) -> Result<Option<usize>, StreamError> {
    let st = io.state();
    if st.has(bit::RD_SHUT) {
        return Ok(Some(0));
    }
    if st.has(bit::BROKEN) {
        return if st.has(bit::ERR_RESET) { Err(StreamError::Reset) } else { Ok(Some(0)) };
    }
    // The state is read after the ring was seen empty; the ring is looked at again
    // after it: a fabric publishes its last bytes before its half-close or departure.
    let shut = io.peer_wr_shut();
    let gone = !shut && io.peer_gone_now();
    if shut || gone {
        if io.ring_avail()? > 0 {
            return Ok(None);
        }
        if gone {
            io.move_to_kernel();
            if st.has(bit::ERR_RESET) {
                return Err(StreamError::Reset);
            }
            return Err(StreamError::Moved);
        }
        return Ok(Some(0));
    }
    Err(StreamError::WouldBlock)
}

/// A dequeue would not block (data, end of stream or an error is waiting).
pub(crate) fn has_data(io: &impl RingIo) -> bool {
    let now = || {
        io.state().has(bit::LEFT | bit::RD_SHUT | bit::PEER_GONE | bit::BROKEN)
            || io.peer_left()
            || !matches!(io.ring_avail(), Ok(0))
            || io.peer_wr_shut()
    };
    now() || (io.refresh() && now())
}

/// An enqueue would not block (space, or an error to report).
pub(crate) fn has_space(io: &impl RingIo) -> bool {
    let stop = bit::WR_SHUT | bit::PEER_GONE | bit::ERR_RESET | bit::BROKEN | bit::LEFT;
    let now = || io.state().has(stop) || io.peer_left() || io.tx_room();
    now() || (io.refresh() && now())
}

/// poll(2) events as Linux's `tcp_poll` reports them.
pub(crate) fn poll_events(io: &impl RingIo) -> i16 {
    io.before_poll();
    let st = io.state();
    let f = st.bits();
    let mut ev: i16 = 0;
    let avail = io.ring_avail();
    // As Linux tcp_poll: RCV_SHUTDOWN gives IN|RDHUP, both shut gives HUP, a send side
    // that is shut never blocks (OUT), a pending error gives ERR (and a reset shuts
    // both ways: HUP, IN, OUT).
    let rcv_shut = f & (bit::RD_SHUT | bit::BROKEN) != 0 || io.peer_wr_shut();
    let snd_shut = f & (bit::WR_SHUT | bit::BROKEN) != 0;
    let mut kernel_out = false;
    if f & bit::PEER_GONE != 0 {
        if f & bit::RESENDING != 0 {
            io.continue_move();
        }
        // Bytes may be left in the ring, but the end of the stream is the kernel
        // socket's now: its FIN or reset shows as Linux shows them.
        let mut p = [libc::pollfd { fd: io.kernel_fd(), events: libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP, revents: 0 }];
        if crate::sys::poll(&mut p, 0).is_ok() {
            kernel_out = p[0].revents & libc::POLLOUT != 0;
            ev |= p[0].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR);
            if p[0].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
                ev |= libc::POLLIN | libc::POLLRDNORM;
            }
        }
    }
    if rcv_shut && snd_shut {
        ev |= libc::POLLHUP;
    }
    if rcv_shut {
        ev |= libc::POLLIN | libc::POLLRDNORM | libc::POLLRDHUP;
    }
    if !matches!(avail, Ok(0)) {
        ev |= libc::POLLIN | libc::POLLRDNORM;
    }
    // A gone peer: the kernel socket takes writes from now on, once an unfinished
    // re-send lets them (while it is unfinished, writable is the kernel socket's word:
    // a write then continues the re-send).
    let gone = f & bit::PEER_GONE != 0;
    let resending = st.has(bit::RESENDING);
    let room = || st.has(bit::WR_SHUT | bit::ERR_RESET | bit::BROKEN | bit::LEFT) || io.peer_left() || io.tx_room();
    if snd_shut || f & bit::ERR_RESET != 0 || (gone && (!resending || kernel_out)) || (!gone && room()) {
        ev |= libc::POLLOUT | libc::POLLWRNORM;
    }
    if f & bit::ERR_RESET != 0 {
        ev |= libc::POLLERR | libc::POLLHUP | libc::POLLRDHUP | libc::POLLIN | libc::POLLRDNORM;
    }
    ev
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A ring of the test's making.
    #[derive(Default)]
    struct Fake {
        st: ConnState,
        avail: Cell<u64>,
        room: Cell<bool>,
        wr_shut: Cell<bool>,
        moves: Cell<u32>,
    }

    impl RingIo for Fake {
        fn state(&self) -> &ConnState {
            &self.st
        }
        fn ring_avail(&self) -> Result<u64, StreamError> {
            Ok(self.avail.get())
        }
        fn tx_room(&self) -> bool {
            self.room.get()
        }
        fn peer_wr_shut(&self) -> bool {
            self.wr_shut.get()
        }
        fn peer_left(&self) -> bool {
            false
        }
        fn move_to_kernel(&self) {
            self.moves.set(self.moves.get() + 1);
        }
        fn kernel_fd(&self) -> RawFd {
            -1
        }
    }

    #[test]
    fn reads_see_eof_after_the_bytes_and_a_reset_once() {
        let f = Fake::default();
        assert_eq!(empty_outcome(&f), Err(StreamError::WouldBlock));
        f.wr_shut.set(true);
        f.avail.set(3);
        assert_eq!(empty_outcome(&f), Ok(None), "bytes before the EOF");
        f.avail.set(0);
        assert_eq!(empty_outcome(&f), Ok(Some(0)));
        let g = Fake::default();
        g.st.set(bit::PEER_GONE);
        assert_eq!(empty_outcome(&g), Err(StreamError::Moved));
        assert_eq!(g.moves.get(), 1);
        let r = Fake::default();
        assert_eq!(r.st.broken(), StreamError::Reset);
        assert_eq!(empty_outcome(&r), Err(StreamError::Reset));
        assert!(r.st.take_error() && !r.st.take_error());
        assert_eq!(empty_outcome(&r), Ok(Some(0)), "reported once, then EOF");
    }

    #[test]
    fn writes_are_refused_as_linux() {
        let f = Fake::default();
        assert_eq!(write_refusal(&f), None);
        f.st.set(bit::PEER_GONE | bit::RESENDING);
        assert_eq!(write_refusal(&f), Some(StreamError::WouldBlock));
        f.st.clear(bit::RESENDING);
        assert_eq!(write_refusal(&f), Some(StreamError::Moved));
        f.st.set(bit::ERR_RESET);
        assert_eq!(write_refusal(&f), Some(StreamError::Reset));
        assert!(f.st.shut(Shutdown::Write) && !f.st.shut(Shutdown::Both));
        assert_eq!(write_refusal(&f), Some(StreamError::Pipe));
    }

    #[test]
    fn poll_maps_like_tcp_poll() {
        let f = Fake::default();
        assert_eq!(poll_events(&f), 0);
        f.room.set(true);
        assert_eq!(poll_events(&f), libc::POLLOUT | libc::POLLWRNORM);
        f.wr_shut.set(true);
        let ev = poll_events(&f);
        assert_eq!(ev & (libc::POLLIN | libc::POLLRDHUP), libc::POLLIN | libc::POLLRDHUP);
        assert_eq!(ev & libc::POLLHUP, 0, "one direction shut is no hang-up");
        f.st.shut(Shutdown::Write);
        assert_ne!(poll_events(&f) & libc::POLLHUP, 0, "both shut: HUP");
        let r = Fake::default();
        r.st.broken();
        let ev = poll_events(&r);
        for e in [libc::POLLERR, libc::POLLHUP, libc::POLLIN, libc::POLLOUT, libc::POLLRDHUP] {
            assert_ne!(ev & e, 0, "a reset: {e:#x} in {ev:#x}");
        }
    }
}
