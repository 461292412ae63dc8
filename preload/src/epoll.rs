//! epoll over fabric and kernel fds.
//!
//! The application's epoll fd stays a real kernel epoll set: kernel fds (files, pipes,
//! listening sockets, connections on TCP) are registered in it as usual. A fabric
//! connection cannot be: its kernel socket never carries data, and would report
//! EPOLLOUT forever. So each set keeps a *shadow* list of its fabric registrations
//! (events and data exactly as registered), and `epoll_wait`:
//! 1. reports the shadow entries that are ready (level-triggered, or edge-triggered by
//!    ring progress, EPOLLONESHOT honoured), together with whatever the kernel set has;
//! 2. if nothing is ready, announces its interest in every shadow entry (wait bits in
//!    shared memory) and blocks on the set's *waker*: a private epoll fd of the shim's
//!    (hidden, close-on-exec) holding the application's set (level-triggered) and the
//!    connections' doorbell pipes (edge-triggered);
//! 3. on wake-up, drains the waker (doorbell hang-ups tell of peers gone) and computes
//!    readiness again, the kernel set's with a zero-timeout wait.
//!
//! Nothing of the shim's is ever registered in the application's set, so no event, fd or
//! data word of ours can reach the application, whatever its threads do meanwhile (a
//! doorbell kept for the next connection between the same two processes outlives the
//! stream that registered it, and is rung for a connection of another thread's set).
//! Each registration lives in exactly one place, the shadow list or the kernel set, and
//! EPOLL_CTL_MOD/DEL go where it lives (a connection that moved back to TCP after it was
//! registered stays in the shadow list until a wait moves it into the kernel set: either
//! way the application's DEL finds it).
//!
//! A connection whose offer is still unanswered when registered is kept in the shadow
//! list until decided; if it ends on TCP it moves into the kernel set with its events
//! and data. A socket registered before it became a fabric connection (added, then
//! connected) is moved out of the kernel set the first time the set is waited on after.
//! An epoll set may itself be watched, by another epoll set or by poll/select: an inner
//! set with fabric entries is reported readable when one of them is ready, and while the
//! outer waiter blocks, the inner entries are announced so that their doorbells (in the
//! inner kernel set, hence making it readable) wake the outer one.
#![allow(unsafe_code)]
#![allow(clippy::missing_safety_doc)]

use crate::hooks::real;
use crate::imp::{boundary, reentered, set_errno};
use crate::sock::{Conn, Entry, Need, Undecided};
use crate::table::{self, DATA, TRACKED};
use libc::{c_int, epoll_event, sigset_t, timespec};
use parking_lot::Mutex;
use rdmasock_transport::conn::spin_set;
use rdmasock_transport::fabric::Stream;
use rdmasock_transport::layout::wait;
use rdmasock_transport::sys;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Data word of the application's set in the waker (doorbells there carry their fd,
/// which is never negative).
const KERNEL_SET: u64 = u64::MAX;

/// Bumped whenever a connection becomes pending or fabric: a set whose kernel list
/// might hold such a socket re-checks it.
pub static GEN: AtomicU64 = AtomicU64::new(0);

const IN_BITS: u32 = (libc::EPOLLIN | libc::EPOLLRDNORM | libc::EPOLLRDHUP | libc::EPOLLPRI) as u32;
const OUT_BITS: u32 = (libc::EPOLLOUT | libc::EPOLLWRNORM) as u32;
const ALWAYS: u32 = (libc::EPOLLERR | libc::EPOLLHUP) as u32;

pub struct EpollSet {
    /// The kernel epoll fd this set was created as (the application's).
    epfd: c_int,
    /// The waker (module doc), made the first time a doorbell must be watched.
    waker: std::sync::OnceLock<Option<Waker>>,
    inner: Mutex<Inner>,
    /// The shadow list is not empty (lets the plain case skip everything).
    has_shadow: AtomicBool,
    seen_gen: AtomicU64,
}

#[derive(Default)]
struct Inner {
    shadow: Vec<Shadow>,
    /// What the application registered in the kernel set, by fd.
    kernel: HashMap<c_int, (u32, u64)>,
    /// Doorbells registered in the waker, and whose they are.
    bells: HashMap<c_int, Weak<dyn Stream>>,
    /// Epoll sets registered in this one (also in the kernel set): (fd, set, events, data).
    nested: Vec<(c_int, Weak<EpollSet>, u32, u64)>,
    rotor: usize,
}

struct Shadow {
    fd: c_int,
    conn: Weak<Conn>,
    events: u32,
    data: u64,
    /// EPOLLONESHOT fired: silent until EPOLL_CTL_MOD.
    fired: bool,
    /// Edge-triggered: progress counters and mask at the last report.
    last: Option<(u64, u64, u32)>,
}

/// What one pass over the shadow list found.
struct Scan {
    ready: Vec<epoll_event>,
    /// Inner epoll sets to announce interest in before blocking.
    nested: Vec<Arc<EpollSet>>,
    /// Inner epoll sets ready on their fabric side.
    nested_ready: Vec<epoll_event>,
    /// Streams to announce interest in before blocking, with the interest.
    arm: Vec<(Arc<dyn Stream>, u32)>,
    /// Wake up by then at the latest (an undecided connection).
    wake_by_ns: Option<u64>,
}

/// The private epoll fd a set blocks on.
struct Waker {
    fd: sys::Fd,
    /// The application's set is in it (else, nested too deep for the kernel: poll it
    /// beside the waker).
    holds_set: bool,
}

impl EpollSet {
    fn new(epfd: c_int) -> EpollSet {
        EpollSet { epfd, waker: std::sync::OnceLock::new(), inner: Mutex::default(), has_shadow: AtomicBool::new(false), seen_gen: AtomicU64::new(0) }
    }

    /// The waker, made on first use (None: no fd could be had; waits then poll the
    /// doorbells they know of).
    fn waker(&self) -> Option<&Waker> {
        self.waker
            .get_or_init(|| {
                // SAFETY: plain system calls on fds we own.
                let fd = unsafe { (real().epoll_create1)(libc::EPOLL_CLOEXEC) };
                if fd < 0 {
                    return None;
                }
                let fd = rdmasock_transport::wait::hide_fd(sys::owned(fd));
                let mut ev = epoll_event { events: libc::EPOLLIN as u32, u64: KERNEL_SET };
                let holds_set = unsafe { (real().epoll_ctl)(fd.raw(), libc::EPOLL_CTL_ADD, self.epfd, &mut ev) } == 0;
                Some(Waker { fd, holds_set })
            })
            .as_ref()
    }

    /// Watch a doorbell, edge-triggered: a ring wakes the waker whoever reads the byte
    /// afterwards.
    fn watch(&self, bell: c_int) {
        let Some(w) = self.waker() else { return };
        let mut ev = epoll_event { events: (libc::EPOLLIN | libc::EPOLLET) as u32, u64: bell as u32 as u64 };
        // SAFETY: plain epoll_ctl on fds we own.
        if unsafe { (real().epoll_ctl)(w.fd.raw(), libc::EPOLL_CTL_ADD, bell, &mut ev) } != 0 {
            // Already there (EEXIST): re-arm the edge.
            unsafe { (real().epoll_ctl)(w.fd.raw(), libc::EPOLL_CTL_MOD, bell, &mut ev) };
        }
    }

    fn unwatch(&self, bell: c_int) {
        if let Some(Some(w)) = self.waker.get() {
            // SAFETY: as in watch; a number no longer watched answers ENOENT.
            unsafe { (real().epoll_ctl)(w.fd.raw(), libc::EPOLL_CTL_DEL, bell, std::ptr::null_mut()) };
        }
    }

    /// Block until the application's set or a watched doorbell is ready (or `ms`, or a
    /// signal), then handle what the doorbells said. Err: the errno (EINTR as Linux).
    fn block(&self, ms: c_int, sigmask: *const sigset_t) -> Result<(), i32> {
        let mut evs = [epoll_event { events: 0, u64: 0 }; 32];
        let n = match self.waker() {
            Some(w) if w.holds_set => {
                // SAFETY: evs is ours, sigmask the caller's (or null).
                let n = unsafe {
                    if sigmask.is_null() {
                        (real().epoll_wait)(w.fd.raw(), evs.as_mut_ptr(), evs.len() as c_int, ms)
                    } else {
                        (real().epoll_pwait)(w.fd.raw(), evs.as_mut_ptr(), evs.len() as c_int, ms, sigmask)
                    }
                };
                if n < 0 {
                    return Err(crate::imp::errno_now());
                }
                n as usize
            }
            w => {
                // The waker (if any) beside the application's set, in one ppoll.
                let mut p = vec![libc::pollfd { fd: self.epfd, events: libc::POLLIN, revents: 0 }];
                if let Some(w) = w {
                    p.push(libc::pollfd { fd: w.fd.raw(), events: libc::POLLIN, revents: 0 });
                } else {
                    p.extend(self.inner.lock().bells.keys().map(|&b| libc::pollfd { fd: b, events: libc::POLLIN, revents: 0 }));
                }
                let ts = (ms >= 0).then(|| timespec { tv_sec: (ms / 1000) as libc::time_t, tv_nsec: (ms % 1000) as libc::c_long * 1_000_000 });
                let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const timespec);
                // SAFETY: p is ours.
                if unsafe { (real().ppoll)(p.as_mut_ptr(), p.len() as libc::nfds_t, tsp, sigmask) } < 0 {
                    return Err(crate::imp::errno_now());
                }
                if let Some(w) = w {
                    // SAFETY: evs is ours.
                    unsafe { (real().epoll_wait)(w.fd.raw(), evs.as_mut_ptr(), evs.len() as c_int, 0) }.max(0) as usize
                } else {
                    for q in &p[1..] {
                        if q.revents != 0 {
                            self.on_bell(q.fd, q.revents as u32);
                        }
                    }
                    0
                }
            }
        };
        self.on_waker_events(&evs[..n]);
        Ok(())
    }

    /// The doorbells among what the waker reported.
    fn on_waker_events(&self, evs: &[epoll_event]) {
        for e in evs {
            if e.u64 != KERNEL_SET {
                self.on_bell(e.u64 as u32 as c_int, e.events);
            }
        }
    }

    /// Handle the doorbells that rang without blocking (a poll/select waiter woke on the
    /// waker).
    pub fn drain_waker(&self) {
        if let Some(Some(w)) = self.waker.get() {
            let mut evs = [epoll_event { events: 0, u64: 0 }; 32];
            loop {
                // SAFETY: evs is ours.
                let n = unsafe { (real().epoll_wait)(w.fd.raw(), evs.as_mut_ptr(), evs.len() as c_int, 0) };
                self.on_waker_events(&evs[..n.max(0) as usize]);
                if n < evs.len() as c_int {
                    break;
                }
            }
        }
    }

    /// What a poll/select waiter blocks on to learn of this set's fabric entries (and of
    /// its kernel side): the waker, else the application's set alone.
    pub fn wake_fd(&self) -> c_int {
        match self.waker() {
            Some(w) => w.fd.raw(),
            None => self.epfd,
        }
    }

    /// Where the application's registration of `fd` lives: Some(index) in the shadow
    /// list. Matched by connection too: a closed fd's number may now name another.
    fn shadow_at(g: &Inner, fd: c_int, c: Option<&Arc<Conn>>) -> Option<usize> {
        let c = c?;
        g.shadow.iter().position(|s| s.fd == fd && s.conn.upgrade().is_some_and(|x| Arc::ptr_eq(&x, c)))
    }

    fn ctl_shadow(&self, g: &mut Inner, op: c_int, fd: c_int, c: &Arc<Conn>, at: Option<usize>, ev: Option<&epoll_event>) -> Result<c_int, i32> {
        match (op, at, ev) {
            (libc::EPOLL_CTL_ADD, Some(_), _) => Err(libc::EEXIST),
            (libc::EPOLL_CTL_ADD, None, Some(ev)) => {
                g.shadow.push(Shadow { fd, conn: Arc::downgrade(c), events: ev.events, data: ev.u64, fired: false, last: None });
                self.has_shadow.store(true, Ordering::Release);
                Ok(0)
            }
            (libc::EPOLL_CTL_MOD, Some(i), Some(ev)) => {
                if ev.events & libc::EPOLLEXCLUSIVE as u32 != 0 {
                    return Err(libc::EINVAL); // as Linux
                }
                let s = &mut g.shadow[i];
                s.events = ev.events;
                s.data = ev.u64;
                s.fired = false;
                s.last = None;
                Ok(0)
            }
            (libc::EPOLL_CTL_DEL, Some(i), _) => {
                g.shadow.swap_remove(i);
                Ok(0)
            }
            (libc::EPOLL_CTL_ADD | libc::EPOLL_CTL_MOD, _, None) => Err(libc::EFAULT),
            (libc::EPOLL_CTL_MOD | libc::EPOLL_CTL_DEL, None, _) => Err(libc::ENOENT),
            _ => Err(libc::EINVAL),
        }
    }

    /// epoll_ctl on this set, under its lock: a registration goes where it lives (shadow
    /// list or kernel set); a new one goes to the shadow list if the connection is on
    /// the fabric or undecided, else to the kernel set.
    fn ctl(&self, op: c_int, fd: c_int, ev: *mut epoll_event) -> Result<c_int, i32> {
        let conn = match table::get(fd) {
            Some(Entry::Conn(c)) => Some(c),
            _ => None,
        };
        // SAFETY: the caller's pointer, as the kernel would read it.
        let evr = unsafe { ev.as_ref() };
        let mut g = self.inner.lock();
        let at = Self::shadow_at(&g, fd, conn.as_ref());
        let fabric = conn.as_ref().filter(|c| match c.decided.get() {
            None => true,
            Some(None) => false,
            Some(Some(s)) => !s.moved(),
        });
        let kernel = |g: &mut Inner| -> Result<c_int, i32> {
            // SAFETY: the application's arguments, passed on.
            let r = crate::imp::pass_int(unsafe { (real().epoll_ctl)(self.epfd, op, fd, ev) })?;
            match op {
                libc::EPOLL_CTL_DEL => {
                    g.kernel.remove(&fd);
                }
                _ => {
                    if let Some(e) = evr {
                        g.kernel.insert(fd, (e.events, e.u64));
                    }
                }
            }
            Ok(r)
        };
        let r = match (at, fabric) {
            (Some(_), _) => self.ctl_shadow(&mut g, op, fd, conn.as_ref().expect("a shadow entry's connection"), at, evr),
            (None, Some(c)) if op == libc::EPOLL_CTL_ADD => {
                if g.kernel.contains_key(&fd) {
                    // Registered in the kernel set before it became a fabric connection
                    // (the next wait moves it): the kernel answers EEXIST, or takes it
                    // if that registration went with a closed fd, which then moves here.
                    let r = kernel(&mut g)?;
                    // SAFETY: undoing our own ADD.
                    unsafe { (real().epoll_ctl)(self.epfd, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
                    g.kernel.remove(&fd);
                    self.ctl_shadow(&mut g, op, fd, c, None, evr).map(|_| r)
                } else {
                    self.ctl_shadow(&mut g, op, fd, c, None, evr)
                }
            }
            _ => kernel(&mut g),
        };
        if r.is_ok() {
            if let Some(inner) = set_of(fd) {
                g.nested.retain(|(n, _, _, _)| *n != fd);
                if let (true, Some(e)) = (op != libc::EPOLL_CTL_DEL, evr) {
                    g.nested.push((fd, Arc::downgrade(&inner), e.events, e.u64));
                    self.has_shadow.store(true, Ordering::Release);
                }
            }
        }
        r
    }

    /// Sockets the application put in the kernel set before they became fabric
    /// connections: move them to the shadow list.
    fn migrate(&self, epfd: c_int) {
        let gen = GEN.load(Ordering::Acquire);
        if self.seen_gen.swap(gen, Ordering::AcqRel) == gen {
            return;
        }
        let mut g = self.inner.lock();
        let movers: Vec<c_int> = g.kernel.keys().copied().filter(|&fd| DATA.get(fd)).collect();
        for fd in movers {
            let Some(Entry::Conn(c)) = table::get(fd) else { continue };
            // Only if the kernel still holds this socket's registration (a closed fd's
            // registration is gone, and its number may now be someone else's).
            if unsafe { (real().epoll_ctl)(epfd, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) } != 0 {
                g.kernel.remove(&fd);
                continue;
            }
            let (events, data) = g.kernel.remove(&fd).unwrap_or((0, 0));
            g.shadow.push(Shadow { fd, conn: Arc::downgrade(&c), events, data, fired: false, last: None });
            self.has_shadow.store(true, Ordering::Release);
        }
    }

    /// Would a wait on this set report something now (fabric entries only; the kernel
    /// side answers for itself)? Changes nothing.
    pub fn peek_ready(&self) -> bool {
        let g = self.inner.lock();
        g.shadow.iter().any(|s| {
            let Some(c) = s.conn.upgrade() else { return false };
            let Some(Some(stream)) = c.decided.get() else { return false };
            if s.fired {
                return false;
            }
            let mask = stream.poll_events() as u16 as u32 & (s.events | ALWAYS);
            mask != 0 && (s.events & libc::EPOLLET as u32 == 0 || edge(s, stream, mask))
        })
    }

    /// Announce interest in every fabric entry (an outer waiter is about to block on
    /// `into`'s waker, which watches their doorbells: `into` is an outer epoll set, or
    /// this one for a poll/select waiter); returns what to withdraw afterwards with
    /// [`disarm_all`].
    pub fn arm_all(&self, into: &EpollSet) -> Vec<(Arc<dyn Stream>, u32)> {
        let mut armed = Vec::new();
        let g = self.inner.lock();
        let streams: Vec<(Arc<dyn Stream>, u32)> = g
            .shadow
            .iter()
            .filter_map(|s| match s.conn.upgrade()?.decided.get() {
                Some(Some(stream)) => Some((stream.clone(), s.events)),
                _ => None,
            })
            .collect();
        drop(g);
        for (stream, events) in streams {
            // Its doorbell must be watched where the waiter blocks.
            {
                let mut og = into.inner.lock();
                into.ensure_bell(&mut og, &stream);
            }
            let interest = interest_of(events);
            stream.local_bell().arm(interest, |b| stream.arm(b));
            armed.push((stream.clone(), interest));
        }
        armed
    }

    pub fn has_fabric(&self) -> bool {
        self.has_shadow.load(Ordering::Acquire)
    }

    /// One pass: settle undecided entries, report ready ones (up to `max`).
    fn scan(&self, max: usize) -> Scan {
        let epfd = self.epfd;
        let mut g = self.inner.lock();
        let mut out = Scan { ready: Vec::new(), nested: Vec::new(), nested_ready: Vec::new(), arm: Vec::new(), wake_by_ns: None };
        let n = g.shadow.len();
        let start = if n == 0 { 0 } else { g.rotor % n };
        let mut gone = Vec::new();
        for k in 0..n {
            let i = (start + k) % n;
            let Some(c) = g.shadow[i].conn.upgrade() else {
                gone.push(i);
                continue;
            };
            let fd = g.shadow[i].fd;
            let stream = match c.stream(fd, Need::Peek) {
                Ok(Some(s)) if !s.moved() => s,
                Ok(_) => {
                    // Settled on TCP: the kernel set takes it over, as registered.
                    // (A fired EPOLLONESHOT entry comes back armed: the kernel has no
                    // way to add one disarmed.)
                    let (events, data) = (g.shadow[i].events, g.shadow[i].data);
                    let mut ev = epoll_event { events, u64: data };
                    if unsafe { (real().epoll_ctl)(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } == 0 {
                        g.kernel.insert(fd, (events, data));
                    }
                    c.note_moved();
                    DATA.set(fd, false);
                    gone.push(i);
                    continue;
                }
                Err(Undecided::Connecting) => {
                    // The kernel is still connecting. Nothing is reported until it is
                    // done *and* the fabric decision is made (writable means the path
                    // is known); look again soon, or at once if the kernel finished.
                    let mut p = [libc::pollfd { fd, events: libc::POLLOUT, revents: 0 }];
                    let done = matches!(sys::poll(&mut p, 0), Ok(1));
                    let soon = sys::now_ns() + if done { 0 } else { 1_000_000 };
                    out.wake_by_ns = Some(out.wake_by_ns.map_or(soon, |w| w.min(soon)));
                    continue;
                }
                Err(Undecided::Offered) => {
                    if let Some((bell, deadline)) = c.pending_bell() {
                        self.watch(bell);
                        // Bytes from a plain server on the kernel socket do not ring the
                        // bell: look again every few milliseconds until decided.
                        let wake = deadline.min(sys::now_ns() + 5_000_000);
                        out.wake_by_ns = Some(out.wake_by_ns.map_or(wake, |w| w.min(wake)));
                    }
                    continue;
                }
            };
            self.ensure_bell(&mut g, &stream);
            if stream.peer_gone() {
                // Moving back to TCP (re-sending, or bytes left to read): the hung-up
                // doorbell rings no more, and the kernel socket's progress wakes nothing
                // of ours: look again within a millisecond until the kernel set takes it.
                let soon = sys::now_ns() + 1_000_000;
                out.wake_by_ns = Some(out.wake_by_ns.map_or(soon, |w| w.min(soon)));
            }
            let s = &mut g.shadow[i];
            if s.fired {
                continue;
            }
            let mask = stream.poll_events() as u16 as u32 & (s.events | ALWAYS);
            let report = mask != 0 && out.ready.len() < max && {
                if s.events & libc::EPOLLET as u32 != 0 {
                    let e = edge(s, &stream, mask);
                    if e {
                        let (pin, pout) = stream.progress();
                        s.last = Some((pin, pout, mask));
                    }
                    e
                } else {
                    true
                }
            };
            if report {
                out.ready.push(epoll_event { events: mask, u64: s.data });
                if s.events & libc::EPOLLONESHOT as u32 != 0 {
                    s.fired = true;
                }
            } else {
                out.arm.push((stream, interest_of(s.events)));
            }
        }
        // Inner epoll sets with fabric entries: readable when one of those is ready.
        g.nested.retain(|(_, w, _, _)| w.strong_count() > 0);
        for (_, inner, events, data) in &g.nested {
            let Some(inner) = inner.upgrade() else { continue };
            if events & IN_BITS != 0 && inner.has_fabric() && out.ready.len() < max && inner.peek_ready() {
                out.nested_ready.push(epoll_event { events: libc::EPOLLIN as u32, u64: *data });
            } else {
                out.nested.push(inner);
            }
        }
        g.bells.retain(|&b, w| {
            let live = w.strong_count() > 0;
            if !live {
                // A doorbell kept for a later connection stays open: stop watching it.
                self.unwatch(b);
            }
            live
        });
        gone.sort_unstable();
        for i in gone.into_iter().rev() {
            g.shadow.swap_remove(i);
        }
        g.rotor = g.rotor.wrapping_add(1);
        self.has_shadow.store(!g.shadow.is_empty() || !g.nested.is_empty(), Ordering::Release);
        out
    }

    fn ensure_bell(&self, g: &mut Inner, s: &Arc<dyn Stream>) {
        let bell = s.doorbell();
        if let Some(w) = g.bells.get(&bell) {
            if w.upgrade().is_some_and(|x| Arc::ptr_eq(&x, s)) {
                return;
            }
        }
        self.watch(bell);
        g.bells.insert(bell, Arc::downgrade(s));
    }

    /// A doorbell watched by the waker rang or hung up.
    fn on_bell(&self, bell: c_int, events: u32) {
        let s = self.inner.lock().bells.get(&bell).and_then(|w| w.upgrade());
        if let Some(s) = s {
            if events & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                s.ring_gone();
            }
            s.local_bell().drain_unled(bell);
        }
    }
}

fn interest_of(events: u32) -> u32 {
    let mut interest = 0;
    if events & IN_BITS != 0 {
        interest |= wait::DATA;
    }
    if events & OUT_BITS != 0 {
        interest |= wait::SPACE;
    }
    interest
}

/// Edge-triggered: has readiness moved since the last report (new bytes in, space
/// freed, or new condition bits)?
fn edge(s: &Shadow, stream: &Arc<dyn Stream>, mask: u32) -> bool {
    let (pin, pout) = stream.progress();
    match s.last {
        None => true,
        Some((lin, lout, lmask)) => {
            (mask & (IN_BITS | ALWAYS) != 0 && (pin != lin || mask & !lmask & (IN_BITS | ALWAYS) != 0))
                || (mask & OUT_BITS != 0 && (pout != lout || mask & !lmask & OUT_BITS != 0))
        }
    }
}

/// Withdraw what [`EpollSet::arm_all`] announced.
pub fn disarm_all(armed: &[(Arc<dyn Stream>, u32)]) {
    for (s, i) in armed {
        s.local_bell().disarm(*i, |b| s.disarm(b));
    }
}

pub fn set_of(epfd: c_int) -> Option<Arc<EpollSet>> {
    if !TRACKED.get(epfd) {
        return None;
    }
    match table::get(epfd) {
        Some(Entry::Epoll(s)) => Some(s),
        _ => None,
    }
}

fn track_set(r: c_int) -> c_int {
    if r >= 0 && !crate::state::off() && !reentered() {
        table::insert(r, Entry::Epoll(Arc::new(EpollSet::new(r))));
    }
    r
}

pub unsafe fn epoll_create(size: c_int) -> c_int {
    track_set((real().epoll_create)(size))
}

pub unsafe fn epoll_create1(flags: c_int) -> c_int {
    track_set((real().epoll_create1)(flags))
}

pub unsafe fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut epoll_event) -> c_int {
    let pass_through = || (real().epoll_ctl)(epfd, op, fd, ev);
    if reentered() {
        return pass_through();
    }
    let Some(set) = set_of(epfd) else { return pass_through() };
    boundary(-1, || {
        if fd == epfd {
            return Err(libc::EINVAL);
        }
        let r = set.ctl(op, fd, ev);
        // poll/select on this epoll fd must now look inside it.
        DATA.set(epfd, set.has_fabric());
        r
    })
}

unsafe fn wait_common(
    epfd: c_int,
    out: *mut epoll_event,
    max: c_int,
    timeout: Option<Duration>,
    sigmask: *const sigset_t,
    pass_through: impl Fn() -> c_int,
) -> c_int {
    if reentered() || out.is_null() || max <= 0 {
        return pass_through();
    }
    let Some(set) = set_of(epfd) else { return pass_through() };
    set.migrate(epfd);
    // Nothing of ours is ever in the kernel set: without fabric entries it is the
    // application's alone.
    if !set.has_shadow.load(Ordering::Acquire) {
        return pass_through();
    }
    let buf = std::slice::from_raw_parts_mut(out, max as usize);
    boundary(-1, || {
        let deadline = timeout.map(|t| sys::now_ns() + t.as_nanos() as u64);
        loop {
            // The kernel set first, then the shadow list, in the room left.
            let k = (real().epoll_wait)(epfd, buf.as_mut_ptr(), buf.len() as c_int, 0);
            let kept = k.max(0) as usize;
            let scan = set.scan(buf.len() - kept);
            let mut n = kept;
            buf[n..n + scan.ready.len()].copy_from_slice(&scan.ready);
            n += scan.ready.len();
            // An inner set the kernel already reported is not reported twice.
            for e in &scan.nested_ready {
                if n < buf.len() && !buf[..kept].iter().any(|k| k.u64 == e.u64) {
                    buf[n] = *e;
                    n += 1;
                }
            }
            let now = sys::now_ns();
            if n > 0 || deadline.is_some_and(|d| now >= d) {
                return Ok(n as c_int);
            }
            // Nothing: spin a little if a peer is running, then announce interest, look
            // once more, and block.
            let spinners: Vec<(&dyn Stream, u32)> = scan.arm.iter().map(|(s, i)| (&**s, *i)).collect();
            let kernel_ready = || {
                let mut p = [libc::pollfd { fd: epfd, events: libc::POLLIN, revents: 0 }];
                matches!(sys::poll(&mut p, 0), Ok(1))
            };
            if timeout != Some(Duration::ZERO) && spin_set(&spinners, crate::state::policy(), kernel_ready) {
                continue;
            }
            for (s, i) in &scan.arm {
                s.local_bell().arm(*i, |b| s.arm(b));
            }
            let nested_armed: Vec<_> = scan.nested.iter().map(|n| n.arm_all(&set)).collect();
            let ready_now = scan.arm.iter().any(|(s, i)| {
                (*i & wait::DATA != 0 && s.has_data()) || (*i & wait::SPACE != 0 && s.has_space())
            }) || scan.nested.iter().any(|n| n.peek_ready());
            let mut blocked = Ok(());
            if !ready_now {
                let wake_at = scan.wake_by_ns.into_iter().chain(deadline).min();
                let ms = match wake_at {
                    None => -1,
                    Some(w) => (w.saturating_sub(now)).div_ceil(1_000_000).min(i32::MAX as u64) as c_int,
                };
                blocked = set.block(ms, sigmask);
            }
            for (s, i) in &scan.arm {
                s.local_bell().disarm(*i, |b| s.disarm(b));
            }
            for armed in &nested_armed {
                disarm_all(armed);
            }
            blocked?;
        }
    })
}

pub unsafe fn epoll_wait(epfd: c_int, out: *mut epoll_event, max: c_int, timeout: c_int) -> c_int {
    let t = (timeout >= 0).then(|| Duration::from_millis(timeout as u64));
    wait_common(epfd, out, max, t, std::ptr::null(), || (real().epoll_wait)(epfd, out, max, timeout))
}

pub unsafe fn epoll_pwait(epfd: c_int, out: *mut epoll_event, max: c_int, timeout: c_int, sigmask: *const sigset_t) -> c_int {
    let t = (timeout >= 0).then(|| Duration::from_millis(timeout as u64));
    wait_common(epfd, out, max, t, sigmask, || (real().epoll_pwait)(epfd, out, max, timeout, sigmask))
}

pub unsafe fn epoll_pwait2(epfd: c_int, out: *mut epoll_event, max: c_int, timeout: *const timespec, sigmask: *const sigset_t) -> c_int {
    let t = if timeout.is_null() {
        None
    } else {
        let ts = &*timeout;
        if ts.tv_sec < 0 || ts.tv_nsec < 0 || ts.tv_nsec >= 1_000_000_000 {
            set_errno(libc::EINVAL);
            return -1;
        }
        Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    };
    wait_common(epfd, out, max, t, sigmask, || (real().epoll_pwait2)(epfd, out, max, timeout, sigmask))
}
