//! Discovery: how a listener makes itself found, and how a client finds it and learns
//! what it serves (its advert), behind one trait.
//!
//! Two implementations today, tried in this order at connect:
//! * [`RegistryDiscovery`]: the same-kernel, same-user registry (listener records with
//!   their adverts and mailboxes; ARCHITECTURE.md §2.1, docs/protocol.md §2);
//! * [`TableDiscovery`]: a fabric's own listener table (kmod: the driver's, where
//!   clients of any user find a listener).
//!
//! A cross-kernel fabric (ivshmem, verbs) adds its own: its `find` asks out of band
//! (the peer kernel's shim, over the fabric's own channel: a doorbell message, a CM
//! exchange), and returns what the listener advertised. What binds the fabric channel
//! to *this* TCP connection (its 4-tuple and a nonce, so that no third party can take
//! it over, and no byte enters the TCP stream before both agreed) is the fabric's
//! offer/claim, as today: sock_diag and the driver's socket match give the same-kernel
//! fabrics that binding from the kernel.

use crate::addr::SockAddr;
use crate::choice::{fabric_id, Advert, FabricSet};
use crate::fabric::Fabric;
use crate::layout::{ListenerRepr, LISTENER_V6ONLY};
use crate::registry::{Held, Registry};
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

/// What a client found at a destination.
#[derive(Clone, Copy, Debug)]
pub struct Found {
    pub advert: Advert,
    /// The one registered listener, whose mailbox an shm offer may go straight into
    /// (None: several listeners, an SO_REUSEPORT group, or a table without records).
    pub to: Option<ListenerRepr>,
}

/// Kept by a listener for as long as it may be found (dropping it withdraws).
pub trait Announcement: Send + Sync {}

/// How a listener is found.
pub trait Discovery: Send + Sync {
    fn name(&self) -> &'static str;
    /// Make our listening socket `sock` (bound at `local`, serving `serves`) findable.
    fn announce(&self, sock: RawFd, local: &SockAddr, serves: FabricSet) -> io::Result<Box<dyn Announcement>>;
    /// Who listens at `dst`, and what it serves.
    fn find(&self, dst: &SockAddr) -> Option<Found>;
}

/// Does a listener bound at `l` take connections to `dst`? As the kernel's lookup: an
/// IPv6 wildcard takes everything but IPv4 when V6ONLY; an IPv4 wildcard takes IPv4; a
/// bound address takes itself (and an unspecified destination, if it is loopback).
pub fn listener_matches(l: &ListenerRepr, dst: &SockAddr) -> bool {
    let laddr = SockAddr::from_bytes(l.addr, l.port);
    if laddr.is_unspecified() {
        let dst_v4 = dst.ip().is_ipv4();
        return match laddr.ip() {
            std::net::IpAddr::V6(_) => !(dst_v4 && l.flags & LISTENER_V6ONLY != 0),
            std::net::IpAddr::V4(_) => dst_v4,
        };
    }
    laddr.ip() == dst.ip() || (dst.is_unspecified() && laddr.is_loopback())
}

/// The registry: our own user's listeners.
pub struct RegistryDiscovery {
    pub reg: Arc<Registry>,
}

struct Record {
    reg: Arc<Registry>,
    held: Option<Held>,
}

impl Announcement for Record {}

impl Drop for Record {
    fn drop(&mut self) {
        if let Some(h) = self.held.take() {
            self.reg.release(h);
        }
    }
}

impl Discovery for RegistryDiscovery {
    fn name(&self) -> &'static str {
        "registry"
    }

    fn announce(&self, sock: RawFd, local: &SockAddr, serves: FabricSet) -> io::Result<Box<dyn Announcement>> {
        self.reg.sweep();
        let v6only = matches!(crate::sys::sock_domain(sock), Ok(libc::AF_INET6))
            && crate::sys::getsockopt::<libc::c_int>(sock, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).unwrap_or(0) != 0;
        let rec = ListenerRepr {
            addr: local.ip_bytes(),
            port: local.port(),
            flags: if v6only { LISTENER_V6ONLY } else { 0 },
            pid: crate::sys::getpid(),
            mbox_fd: -1,
            mbox_ino: 0,
            fabrics: serves.0,
        };
        let held = self.reg.register_listener(&rec)?;
        Ok(Box::new(Record { reg: self.reg.clone(), held: Some(held) }))
    }

    fn find(&self, dst: &SockAddr) -> Option<Found> {
        let reg = &self.reg;
        reg.sweep_if_due();
        let listeners: Vec<ListenerRepr> = reg.listeners(dst.port()).into_iter().filter(|l| listener_matches(l, dst)).collect();
        // Several listeners (an SO_REUSEPORT group): the kernel picks, and any live one
        // may look for the offer file; dead ones are dropped now. One: its liveness is
        // asked only if the claim is slow to come (the preload's sock::hear).
        let listeners: Vec<ListenerRepr> = if listeners.len() > 1 { listeners.into_iter().filter(|l| reg.listener_alive(l)).collect() } else { listeners };
        let first = *listeners.first()?;
        // A group advertises what all of its members serve.
        let serves = FabricSet(listeners.iter().fold(fabric_id::ALL, |m, l| m & l.fabrics));
        // Its accepting processes run as another user (a worker that dropped
        // privileges): chosen for as another user's listener.
        let same_user = !(listeners.len() == 1 && reg.listener_accepts_as_other_user(&first));
        Some(Found { advert: Advert { serves, same_user }, to: (listeners.len() == 1).then_some(first) })
    }
}

/// A fabric's own listener table (`Fabric::announce`, `Fabric::find`).
pub struct TableDiscovery {
    pub fabric: &'static dyn Fabric,
}

/// The fd that keeps a table entry (the driver drops it when the fd closes).
struct TableEntry(#[allow(dead_code)] crate::sys::Fd);

impl Announcement for TableEntry {}

impl Discovery for TableDiscovery {
    fn name(&self) -> &'static str {
        self.fabric.name()
    }

    fn announce(&self, sock: RawFd, _local: &SockAddr, _serves: FabricSet) -> io::Result<Box<dyn Announcement>> {
        self.fabric.announce(sock).map(|fd| Box::new(TableEntry(fd)) as Box<dyn Announcement>)
    }

    fn find(&self, dst: &SockAddr) -> Option<Found> {
        let uid = self.fabric.find(dst)?;
        Some(Found { advert: Advert { serves: FabricSet(self.fabric.id()), same_user: uid == crate::sys::getuid() }, to: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(addr: &str, flags: u8) -> ListenerRepr {
        let a = SockAddr(format!("{addr}:80").parse().unwrap());
        ListenerRepr { addr: a.ip_bytes(), port: 80, flags, pid: 1, mbox_fd: -1, mbox_ino: 0, fabrics: 1 }
    }

    #[test]
    fn listeners_take_what_the_kernel_would_give_them() {
        let d = |s: &str| SockAddr(s.parse().unwrap());
        assert!(listener_matches(&l("0.0.0.0", 0), &d("127.0.0.1:80")));
        assert!(!listener_matches(&l("0.0.0.0", 0), &d("[::1]:80")));
        assert!(listener_matches(&l("[::]", 0), &d("127.0.0.1:80")));
        assert!(!listener_matches(&l("[::]", LISTENER_V6ONLY), &d("127.0.0.1:80")));
        assert!(listener_matches(&l("[::]", LISTENER_V6ONLY), &d("[::1]:80")));
        assert!(listener_matches(&l("127.0.0.1", 0), &d("127.0.0.1:80")));
        assert!(!listener_matches(&l("127.0.0.2", 0), &d("127.0.0.1:80")));
        assert!(listener_matches(&l("127.0.0.1", 0), &d("0.0.0.0:80")));
    }
}
