//! Waiting for a connection: bounded spinning while the peer runs on another CPU,
//! yielding while it runs on ours, and otherwise blocking on the doorbell.
//!
//! The doorbell is a pipe per side: the side blocks in read(2) on its end (pollable, so
//! poll/select/epoll can wait on it beside kernel fds; and a blocking read gives the same
//! EINTR/SA_RESTART behaviour as a blocking recv). The peer writes one byte only after it
//! cleared a wait bit the sleeper had set in shared memory, so while both sides are awake
//! no system call is made per message.
//!
//! Several threads of one process may wait on one connection at once (a reader and a
//! writer, or a poll beside a recv). A byte read from the pipe by one of them must not be
//! lost to the others, so per connection and process one thread at a time is the
//! *leader* that blocks on the pipe; the others are *followers* that block on their own
//! thread's eventfd and are signalled by the leader whenever it wakes or leaves. Every
//! waiter registers before it sets its wait bits and re-checks its condition, so any byte
//! it could be owed is either not yet read or read by a leader that will signal it.
//!
//! Lock order: a connection's `LocalBell` mutex is a leaf; nothing else is taken under it.
#![allow(unsafe_code)]

use crate::sys;
use parking_lot::Mutex;
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use crate::sys::Fd;
use std::time::Duration;

/// Where the first internal fd may be placed: high, out of the range programs expect
/// their own fds in (they rely on "lowest free number" and often on fds < 1024 for
/// select()). Chosen once from RLIMIT_NOFILE.
pub fn fd_floor() -> RawFd {
    static FLOOR: std::sync::OnceLock<RawFd> = std::sync::OnceLock::new();
    *FLOOR.get_or_init(|| {
        let lim = sys::nofile_limit().min(1 << 20) as RawFd;
        (lim / 2).max(64)
    })
}

/// Where the search for a free high fd starts: the base of the highest 64-fd window
/// that may have room. Lowered when a window is full, raised when a hidden fd closes.
static HIDE_HINT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(i32::MAX);

const HIDE_WINDOW: RawFd = 64;

/// Move an internal fd to the top of the fd space (close-on-exec): the highest free
/// window below RLIMIT_NOFILE, searched downwards, never below [`fd_floor`]. Programs
/// get fds from the bottom (lowest free number) and test suites probe "unused" numbers
/// in the middle; the top is where programs least expect anything (as bash keeps its own
/// fds there). If there is no room, keep the fd where it is: correctness does not
/// depend on the number.
pub fn hide_fd(fd: Fd) -> Fd {
    match dup_high(fd.as_raw_fd()) {
        Some(high) => sys::owned(high),
        None => fd,
    }
}

/// A close-on-exec duplicate of `fd` at the top of the fd space (see [`hide_fd`]);
/// anywhere if the top is full.
pub fn hidden_dup(fd: RawFd) -> io::Result<Fd> {
    match dup_high(fd) {
        Some(high) => Ok(sys::owned(high)),
        None => sys::dup_min(fd, 0).map(sys::owned),
    }
}

fn dup_high(fd: RawFd) -> Option<RawFd> {
    use std::sync::atomic::Ordering;
    let top = fd_top();
    let mut base = HIDE_HINT.load(Ordering::Relaxed).min(top - HIDE_WINDOW).max(fd_floor());
    loop {
        match sys::dup_min(fd, base) {
            Ok(high) => {
                HIDE_HINT.store(base, Ordering::Relaxed);
                return Some(high);
            }
            Err(_) if base > fd_floor() => base = (base - HIDE_WINDOW).max(fd_floor()),
            Err(_) => return None,
        }
    }
}

/// RLIMIT_NOFILE (capped), asked again every 64th time: programs raise it at start-up
/// (redis, nginx), and the top moves with it; in between, a stale value only places a
/// hidden fd lower than it could be.
fn fd_top() -> RawFd {
    use std::sync::atomic::{AtomicU32, Ordering};
    static TOP: AtomicU32 = AtomicU32::new(0);
    static USES: AtomicU32 = AtomicU32::new(0);
    let cached = TOP.load(Ordering::Relaxed);
    if cached != 0 && USES.fetch_add(1, Ordering::Relaxed) % 64 != 0 {
        return cached as RawFd;
    }
    let top = sys::nofile_limit().min(1 << 20) as u32;
    TOP.store(top, Ordering::Relaxed);
    top as RawFd
}

/// A hidden fd closed: its window has room again.
pub fn hidden_fd_closed(fd: RawFd) {
    use std::sync::atomic::Ordering;
    let w = fd - fd % HIDE_WINDOW;
    HIDE_HINT.fetch_max(w, Ordering::Relaxed);
}

thread_local! {
    /// This thread's eventfd, for waiting as a follower. Created on first need, closed
    /// when the thread exits.
    static THREAD_EVENT: RefCell<Option<Fd>> = const { RefCell::new(None) };
}

pub fn thread_event_fd() -> io::Result<RawFd> {
    THREAD_EVENT.with(|t| {
        let mut t = t.borrow_mut();
        if t.is_none() {
            *t = Some(hide_fd(sys::eventfd()?));
        }
        Ok(t.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1))
    })
}

/// In a forked child: this thread's eventfd is the parent's too; let it go.
pub fn forget_thread_event() {
    THREAD_EVENT.with(|t| t.borrow_mut().take());
}

fn signal_event(fd: RawFd) {
    let _ = sys::write(fd, &1u64.to_ne_bytes());
}

/// Process-local waiter bookkeeping for one connection's doorbell.
#[derive(Default)]
pub struct LocalBell {
    inner: Mutex<BellInner>,
}

#[derive(Default)]
struct BellInner {
    leader: bool,
    /// Eventfds of threads waiting as followers.
    followers: Vec<RawFd>,
    /// How many local waiters announced each wait bit (index = bit number). The shared
    /// bit is cleared only when the last of them stops waiting: a waiter that leaves
    /// must not withdraw an announcement another thread still relies on.
    armed: [u32; 4],
}

/// How a thread takes part in one connection's wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower(RawFd),
}

impl LocalBell {
    /// Join the wait: become the leader if there is none, else a follower.
    pub fn join(&self) -> io::Result<Role> {
        let mut g = self.inner.lock();
        if !g.leader {
            g.leader = true;
            return Ok(Role::Leader);
        }
        let ev = thread_event_fd()?;
        g.followers.push(ev);
        Ok(Role::Follower(ev))
    }

    /// Leave the wait. A leader that leaves signals every follower, so that one of them
    /// takes over the pipe (and each re-checks its condition).
    pub fn leave(&self, role: Role) {
        let mut g = self.inner.lock();
        match role {
            Role::Leader => {
                g.leader = false;
                for &f in &g.followers {
                    signal_event(f);
                }
            }
            Role::Follower(ev) => {
                if let Some(i) = g.followers.iter().position(|&f| f == ev) {
                    g.followers.swap_remove(i);
                }
            }
        }
    }

    /// Announce (in shared memory, through `set`) that a local waiter blocks for
    /// `interest`.
    pub fn arm(&self, interest: u32, set: impl FnOnce(u32)) {
        let mut g = self.inner.lock();
        for (bit, n) in g.armed.iter_mut().enumerate() {
            if interest & (1 << bit) != 0 {
                *n += 1;
            }
        }
        set(interest);
    }

    /// A local waiter stopped waiting for `interest`; `clear` withdraws the bits no
    /// other local waiter still needs.
    pub fn disarm(&self, interest: u32, clear: impl FnOnce(u32)) {
        let mut g = self.inner.lock();
        let mut unneeded = 0;
        for (bit, n) in g.armed.iter_mut().enumerate() {
            if interest & (1 << bit) != 0 {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    unneeded |= 1 << bit;
                }
            }
        }
        if unneeded != 0 {
            clear(unneeded);
        }
    }

    /// In a forked child: the waiters recorded here are threads of the parent.
    pub fn reset_after_fork(&self) {
        if self.inner.try_lock().is_none() {
            // Held by a thread that does not exist in this process.
            // SAFETY: no thread of this process holds it.
            unsafe { self.inner.force_unlock() };
        }
        *self.inner.lock() = BellInner::default();
    }

    /// An epoll set saw the doorbell ring (it watches the pipe edge-triggered, so it
    /// never has to read it to be woken). Empty the pipe if no local leader is about to
    /// read it, so that it never fills up, and tell the followers.
    pub fn drain_unled(&self, bell: RawFd) {
        let g = self.inner.lock();
        if !g.leader {
            let mut held: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int.
            let r = unsafe { libc::syscall(libc::SYS_ioctl, bell, libc::FIONREAD, &mut held as *mut libc::c_int) };
            let mut buf = [0u8; 256];
            if r == 0 && held > 0 {
                let _ = sys::read(bell, &mut buf[..(held as usize).min(256)]);
            }
        }
        for &f in &g.followers {
            signal_event(f);
        }
    }

    /// The leader read bytes from the pipe: tell the followers.
    pub fn woke(&self) {
        let g = self.inner.lock();
        for &f in &g.followers {
            signal_event(f);
        }
    }
}

/// Outcome of one blocking step.
#[derive(Debug, PartialEq, Eq)]
pub enum Woke {
    /// Something may have changed: re-check.
    Maybe,
    /// The pipe's writers are all gone: the peer closed or died.
    PeerGone,
    TimedOut,
    /// A signal handler ran (and the blocking call was not restarted).
    Interrupted,
}

/// Block once, as `role`, on `bell` (the connection's doorbell read end), until a byte,
/// EOF, a signal or the timeout.
pub fn block(bell: RawFd, role: Role, timeout: Option<Duration>) -> Woke {
    let fd = match role {
        Role::Leader => bell,
        Role::Follower(ev) => ev,
    };
    if let Some(t) = timeout {
        let ms = t.as_millis().min(i32::MAX as u128) as i32;
        // Round up so that a sub-millisecond remainder still waits.
        let ms = if ms == 0 && !t.is_zero() { 1 } else { ms };
        let mut p = [libc::pollfd { fd, events: libc::POLLIN, revents: 0 }];
        match sys::poll(&mut p, ms) {
            Ok(0) => return Woke::TimedOut,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => return Woke::Interrupted,
            Err(_) => return Woke::Maybe,
        }
        if p[0].revents & libc::POLLIN == 0 && p[0].revents & libc::POLLHUP != 0 {
            return Woke::PeerGone;
        }
    }
    let mut buf = [0u8; 64];
    match sys::read(fd, &mut buf) {
        Ok(0) if role == Role::Leader => Woke::PeerGone,
        Ok(_) => Woke::Maybe,
        Err(e) if e.raw_os_error() == Some(libc::EINTR) => Woke::Interrupted,
        // Our doorbell is gone (closed under us): nothing will ever ring it again.
        Err(e) if e.raw_os_error() == Some(libc::EBADF) && role == Role::Leader => Woke::PeerGone,
        Err(_) => Woke::Maybe,
    }
}

/// After poll(2) reported `revents` on a led doorbell: consume what is there.
/// Returns true when the peer is gone.
pub fn drain_after_poll(bell: RawFd, revents: i16) -> bool {
    if revents & libc::POLLIN != 0 {
        // Only what is there: another process sharing the pipe (after fork) may have
        // emptied it since poll said so, and the read end blocks.
        let mut held: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        let r = unsafe { libc::syscall(libc::SYS_ioctl, bell, libc::FIONREAD, &mut held as *mut libc::c_int) };
        if r == 0 && held > 0 {
            let mut buf = [0u8; 64];
            let _ = sys::read(bell, &mut buf[..(held as usize).min(64)]);
            return false;
        }
    }
    revents & (libc::POLLHUP | libc::POLLERR) != 0
}

/// Consume pending signals on this thread's eventfd (after a poll that included it).
pub fn drain_event(ev: RawFd) {
    let mut buf = [0u8; 8];
    let _ = sys::read(ev, &mut buf);
}

/// The spin policy.
#[derive(Clone, Copy, Debug)]
pub struct SpinPolicy {
    pub budget: Duration,
    pub cpus: usize,
}

/// What to do before blocking, given where the peer last ran.
#[derive(Debug, PartialEq, Eq)]
pub enum Approach {
    /// Busy-wait: the peer is running on another CPU.
    Spin,
    /// Give our CPU to the peer: it is runnable on this very CPU.
    Yield,
    /// Block at once.
    Block,
}

impl SpinPolicy {
    /// `peer_parked`: the peer is blocked in the kernel (it cannot make progress for us
    /// without being woken). Spinning for a parked or absent peer only burns a CPU, and
    /// two spinners on two CPUs starve everyone else, hence the budget.
    pub fn approach(&self, peer_parked: bool, peer_cpu: u32, my_cpu: u32) -> Approach {
        if self.budget.is_zero() || peer_parked {
            Approach::Block
        } else if peer_cpu == my_cpu {
            Approach::Yield
        } else if self.cpus > 1 && peer_cpu != u32::MAX {
            Approach::Spin
        } else {
            Approach::Block
        }
    }
}

/// Busy-wait (or yield) until `ready` or the budget is spent. Returns `ready`'s last value.
pub fn spin_until(approach: &Approach, budget: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = sys::now_ns() + budget.as_nanos() as u64;
    loop {
        for _ in 0..64 {
            if ready() {
                return true;
            }
            match approach {
                Approach::Yield => sys::sched_yield(),
                _ => std::hint::spin_loop(),
            }
        }
        if sys::now_ns() >= deadline {
            return ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn approach_rules() {
        let p = SpinPolicy { budget: Duration::from_micros(50), cpus: 2 };
        assert_eq!(p.approach(false, 1, 0), Approach::Spin);
        assert_eq!(p.approach(false, 0, 0), Approach::Yield);
        assert_eq!(p.approach(true, 1, 0), Approach::Block);
        let one = SpinPolicy { budget: Duration::from_micros(50), cpus: 1 };
        assert_eq!(one.approach(false, 1, 0), Approach::Block);
        let none = SpinPolicy { budget: Duration::ZERO, cpus: 8 };
        assert_eq!(none.approach(false, 1, 0), Approach::Block);
    }

    #[test]
    fn follower_is_signalled_when_the_leader_wakes() {
        let (r, w) = sys::doorbell_pipe().unwrap();
        let bell = Arc::new(LocalBell::default());
        assert_eq!(bell.join().unwrap(), Role::Leader);
        let b2 = bell.clone();
        let rfd = r.as_raw_fd();
        let t = std::thread::spawn(move || {
            let role = b2.join().unwrap();
            assert!(matches!(role, Role::Follower(_)));
            let woke = block(rfd, role, Some(Duration::from_secs(10)));
            b2.leave(role);
            woke
        });
        // Wait until the follower registered (bounded).
        let start = std::time::Instant::now();
        while bell.inner.lock().followers.is_empty() {
            assert!(start.elapsed() < Duration::from_secs(10));
            std::thread::yield_now();
        }
        sys::write(w.as_raw_fd(), b"x").unwrap();
        assert_eq!(block(r.as_raw_fd(), Role::Leader, None), Woke::Maybe);
        bell.woke();
        assert_eq!(t.join().unwrap(), Woke::Maybe);
        bell.leave(Role::Leader);
        drop(w);
        assert_eq!(bell.join().unwrap(), Role::Leader);
        assert_eq!(block(r.as_raw_fd(), Role::Leader, None), Woke::PeerGone);
    }
}

/// The two cross-process locks (producer, consumer) of one side of a connection, in
/// memory that only the processes of that side share: a shared anonymous mapping of
/// this process's, inherited by its forked children and never mapped by a peer. A peer
/// writes the segment, so a lock there could be taken and held by it, stopping every
/// other connection of a server that waits on it (issue 21.1); here it cannot.
///
/// Pairs come from a per-process region of [`LOCK_PAIRS`] pairs. A forked child starts a
/// region of its own for the pairs it hands out (the inherited one stays mapped for the
/// streams it inherited; the parent may reuse a pair one of them still uses, which only
/// makes two streams share a lock: no stream ever holds two sides' locks at once). A pair
/// whose region is full or no longer this process's is not reused.
pub struct SideLocks {
    base: *const std::sync::atomic::AtomicU32,
    pair: u32,
    region: u64,
}

// SAFETY: the words are atomics in a mapping that is never unmapped.
unsafe impl Send for SideLocks {}
// SAFETY: as above.
unsafe impl Sync for SideLocks {}

const LOCK_PAIRS: u32 = 4096;

struct LockRegion {
    base: *const std::sync::atomic::AtomicU32,
    /// Which region (bumped for each new one, and at fork).
    id: u64,
    owner: u32,
    next: u32,
    free: Vec<u32>,
}

// SAFETY: the region is only reached under its mutex; the words are atomics.
unsafe impl Send for LockRegion {}

static LOCKS: parking_lot::Mutex<Option<LockRegion>> = parking_lot::Mutex::new(None);
static LOCK_REGION_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl SideLocks {
    /// A pair of lock words. Err: no memory for a region.
    pub fn new() -> io::Result<SideLocks> {
        let mut g = LOCKS.lock();
        let me = sys::pid();
        if g.as_ref().is_some_and(|r| r.owner != me || (r.next >= LOCK_PAIRS && r.free.is_empty())) {
            // A forked child's inherited region, or a full one: keep it mapped, use a new one.
            *g = None;
        }
        if g.is_none() {
            let len = LOCK_PAIRS as usize * 8;
            // SAFETY: a fresh anonymous mapping, never unmapped (streams point into it).
            let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0) };
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let id = LOCK_REGION_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            *g = Some(LockRegion { base: p as *const std::sync::atomic::AtomicU32, id, owner: me, next: 0, free: Vec::new() });
        }
        let r = g.as_mut().expect("made above");
        let pair = match r.free.pop() {
            Some(p) => p,
            None => {
                r.next += 1;
                r.next - 1
            }
        };
        // Not reset: a fresh region is zero, and a reused pair is free unless a forked
        // child still holds it for an inherited stream, whose exclusion a reset would
        // break (sharing it only makes the two streams wait for each other).
        Ok(SideLocks { base: r.base, pair, region: r.id })
    }

    pub fn tx(&self) -> &std::sync::atomic::AtomicU32 {
        // SAFETY: pair < LOCK_PAIRS; the mapping lives for the process.
        unsafe { &*self.base.add(self.pair as usize * 2) }
    }

    pub fn rx(&self) -> &std::sync::atomic::AtomicU32 {
        // SAFETY: as tx.
        unsafe { &*self.base.add(self.pair as usize * 2 + 1) }
    }
}

impl Drop for SideLocks {
    fn drop(&mut self) {
        let mut g = LOCKS.lock();
        if let Some(r) = g.as_mut().filter(|r| r.id == self.region && r.owner == sys::pid()) {
            r.free.push(self.pair);
        }
    }
}

/// In a forked child: the lock region's mutex may have been held by a parent thread.
pub fn locks_after_fork_child() {
    if LOCKS.try_lock().is_none() {
        // SAFETY: held by a parent thread that does not exist here.
        unsafe { LOCKS.force_unlock() };
    }
}

/// A lock shared by the processes of one side of a connection (after fork), in a
/// [`SideLocks`] pair. The word holds the holder's thread id, with [`XLOCK_WAITERS`] set once
/// someone sleeps on it (Drepper's three-state mutex, with the holder's id as the
/// "locked" state so that a dead holder can be detected and replaced).
pub struct XGuard<'a> {
    word: &'a std::sync::atomic::AtomicU32,
}

const XLOCK_WAITERS: u32 = 1 << 31;

fn thread_exists(tid: u32) -> bool {
    sys::process_exists(tid as i32)
}

fn futex(word: &std::sync::atomic::AtomicU32, op: libc::c_int, val: u32, timeout: Option<&libc::timespec>) {
    let ts = timeout.map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: a futex operation on a live, aligned u32 in shared memory (not PRIVATE:
    // the waiters are in several processes).
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), op, val, ts, 0, 0) };
}

/// Take the lock `word`.
pub fn xlock(word: &std::sync::atomic::AtomicU32) -> XGuard<'_> {
    use std::sync::atomic::Ordering;
    // SAFETY: gettid always succeeds.
    let me = unsafe { libc::gettid() } as u32 & !XLOCK_WAITERS;
    let mut want = me;
    loop {
        let cur = match word.compare_exchange(0, want, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return XGuard { word },
            Err(cur) => cur,
        };
        let holder = cur & !XLOCK_WAITERS;
        if !thread_exists(holder) {
            // The holder died holding it (its side of the stream is as it left it:
            // indices are only ever published after the copy, so nothing is torn).
            if word.compare_exchange(cur, want, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                return XGuard { word };
            }
            continue;
        }
        if cur & XLOCK_WAITERS == 0 && word.compare_exchange(cur, cur | XLOCK_WAITERS, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            continue;
        }
        // Bounded sleep: re-check the holder's liveness now and then.
        let ts = libc::timespec { tv_sec: 0, tv_nsec: 10_000_000 };
        futex(word, libc::FUTEX_WAIT, cur | XLOCK_WAITERS, Some(&ts));
        // We slept: others may be asleep too, so hold it marked contended.
        want = me | XLOCK_WAITERS;
    }
}

impl Drop for XGuard<'_> {
    fn drop(&mut self) {
        if self.word.swap(0, std::sync::atomic::Ordering::Release) & XLOCK_WAITERS != 0 {
            futex(self.word, libc::FUTEX_WAKE, 1, None);
        }
    }
}

#[cfg(test)]
mod xlock_tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    use std::sync::Arc;

    #[test]
    fn side_locks_are_distinct_and_shared_with_a_forked_child() {
        let a = SideLocks::new().unwrap();
        let b = SideLocks::new().unwrap();
        let words = [a.tx(), a.rx(), b.tx(), b.rx()].map(|w| w as *const AtomicU32 as usize);
        let mut sorted = words.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 4, "pairs overlap");
        let g = xlock(a.tx());
        // SAFETY: the child only reads an atomic and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // The parent's hold is visible here (the mapping is shared, not copied).
            let held = a.tx().load(Ordering::Relaxed) != 0;
            unsafe { libc::_exit(if held { 0 } else { 1 }) };
        }
        let mut st = 0;
        unsafe { libc::waitpid(pid, &mut st, 0) };
        drop(g);
        assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, "the child did not see the parent's lock");
        assert_eq!(a.tx().load(Ordering::Relaxed), 0);
    }

    #[test]
    fn excludes_and_recovers_from_a_dead_holder() {
        let word = Arc::new(AtomicU32::new(0));
        let count = Arc::new(AtomicU64::new(0));
        let ts: Vec<_> = (0..4)
            .map(|_| {
                let (w, c) = (word.clone(), count.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        let _g = xlock(&w);
                        let v = c.load(Ordering::Relaxed);
                        c.store(v + 1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in ts {
            t.join().unwrap();
        }
        assert_eq!(count.load(Ordering::Relaxed), 40_000);
        // A holder that no longer exists (pid_max is below 2^22).
        word.store(4_000_000, Ordering::Relaxed);
        drop(xlock(&word));
        assert_eq!(word.load(Ordering::Relaxed), 0);
    }
}
