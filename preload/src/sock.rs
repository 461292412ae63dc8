//! What an application fd managed by the shim refers to.
//!
//! An [`Entry`] is shared (Arc) by every fd number of one open file description in this
//! process (dup, dup2, F_DUPFD), as the kernel shares the socket; the connection's
//! fabric state goes away with the last of them.
//!
//! A client connection is *pending* from connect until its first use, when the offer's
//! fate is read (claimed: fabric; refused or timed out: kernel TCP). A server connection
//! is decided at accept. Once decided, a connection never changes path.

use crate::state;
use parking_lot::Mutex;
use rdmasock_transport::addr::SockAddr;
use rdmasock_transport::config::LogLevel;
use rdmasock_transport::fabric::{Offer, Reason, Stream};
use rdmasock_transport::registry::Held;
use rdmasock_transport::stats::{SlotId, PATH_SHM, PATH_TCP, ROLE_CLIENT};
use rdmasock_transport::sys;
use std::sync::{Arc, OnceLock};

#[derive(Clone)]
pub enum Entry {
    Listener(Arc<Listener>),
    Conn(Arc<Conn>),
    Epoll(Arc<crate::epoll::EpollSet>),
}

impl Entry {
    /// Do data calls on this fd need the shim?
    pub fn wants_data(&self) -> bool {
        match self {
            Entry::Listener(_) | Entry::Epoll(_) => false,
            Entry::Conn(c) => !matches!(c.decided.get(), Some(None)),
        }
    }
}

/// A listening socket the shim registered.
pub struct Listener {
    pub record: Mutex<Option<Held>>,
}

impl Listener {
    pub fn release(&self) {
        if let (Some(h), Some(reg)) = (self.record.lock().take(), state::registry()) {
            reg.release(h);
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.release();
    }
}

struct Pending {
    offer: Box<dyn Offer>,
    deadline_ns: u64,
}

pub struct Conn {
    pub local: Option<SockAddr>,
    pub peer: Option<SockAddr>,
    pub slot: Option<SlotId>,
    pending: Mutex<Option<Pending>>,
    /// Some(Some): on the fabric; Some(None): on kernel TCP; None: pending.
    pub decided: OnceLock<Option<Arc<dyn Stream>>>,
    /// Held for a whole send, so that concurrent writers never interleave inside one
    /// call (as Linux, for writes that fit the socket buffer).
    pub send_lock: Mutex<()>,
}

/// Why a connection has no path yet.
pub enum Undecided {
    /// The kernel connection is still being established (non-blocking connect).
    Connecting,
    /// The server's shim has not answered the offer yet, and the caller may not wait.
    Offered,
}

impl Conn {
    pub fn decided(role: u8, fd: i32, local: Option<SockAddr>, peer: Option<SockAddr>, stream: Option<Arc<dyn Stream>>, reason: Reason) -> Conn {
        let path = if stream.is_some() { PATH_SHM } else { PATH_TCP };
        let slot = state::stats().and_then(|t| t.alloc(fd, role, path, reason, local, peer));
        let c = Conn { local, peer, slot, pending: Mutex::new(None), decided: OnceLock::new(), send_lock: Mutex::new(()) };
        let _ = c.decided.set(stream);
        c
    }

    pub fn pending(fd: i32, local: Option<SockAddr>, peer: Option<SockAddr>, offer: Box<dyn Offer>) -> Conn {
        let slot = state::stats().and_then(|t| t.alloc(fd, ROLE_CLIENT, rdmasock_transport::stats::PATH_PENDING, Reason::None, local, peer));
        let deadline_ns = sys::now_ns() + state::config().claim_timeout.as_nanos() as u64;
        Conn {

            local,
            peer,
            slot,
            pending: Mutex::new(Some(Pending { offer, deadline_ns })),
            decided: OnceLock::new(),
            send_lock: Mutex::new(()),
        }
    }

    /// The connection's stream (None: kernel TCP), deciding a pending client first.
    /// With `may_wait` (a blocking call on a blocking socket) it waits, bounded by the
    /// claim deadline, for the server's shim to claim; without, an unanswered offer is
    /// reported as [`Undecided::Offered`] until the deadline passes.
    pub fn stream(&self, fd: i32, may_wait: bool) -> Result<Option<Arc<dyn Stream>>, Undecided> {
        if let Some(d) = self.decided.get() {
            return Ok(d.clone());
        }
        let mut p = self.pending.lock();
        if let Some(d) = self.decided.get() {
            return Ok(d.clone());
        }
        match tcp_state(fd) {
            Some(TCP_SYN_SENT) | Some(TCP_SYN_RECV) => {
                if !may_wait {
                    return Err(Undecided::Connecting);
                }
                // A blocking call while the kernel still connects (the connect was
                // started non-blocking): wait for it, as the call would on TCP.
                let mut pf = [libc::pollfd { fd, events: libc::POLLOUT, revents: 0 }];
                let _ = sys::poll(&mut pf, -1);
                drop(p);
                return self.stream(fd, may_wait);
            }
            _ => {}
        }
        if !may_wait {
            if let Some(pend) = p.as_ref() {
                let open = pend.offer.decision(std::time::Duration::ZERO).is_none();
                if open && sys::now_ns() < pend.deadline_ns {
                    return Err(Undecided::Offered);
                }
            }
        }
        let Some(pend) = p.take() else {
            let _ = self.decided.set(None);
            return Ok(None);
        };
        let (stream, reason) = match tcp_state(fd) {
            Some(TCP_CLOSE) | None if pend.offer.withdraw() => (None, Reason::ConnectFailed),
            // The kernel connection is already gone, but the server's shim claimed first:
            // what it sent before it went is in the ring.
            Some(TCP_CLOSE) | None => (Some(pend.offer.into_stream()), Reason::None),
            _ => {
                let left = pend.deadline_ns.saturating_sub(sys::now_ns());
                match pend.offer.decision(std::time::Duration::from_nanos(left)) {
                    Some(true) => (Some(pend.offer.into_stream()), Reason::None),
                    Some(false) => {
                        pend.offer.withdraw();
                        (None, Reason::Refused)
                    }
                    None if pend.offer.withdraw() => (None, Reason::ClaimTimeout),
                    None => (Some(pend.offer.into_stream()), Reason::None),
                }
            }
        };
        if let (Some(t), Some(id)) = (state::stats_if_any(), self.slot) {
            t.set_path(id, if stream.is_some() { PATH_SHM } else { PATH_TCP }, reason);
        }
        if let Some(s) = &stream {
            crate::imp::apply_buffers(fd, &**s);
        }
        log_decision("connect", fd, self.local.or_else(|| sys::getsockname(fd).ok()), self.peer, stream.is_some(), reason);
        let _ = self.decided.set(stream.clone());
        Ok(stream)
    }

    /// While the offer is unanswered: the doorbell the server rings when it decides, and
    /// the deadline after which the client decides alone.
    pub fn pending_bell(&self) -> Option<(i32, u64)> {
        self.pending.lock().as_ref().map(|p| (p.offer.doorbell(), p.deadline_ns))
    }

    pub fn count_in(&self, n: usize) {
        if let (Some(t), Some(id)) = (state::stats_if_any(), self.slot) {
            t.add_in(id, n as u64);
        }
    }

    pub fn count_out(&self, n: usize) {
        if let (Some(t), Some(id)) = (state::stats_if_any(), self.slot) {
            t.add_out(id, n as u64);
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(p) = self.pending.get_mut().take() {
            p.offer.withdraw();
        }
        if let (Some(t), Some(id)) = (state::stats_if_any(), self.slot) {
            t.free(id);
        }
    }
}

/// tcp_info.tcpi_state values (include/net/tcp_states.h).
const TCP_SYN_SENT: u8 = 2;
const TCP_SYN_RECV: u8 = 3;
const TCP_CLOSE: u8 = 7;

/// The kernel's TCP state of a socket (tcp_info.tcpi_state).
pub fn tcp_state(fd: i32) -> Option<u8> {
    let mut info = [0u8; 8];
    let mut len = info.len() as libc::socklen_t;
    sys::getsockopt_raw(fd, libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr() as *mut libc::c_void, &mut len).ok()?;
    Some(info[0])
}

pub fn log_decision(what: &str, fd: i32, local: Option<SockAddr>, peer: Option<SockAddr>, fabric: bool, reason: Reason) {
    let show = |a: Option<SockAddr>| a.map(|a| a.to_string()).unwrap_or_else(|| "?".into());
    if fabric {
        crate::log_at!(LogLevel::Info, "{what} fd={fd} local={} peer={} path=shm", show(local), show(peer));
    } else {
        crate::log_at!(LogLevel::Info, "{what} fd={fd} local={} peer={} path=tcp reason={}", show(local), show(peer), reason.as_str());
    }
}
