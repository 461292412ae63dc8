//! Blocking on fabric streams: the waiting policy shared by every fabric (spin while the
//! peer runs elsewhere, yield while it runs here, else block on the doorbell), for one
//! stream (blocking recv/send) or many mixed with kernel fds (poll/select).

use crate::fabric::Stream;
use crate::layout::wait;
use crate::sys;
use crate::wait::{block, drain_after_poll, drain_event, spin_until, Approach, Role, SpinPolicy, Woke};
use std::io;
use std::time::Duration;

#[derive(Debug, PartialEq, Eq)]
pub enum WaitEnd {
    Ready,
    TimedOut,
    Interrupted,
}

/// Before blocking on a set of streams (poll, epoll): busy-wait or yield, bounded by
/// the policy's budget, if any stream's peer is running (on another CPU: spin; on ours:
/// yield). `also` is checked every 64 rounds (the kernel side of the set: a system
/// call). Returns true when something became ready.
pub fn spin_set(streams: &[(&dyn Stream, u32)], policy: &SpinPolicy, mut also: impl FnMut() -> bool) -> bool {
    let Some(approach) = streams.iter().map(|(s, _)| s.approach(policy)).find(|a| *a != Approach::Block) else {
        return false;
    };
    let mut round = 0u32;
    spin_until(&approach, policy.budget, || {
        round = round.wrapping_add(1);
        streams.iter().any(|(s, i)| ready(*s, *i)) || (round % 64 == 0 && also())
    })
}

fn ready(s: &dyn Stream, interest: u32) -> bool {
    (interest & wait::DATA != 0 && s.has_data()) || (interest & wait::SPACE != 0 && s.has_space())
}

/// Wait until `s` can make progress for `interest` (`wait::DATA` or `wait::SPACE`).
pub fn wait_stream(s: &dyn Stream, interest: u32, timeout: Option<Duration>, policy: &SpinPolicy) -> WaitEnd {
    wait_until(s, interest, timeout, policy, |s| ready(s, interest))
}

/// Wait until `done(s)`, announcing `interest` to the peer while blocked: the peer
/// rings for any progress of that kind, so `done` may be any condition that only such
/// progress can make true (more bytes than N, say).
pub fn wait_until(s: &dyn Stream, interest: u32, timeout: Option<Duration>, policy: &SpinPolicy, done: impl Fn(&dyn Stream) -> bool) -> WaitEnd {
    let ready = |s: &dyn Stream, _: u32| done(s);
    if ready(s, interest) {
        return WaitEnd::Ready;
    }
    let approach = s.approach(policy);
    if approach != Approach::Block && spin_until(&approach, policy.budget, || ready(s, interest)) {
        return WaitEnd::Ready;
    }
    let deadline = timeout.map(|t| sys::now_ns() + t.as_nanos() as u64);
    loop {
        let Ok(role) = s.local_bell().join() else { return WaitEnd::Interrupted };
        s.local_bell().arm(interest, |i| s.arm(i));
        let stop = |end| {
            s.local_bell().disarm(interest, |i| s.disarm(i));
            s.local_bell().leave(role);
            end
        };
        if ready(s, interest) {
            return stop(WaitEnd::Ready);
        }
        let remaining = match deadline {
            Some(d) => {
                let now = sys::now_ns();
                if now >= d {
                    return stop(WaitEnd::TimedOut);
                }
                Some(Duration::from_nanos(d - now))
            }
            None => None,
        };
        let remaining = match (remaining, s.wait_cap()) {
            (Some(r), Some(c)) => Some(r.min(c)),
            (r, c) => r.or(c),
        };
        let woke = block(s.doorbell(), role, remaining);
        s.local_bell().disarm(interest, |i| s.disarm(i));
        if role == Role::Leader {
            if woke == Woke::PeerGone {
                s.ring_gone();
            }
            s.local_bell().woke();
        }
        s.local_bell().leave(role);
        let now_ready = ready(s, interest);
        match woke {
            _ if now_ready => return WaitEnd::Ready,
            Woke::Interrupted => return WaitEnd::Interrupted,
            Woke::TimedOut if deadline.is_some_and(|d| sys::now_ns() >= d) => return WaitEnd::TimedOut,
            _ => {}
        }
    }
}

/// A fabric stream in a poll set: what to announce (`wait::*` bits) and which poll
/// events the caller wants reported.
pub struct PollItem<'a> {
    pub stream: &'a dyn Stream,
    pub interest: u32,
    pub events: i16,
}

impl PollItem<'_> {
    /// Would poll report something for this stream now?
    pub fn ready(&self) -> bool {
        self.stream.poll_events() & (self.events | libc::POLLERR | libc::POLLHUP) != 0
    }
}

/// One blocking step over fabric streams and kernel fds together (poll/select/epoll).
/// `kernel` is the caller's pollfd list for kernel fds (and other doorbells), whose
/// `revents` are filled in. Returns the number of kernel fds ready; the caller
/// re-checks the streams (any of them may have become ready) and loops if needed.
pub fn poll_step(
    items: &[PollItem<'_>],
    kernel: &mut [libc::pollfd],
    timeout: Option<Duration>,
    sigmask: Option<&libc::sigset_t>,
) -> io::Result<usize> {
    let mut roles: Vec<Role> = Vec::with_capacity(items.len());
    let cleanup = |roles: &[Role]| {
        for (it, r) in items.iter().zip(roles) {
            let s = it.stream;
            s.local_bell().disarm(it.interest, |i| s.disarm(i));
            s.local_bell().leave(*r);
        }
    };
    for it in items {
        match it.stream.local_bell().join() {
            Ok(r) => roles.push(r),
            Err(e) => {
                cleanup(&roles);
                return Err(e);
            }
        }
        let s = it.stream;
        s.local_bell().arm(it.interest, |i| s.arm(i));
    }
    if items.iter().any(|it| it.ready()) {
        cleanup(&roles);
        for k in kernel.iter_mut() {
            k.revents = 0;
        }
        // Let the caller collect kernel readiness too, without blocking.
        return sys::poll(kernel, 0);
    }
    let mut fds: Vec<libc::pollfd> = kernel.to_vec();
    let mut led = Vec::new();
    let mut event_fd = None;
    for (idx, r) in roles.iter().enumerate() {
        match r {
            Role::Leader => {
                led.push((idx, fds.len()));
                fds.push(libc::pollfd { fd: items[idx].stream.doorbell(), events: libc::POLLIN, revents: 0 });
            }
            Role::Follower(ev) if event_fd.is_none() => {
                event_fd = Some(fds.len());
                fds.push(libc::pollfd { fd: *ev, events: libc::POLLIN, revents: 0 });
            }
            Role::Follower(_) => {}
        }
    }
    // Streams shared with other processes cap the wait (a ring byte may be read there).
    let cap = items.iter().filter_map(|it| it.stream.wait_cap()).min();
    let timeout = match (timeout, cap) {
        (Some(t), Some(c)) => Some(t.min(c)),
        (t, c) => t.or(c),
    };
    let ts = timeout.map(|t| libc::timespec { tv_sec: t.as_secs() as libc::time_t, tv_nsec: t.subsec_nanos() as libc::c_long });
    let res = sys::ppoll(&mut fds, ts.as_ref(), sigmask);
    for &(idx, at) in &led {
        let s = items[idx].stream;
        if fds[at].revents != 0 {
            if drain_after_poll(s.doorbell(), fds[at].revents) {
                s.ring_gone();
            }
            s.local_bell().woke();
        }
    }
    if let Some(at) = event_fd {
        if fds[at].revents & libc::POLLIN != 0 {
            drain_event(fds[at].fd);
        }
    }
    cleanup(&roles);
    res?;
    let mut n = 0;
    for (k, f) in kernel.iter_mut().zip(&fds) {
        k.revents = f.revents;
        if f.revents != 0 {
            n += 1;
        }
    }
    Ok(n)
}

/// The kernel socket's own view of the connection, when a fabric hands the stream back
/// to it (the peer left the ring). Looked at with poll, which consumes no socket error.
pub struct KernelEnd {
    /// A FIN and nothing worse has arrived: the peer's socket is closed (not exec'd or
    /// passed on). Bytes of ours it left unconsumed make this a reset, as Linux answers
    /// unread data with RST.
    pub fin_only: bool,
    /// No FIN, hang-up or error: someone still holds the other end (a program the peer
    /// exec'd, a process it passed the socket to). Only then are bytes re-sent: sending
    /// to a closed socket would consume the reset the application is owed.
    pub alive: bool,
}

impl KernelEnd {
    pub fn look(sock: std::os::fd::RawFd) -> KernelEnd {
        let mut p = [libc::pollfd { fd: sock, events: libc::POLLIN | libc::POLLRDHUP, revents: 0 }];
        let rev = if sys::poll(&mut p, 0).is_ok() { p[0].revents } else { 0 };
        KernelEnd {
            fin_only: rev & libc::POLLRDHUP != 0 && rev & libc::POLLERR == 0,
            alive: rev & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) == 0,
        }
    }
}
