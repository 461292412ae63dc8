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
use rdmasock_transport::layout::ListenerRepr;
use rdmasock_transport::stats::{path_code, SlotFill, SlotId, PATH_PENDING, PATH_TCP, ROLE_CLIENT};
use rdmasock_transport::sys;
use rdmasock_transport::wait::Approach;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
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
    /// What keeps it findable (rdmasock_transport::discovery): its registry record
    /// (our own user's clients find it there), its entries in fabrics' own listener
    /// tables (kmod's driver: a hidden fd, inherited by forked children, that keeps it
    /// findable while any process holding it lives). Dropping one withdraws it.
    pub announced: Mutex<Vec<Box<dyn rdmasock_transport::discovery::Announcement>>>,
}

impl Listener {
    pub fn release(&self) {
        self.announced.lock().clear();
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
    /// The connect call returned 0: the kernel connection was established then (it can
    /// only have moved on to closing since), so its state need not be asked.
    established: bool,
    /// The listener whose mailbox holds the offer (None: an offer file, for any of a
    /// group): checked alive once the claim is slow to come.
    to: Option<ListenerRepr>,
    /// When the offer was posted: the check is due a spin budget later, in whatever
    /// call comes then (a poll waiter wakes for it).
    posted_ns: u64,
    /// The check was made (and found the listener alive).
    checked: AtomicBool,
}

impl Pending {
    /// When the listener offered to should be looked at (None: not to be, or done).
    fn check_due(&self) -> Option<u64> {
        (self.to.is_some() && !self.checked.load(Ordering::Relaxed)).then(|| self.posted_ns + state::policy().budget.as_nanos() as u64)
    }

    /// Is the listener offered to gone? Asked once, when due.
    fn listener_gone(&self) -> bool {
        let (Some(due), Some(l), Some(reg)) = (self.check_due(), self.to.as_ref(), state::registry()) else { return false };
        if sys::now_ns() < due {
            return false;
        }
        self.checked.store(true, Ordering::Relaxed);
        !reg.listener_alive(l)
    }
}

pub struct Conn {
    pub local: Option<SockAddr>,
    pub peer: Option<SockAddr>,
    pub slot: Option<SlotId>,
    /// What the slot says (a forked child writes it into a table of its own): fd, role,
    /// then path and reason as they change.
    slot_fd: i32,
    role: u8,
    path: AtomicU8,
    reason: AtomicU8,
    pending: Mutex<Option<Pending>>,
    /// Some(Some): on the fabric; Some(None): on kernel TCP; None: pending.
    pub decided: OnceLock<Option<Arc<dyn Stream>>>,
    /// Held for a whole send, so that concurrent writers never interleave inside one
    /// call (as Linux, for writes that fit the socket buffer).
    pub send_lock: Mutex<()>,
    /// What this process knows of the open file description's O_NONBLOCK and of the
    /// socket's timeouts, so that a call about to wait makes no system call to learn
    /// them. Kept up to date by the fcntl/ioctl/setsockopt hooks; once the description
    /// may be shared with another process (fork), whose changes no hook here sees, it is
    /// asked every time.
    cache: Cache,
}

struct Cache {
    shared: AtomicBool,
    /// 0 unknown, 1 blocking, 2 non-blocking.
    nonblock: AtomicU8,
    /// SO_RCVTIMEO, SO_SNDTIMEO in ns: u64::MAX unknown, 0 none.
    timeo: [AtomicU64; 2],
}

impl Cache {
    /// For the socket at `fd`: a plain one (`table::PLAIN`) has no timeouts.
    fn new(fd: i32) -> Cache {
        let t = if crate::table::PLAIN.get(fd) { 0 } else { u64::MAX };
        Cache { shared: AtomicBool::new(false), nonblock: AtomicU8::new(0), timeo: [AtomicU64::new(t), AtomicU64::new(t)] }
    }
}

/// How long a call on an undecided client may wait for the server's shim.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Need {
    /// A blocking call (blocking socket, no MSG_DONTWAIT): up to the claim deadline.
    Wait,
    /// A non-blocking write, which on TCP would be queued at once: a moment
    /// ([`SOON_NS`]), for a server that is accepting right now, then TCP.
    Soon,
    /// A readiness check or a non-blocking read: not at all.
    Peek,
}

/// How long a non-blocking write waits for a claim before the client gives up the
/// fabric for this connection. Long enough for a server that is inside accept (a claim
/// takes tens of microseconds), short enough to stay a non-blocking call.
pub const SOON_NS: u64 = 2_000_000;

/// What an undecided client heard while it waited.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Heard {
    Claimed,
    Refused,
    /// The kernel connection failed or is gone.
    KernelClosed,
    /// The listener we offered to is gone (whoever accepts now cannot see the offer).
    ListenerGone,
    /// Bytes, a FIN or a reset from the server on the kernel socket.
    KernelData,
    Nothing,
}

/// Wait until `until` (a monotonic time; now or earlier: look once) for the offer's
/// answer or for the kernel socket to hear from the server.
fn hear(fd: i32, pend: &Pending, until: u64) -> Heard {
    let offer = &*pend.offer;
    // A shim server claims inside accept, tens of microseconds after the connect. Give
    // it our CPU if it is runnable here, or watch the state word if it runs elsewhere,
    // within the spin budget, before sleeping on the doorbell: waking this thread would
    // cost more than the whole wait (about 30 µs across vCPUs here, §5). Yielding does
    // both: with nothing else runnable here it returns at once. The kernel socket is
    // looked at after the spin (a server that sends first on TCP is noticed up to one
    // budget later).
    let budget = state::policy().budget;
    if !budget.is_zero() && until > sys::now_ns() {
        let budget = budget.min(std::time::Duration::from_nanos(until - sys::now_ns()));
        let mut answer = None;
        let decided = || {
            answer = offer.decision(std::time::Duration::ZERO);
            answer.is_some()
        };
        if rdmasock_transport::wait::spin_until(&Approach::Yield, budget, decided) {
            return if answer == Some(true) { Heard::Claimed } else { Heard::Refused };
        }
    }
    // Slow to come: is the listener we offered to still there? (A cached listener is not
    // checked at connect; its death moves no stamp, and a new listener on its port would
    // never see our offer.)
    if pend.listener_gone() {
        return Heard::ListenerGone;
    }
    // From here we may sleep on the doorbell: the server rings it only once armed (the
    // loop reads the decision again first).
    offer.arm();
    loop {
        match offer.decision(std::time::Duration::ZERO) {
            Some(true) => return Heard::Claimed,
            Some(false) => return Heard::Refused,
            None => {}
        }
        let now = sys::now_ns();
        // At most 2 ms at a time: a server that cannot ring us (it lacks the doorbell
        // ends an offer names as kept) refuses through the state word alone.
        let ms = if now >= until { 0 } else { (until - now).div_ceil(1_000_000).min(2) as i32 };
        // The server writes its byte after its CAS, so a readable bell means the state
        // has changed; the byte is drained (only what is there) and the loop reads it.
        let mut pf = [
            libc::pollfd { fd, events: libc::POLLIN | libc::POLLRDHUP, revents: 0 },
            libc::pollfd { fd: offer.doorbell(), events: libc::POLLIN, revents: 0 },
        ];
        let _ = sys::poll(&mut pf, ms);
        if pf[0].revents != 0 {
            // Claimed just before the bytes arrived? The decision says; the caller's
            // withdraw settles the race either way.
            return match offer.decision(std::time::Duration::ZERO) {
                Some(true) => Heard::Claimed,
                _ => Heard::KernelData,
            };
        }
        if ms == 0 {
            return match offer.decision(std::time::Duration::ZERO) {
                Some(true) => Heard::Claimed,
                Some(false) => Heard::Refused,
                None => Heard::Nothing,
            };
        }
        if pf[1].revents != 0 {
            rdmasock_transport::wait::drain_after_poll(pf[1].fd, pf[1].revents);
        }
    }
}

/// Why a connection has no path yet.
pub enum Undecided {
    /// The kernel connection is still being established (non-blocking connect).
    Connecting,
    /// The server's shim has not answered the offer yet, the server has sent nothing on
    /// TCP, and the caller may not wait.
    Offered,
}

impl Conn {
    pub fn decided(role: u8, fd: i32, local: Option<SockAddr>, peer: Option<SockAddr>, stream: Option<Arc<dyn Stream>>, reason: Reason) -> Conn {
        let path = stream.as_ref().map_or(PATH_TCP, |s| path_code(s.fabric()));
        let slot = state::stats().and_then(|t| t.alloc(fd, role, path, reason, local, peer));
        let c = Conn {
            local,
            peer,
            slot,
            slot_fd: fd,
            role,
            path: AtomicU8::new(path),
            reason: AtomicU8::new(reason as u8),
            pending: Mutex::new(None),
            decided: OnceLock::new(),
            send_lock: Mutex::new(()),
            cache: Cache::new(fd),
        };
        let _ = c.decided.set(stream);
        c
    }

    /// A client having offered into the mailbox of listener `to` (or as a file), whose
    /// connect on a plain socket (`table::PLAIN`) returned `connected` (0: true,
    /// EINPROGRESS: false); None: not known.
    pub fn pending(fd: i32, local: Option<SockAddr>, peer: Option<SockAddr>, offer: Box<dyn Offer>, to: Option<ListenerRepr>, connected: Option<bool>) -> Conn {
        let slot = state::stats().and_then(|t| t.alloc(fd, ROLE_CLIENT, PATH_PENDING, Reason::None, local, peer));
        let deadline_ns = sys::now_ns() + state::config().claim_timeout.as_nanos() as u64;
        let c = Conn {
            local,
            peer,
            slot,
            slot_fd: fd,
            role: ROLE_CLIENT,
            path: AtomicU8::new(PATH_PENDING),
            reason: AtomicU8::new(Reason::None as u8),
            pending: Mutex::new(Some(Pending {
                offer,
                deadline_ns,
                established: connected == Some(true),
                to,
                posted_ns: sys::now_ns(),
                checked: AtomicBool::new(false),
            })),
            decided: OnceLock::new(),
            send_lock: Mutex::new(()),
            cache: Cache::new(fd),
        };
        // As Linux: a TCP connect on a non-blocking socket returns EINPROGRESS (even on
        // loopback, whose handshake completes within the call), and one on a blocking
        // socket without SO_SNDTIMEO waits for the outcome: the mode is known without
        // F_GETFL.
        if let Some(done) = connected {
            c.note_nonblocking(!done);
        }
        c
    }

    /// The stream of a connection decided for the fabric (what `imp::managed` hands out).
    pub fn fabric(&self) -> &dyn Stream {
        self.decided.get().and_then(|d| d.as_deref()).expect("a connection decided for the fabric")
    }

    /// Is the socket in non-blocking mode? (fcntl(F_GETFL) the first time, or every time
    /// once the description is shared across processes)
    pub fn is_nonblocking(&self, fd: i32) -> bool {
        let shared = self.cache.shared.load(Ordering::Relaxed);
        if !shared {
            match self.cache.nonblock.load(Ordering::Relaxed) {
                1 => return false,
                2 => return true,
                _ => {}
            }
        }
        let Ok(on) = sys::is_nonblocking(fd) else { return false };
        if !shared {
            self.cache.nonblock.store(if on { 2 } else { 1 }, Ordering::Relaxed);
        }
        on
    }

    /// O_NONBLOCK was just changed through fcntl(F_SETFL) or ioctl(FIONBIO).
    pub fn note_nonblocking(&self, on: bool) {
        self.cache.nonblock.store(if on { 2 } else { 1 }, Ordering::Relaxed);
    }

    /// The socket's SO_RCVTIMEO or SO_SNDTIMEO (None: no limit).
    pub fn timeout(&self, fd: i32, opt: i32) -> Option<std::time::Duration> {
        let slot = &self.cache.timeo[(opt == libc::SO_SNDTIMEO) as usize];
        let shared = self.cache.shared.load(Ordering::Relaxed);
        if !shared {
            match slot.load(Ordering::Relaxed) {
                u64::MAX => {}
                0 => return None,
                ns => return Some(std::time::Duration::from_nanos(ns)),
            }
        }
        let t = sys::sock_timeout(fd, opt).unwrap_or(None);
        if !shared {
            slot.store(t.map_or(0, |t| (t.as_nanos() as u64).clamp(1, u64::MAX - 1)), Ordering::Relaxed);
        }
        t
    }

    /// A socket option was set: the timeouts are read again when next needed.
    pub fn forget_timeouts(&self) {
        for t in &self.cache.timeo {
            t.store(u64::MAX, Ordering::Relaxed);
        }
    }

    /// At fork: the description is now shared with another process, whose fcntl and
    /// setsockopt calls no hook of ours sees.
    pub fn before_fork(&self) {
        self.cache.shared.store(true, Ordering::Relaxed);
    }

    /// The connection's stream (None: kernel TCP), deciding a pending client first.
    ///
    /// How long a call waits for the server's shim to answer the offer depends on what
    /// the call is ([`Need`]). A client never stays undecided past the claim deadline, and
    /// never once the kernel socket has something from the server: a shim server claims
    /// inside accept, before its program can write, so bytes, a FIN or a reset on the
    /// kernel socket while the offer is open mean that whoever accepted does not run the
    /// shim.
    pub fn stream(&self, fd: i32, need: Need) -> Result<Option<Arc<dyn Stream>>, Undecided> {
        if let Some(d) = self.decided.get() {
            return Ok(d.clone());
        }
        let mut p = self.pending.lock();
        if let Some(d) = self.decided.get() {
            return Ok(d.clone());
        }
        let established = p.as_ref().is_some_and(|p| p.established);
        let kernel = if established { Some(TCP_ESTABLISHED) } else { tcp_state(fd) };
        if matches!(kernel, Some(TCP_SYN_SENT) | Some(TCP_SYN_RECV)) {
            if need != Need::Wait {
                return Err(Undecided::Connecting);
            }
            // A blocking call while the kernel still connects (the connect was started
            // non-blocking): wait for it, as the call would on TCP.
            let mut pf = [libc::pollfd { fd, events: libc::POLLOUT, revents: 0 }];
            let _ = sys::poll(&mut pf, -1);
            drop(p);
            return self.stream(fd, need);
        }
        let Some(pend) = p.as_ref() else {
            let _ = self.decided.set(None);
            return Ok(None);
        };
        let now = sys::now_ns();
        let until = match need {
            Need::Peek => now,
            Need::Soon => now.saturating_add(SOON_NS).min(pend.deadline_ns),
            Need::Wait => pend.deadline_ns,
        };
        let heard = if matches!(kernel, Some(TCP_CLOSE) | None) { Heard::KernelClosed } else { hear(fd, pend, until) };
        if heard == Heard::Nothing && need == Need::Peek && sys::now_ns() < pend.deadline_ns {
            return Err(Undecided::Offered);
        }
        let pend = p.take().expect("pending offer");
        // Whatever the reason to stop waiting, the withdraw races the claim on one word:
        // losing it means the server claimed first, and the stream is taken.
        let unless_claimed = |reason| if pend.offer.withdraw() { (false, reason) } else { (true, Reason::None) };
        let (fabric, reason) = match heard {
            Heard::Claimed => (true, Reason::None),
            Heard::Refused => {
                pend.offer.withdraw();
                (false, Reason::Refused)
            }
            Heard::KernelClosed => unless_claimed(Reason::ConnectFailed),
            Heard::ListenerGone => unless_claimed(Reason::NoShimListener),
            Heard::KernelData => unless_claimed(Reason::ServerSentFirst),
            Heard::Nothing if sys::now_ns() >= pend.deadline_ns => unless_claimed(Reason::ClaimTimeout),
            Heard::Nothing => unless_claimed(Reason::NotAccepted),
        };
        let stream = fabric.then(|| pend.offer.into_stream());
        if let Some(s) = &stream {
            // Forked while the offer was open: the stream is made in each process after
            // the fork, so it learns here, not at the fork, that its side is shared.
            if self.cache.shared.load(Ordering::Relaxed) {
                s.before_fork();
            }
        }
        self.set_path(stream.as_ref().map_or(PATH_TCP, |s| path_code(s.fabric())), reason);
        if let Some(s) = &stream {
            crate::imp::apply_buffers(fd, &**s);
        }
        log_decision("connect", fd, self.local.or_else(|| sys::getsockname(fd).ok()), self.peer, stream.as_ref().map(|s| s.fabric()), reason);
        let _ = self.decided.set(stream.clone());
        Ok(stream)
    }

    /// While the offer is unanswered: the doorbell the server rings when it decides, and
    /// the deadline after which the client decides alone.
    pub fn pending_bell(&self) -> Option<(i32, u64)> {
        self.pending.lock().as_ref().map(|p| {
            p.offer.arm();
            // Decided before the arming, which then rang nothing: look again at once.
            let decided = p.offer.decision(std::time::Duration::ZERO).is_some();
            // Wake for the listener check too, if it is still to come.
            let wake = p.check_due().map_or(p.deadline_ns, |d| d.min(p.deadline_ns));
            (p.offer.doorbell(), if decided { sys::now_ns() } else { wake })
        })
    }

    fn set_path(&self, path: u8, reason: Reason) {
        self.path.store(path, Ordering::Relaxed);
        self.reason.store(reason as u8, Ordering::Relaxed);
        if let (Some(t), Some(id)) = (state::stats_if_any(), self.slot) {
            t.set_path(id, path, reason);
        }
    }

    /// The connection is found on kernel TCP: if it was decided for a fabric (its stream
    /// says `moved`), from now the kernel carries and counts its bytes, and `rdmasock
    /// stat` says so. Once.
    pub fn note_moved(&self) {
        if matches!(self.decided.get(), Some(Some(_))) && self.path.load(Ordering::Relaxed) != PATH_TCP {
            self.set_path(PATH_TCP, Reason::MovedToTcp);
        }
    }

    /// The slot and what it says, for a forked child's own table.
    pub fn slot_fill(&self) -> Option<(SlotId, SlotFill)> {
        let fill = SlotFill {
            fd: self.slot_fd,
            role: self.role,
            path: self.path.load(Ordering::Relaxed),
            reason: Reason::from_u8(self.reason.load(Ordering::Relaxed)),
            local: self.local,
            peer: self.peer,
        };
        self.slot.map(|id| (id, fill))
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
const TCP_ESTABLISHED: u8 = 1;
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

/// Columns of the decision counts: one per fabric (`choice::NAMES`), then TCP.
const COLS: usize = rdmasock_transport::choice::NAMES.len() + 1;
const TCP_COL: usize = COLS - 1;

/// Decisions made by this process, for RDMASOCK_LOG=summary: [connect, accept] x
/// [each fabric, tcp], and the first reason a connection of each kind stayed on TCP.
static DECIDED: [[AtomicU64; COLS]; 2] = [const { [const { AtomicU64::new(0) }; COLS] }; 2];
static FIRST_TCP_REASON: [AtomicU8; 2] = [AtomicU8::new(0), AtomicU8::new(0)];

/// The summary line's text (None if this process decided nothing): "connect shm=N
/// [kmod=K] tcp=M [reason=R] accept shm=N [kmod=K] tcp=M [reason=R]": shm always, every
/// other fabric when it carried a connection.
pub fn decisions_summary() -> Option<String> {
    let mut out = String::new();
    for (i, what) in ["connect", "accept"].into_iter().enumerate() {
        out += &format!("{}{what}", if i > 0 { " " } else { "" });
        for (k, (name, _)) in rdmasock_transport::choice::NAMES.iter().enumerate() {
            let n = DECIDED[i][k].load(Ordering::Relaxed);
            if k == 0 || n > 0 {
                out += &format!(" {name}={n}");
            }
        }
        let tcp = DECIDED[i][TCP_COL].load(Ordering::Relaxed);
        out += &format!(" tcp={tcp}");
        let r = FIRST_TCP_REASON[i].load(Ordering::Relaxed);
        if tcp > 0 && r != 0 {
            out += &format!(" reason={}", Reason::from_u8(r).as_str());
        }
    }
    DECIDED.iter().flatten().any(|c| c.load(Ordering::Relaxed) > 0).then_some(out)
}

/// A forked child counts its own decisions.
pub fn forget_decisions() {
    DECIDED.iter().flatten().for_each(|c| c.store(0, Ordering::Relaxed));
    FIRST_TCP_REASON.iter().for_each(|r| r.store(0, Ordering::Relaxed));
}

/// `on`: the fabric's name if the connection is on one (None: kernel TCP).
pub fn log_decision(what: &str, fd: i32, local: Option<SockAddr>, peer: Option<SockAddr>, on: Option<&'static str>, reason: Reason) {
    let i = (what != "connect") as usize;
    let col = on.and_then(|name| rdmasock_transport::choice::NAMES.iter().position(|(n, _)| *n == name)).unwrap_or(TCP_COL);
    DECIDED[i][col].fetch_add(1, Ordering::Relaxed);
    if on.is_none() {
        let _ = FIRST_TCP_REASON[i].compare_exchange(0, reason as u8, Ordering::Relaxed, Ordering::Relaxed);
    }
    let show = |a: Option<SockAddr>| a.map(|a| a.to_string()).unwrap_or_else(|| "?".into());
    if let Some(name) = on {
        crate::log_at!(LogLevel::Info, "{what} fd={fd} local={} peer={} path={name}", show(local), show(peer));
    } else {
        crate::log_at!(LogLevel::Info, "{what} fd={fd} local={} peer={} path=tcp reason={}", show(local), show(peer), reason.as_str());
    }
}
