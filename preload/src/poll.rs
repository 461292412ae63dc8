//! poll, ppoll and select over fabric and kernel fds together.
//!
//! A fabric fd's readiness is computed from its rings (as Linux tcp_poll would report
//! it); kernel fds are asked with a zero-timeout poll. If nothing is ready, one blocking
//! poll covers the kernel fds and the doorbells of the fabric fds (whose wait bits are
//! set first, so the peer rings), and the readiness is computed again.
//! An epoll fd with fabric entries is polled as itself (its kernel side) and looked
//! into; a blocking poll also waits on its waker (epoll.rs).
#![allow(unsafe_code)]
#![allow(clippy::missing_safety_doc)]

use crate::hooks::real;
use crate::imp::{boundary, poll_target, reentered, set_errno, PollTarget};
use crate::table::DATA;
use libc::{c_int, fd_set, nfds_t, pollfd, sigset_t, size_t, timespec, timeval};
use rdmasock_transport::conn::{poll_step, spin_set, PollItem};
use rdmasock_transport::fabric::Stream;
use rdmasock_transport::layout::wait;
use rdmasock_transport::sys;
use std::sync::Arc;
use std::time::Duration;

fn has_fabric(fds: &[pollfd]) -> bool {
    fds.iter().any(|p| DATA.get(p.fd))
}

/// The common body: `fds` has at least one fabric fd.
fn poll_fabric(fds: &mut [pollfd], timeout: Option<Duration>, sigmask: Option<&sigset_t>) -> Result<c_int, i32> {
    let deadline = timeout.map(|t| sys::now_ns() + t.as_nanos() as u64);
    loop {
        // Classify every round: an offer answered meanwhile changes a fd's kind.
        let mut fabric: Vec<(usize, Arc<dyn Stream>)> = Vec::new();
        let mut kernel: Vec<usize> = Vec::new();
        let mut offered: Vec<(c_int, c_int, u64)> = Vec::new();
        let mut connecting: Vec<c_int> = Vec::new();
        let mut sets: Vec<(usize, Arc<crate::epoll::EpollSet>)> = Vec::new();
        for i in 0..fds.len() {
            let fd = fds[i].fd;
            match if fd >= 0 && DATA.get(fd) { poll_target(fd) } else { PollTarget::Kernel } {
                PollTarget::Fabric(s) => fabric.push((i, s)),
                PollTarget::Kernel => kernel.push(i),
                PollTarget::Offered { bell, deadline_ns } => {
                    fds[i].revents = 0;
                    offered.push((fd, bell, deadline_ns));
                }
                PollTarget::Connecting => {
                    fds[i].revents = 0;
                    connecting.push(fd);
                }
                PollTarget::Epoll(set) => {
                    // Its kernel side is polled as usual; its fabric side is looked into.
                    kernel.push(i);
                    sets.push((i, set));
                }
            }
        }
        // One zero-timeout poll over the kernel fds and the fabric fds' doorbells: the
        // peer of a fabric fd may have closed behind data we have not read yet, and its
        // doorbell's hang-up tells.
        let mut kfds: Vec<pollfd> = kernel.iter().map(|&i| pollfd { revents: 0, ..fds[i] }).collect();
        kfds.extend(fabric.iter().map(|(_, s)| pollfd { fd: s.doorbell(), events: 0, revents: 0 }));
        sys::poll(&mut kfds, 0).map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL))?;
        for ((_, s), b) in fabric.iter().zip(&kfds[kernel.len()..]) {
            if b.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                s.ring_gone();
            }
        }
        kfds.truncate(kernel.len());
        let mut n = 0;
        for (i, s) in &fabric {
            let want = fds[*i].events | libc::POLLERR | libc::POLLHUP;
            fds[*i].revents = s.poll_events() & want;
            if fds[*i].revents != 0 {
                n += 1;
            }
        }
        for (k, &i) in kfds.iter().zip(&kernel) {
            fds[i].revents = k.revents;
            if k.revents != 0 {
                n += 1;
            }
        }
        for (i, set) in &sets {
            if fds[*i].revents == 0 && fds[*i].events & libc::POLLIN != 0 && set.peek_ready() {
                fds[*i].revents = libc::POLLIN;
                n += 1;
            }
        }
        let now = sys::now_ns();
        if n > 0 || deadline.is_some_and(|d| now >= d) {
            return Ok(n);
        }
        // Wake for the caller's timeout, or when an unanswered offer's deadline passes.
        let wake_at = offered.iter().map(|&(_, _, d)| d).chain(deadline).min();
        let remaining = wake_at.map(|d| Duration::from_nanos(d.saturating_sub(now)));
        // An offer is settled by its bell (the server's shim decided), by anything from
        // the server on the kernel socket (a plain acceptor), or by its deadline.
        for &(fd, bell, _) in &offered {
            kfds.push(pollfd { fd: bell, events: libc::POLLIN, revents: 0 });
            kfds.push(pollfd { fd, events: libc::POLLIN | libc::POLLRDHUP, revents: 0 });
        }
        // A connecting socket wakes us when the kernel is done; it is then classified
        // again (offered, fabric or TCP) before anything is reported for it.
        for &fd in &connecting {
            kfds.push(pollfd { fd, events: libc::POLLOUT, revents: 0 });
        }
        // A stream moving back to TCP (its doorbell hung up) is waited on as the kernel
        // socket it is becoming: a hung-up doorbell would wake every poll at once.
        for (i, s) in &fabric {
            if s.peer_gone() {
                kfds.push(pollfd { fd: fds[*i].fd, events: fds[*i].events, revents: 0 });
            }
        }
        let items: Vec<PollItem<'_>> = fabric
            .iter()
            .filter(|(_, s)| !s.peer_gone())
            .map(|(i, s)| {
                let ev = fds[*i].events;
                let mut interest = 0;
                if ev & (libc::POLLIN | libc::POLLRDNORM | libc::POLLRDHUP) != 0 {
                    interest |= wait::DATA;
                }
                if ev & (libc::POLLOUT | libc::POLLWRNORM) != 0 {
                    interest |= wait::SPACE;
                }
                PollItem { stream: &**s, interest, events: ev }
            })
            .collect();
        let spinners: Vec<(&dyn Stream, u32)> = items.iter().map(|it| (it.stream, it.interest)).collect();
        let kernel_ready = || !kfds.is_empty() && matches!(sys::poll(&mut kfds.clone(), 0), Ok(n) if n > 0);
        if spin_set(&spinners, crate::state::policy(), kernel_ready) {
            continue;
        }
        // An epoll set's fabric entries wake us through its waker, which watches their
        // doorbells (and holds the set itself).
        let armed: Vec<_> = sets.iter().map(|(_, set)| set.arm_all(set)).collect();
        for (_, set) in &sets {
            kfds.push(pollfd { fd: set.wake_fd(), events: libc::POLLIN, revents: 0 });
        }
        // Announced: look once more before blocking (a ring before the announcement
        // would not have been sent).
        if sets.iter().any(|(_, set)| set.peek_ready()) {
            for a in &armed {
                crate::epoll::disarm_all(a);
            }
            continue;
        }
        let r = poll_step(&items, &mut kfds, remaining, sigmask);
        for a in &armed {
            crate::epoll::disarm_all(a);
        }
        for (_, set) in &sets {
            set.drain_waker();
        }
        r.map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL))?;
    }
}

fn ms_timeout(t: c_int) -> Option<Duration> {
    (t >= 0).then(|| Duration::from_millis(t as u64))
}

unsafe fn ts_timeout(t: *const timespec) -> Result<Option<Duration>, i32> {
    if t.is_null() {
        return Ok(None);
    }
    let t = &*t;
    if t.tv_sec < 0 || t.tv_nsec < 0 || t.tv_nsec >= 1_000_000_000 {
        return Err(libc::EINVAL);
    }
    Ok(Some(Duration::new(t.tv_sec as u64, t.tv_nsec as u32)))
}

pub unsafe fn poll(fds: *mut pollfd, nfds: nfds_t, timeout: c_int) -> c_int {
    if fds.is_null() || nfds == 0 || reentered() {
        return (real().poll)(fds, nfds, timeout);
    }
    let s = std::slice::from_raw_parts_mut(fds, nfds as usize);
    if !has_fabric(s) {
        return (real().poll)(fds, nfds, timeout);
    }
    boundary(-1, || poll_fabric(s, ms_timeout(timeout), None))
}

pub unsafe fn __poll_chk(fds: *mut pollfd, nfds: nfds_t, timeout: c_int, fdslen: size_t) -> c_int {
    if (fdslen / std::mem::size_of::<pollfd>()) < nfds as usize {
        return (real().__poll_chk)(fds, nfds, timeout, fdslen);
    }
    poll(fds, nfds, timeout)
}

pub unsafe fn ppoll(fds: *mut pollfd, nfds: nfds_t, timeout: *const timespec, sigmask: *const sigset_t) -> c_int {
    if fds.is_null() || nfds == 0 || reentered() {
        return (real().ppoll)(fds, nfds, timeout, sigmask);
    }
    let s = std::slice::from_raw_parts_mut(fds, nfds as usize);
    if !has_fabric(s) {
        return (real().ppoll)(fds, nfds, timeout, sigmask);
    }
    boundary(-1, || poll_fabric(s, ts_timeout(timeout)?, sigmask.as_ref()))
}

pub unsafe fn __ppoll_chk(fds: *mut pollfd, nfds: nfds_t, timeout: *const timespec, sigmask: *const sigset_t, fdslen: size_t) -> c_int {
    if (fdslen / std::mem::size_of::<pollfd>()) < nfds as usize {
        return (real().__ppoll_chk)(fds, nfds, timeout, sigmask, fdslen);
    }
    ppoll(fds, nfds, timeout, sigmask)
}

/// The fds named in three fd_sets, as pollfds, if any of them is a fabric fd.
unsafe fn sets_to_poll(nfds: c_int, r: *mut fd_set, w: *mut fd_set, e: *mut fd_set) -> Option<Vec<pollfd>> {
    let n = nfds.clamp(0, libc::FD_SETSIZE as c_int);
    let isset = |set: *mut fd_set, fd: c_int| !set.is_null() && libc::FD_ISSET(fd, set);
    let mut out = Vec::new();
    let mut any = false;
    for fd in 0..n {
        let mut events = 0;
        if isset(r, fd) {
            events |= libc::POLLIN;
        }
        if isset(w, fd) {
            events |= libc::POLLOUT;
        }
        if isset(e, fd) {
            events |= libc::POLLPRI;
        }
        if events != 0 {
            any |= DATA.get(fd);
            out.push(pollfd { fd, events, revents: 0 });
        }
    }
    any.then_some(out)
}

/// Write poll results back into the sets, as Linux's select maps them.
unsafe fn poll_to_sets(fds: &[pollfd], r: *mut fd_set, w: *mut fd_set, e: *mut fd_set) -> c_int {
    for set in [r, w, e] {
        if !set.is_null() {
            libc::FD_ZERO(set);
        }
    }
    let mut count = 0;
    for p in fds {
        if p.revents & libc::POLLNVAL != 0 {
            continue;
        }
        if !r.is_null() && p.events & libc::POLLIN != 0 && p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            libc::FD_SET(p.fd, r);
            count += 1;
        }
        if !w.is_null() && p.events & libc::POLLOUT != 0 && p.revents & (libc::POLLOUT | libc::POLLERR) != 0 {
            libc::FD_SET(p.fd, w);
            count += 1;
        }
        if !e.is_null() && p.events & libc::POLLPRI != 0 && p.revents & libc::POLLPRI != 0 {
            libc::FD_SET(p.fd, e);
            count += 1;
        }
    }
    count
}

pub unsafe fn select(nfds: c_int, r: *mut fd_set, w: *mut fd_set, e: *mut fd_set, timeout: *mut timeval) -> c_int {
    if reentered() {
        return (real().select)(nfds, r, w, e, timeout);
    }
    let Some(mut fds) = sets_to_poll(nfds, r, w, e) else { return (real().select)(nfds, r, w, e, timeout) };
    let t = if timeout.is_null() {
        None
    } else {
        let tv = &*timeout;
        if tv.tv_sec < 0 || tv.tv_usec < 0 {
            set_errno(libc::EINVAL);
            return -1;
        }
        Some(Duration::new(tv.tv_sec as u64, (tv.tv_usec as u32).min(999_999) * 1000))
    };
    let start = sys::now_ns();
    let res = boundary(-1, || poll_fabric(&mut fds, t, None));
    if let Some(t) = t {
        // As Linux: select reports the time not slept.
        let left = t.saturating_sub(Duration::from_nanos(sys::now_ns() - start));
        (*timeout).tv_sec = left.as_secs() as libc::time_t;
        (*timeout).tv_usec = left.subsec_micros() as libc::suseconds_t;
    }
    if res < 0 {
        return res;
    }
    poll_to_sets(&fds, r, w, e)
}

pub unsafe fn pselect(nfds: c_int, r: *mut fd_set, w: *mut fd_set, e: *mut fd_set, timeout: *const timespec, sigmask: *const sigset_t) -> c_int {
    if reentered() {
        return (real().pselect)(nfds, r, w, e, timeout, sigmask);
    }
    let Some(mut fds) = sets_to_poll(nfds, r, w, e) else { return (real().pselect)(nfds, r, w, e, timeout, sigmask) };
    let res = boundary(-1, || poll_fabric(&mut fds, ts_timeout(timeout)?, sigmask.as_ref()));
    if res < 0 {
        return res;
    }
    poll_to_sets(&fds, r, w, e)
}
