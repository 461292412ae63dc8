//! The intercepted calls. Each starts with a lock-free check of the fd bitmaps: calls on
//! fds the shim does not manage go straight to libc. The rest run inside [`boundary`],
//! which contains panics and is the only place errno is written.
#![allow(unsafe_code)]
#![allow(clippy::missing_safety_doc)]

use crate::hooks::real;
use crate::sock::{log_decision, Conn, Entry, Listener, Need, Undecided};
use crate::state;
use crate::table::{self, DATA, INTERNAL, PLAIN, TRACKED};
use libc::{c_int, c_uint, c_ulong, c_void, iovec, loff_t, mmsghdr, msghdr, off64_t, off_t, size_t, sockaddr, socklen_t, ssize_t};
use rdmasock_transport::addr::SockAddr;
use rdmasock_transport::choice::{self, fabric_id, Choice};
use rdmasock_transport::conn::{wait_stream, WaitEnd};
use rdmasock_transport::config::LogLevel;
use rdmasock_transport::diag;
use rdmasock_transport::fabric::{Reason, Shutdown, Stream, StreamError};
use rdmasock_transport::layout::wait;
use rdmasock_transport::stats::{ROLE_CLIENT, ROLE_SERVER};
use rdmasock_transport::sys;
use std::cell::Cell;
use std::io::{IoSlice, IoSliceMut};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

pub(crate) fn errno_now() -> i32 {
    errno()
}

fn errno() -> i32 {
    // SAFETY: errno is thread-local and always valid.
    unsafe { *libc::__errno_location() }
}

pub(crate) fn set_errno(e: i32) {
    // SAFETY: as errno().
    unsafe { *libc::__errno_location() = e };
}

thread_local! {
    static IN_SHIM: Cell<bool> = const { Cell::new(false) };
}

/// Run a managed call: contain panics, write errno only here (restoring the caller's
/// errno on success, as a system call leaves it), and guard against re-entry.
pub(crate) fn boundary<T: Copy>(fail: T, f: impl FnOnce() -> Result<T, i32>) -> T {
    let saved = errno();
    let was = IN_SHIM.with(|g| g.replace(true));
    let r = std::panic::catch_unwind(AssertUnwindSafe(f));
    IN_SHIM.with(|g| g.set(was));
    match r {
        Ok(Ok(v)) => {
            set_errno(saved);
            v
        }
        Ok(Err(e)) => {
            set_errno(e);
            fail
        }
        Err(_) => {
            crate::log::raw_stderr(b"rdmasock: internal error (panic) contained; returning EIO\n");
            set_errno(libc::EIO);
            fail
        }
    }
}

/// The shim's bookkeeping after a call the kernel has already made (close, dup): a
/// panic in it is contained (logged; the kernel's result stands, errno as the kernel
/// left it), and the shim's own calls inside it go straight to libc.
pub(crate) fn contained(f: impl FnOnce()) {
    let saved = errno();
    let was = IN_SHIM.with(|g| g.replace(true));
    let r = std::panic::catch_unwind(AssertUnwindSafe(f));
    IN_SHIM.with(|g| g.set(was));
    if r.is_err() {
        crate::log::raw_stderr(b"rdmasock: internal error (panic) contained after close/dup\n");
    }
    set_errno(saved);
}

pub(crate) fn reentered() -> bool {
    IN_SHIM.with(|g| g.get())
}

/// An int-returning libc result as a Result.
pub(crate) fn pass_int(r: c_int) -> Result<c_int, i32> {
    pass(r)
}

/// A libc result as a Result: -1 means errno.
fn pass<T: Copy + PartialEq + From<i8>>(r: T) -> Result<T, i32> {
    if r == T::from(-1) {
        Err(errno())
    } else {
        Ok(r)
    }
}

fn conn_of(fd: c_int) -> Option<Arc<Conn>> {
    match table::get(fd) {
        Some(Entry::Conn(c)) => Some(c),
        _ => None,
    }
}

/// The stream of a managed fd, or None (kernel TCP: pass the call through). A client
/// whose offer is still unanswered is decided now if the call may block (a blocking
/// socket without MSG_DONTWAIT; bounded by the claim deadline), or if it is a write,
/// which TCP would queue at once (after a moment's wait for a server inside accept).
/// A non-blocking read fails with EAGAIN, as on a socket with nothing to read yet.
///
/// The connection comes back only when it is on the fabric; its stream is then borrowed
/// from it ([`Conn::fabric`]), so that the hot path takes one reference count, not two.
fn managed(fd: c_int, flags: c_int) -> Result<Option<Arc<Conn>>, i32> {
    managed_for(fd, flags, false)
}

fn managed_for(fd: c_int, flags: c_int, write: bool) -> Result<Option<Arc<Conn>>, i32> {
    let Some(c) = conn_of(fd) else { return Ok(None) };
    let on_fabric = match c.decided.get() {
        Some(d) => d.as_ref().is_some_and(|s| !s.moved()),
        None => {
            let need = if flags & libc::MSG_DONTWAIT == 0 && !c.is_nonblocking(fd) {
                Need::Wait
            } else if write {
                Need::Soon
            } else {
                Need::Peek
            };
            match c.stream(fd, need) {
                Ok(s) => s.is_some_and(|s| !s.moved()),
                Err(Undecided::Connecting) => return Ok(None),
                Err(Undecided::Offered) => return Err(libc::EAGAIN),
            }
        }
    };
    if !on_fabric {
        // On kernel TCP (from the start, or moved back): straight to libc from now.
        c.note_moved();
        DATA.set(fd, false);
        return Ok(None);
    }
    Ok(Some(c))
}

/// What poll sees behind a managed fd.
pub(crate) enum PollTarget {
    Fabric(Arc<dyn Stream>),
    Kernel,
    /// The kernel is still connecting: report nothing until connected and decided.
    Connecting,
    /// An epoll set holding fabric entries.
    Epoll(Arc<crate::epoll::EpollSet>),
    /// An unanswered offer: nothing to report until its doorbell rings or the deadline.
    Offered { bell: c_int, deadline_ns: u64 },
}

pub(crate) fn poll_target(fd: c_int) -> PollTarget {
    if let Some(set) = crate::epoll::set_of(fd) {
        return if set.has_fabric() { PollTarget::Epoll(set) } else { PollTarget::Kernel };
    }
    let Some(c) = conn_of(fd) else { return PollTarget::Kernel };
    match c.stream(fd, Need::Peek) {
        Ok(Some(s)) if !s.moved() => PollTarget::Fabric(s),
        Ok(_) => PollTarget::Kernel,
        Err(Undecided::Connecting) => PollTarget::Connecting,
        Err(Undecided::Offered) => match c.pending_bell() {
            Some((bell, deadline_ns)) => PollTarget::Offered { bell, deadline_ns },
            None => PollTarget::Kernel,
        },
    }
}

// ---------------------------------------------------------------- receive / send

/// Not an errno: the connection moved back to kernel TCP in the middle of the call,
/// which is to be made on the kernel socket instead.
const MOVED: i32 = -2;

/// The errno for a stream error reported to the application (consuming a pending
/// reset: reported once, as Linux).
fn stream_errno(s: &dyn Stream, e: StreamError, flags: c_int) -> i32 {
    match e {
        StreamError::WouldBlock => libc::EAGAIN,
        StreamError::Moved => MOVED,
        StreamError::Io(e) => e,
        StreamError::Reset => {
            s.take_error();
            libc::ECONNRESET
        }
        StreamError::Pipe => {
            // As Linux: EPIPE comes with SIGPIPE unless MSG_NOSIGNAL.
            if flags & libc::MSG_NOSIGNAL == 0 {
                sys::raise_sigpipe();
            }
            libc::EPIPE
        }
    }
}

/// The time limit of one blocking call: the socket's SO_RCVTIMEO/SO_SNDTIMEO (as the
/// connection knows it, [`Conn::timeout`]), taken the first time the call must block and
/// counted from then on (as Linux: one timeout for the whole call, however often it
/// waits).
#[derive(Default)]
struct Limit {
    read: bool,
    deadline_ns: Option<u64>,
}

impl Limit {
    fn remaining(&mut self, c: &Conn, fd: c_int, opt: c_int) -> Result<Option<std::time::Duration>, i32> {
        if !self.read {
            self.read = true;
            self.deadline_ns = c.timeout(fd, opt).map(|t| sys::now_ns() + t.as_nanos() as u64);
        }
        match self.deadline_ns {
            None => Ok(None),
            Some(d) => {
                let now = sys::now_ns();
                if now >= d {
                    return Err(libc::EAGAIN);
                }
                Ok(Some(std::time::Duration::from_nanos(d - now)))
            }
        }
    }
}

/// Block for `interest` as the socket's mode and timeouts say. Ok(()) to retry.
fn block_on(fd: c_int, c: &Conn, s: &dyn Stream, interest: u32, flags: c_int, limit: &mut Limit) -> Result<(), i32> {
    if flags & libc::MSG_DONTWAIT != 0 || c.is_nonblocking(fd) {
        return Err(libc::EAGAIN);
    }
    let opt = if interest == wait::DATA { libc::SO_RCVTIMEO } else { libc::SO_SNDTIMEO };
    let timeout = limit.remaining(c, fd, opt)?;
    if interest == wait::SPACE && s.peer_gone() {
        // The move back to TCP is re-sending what the peer never read: room comes from
        // the kernel socket (ours: `fd`), not from the ring, whose doorbell is hung up.
        let ms = timeout.map_or(-1, |t| t.as_millis().clamp(1, i32::MAX as u128) as i32);
        let mut p = [libc::pollfd { fd, events: libc::POLLOUT, revents: 0 }];
        return match sys::poll(&mut p, ms) {
            Ok(0) => Err(libc::EAGAIN), // as Linux: a timed-out send fails with EAGAIN
            Ok(_) => Ok(()),
            Err(e) => Err(e.raw_os_error().unwrap_or(libc::EINTR)),
        };
    }
    match wait_stream(s, interest, timeout, state::policy()) {
        WaitEnd::Ready => Ok(()),
        // As Linux: a timed-out socket call fails with EAGAIN.
        WaitEnd::TimedOut => Err(libc::EAGAIN),
        WaitEnd::Interrupted => Err(libc::EINTR),
    }
}

/// recv on a fabric stream. As Linux tcp_recvmsg: returns what is there (at least one
/// byte) unless MSG_WAITALL, 0 at end of stream, partial counts on interruption.
fn fabric_recv(fd: c_int, c: &Conn, s: &dyn Stream, mut bufs: &mut [IoSliceMut<'_>], flags: c_int) -> Result<usize, i32> {
    let want: usize = bufs.iter().map(|b| b.len()).sum();
    if flags & libc::MSG_OOB != 0 {
        return Err(libc::EINVAL); // as Linux with no urgent data pending
    }
    let peek = flags & libc::MSG_PEEK != 0;
    let waitall = flags & libc::MSG_WAITALL != 0 && !peek;
    let mut got = 0usize;
    let mut limit = Limit::default();
    if peek && flags & libc::MSG_WAITALL != 0 {
        // As Linux: a peek with MSG_WAITALL waits until the whole length is there (or
        // the stream ends, fails, or the wait is cut short), then peeks.
        let enough = |s: &dyn Stream| s.rx_pending() >= want || s.poll_events() & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0;
        if !enough(s) && flags & libc::MSG_DONTWAIT == 0 && !c.is_nonblocking(fd) {
            let timeout = limit.remaining(c, fd, libc::SO_RCVTIMEO)?;
            match rdmasock_transport::conn::wait_until(s, wait::DATA, timeout, state::policy(), enough) {
                WaitEnd::Ready | WaitEnd::TimedOut => {}
                WaitEnd::Interrupted => return Err(libc::EINTR),
            }
        }
    }
    loop {
        match s.dequeue(bufs, peek) {
            Ok(0) => return Ok(got),
            Ok(n) => {
                got += n;
                if !peek {
                    c.count_in(n);
                }
                if !waitall || got == want {
                    return Ok(got);
                }
                IoSliceMut::advance_slices(&mut bufs, n);
            }
            Err(StreamError::WouldBlock) => match block_on(fd, c, s, wait::DATA, flags, &mut limit) {
                Ok(()) => {}
                Err(_) if got > 0 => return Ok(got),
                Err(e) => return Err(e),
            },
            // A partial count first; the error stays pending for the next call.
            Err(_) if got > 0 => return Ok(got),
            Err(e) => return Err(stream_errno(s, e, flags)),
        }
    }
}

/// recv with nothing to copy into (a zero length, or `bad`: a buffer that is not user
/// memory). As Linux tcp_recvmsg: bytes waiting give 0 (EFAULT if `bad`), the end 0, a
/// pending error that error; with nothing there a blocking call waits, a non-blocking
/// one fails with EAGAIN.
fn fabric_recv_nothing(fd: c_int, c: &Conn, s: &dyn Stream, flags: c_int, bad: bool) -> Result<usize, i32> {
    if flags & libc::MSG_OOB != 0 {
        return Err(libc::EINVAL); // as Linux with no urgent data pending
    }
    let mut limit = Limit::default();
    loop {
        if s.rx_pending() > 0 {
            return if bad { Err(libc::EFAULT) } else { Ok(0) };
        }
        if s.has_data() {
            // The end, or an error (or bytes that came meanwhile): a peek of one byte
            // into a buffer of ours says which.
            let mut one = [0u8; 1];
            return match s.dequeue(&mut [IoSliceMut::new(&mut one)], true) {
                Ok(1) if bad => Err(libc::EFAULT),
                Ok(_) => Ok(0),
                Err(StreamError::WouldBlock) => {
                    block_on(fd, c, s, wait::DATA, flags, &mut limit)?;
                    continue;
                }
                Err(e) => Err(stream_errno(s, e, flags)),
            };
        }
        block_on(fd, c, s, wait::DATA, flags, &mut limit)?;
    }
}

/// send on a fabric stream. As Linux tcp_sendmsg: a blocking send moves everything
/// unless interrupted or timed out (then the partial count).
fn fabric_send(fd: c_int, c: &Conn, s: &dyn Stream, mut bufs: &mut [IoSlice<'_>], flags: c_int) -> Result<usize, i32> {
    let want: usize = bufs.iter().map(|b| b.len()).sum();
    let _serial = c.send_lock.lock();
    let mut sent = 0usize;
    let mut limit = Limit::default();
    loop {
        match s.enqueue(bufs) {
            Ok(n) => {
                sent += n;
                c.count_out(n);
                if sent >= want {
                    return Ok(sent.min(want));
                }
                IoSlice::advance_slices(&mut bufs, n);
            }
            Err(StreamError::WouldBlock) => match block_on(fd, c, s, wait::SPACE, flags, &mut limit) {
                Ok(()) => {}
                Err(_) if sent > 0 => return Ok(sent),
                Err(e) => return Err(e),
            },
            Err(_) if sent > 0 => return Ok(sent),
            Err(e) => return Err(stream_errno(s, e, flags)),
        }
    }
}

/// A call's buffer list: the one buffer of read, recv, write or send, held without a
/// heap allocation (on the per-message path), or the copied iovec array of the vector
/// calls.
enum Bufs<T> {
    One([T; 1]),
    Many(Vec<T>),
}

impl<T: std::ops::Deref<Target = [u8]>> Bufs<T> {
    /// No byte to move (every buffer empty).
    fn is_empty(&self) -> bool {
        match self {
            Bufs::One(b) => b.iter().all(|b| b.is_empty()),
            Bufs::Many(v) => v.iter().all(|b| b.is_empty()),
        }
    }
}

impl<T> Bufs<T> {
    fn as_mut(&mut self) -> &mut [T] {
        match self {
            Bufs::One(b) => b,
            Bufs::Many(v) => v,
        }
    }
}

/// The application's iovec array, checked: a count Linux accepts, the array and every
/// buffer user memory (else EFAULT for the array, [`BAD_BUF`] for a buffer).
///
/// # Safety
/// `iov` must point to `cnt` iovecs if the range checks pass.
unsafe fn iovecs<'a>(iov: *const iovec, cnt: c_int) -> Result<&'a [iovec], i32> {
    if cnt < 0 || cnt > libc::UIO_MAXIOV {
        return Err(libc::EINVAL);
    }
    if cnt == 0 {
        return Ok(&[]);
    }
    if !user_range(iov as usize, cnt as usize * std::mem::size_of::<iovec>()) {
        return Err(libc::EFAULT);
    }
    let s = std::slice::from_raw_parts(iov, cnt as usize);
    if s.iter().any(|b| !user_range(b.iov_base as usize, b.iov_len)) {
        return Err(BAD_BUF);
    }
    Ok(s)
}

/// # Safety
/// As [`iovecs`]; the buffers must be writable.
unsafe fn iov_mut<'a>(iov: *const iovec, cnt: c_int) -> Result<Bufs<IoSliceMut<'a>>, i32> {
    let s = iovecs(iov, cnt)?;
    Ok(Bufs::Many(
        s.iter()
            .map(|b| IoSliceMut::new(if b.iov_len == 0 { &mut [] } else { std::slice::from_raw_parts_mut(b.iov_base as *mut u8, b.iov_len) }))
            .collect(),
    ))
}

/// # Safety
/// As [`iovecs`].
unsafe fn iov<'a>(iov: *const iovec, cnt: c_int) -> Result<Bufs<IoSlice<'a>>, i32> {
    let s = iovecs(iov, cnt)?;
    Ok(Bufs::Many(
        s.iter().map(|b| IoSlice::new(if b.iov_len == 0 { &[] } else { std::slice::from_raw_parts(b.iov_base as *const u8, b.iov_len) })).collect(),
    ))
}

/// Could `len` bytes at `p` be user memory? (not below vm.mmap_min_addr, where nothing
/// can be mapped, NULL included; not past the top of user space; no wrap). A range that fails makes the call EFAULT,
/// as Linux's copy to or from user space would; one that passes but is not mapped still
/// faults in our copy, which Linux would report as EFAULT too (not checked: that would
/// cost a system call per message).
fn user_range(p: usize, len: usize) -> bool {
    const TASK_SIZE: usize = 0x7FFF_FFFF_F000; // x86-64, 4-level paging
    len == 0 || (p >= mmap_min_addr() && p.checked_add(len).is_some_and(|end| end <= TASK_SIZE))
}

/// vm.mmap_min_addr, read once (4096 if it cannot be read).
fn mmap_min_addr() -> usize {
    static MIN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MIN.get_or_init(|| {
        let mut b = [0u8; 32];
        let n = sys::open("/proc/sys/vm/mmap_min_addr", libc::O_RDONLY | libc::O_CLOEXEC, 0)
            .ok()
            .and_then(|f| sys::read(std::os::fd::AsRawFd::as_raw_fd(&f), &mut b).ok())
            .unwrap_or(0);
        std::str::from_utf8(&b[..n]).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(4096).max(4096)
    })
}

/// A buffer list with a range that is not user memory (see [`user_range`]).
const BAD_BUF: i32 = -3;

unsafe fn one_mut<'a>(buf: *mut c_void, len: size_t) -> Result<Bufs<IoSliceMut<'a>>, i32> {
    if len == 0 {
        return Ok(Bufs::One([IoSliceMut::new(&mut [])]));
    }
    if !user_range(buf as usize, len) {
        return Err(BAD_BUF);
    }
    Ok(Bufs::One([IoSliceMut::new(std::slice::from_raw_parts_mut(buf as *mut u8, len))]))
}

unsafe fn one<'a>(buf: *const c_void, len: size_t) -> Result<Bufs<IoSlice<'a>>, i32> {
    if len == 0 {
        return Ok(Bufs::One([IoSlice::new(&[])]));
    }
    if !user_range(buf as usize, len) {
        return Err(BAD_BUF);
    }
    Ok(Bufs::One([IoSlice::new(std::slice::from_raw_parts(buf as *const u8, len))]))
}

/// Receive on `fd` into a buffer list, or pass through.
fn recv_common(fd: c_int, bufs: impl FnOnce() -> Result<Bufs<IoSliceMut<'static>>, i32>, flags: c_int, pass_through: impl FnOnce() -> ssize_t) -> ssize_t {
    boundary(-1, || match managed(fd, flags)? {
        Some(c) => {
            let s = c.fabric();
            let r = match bufs() {
                Ok(mut b) if !b.is_empty() => fabric_recv(fd, &c, s, b.as_mut(), flags),
                // Nothing to copy into: as Linux tcp_recvmsg, wait (as the call would)
                // for something to be there, then report 0, the end, or the error.
                Ok(_) => fabric_recv_nothing(fd, &c, s, flags, false),
                // A buffer that is not user memory: EFAULT once there are bytes to copy
                // (before that, as for any recv: wait, EAGAIN, the end or the error).
                Err(BAD_BUF) => fabric_recv_nothing(fd, &c, s, flags, true),
                Err(e) => Err(e),
            };
            match r {
                Err(MOVED) => pass(pass_through()),
                r => r.map(|n| n as ssize_t),
            }
        }
        None => pass(pass_through()),
    })
}

fn send_common(fd: c_int, bufs: impl FnOnce() -> Result<Bufs<IoSlice<'static>>, i32>, flags: c_int, pass_through: impl FnOnce() -> ssize_t) -> ssize_t {
    boundary(-1, || match managed_for(fd, flags, true)? {
        Some(c) => {
            // As Linux: a source that is not user memory fails the copy (EFAULT).
            let mut b = bufs().map_err(|e| if e == BAD_BUF { libc::EFAULT } else { e })?;
            match fabric_send(fd, &c, c.fabric(), b.as_mut(), flags) {
                Err(MOVED) => pass(pass_through()),
                r => r.map(|n| n as ssize_t),
            }
        }
        None => pass(pass_through()),
    })
}

pub unsafe fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t {
    if !DATA.get(fd) || reentered() || count == 0 {
        // As Linux sock_read_iter: a read of nothing is 0 at once, whatever the socket.
        return (real().read)(fd, buf, count);
    }
    recv_common(fd, || one_mut(buf, count), 0, || (real().read)(fd, buf, count))
}

pub unsafe fn __read_chk(fd: c_int, buf: *mut c_void, count: size_t, buflen: size_t) -> ssize_t {
    if !DATA.get(fd) || reentered() || count > buflen {
        // libc's own check aborts on overflow, as it would without us.
        return (real().__read_chk)(fd, buf, count, buflen);
    }
    read(fd, buf, count)
}

pub unsafe fn readv(fd: c_int, v: *const iovec, cnt: c_int) -> ssize_t {
    // As Linux sock_read_iter: a read of nothing is 0 at once (the kernel says so).
    let nothing = || cnt == 0 || (cnt > 0 && user_range(v as usize, cnt as usize * std::mem::size_of::<iovec>()) && std::slice::from_raw_parts(v, cnt as usize).iter().all(|b| b.iov_len == 0));
    if !DATA.get(fd) || reentered() || nothing() {
        return (real().readv)(fd, v, cnt);
    }
    recv_common(fd, || iov_mut(v, cnt), 0, || (real().readv)(fd, v, cnt))
}

pub unsafe fn recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t {
    if !DATA.get(fd) || reentered() {
        return (real().recv)(fd, buf, len, flags);
    }
    recv_common(fd, || one_mut(buf, len), flags, || (real().recv)(fd, buf, len, flags))
}

pub unsafe fn __recv_chk(fd: c_int, buf: *mut c_void, len: size_t, buflen: size_t, flags: c_int) -> ssize_t {
    if !DATA.get(fd) || reentered() || len > buflen {
        return (real().__recv_chk)(fd, buf, len, buflen, flags);
    }
    recv(fd, buf, len, flags)
}

pub unsafe fn recvfrom(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int, addr: *mut sockaddr, alen: *mut socklen_t) -> ssize_t {
    if !DATA.get(fd) || reentered() {
        return (real().recvfrom)(fd, buf, len, flags, addr, alen);
    }
    let r = recv_common(fd, || one_mut(buf, len), flags, || (real().recvfrom)(fd, buf, len, flags, addr, alen));
    // As Linux for TCP: no source address; the length is set to 0.
    if r >= 0 && !addr.is_null() && !alen.is_null() && DATA.get(fd) {
        *alen = 0;
    }
    r
}

pub unsafe fn __recvfrom_chk(fd: c_int, buf: *mut c_void, len: size_t, buflen: size_t, flags: c_int, addr: *mut sockaddr, alen: *mut socklen_t) -> ssize_t {
    if !DATA.get(fd) || reentered() || len > buflen {
        return (real().__recvfrom_chk)(fd, buf, len, buflen, flags, addr, alen);
    }
    recvfrom(fd, buf, len, flags, addr, alen)
}

pub unsafe fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    if !DATA.get(fd) || reentered() || msg.is_null() {
        return (real().recvmsg)(fd, msg, flags);
    }
    let m = &mut *msg;
    let r = recv_common(fd, || iov_mut(m.msg_iov, m.msg_iovlen as c_int), flags, || (real().recvmsg)(fd, msg, flags));
    if r >= 0 && DATA.get(fd) {
        // As Linux for TCP: no address, no control data, no flags.
        m.msg_namelen = 0;
        m.msg_controllen = 0;
        m.msg_flags = 0;
    }
    r
}

pub unsafe fn recvmmsg(fd: c_int, msgs: *mut mmsghdr, vlen: c_uint, flags: c_int, timeout: *mut libc::timespec) -> c_int {
    if !DATA.get(fd) || reentered() || msgs.is_null() {
        return (real().recvmmsg)(fd, msgs, vlen, flags, timeout);
    }
    let mut done: c_uint = 0;
    let mut f = flags & !libc::MSG_WAITFORONE;
    while done < vlen {
        let h = &mut *msgs.add(done as usize);
        let r = recvmsg(fd, &mut h.msg_hdr, f);
        if r < 0 {
            if done > 0 {
                break;
            }
            return -1;
        }
        h.msg_len = r as c_uint;
        done += 1;
        if r == 0 {
            break;
        }
        if flags & libc::MSG_WAITFORONE != 0 {
            f |= libc::MSG_DONTWAIT;
        }
    }
    done as c_int
}

pub unsafe fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t {
    if !DATA.get(fd) || reentered() {
        return (real().write)(fd, buf, count);
    }
    send_common(fd, || one(buf, count), 0, || (real().write)(fd, buf, count))
}

pub unsafe fn writev(fd: c_int, v: *const iovec, cnt: c_int) -> ssize_t {
    if !DATA.get(fd) || reentered() {
        return (real().writev)(fd, v, cnt);
    }
    send_common(fd, || iov(v, cnt), 0, || (real().writev)(fd, v, cnt))
}

pub unsafe fn send(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t {
    if !DATA.get(fd) || reentered() {
        return (real().send)(fd, buf, len, flags);
    }
    send_common(fd, || one(buf, len), flags, || (real().send)(fd, buf, len, flags))
}

pub unsafe fn sendto(fd: c_int, buf: *const c_void, len: size_t, flags: c_int, addr: *const sockaddr, alen: socklen_t) -> ssize_t {
    if !DATA.get(fd) || reentered() {
        return (real().sendto)(fd, buf, len, flags, addr, alen);
    }
    // As Linux for a connected TCP socket: the address is ignored.
    send_common(fd, || one(buf, len), flags, || (real().sendto)(fd, buf, len, flags, addr, alen))
}

/// Fabric sockets about to be passed to another process (SCM_RIGHTS) leave the ring
/// first: the receiving process sees the kernel socket only, so both ends go back to
/// kernel TCP, without losing a byte.
unsafe fn leave_passed_fds(msg: &msghdr) {
    if msg.msg_control.is_null() || (msg.msg_controllen as usize) < std::mem::size_of::<libc::cmsghdr>() {
        return;
    }
    let mut c = libc::CMSG_FIRSTHDR(msg);
    while !c.is_null() {
        let h = &*c;
        if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
            let data = libc::CMSG_DATA(c) as *const c_int;
            let n = (h.cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize) / std::mem::size_of::<c_int>();
            for i in 0..n {
                let pfd = std::ptr::read_unaligned(data.add(i));
                // Another process may set its options now, unseen.
                PLAIN.set(pfd, false);
                if DATA.get(pfd) {
                    if let Some(Entry::Conn(conn)) = table::get(pfd) {
                        if let Some(Some(s)) = conn.decided.get() {
                            s.leave();
                        }
                    }
                }
            }
        }
        c = libc::CMSG_NXTHDR(msg, c);
    }
}

pub unsafe fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    if !msg.is_null() && (*msg).msg_controllen > 0 && !reentered() {
        boundary(0, || {
            leave_passed_fds(&*msg);
            Ok(0)
        });
    }
    if !DATA.get(fd) || reentered() || msg.is_null() {
        return (real().sendmsg)(fd, msg, flags);
    }
    let m = &*msg;
    send_common(fd, || iov(m.msg_iov, m.msg_iovlen as c_int), flags, || (real().sendmsg)(fd, msg, flags))
}

pub unsafe fn sendmmsg(fd: c_int, msgs: *mut mmsghdr, vlen: c_uint, flags: c_int) -> c_int {
    if !DATA.get(fd) || reentered() || msgs.is_null() {
        return (real().sendmmsg)(fd, msgs, vlen, flags);
    }
    let mut done: c_uint = 0;
    while done < vlen {
        let h = &mut *msgs.add(done as usize);
        let r = sendmsg(fd, &h.msg_hdr, flags);
        if r < 0 {
            if done > 0 {
                break;
            }
            return -1;
        }
        h.msg_len = r as c_uint;
        done += 1;
    }
    done as c_int
}

/// Move up to `count` bytes from `source` (which writes into a ring run) onto the
/// fabric stream: the common body of sendfile and splice-to-socket. A source error or an
/// exhausted source ends the call (with the count so far, or the error if none).
fn fabric_send_from(fd: c_int, c: &Conn, s: &dyn Stream, count: usize, flags: c_int,
    source: &mut dyn FnMut(*mut u8, usize) -> std::io::Result<usize>) -> Result<usize, i32> {
    let _serial = c.send_lock.lock();
    let mut sent = 0usize;
    let mut limit = Limit::default();
    while sent < count {
        let mut fill = |p: *mut u8, len: usize| -> std::io::Result<usize> { source(p, len.min(count - sent)) };
        match s.enqueue_from(&mut fill) {
            Ok(0) => break,
            Ok(n) => {
                sent += n;
                c.count_out(n);
            }
            Err(StreamError::WouldBlock) => match block_on(fd, c, s, wait::SPACE, flags, &mut limit) {
                Ok(()) => {}
                Err(_) if sent > 0 => break,
                Err(e) => return Err(e),
            },
            Err(_) if sent > 0 => break,
            Err(e) => return Err(stream_errno(s, e, flags)),
        }
    }
    Ok(sent)
}

unsafe fn sendfile_any(out_fd: c_int, in_fd: c_int, offset: Option<*mut i64>, count: size_t) -> Result<ssize_t, i32> {
    let Some(c) = managed_for(out_fd, 0, true)? else { return Err(-1) };
    let s = c.fabric();
    // As Linux: the source must be open for reading (EBADF) and a file that can be read
    // page by page, not a directory, socket or pipe (EINVAL).
    let fl = sys::fcntl(in_fd, libc::F_GETFL, 0).map_err(|e| e.raw_os_error().unwrap_or(libc::EBADF))?;
    if fl & libc::O_ACCMODE == libc::O_WRONLY {
        return Err(libc::EBADF);
    }
    let st = sys::fstat(in_fd).map_err(|e| e.raw_os_error().unwrap_or(libc::EBADF))?;
    if !matches!(st.st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFBLK) {
        return Err(libc::EINVAL);
    }
    let mut off = offset.map(|p| *p);
    let mut src = |p: *mut u8, len: usize| -> std::io::Result<usize> {
        let n = match off {
            Some(o) => sys::pread_raw(in_fd, p, len, o)?,
            None => sys::read_raw(in_fd, p, len)?,
        };
        if let Some(o) = off.as_mut() {
            *o += n as i64;
        }
        Ok(n)
    };
    let r = fabric_send_from(out_fd, &c, &*s, count.min(0x7fff_f000), 0, &mut src);
    if let (Some(p), Some(o)) = (offset, off) {
        *p = o;
    }
    r.map(|n| n as ssize_t)
}

pub unsafe fn sendfile(out_fd: c_int, in_fd: c_int, offset: *mut off_t, count: size_t) -> ssize_t {
    if !DATA.get(out_fd) || reentered() {
        return (real().sendfile)(out_fd, in_fd, offset, count);
    }
    let off = if offset.is_null() { None } else { Some(offset as *mut i64) };
    boundary(-1, || match sendfile_any(out_fd, in_fd, off, count) {
        Err(-1) | Err(MOVED) => pass((real().sendfile)(out_fd, in_fd, offset, count)),
        r => r,
    })
}

pub unsafe fn sendfile64(out_fd: c_int, in_fd: c_int, offset: *mut off64_t, count: size_t) -> ssize_t {
    if !DATA.get(out_fd) || reentered() {
        return (real().sendfile64)(out_fd, in_fd, offset, count);
    }
    let off = if offset.is_null() { None } else { Some(offset as *mut i64) };
    boundary(-1, || match sendfile_any(out_fd, in_fd, off, count) {
        Err(-1) | Err(MOVED) => pass((real().sendfile64)(out_fd, in_fd, offset, count)),
        r => r,
    })
}

/// Free space in a pipe (its capacity less what it holds).
fn pipe_space(fd: c_int) -> usize {
    let cap = sys::fcntl(fd, libc::F_GETPIPE_SZ, 0).unwrap_or(4096).max(0) as usize;
    let mut held: c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let r = unsafe { libc::syscall(libc::SYS_ioctl, fd, libc::FIONREAD, &mut held as *mut c_int) };
    if r < 0 {
        return 0;
    }
    cap.saturating_sub(held.max(0) as usize)
}

pub unsafe fn splice(fd_in: c_int, off_in: *mut loff_t, fd_out: c_int, off_out: *mut loff_t, len: size_t, flags: c_uint) -> ssize_t {
    let pass_through = || (real().splice)(fd_in, off_in, fd_out, off_out, len, flags);
    if (!DATA.get(fd_in) && !DATA.get(fd_out)) || reentered() {
        return pass_through();
    }
    // As Linux: SPLICE_F_NONBLOCK makes the splice itself non-blocking.
    let dontwait = if flags & libc::SPLICE_F_NONBLOCK != 0 { libc::MSG_DONTWAIT } else { 0 };
    boundary(-1, || {
        // As Linux: one end must be a pipe, and a pipe end takes no offset.
        let is_pipe = |fd| sys::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFIFO);
        let other = if DATA.get(fd_out) { (fd_in, off_in) } else { (fd_out, off_out) };
        if !is_pipe(other.0) {
            return Err(if sys::fstat(other.0).is_err() { libc::EBADF } else { libc::EINVAL });
        }
        if !other.1.is_null() {
            return Err(libc::ESPIPE);
        }
        if let Some(c) = managed_for(fd_out, dontwait, true)? {
            let s = c.fabric();
            // pipe -> socket
            let mut src = |p: *mut u8, n: usize| sys::read_raw(fd_in, p, n);
            return match fabric_send_from(fd_out, &c, &*s, len, dontwait, &mut src) {
                Err(MOVED) => pass(pass_through()),
                r => r.map(|n| n as ssize_t),
            };
        }
        if let Some(c) = managed(fd_in, dontwait)? {
            let s = c.fabric();
            // socket -> pipe: move only what the pipe can take now, so that neither the
            // pipe nor the ring lock is ever waited on while holding the other.
            let mut limit = Limit::default();
            loop {
                let room = pipe_space(fd_out).min(len);
                if room == 0 {
                    if dontwait != 0 || sys::is_nonblocking(fd_out).unwrap_or(false) {
                        return Err(libc::EAGAIN);
                    }
                    let mut pf = [libc::pollfd { fd: fd_out, events: libc::POLLOUT, revents: 0 }];
                    sys::poll(&mut pf, -1).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
                    continue;
                }
                let mut left = room;
                let mut sink = |p: *const u8, n: usize| -> std::io::Result<usize> {
                    let m = sys::write_raw(fd_out, p, n.min(left))?;
                    left -= m;
                    Ok(m)
                };
                match s.dequeue_into(&mut sink) {
                    Ok(n) => {
                        c.count_in(n);
                        return Ok(n as ssize_t);
                    }
                    Err(StreamError::WouldBlock) => block_on(fd_in, &c, &*s, wait::DATA, dontwait, &mut limit)?,
                    Err(StreamError::Moved) => return pass(pass_through()),
                    Err(e) => return Err(stream_errno(&*s, e, 0)),
                }
            }
        }
        pass(pass_through())
    })
}

// ---------------------------------------------------------------- connection set-up

/// Is `dst` an address of this host (loopback, or one of our interfaces)?
fn is_local(dst: &SockAddr) -> bool {
    if dst.is_loopback() || dst.is_unspecified() {
        return true;
    }
    let mut ifa: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below; libc's own sockets inside it do not
    // go through our hooks (glibc calls its internal aliases).
    if unsafe { libc::getifaddrs(&mut ifa) } != 0 {
        return false;
    }
    let mut found = false;
    let mut p = ifa;
    while !p.is_null() {
        // SAFETY: p walks the list getifaddrs returned.
        let a = unsafe { &*p };
        if !a.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of its family's size.
            let len = std::mem::size_of::<libc::sockaddr_in6>();
            if let Some(sa) = unsafe { SockAddr::from_ptr(a.ifa_addr, len) } {
                if sa.ip() == dst.ip() {
                    found = true;
                    break;
                }
            }
        }
        p = a.ifa_next;
    }
    // SAFETY: the list from getifaddrs.
    unsafe { libc::freeifaddrs(ifa) };
    found
}

/// A TCP socket (IPv4 or IPv6)? SO_PROTOCOL alone says it: IPPROTO_TCP is only ever a
/// SOCK_STREAM of AF_INET or AF_INET6 (MPTCP and SCTP streams have their own numbers,
/// and stay untouched). One system call on every connect and listen.
fn is_inet_stream(fd: c_int) -> bool {
    // A plain socket is one we saw made as TCP.
    PLAIN.get(fd) || matches!(sys::getsockopt::<c_int>(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL), Ok(libc::IPPROTO_TCP))
}


fn track_tcp(fd: c_int, role: u8, reason: Reason, peer: Option<SockAddr>) {
    let local = sys::getsockname(fd).ok();
    log_decision(if role == ROLE_CLIENT { "connect" } else { "accept" }, fd, local, peer, None, reason);
    table::insert(fd, Entry::Conn(Arc::new(Conn::decided(role, fd, local, peer, None, reason))));
}

pub unsafe fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let pass_through = || (real().connect)(fd, addr, len);
    // A socket the shim already manages is connected or connecting: the kernel answers
    // a second connect (EISCONN, EALREADY), as it would without us.
    if state::off() || reentered() || TRACKED.get(fd) || state::foreign() {
        return pass_through();
    }
    let Some(dst) = SockAddr::from_ptr(addr, len as usize) else {
        crate::log_at!(LogLevel::Debug, "connect fd={fd}: not an IP address (Unix or other family): path=tcp reason=not-inet");
        return pass_through();
    };
    if !is_inet_stream(fd) {
        crate::log_at!(LogLevel::Debug, "connect fd={fd} peer={dst}: not a stream socket (UDP or raw): untouched reason=not-tcp");
        return pass_through();
    }
    boundary(-1, || {
        let fallback = |reason: Reason| -> Result<c_int, i32> {
            let r = pass_through();
            let e = errno();
            if r == 0 || e == libc::EINPROGRESS {
                track_tcp(fd, ROLE_CLIENT, reason, Some(dst));
            }
            if r == 0 { Ok(0) } else { Err(e) }
        };
        if !state::upgrades() {
            return fallback(Reason::ForcedTcp);
        }
        if !is_local(&dst) {
            return fallback(Reason::RemoteDestination);
        }
        let fabs = state::fabrics();
        let mine = fabs.usable();
        if mine.is_empty() {
            return fallback(if state::registry().is_none() { Reason::RegistryUnavailable } else { Reason::NoCommonFabric });
        }
        // Discovery (rdmasock_transport::discovery: the registry, then the tables of
        // fabrics that keep their own), then the one rule (rdmasock_transport::choice).
        let Some(found) = state::discoveries_for(mine).find_map(|d| d.find(&dst)) else {
            return fallback(Reason::NoShimListener);
        };
        let fab = match choice::choose(mine, &found.advert, state::config().cross_user) {
            Choice::Fabric(id) => match fabs.get(id) {
                Some(f) => f,
                None => return fallback(Reason::NoCommonFabric),
            },
            Choice::Tcp(reason) => return fallback(reason),
        };
        // What connect's answer tells (below) holds only for a socket with none of the
        // options that change it.
        let plain = PLAIN.get(fd);
        let to = if fab.id() == fabric_id::SHM { found.to } else { None };
        let offer = match fab.offer(fd, to.as_ref()) {
            Ok(o) => o,
            Err(e) => {
                crate::log_at!(LogLevel::Debug, "offer failed: {e}");
                return fallback(if e.raw_os_error() == Some(libc::EMFILE) { Reason::FdLimit } else { Reason::OfferFailed });
            }
        };
        let r = pass_through();
        let e = errno();
        if r == 0 || e == libc::EINPROGRESS {
            let local = sys::getsockname(fd).ok();
            table::insert(fd, Entry::Conn(Arc::new(Conn::pending(fd, local, Some(dst), offer, to, (r == 0).then_some(true).or(plain.then_some(false))))));
            crate::log_at!(LogLevel::Debug, "connect fd={fd} peer={dst}: offer posted on {}", fab.name());
            if r == 0 { Ok(0) } else { Err(e) }
        } else {
            drop(offer);
            Err(e)
        }
    })
}

/// The peer address accept wrote for the caller, if it wrote all of it (`cap`: the
/// buffer's length before the call): the kernel's own answer, which saves asking again.
unsafe fn accepted_peer(addr: *mut sockaddr, len: *mut socklen_t, cap: socklen_t) -> Option<SockAddr> {
    if addr.is_null() || len.is_null() || *len > cap {
        return None;
    }
    SockAddr::from_ptr(addr, *len as usize)
}

unsafe fn on_accept(lfd: c_int, fd: c_int, flags: c_int, peer: Option<SockAddr>, forks: u64) {
    if fd < 0 {
        return;
    }
    // As Linux: an accepted socket starts with its listener's buffer sizes and timeouts.
    table::set_plain(fd, PLAIN.get(lfd), forks);
    if state::off() {
        return;
    }
    let peer = match peer {
        Some(p) => Ok(p),
        None => sys::getpeername(fd),
    };
    let (Ok(local), Ok(peer)) = (sys::getsockname(fd), peer) else { return };
    let ours = matches!(table::get(lfd), Some(Entry::Listener(_)));
    if let Some(reg) = state::registry_if_any() {
        reg.sweep_if_due();
    }
    let (stream, reason) = match diag::lookup(peer, local) {
        Ok(Some(p)) => decide_accepted(fd, &p, ours),
        // A shimmed client may still have offered on kmod, which needs no inode: the
        // driver matches the connection. (With an unknown peer, a claim is not tried.)
        Ok(None) => (None, if state::upgrades() { Reason::RemoteDestination } else { Reason::ForcedTcp }),
        Err(_) => (None, if state::upgrades() { Reason::PeerNotShim } else { Reason::ForcedTcp }),
    };
    if let Some(s) = &stream {
        apply_buffers(fd, &**s);
    }
    log_decision("accept", fd, Some(local), Some(peer), stream.as_ref().map(|s| s.fabric()), reason);
    let c = Conn::decided(ROLE_SERVER, fd, Some(local), Some(peer), stream, reason);
    // As Linux: the accepted socket is non-blocking exactly when accept4 asked for it
    // (nothing is inherited from the listener), so its mode is known without F_GETFL.
    c.note_nonblocking(flags & libc::SOCK_NONBLOCK != 0);
    table::insert(fd, Entry::Conn(Arc::new(c)));
}

/// The server's half of the rule (rdmasock_transport::choice): claim the client's
/// offer on the fabrics it may have chosen, in the order it chooses them; refuse what
/// policy keeps on TCP, at once, on every fabric present.
fn decide_accepted(fd: c_int, p: &diag::PeerSocket, ours: bool) -> (Option<Arc<dyn Stream>>, Reason) {
    let fabs = state::fabrics();
    // Refuse on the fabrics not looked at (a claim that found nothing leaves nothing
    // to refuse).
    let refuse_others = |tried: u8| {
        for f in fabs.all().filter(|f| tried & f.id() == 0) {
            f.refuse(p.inode, fd);
        }
    };
    if !state::upgrades() {
        refuse_others(0);
        return (None, Reason::ForcedTcp);
    }
    let same_user = p.uid == sys::getuid();
    let cross_user = state::config().cross_user;
    let mut tried = 0;
    for id in choice::claim_order(fabs.usable(), same_user, cross_user) {
        let Some(f) = fabs.get(id) else { continue };
        tried |= id;
        match f.claim(p.inode, fd) {
            Ok(s) => return (Some(s), Reason::None),
            Err(Reason::PeerNotShim) => continue,
            Err(r) => {
                refuse_others(tried);
                return (None, r);
            }
        }
    }
    refuse_others(tried);
    if !same_user {
        // A shm offer from another user (it found the listener in the registry it
        // shares with our registrant) needs the client's segment, which we cannot map:
        // say so at the listener's mailbox, so that later clients choose as for
        // another user's listener at once.
        if let Some(reg) = state::registry_if_any() {
            if reg.mark_other_user_for(p.inode) {
                crate::log_at!(LogLevel::Info, "accept fd={fd}: clients of uid {} offered to a listener this process (uid {}) accepts on: it is marked as another user's from now", p.uid, sys::getuid());
            }
        }
        return (None, Reason::PeerOtherUid);
    }
    (None, if ours { Reason::PeerNotShim } else { Reason::ListenerUnknown })
}

pub unsafe fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let cap = if len.is_null() { 0 } else { *len };
    let forks = table::forks();
    let r = (real().accept)(fd, addr, len);
    if r >= 0 && !reentered() && !state::foreign() {
        boundary(0, || {
            on_accept(fd, r, 0, accepted_peer(addr, len, cap), forks);
            Ok(0)
        });
    }
    r
}

pub unsafe fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    let cap = if len.is_null() { 0 } else { *len };
    let forks = table::forks();
    let r = (real().accept4)(fd, addr, len, flags);
    if r >= 0 && !reentered() && !state::foreign() {
        boundary(0, || {
            on_accept(fd, r, flags, accepted_peer(addr, len, cap), forks);
            Ok(0)
        });
    }
    r
}

pub unsafe fn listen(fd: c_int, backlog: c_int) -> c_int {
    let r = (real().listen)(fd, backlog);
    if r != 0 || !state::upgrades() || reentered() || TRACKED.get(fd) || !is_inet_stream(fd) || state::foreign() {
        return r;
    }
    boundary(0, || {
        let Ok(local) = sys::getsockname(fd) else { return Ok(0) };
        let fabs = state::fabrics();
        let mine = fabs.usable();
        if mine.is_empty() {
            return Ok(0);
        }
        // Every way a listener is found that applies (rdmasock_transport::discovery):
        // the registry, with the advert of every fabric we serve, for our own user's
        // clients; each usable fabric's own table (kmod's driver: clients of any user).
        let announced: Vec<Box<dyn rdmasock_transport::discovery::Announcement>> = state::discoveries_for(mine)
            .filter_map(|d| match d.announce(fd, &local, mine) {
                Ok(a) => Some(a),
                Err(e) => {
                    crate::log_at!(LogLevel::Error, "listen fd={fd}: cannot announce in the {}: {e}", d.name());
                    None
                }
            })
            .collect();
        if !announced.is_empty() {
            crate::log_at!(LogLevel::Debug, "listen fd={fd} local={local}: registered, serves {}", mine.names());
            table::insert(fd, Entry::Listener(Arc::new(Listener { announced: parking_lot::Mutex::new(announced) })));
        }
        Ok(0)
    });
    r
}

pub unsafe fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    let forks = table::forks();
    let r = (real().socket)(domain, ty, protocol);
    if r >= 0 {
        let tcp = matches!(domain, libc::AF_INET | libc::AF_INET6)
            && ty & 0xf == libc::SOCK_STREAM
            && matches!(protocol, 0 | libc::IPPROTO_TCP);
        // Only for our own fd table (a vfork child's socket is not the parent's fd).
        table::set_plain(r, tcp && !reentered() && !state::foreign(), forks);
    }
    r
}

/// Socket options whose values the shim reads: after any of them is set, a socket is
/// no longer [`PLAIN`].
fn option_we_read(level: c_int, name: c_int) -> bool {
    // TCP_FASTOPEN_CONNECT: connect returns 0 before any SYN, whatever the mode.
    (level == libc::IPPROTO_TCP && name == libc::TCP_FASTOPEN_CONNECT)
        || level == libc::SOL_SOCKET
        && matches!(
            name,
            libc::SO_SNDBUF
                | libc::SO_RCVBUF
                | libc::SO_SNDBUFFORCE
                | libc::SO_RCVBUFFORCE
                | libc::SO_RCVTIMEO
                | libc::SO_SNDTIMEO
                | libc::SO_RCVTIMEO_NEW
                | libc::SO_SNDTIMEO_NEW
        )
}

pub unsafe fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    (real().bind)(fd, addr, len)
}

pub unsafe fn shutdown(fd: c_int, how: c_int) -> c_int {
    if !DATA.get(fd) || reentered() {
        return (real().shutdown)(fd, how);
    }
    boundary(-1, || {
        let how_ = match how {
            libc::SHUT_RD => Shutdown::Read,
            libc::SHUT_WR => Shutdown::Write,
            libc::SHUT_RDWR => Shutdown::Both,
            _ => return Err(libc::EINVAL),
        };
        // A half-close cannot wait for "later": decide a pending client now (bounded by
        // its claim deadline), whatever the socket's blocking mode.
        // A socket the kernel is still connecting is the kernel's to shut down.
        let stream = match conn_of(fd).map(|c| match c.stream(fd, Need::Peek) {
            Err(Undecided::Offered) => c.stream(fd, Need::Wait),
            r => r,
        }) {
            Some(Ok(Some(s))) if !s.moved() => Some(s),
            _ => None,
        };
        match stream {
            Some(s) => {
                s.shutdown(how_);
                Ok(0)
            }
            None => pass((real().shutdown)(fd, how)),
        }
    })
}

// ---------------------------------------------------------------- fd lifetime

pub unsafe fn close(fd: c_int) -> c_int {
    if INTERNAL.get(fd) && !reentered() {
        // Not the application's fd: as if it were not open.
        set_errno(libc::EBADF);
        return -1;
    }
    if PLAIN.get(fd) {
        PLAIN.set(fd, false);
    }
    if TRACKED.get(fd) && !state::foreign() {
        let mut e = None;
        contained(|| e = table::remove(fd));
        let r = (real().close)(fd);
        contained(|| {
            drop(e);
            if rdmasock_transport::registry::peer_end_seen() {
                // A peer died or left: its records go now, not at some later listen or stat.
                if let Some(reg) = state::registry_if_any() {
                    reg.sweep_if_due();
                }
            }
        });
        return r;
    }
    (real().close)(fd)
}

pub unsafe fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    if first > last {
        set_errno(libc::EINVAL); // as Linux
        return -1;
    }
    if flags & (libc::CLOSE_RANGE_CLOEXEC as c_int) != 0 || reentered() || state::foreign() {
        return (real().close_range)(first, last, flags);
    }
    let mut dropped = Vec::new();
    contained(|| {
        for fd in TRACKED.set_in(first, last) {
            dropped.push(table::remove(fd));
        }
    });
    for fd in PLAIN.set_in(first, last) {
        PLAIN.set(fd, false);
    }
    // Close around the shim's own fds.
    let mut from = first as u64;
    let mut r = 0;
    for fd in INTERNAL.set_in(first, last) {
        let fd = fd as u64;
        if fd > from {
            r |= (real().close_range)(from as c_uint, (fd - 1) as c_uint, flags);
        }
        from = fd + 1;
    }
    if from <= last as u64 {
        r |= (real().close_range)(from as c_uint, last, flags);
    }
    contained(|| drop(dropped));
    if r != 0 { -1 } else { 0 }
}

fn dup_track(old: c_int, new: c_int) {
    // Options belong to the socket, not to an fd: once two fds name it, a setsockopt
    // through one would leave the other's bit set. Forget both.
    if new >= 0 && (PLAIN.get(old) || PLAIN.get(new)) {
        PLAIN.set(old, false);
        PLAIN.set(new, false);
    }
    if new >= 0 && TRACKED.get(old) && !state::foreign() {
        contained(|| {
            if let Some(e) = table::get(old) {
                table::insert(new, e);
            }
        });
    }
}

pub unsafe fn dup(fd: c_int) -> c_int {
    let r = (real().dup)(fd);
    dup_track(fd, r);
    r
}

unsafe fn dup_onto(old: c_int, new: c_int, call: impl FnOnce() -> c_int) -> c_int {
    if INTERNAL.get(new) && !reentered() {
        crate::log_at!(LogLevel::Error, "dup2 onto the shim's fd {new} refused");
        set_errno(libc::EBUSY);
        return -1;
    }
    let r = call();
    if r >= 0 && old != new && !state::foreign() {
        // `new` was closed by the kernel as part of the call; it now names `old`'s socket.
        contained(|| {
            let prior = table::remove(new);
            dup_track(old, r);
            drop(prior);
        });
    }
    r
}

pub unsafe fn dup2(old: c_int, new: c_int) -> c_int {
    dup_onto(old, new, || (real().dup2)(old, new))
}

pub unsafe fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    dup_onto(old, new, || (real().dup3)(old, new, flags))
}

pub unsafe fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    let r = (real().fcntl)(fd, cmd, arg);
    if matches!(cmd, libc::F_DUPFD | libc::F_DUPFD_CLOEXEC) {
        let saved = errno();
        dup_track(fd, r);
        set_errno(saved);
    } else if cmd == libc::F_SETFL && r == 0 && DATA.get(fd) {
        note_nonblocking(fd, arg as c_int & libc::O_NONBLOCK != 0);
    }
    r
}

pub unsafe fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    let r = (real().fcntl64)(fd, cmd, arg);
    if matches!(cmd, libc::F_DUPFD | libc::F_DUPFD_CLOEXEC) {
        let saved = errno();
        dup_track(fd, r);
        set_errno(saved);
    } else if cmd == libc::F_SETFL && r == 0 && DATA.get(fd) {
        note_nonblocking(fd, arg as c_int & libc::O_NONBLOCK != 0);
    }
    r
}

/// The socket's O_NONBLOCK was just set or cleared through this process's hooks.
fn note_nonblocking(fd: c_int, on: bool) {
    if reentered() {
        return;
    }
    if let Some(c) = conn_of(fd) {
        c.note_nonblocking(on);
    }
}

pub unsafe fn ioctl(fd: c_int, req: c_ulong, arg: *mut c_void) -> c_int {
    if req == libc::FIONBIO && DATA.get(fd) && !arg.is_null() {
        let r = (real().ioctl)(fd, req, arg);
        if r == 0 {
            note_nonblocking(fd, *(arg as *const c_int) != 0);
        }
        return r;
    }
    if !DATA.get(fd) || reentered() || arg.is_null() || !matches!(req, libc::FIONREAD | libc::TIOCOUTQ) {
        return (real().ioctl)(fd, req, arg);
    }
    boundary(-1, || match managed(fd, libc::MSG_DONTWAIT).unwrap_or(None) {
        Some(c) => {
            let s = c.fabric();
            // FIONREAD is SIOCINQ; TIOCOUTQ is SIOCOUTQ.
            let v = if req == libc::FIONREAD { s.rx_pending() } else { s.tx_pending() };
            *(arg as *mut c_int) = v.min(c_int::MAX as usize) as c_int;
            Ok(0)
        }
        None => pass((real().ioctl)(fd, req, arg)),
    })
}

pub unsafe fn getsockopt(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int {
    // Every option lives on the kernel socket, which stays real and connected, except
    // a reset the fabric saw: as Linux, SO_ERROR reports it once.
    let pass_through = || (real().getsockopt)(fd, level, name, val, len);
    if level != libc::SOL_SOCKET || name != libc::SO_ERROR || !DATA.get(fd) || val.is_null() || len.is_null() || reentered() {
        return pass_through();
    }
    if (*len as usize) < std::mem::size_of::<c_int>() {
        return pass_through();
    }
    boundary(-1, || {
        let Ok(Some(c)) = managed(fd, libc::MSG_DONTWAIT) else { return pass(pass_through()) };
        let s = c.fabric();
        s.probe();
        let ours = s.take_error();
        if !ours && s.peer_gone() {
            // The kernel socket carries the connection's end now: its error is the
            // real one.
            return pass(pass_through());
        }
        // While the ring carries the bytes, the kernel socket has no errors of its own
        // worth reporting.
        *(val as *mut c_int) = if ours { libc::ECONNRESET } else { 0 };
        *len = std::mem::size_of::<c_int>() as socklen_t;
        Ok(0)
    })
}

pub unsafe fn setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int {
    // Timeouts, linger, TCP_NODELAY/TCP_CORK and buffer sizes are kept by the kernel
    // socket; the fabric path reads the timeouts from it when it must block, and the
    // buffer sizes bound the ring (as they bound TCP's bytes in flight).
    if option_we_read(level, name) && PLAIN.get(fd) {
        PLAIN.set(fd, false);
    }
    let r = (real().setsockopt)(fd, level, name, val, len);
    if r == 0 && level == libc::SOL_SOCKET && DATA.get(fd) && !reentered() {
        // Timeouts (SO_RCVTIMEO/SO_SNDTIMEO, old and new layouts): read again when next
        // needed.
        if let Some(c) = conn_of(fd) {
            c.forget_timeouts();
        }
    }
    if r == 0 && level == libc::SOL_SOCKET && matches!(name, libc::SO_SNDBUF | libc::SO_RCVBUF) && DATA.get(fd) && !reentered() {
        if let Some(Entry::Conn(c)) = table::get(fd) {
            if let Some(Some(s)) = c.decided.get() {
                apply_buffers(fd, &**s);
            }
        }
    }
    r
}

/// The socket buffer sizes the application set on `fd`, told to its stream. Linux
/// doubles a requested size and locks it; a socket nobody sized starts at the default
/// (tcp_wmem/tcp_rmem) and only grows. So a size below the default was asked for, and
/// half of it is what was asked.
pub(crate) fn apply_buffers(fd: c_int, s: &dyn Stream) {
    if PLAIN.get(fd) {
        // Nobody asked for a size.
        return;
    }
    static DEFAULTS: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    let (dw, dr) = *DEFAULTS.get_or_init(|| {
        let mid = |path: &str, d: u32| {
            std::fs::read_to_string(path).ok().and_then(|t| t.split_whitespace().nth(1).and_then(|v| v.parse().ok())).unwrap_or(d)
        };
        (mid("/proc/sys/net/ipv4/tcp_wmem", 16384), mid("/proc/sys/net/ipv4/tcp_rmem", 131072))
    });
    let get = |name| sys::getsockopt::<c_int>(fd, libc::SOL_SOCKET, name).unwrap_or(0).max(0) as u32;
    let (snd, rcv) = (get(libc::SO_SNDBUF), get(libc::SO_RCVBUF));
    let asked = |v: u32, default: u32| if v > 0 && v < default { v / 2 } else { 0 };
    let (snd, rcv) = (asked(snd, dw), asked(rcv, dr));
    if snd != 0 || rcv != 0 {
        s.set_buffers(snd, rcv);
    }
}

pub unsafe fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    (real().getsockname)(fd, addr, len)
}

pub unsafe fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    (real().getpeername)(fd, addr, len)
}

pub use crate::poll::{__poll_chk, __ppoll_chk, poll, ppoll, pselect, select};
pub use crate::stdio::{closefrom, fclose, fdopen};
pub use crate::epoll::{epoll_create, epoll_create1, epoll_ctl, epoll_pwait, epoll_pwait2, epoll_wait};
