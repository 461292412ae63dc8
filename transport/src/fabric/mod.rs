//! The transport interface, shaped for every fabric: shm (shared-memory rings, today),
//! kmod (the mailbox driver), ivshmem (a shared PCI BAR with doorbell interrupts) and
//! verbs (RDMA NICs). Kernel TCP is the fallback, not a fabric: a connection that no
//! fabric takes simply stays the kernel socket it always was.
//!
//! Operations are grouped by concern, in the manner of Linux vsock's transport table:
//! * lifecycle: [`Fabric::name`], [`Fabric::caps`];
//! * rendezvous: [`Fabric::offer`] (client, before connect), [`Fabric::claim`] (server,
//!   after accept), [`Offer::decision`] / [`Offer::withdraw`];
//! * stream: [`Stream::enqueue`], [`Stream::dequeue`], [`Stream::has_data`],
//!   [`Stream::has_space`];
//! * notification: [`Stream::arm`], [`Stream::doorbell`], [`Stream::ring_gone`] and the
//!   waiting policy in [`crate::conn`];
//! * shutdown: [`Stream::shutdown`].
//!
//! How a fabric is chosen, per connection: [`crate::choice`] (the one rule, applied by
//! the client to the listener's advert and by the server in the same order). Any doubt
//! keeps kernel TCP.

pub mod kmod;
pub mod shm;

use crate::wait::{Approach, LocalBell, SpinPolicy};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

/// What a fabric can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps(pub u32);

impl Caps {
    /// Peers in the same kernel (processes, containers).
    pub const SAME_KERNEL: u32 = 1;
    /// Peers in other kernels on this machine (VMs, microserver nodes).
    pub const SAME_HOST: u32 = 2;
    /// Peers on other hosts.
    pub const CROSS_HOST: u32 = 4;
    /// The peers map common pages (a peer can scribble on what we read).
    pub const SHARED_PAGES: u32 = 8;
    /// The kernel verifies who the peer is.
    pub const KERNEL_VERIFIED_PEER: u32 = 16;
    /// The doorbell is an fd poll/epoll can wait on beside kernel fds.
    pub const POLLABLE_DOORBELL: u32 = 32;

    pub fn has(&self, bit: u32) -> bool {
        self.0 & bit == bit
    }
}

/// Why a connection stays on kernel TCP. Recorded for `rdmasock stat` and the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    None = 0,
    ForcedTcp,
    RemoteDestination,
    NoShimListener,
    PeerNotShim,
    PeerOtherUid,
    ClaimTimeout,
    Refused,
    ListenerUnknown,
    FdLimit,
    RegistryUnavailable,
    OfferFailed,
    ClaimFailed,
    ConnectFailed,
    /// The server sent bytes, a FIN or a reset on TCP while the offer was open: whoever
    /// accepted does not run the shim.
    ServerSentFirst,
    /// A non-blocking write came before the server accepted.
    NotAccepted,
    /// Decided for the fabric, then moved back to kernel TCP (the peer exec'd a program
    /// without the shim, exited, or passed its socket on).
    MovedToTcp,
    /// The two ends' settings allow no fabric in common (or the listener advertises
    /// none this process has).
    NoCommonFabric,
}

impl Reason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::None => "",
            Reason::ForcedTcp => "forced-tcp",
            Reason::RemoteDestination => "remote-destination",
            Reason::NoShimListener => "no-shim-listener",
            Reason::PeerNotShim => "peer-not-shim",
            Reason::PeerOtherUid => "peer-other-uid",
            Reason::ClaimTimeout => "claim-timeout",
            Reason::Refused => "refused",
            Reason::ListenerUnknown => "listener-unknown",
            Reason::FdLimit => "fd-limit",
            Reason::RegistryUnavailable => "registry-unavailable",
            Reason::OfferFailed => "offer-failed",
            Reason::ClaimFailed => "claim-failed",
            Reason::ConnectFailed => "connect-failed",
            Reason::ServerSentFirst => "server-sent-first",
            Reason::NotAccepted => "write-before-accept",
            Reason::MovedToTcp => "moved-to-tcp",
            Reason::NoCommonFabric => "no-common-fabric",
        }
    }

    pub fn from_u8(v: u8) -> Reason {
        use Reason::*;
        const ALL: [Reason; 18] = [None, ForcedTcp, RemoteDestination, NoShimListener, PeerNotShim,
            PeerOtherUid, ClaimTimeout, Refused, ListenerUnknown, FdLimit, RegistryUnavailable, OfferFailed,
            ClaimFailed, ConnectFailed, ServerSentFirst, NotAccepted, MovedToTcp, NoCommonFabric];
        ALL.get(v as usize).copied().unwrap_or(None)
    }
}

/// Stream errors, mapped to errno at the exported boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamError {
    /// Nothing can move now (EAGAIN).
    WouldBlock,
    /// The connection was reset (ECONNRESET).
    Reset,
    /// Writing to a stream that is shut or whose peer is gone (EPIPE, with SIGPIPE).
    Pipe,
    /// The source or sink of a sendfile/splice failed with this errno.
    Io(i32),
    /// The connection is back on kernel TCP (its peer left the ring): make the call on
    /// the kernel socket.
    Moved,
}

/// `how` for [`Stream::shutdown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    Read,
    Write,
    Both,
}

/// Wait interests for [`Stream::arm`] (the `layout::wait` bits).
pub use crate::layout::wait as interest;

/// One direction-pair of a connection carried by a fabric.
pub trait Stream: Send + Sync {
    /// The fabric carrying it (its [`Fabric::name`]): what `rdmasock stat` and the log say.
    fn fabric(&self) -> &'static str;
    // --- stream ---
    /// Copy in as much as fits, without blocking; `Ok(0)` only for empty input.
    fn enqueue(&self, bufs: &[IoSlice<'_>]) -> Result<usize, StreamError>;
    /// Fill the transmit ring straight from a source (sendfile, splice): `fill` gets a
    /// writable run and returns the bytes it wrote there (0: the source is exhausted).
    /// The caller serialises producers (the ring lock is not held while `fill` runs, so
    /// a slow source never stalls readiness checks).
    fn enqueue_from(&self, fill: &mut dyn FnMut(*mut u8, usize) -> io::Result<usize>) -> Result<usize, StreamError>;
    /// Copy out what is there; `Ok(0)` is end of stream.
    fn dequeue(&self, bufs: &mut [IoSliceMut<'_>], peek: bool) -> Result<usize, StreamError>;
    /// Drain the receive ring straight into a sink (splice): `drain` gets a readable run
    /// and must not block.
    fn dequeue_into(&self, drain: &mut dyn FnMut(*const u8, usize) -> io::Result<usize>) -> Result<usize, StreamError>;
    /// A dequeue would not block (data, end of stream or an error is waiting).
    fn has_data(&self) -> bool;
    /// An enqueue would not block (space, or an error to report).
    fn has_space(&self) -> bool;
    /// poll(2) events as Linux TCP would report them (tcp_poll).
    fn poll_events(&self) -> i16;
    /// Consume the pending reset, if any, once it has been reported (as Linux: a socket
    /// error is reported once; until then every call sees it). Returns whether one was
    /// pending.
    fn take_error(&self) -> bool;
    /// Monotonic progress counters: (bytes the peer has produced towards us, bytes the
    /// peer has consumed of ours), as last seen. Edge-triggered readiness reports a
    /// new edge when either moves.
    fn progress(&self) -> (u64, u64);
    /// The socket buffer sizes the application asked for (SO_SNDBUF, SO_RCVBUF; 0: not
    /// set): as on TCP, they bound the bytes in flight (our send buffer plus the peer's
    /// receive buffer). A fabric that cannot bound its window ignores them.
    fn set_buffers(&self, snd: u32, rcv: u32) {
        let _ = (snd, rcv);
    }
    /// Bytes waiting to be read (FIONREAD / SIOCINQ).
    fn rx_pending(&self) -> usize;
    /// Bytes written but not yet consumed by the peer (SIOCOUTQ).
    fn tx_pending(&self) -> usize;

    // --- notification ---
    /// Our doorbell: readable when the peer rang, hung up when the peer is gone.
    fn doorbell(&self) -> RawFd;
    /// Process-local waiter bookkeeping for the doorbell.
    fn local_bell(&self) -> &LocalBell;
    /// Announce that we are about to block waiting for `interest` (SeqCst: pairs with
    /// the peer's fence before it reads the announcement).
    fn arm(&self, interest: u32);
    fn disarm(&self, interest: u32);
    /// Wake this process's own waiters on the stream (a local shutdown changed what they
    /// wait for).
    fn wake_local(&self);
    /// The doorbell hung up: the peer has closed or died.
    fn ring_gone(&self);
    /// Look (one system call) whether the peer has gone, without waiting.
    fn probe(&self);
    /// How to wait now, by where the peer runs (also publishes where we run).
    fn approach(&self, policy: &SpinPolicy) -> Approach;
    /// The process is about to fork: from now on this side may be used by several
    /// processes at once (called with no operation in flight).
    fn before_fork(&self);
    /// The longest a waiter may block before re-checking (None: until rung). Set when
    /// several processes may read the doorbell and take a byte meant for another.
    fn wait_cap(&self) -> Option<Duration>;
    /// In a forked child: forget the parent's waiters.
    fn after_fork_child(&self) {
        self.local_bell().reset_after_fork();
    }

    /// The connection is back on kernel TCP and nothing is left in the ring: every call
    /// belongs to the kernel socket now.
    fn moved(&self) -> bool;
    /// The peer has left the ring (the connection is moving, or has moved, back to
    /// kernel TCP).
    fn peer_gone(&self) -> bool;
    /// Leave the ring for good, from our side (our socket is being passed to another
    /// process, which will know nothing of the ring): both ends continue on kernel TCP.
    fn leave(&self);

    // --- shutdown ---
    fn shutdown(&self, how: Shutdown);
}

/// A client's pending offer.
pub trait Offer: Send + Sync {
    /// Wait up to `timeout` for the server's shim to decide. `Some(true)`: claimed,
    /// `Some(false)`: refused, `None`: still pending.
    fn decision(&self, timeout: Duration) -> Option<bool>;
    /// Take the offer back (compare-and-swap). Returns false if the server claimed it
    /// first: then the stream is on the fabric after all.
    fn withdraw(&self) -> bool;
    /// The stream of a claimed offer; the offer's registry record is removed.
    fn into_stream(self: Box<Self>) -> Arc<dyn Stream>;
    /// Readable when the server's shim has decided (for poll while undecided), once
    /// [`arm`](Self::arm)ed.
    fn doorbell(&self) -> RawFd;
    /// From now on the server rings the doorbell when it decides. A caller about to
    /// sleep on the doorbell arms it, then reads [`decision`](Self::decision) again: a
    /// decision made before the arming rings nothing.
    fn arm(&self) {}
}

/// A fabric.
pub trait Fabric: Send + Sync {
    fn name(&self) -> &'static str;
    /// Its bit in listener adverts ([`crate::choice::fabric_id`]).
    fn id(&self) -> u8;
    fn caps(&self) -> Caps;
    /// Post an offer for the client socket `sock`, before connect; `to` is the
    /// registered listener it connects to, when it is known to be the only one (a
    /// fabric may post to it directly).
    fn offer(&self, sock: RawFd, to: Option<&crate::layout::ListenerRepr>) -> io::Result<Box<dyn Offer>>;
    /// At accept: claim the offer of the client socket `peer_inode`, if there is one,
    /// for our accepted socket `sock`.
    fn claim(&self, peer_inode: u64, sock: RawFd) -> Result<Arc<dyn Stream>, Reason>;
    /// At accept, when policy keeps the connection on TCP: tell the client at once
    /// (best effort), rather than let it wait for its claim deadline. `sock`: our
    /// accepted socket.
    fn refuse(&self, peer_inode: u64, sock: RawFd);

    // --- discovery of its own ---
    // A fabric whose listeners clients of other users must find too (the registry is
    // one user's) keeps a listener table of its own: kmod's is in the driver.
    /// Has it a listener table of its own (then [`announce`](Self::announce) and
    /// [`find`](Self::find) work; `discovery::TableDiscovery` wraps them)?
    fn has_listener_table(&self) -> bool {
        false
    }
    /// Make our listening socket `sock` findable by [`find`](Self::find) for as long
    /// as the returned (hidden) fd is open (EOPNOTSUPP: no table of its own).
    fn announce(&self, sock: RawFd) -> io::Result<crate::sys::Fd> {
        let _ = sock;
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }
    /// The uid of a listener that takes connections to `dst` in this fabric's own
    /// table (None: there is none, or no table).
    fn find(&self, dst: &crate::addr::SockAddr) -> Option<u32> {
        let _ = dst;
        None
    }
    /// In a forked child: let go of what the parent kept for later connections.
    fn after_fork_child(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip() {
        for v in 0..18u8 {
            assert_eq!(Reason::from_u8(v) as u8, v);
        }
        assert_eq!(Reason::from_u8(200), Reason::None);
        assert_eq!(Reason::ClaimTimeout.as_str(), "claim-timeout");
    }
}
