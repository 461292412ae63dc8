//! The fence around the operating system: every system call the transport makes lives
//! here, behind small functions that return `io::Result`.
//!
//! Calls whose libc symbols the preload library intercepts (read, write, close, poll,
//! fcntl, ioctl, getsockopt, ...) are made with `syscall(2)` directly, so that the
//! shim's own I/O can never re-enter its hooks. Calls it does not intercept (mmap,
//! fstat, flock, pipe2, ...) go through libc as usual.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::OnceLock;

/// Issue a raw system call; `-1` becomes the `io::Error` for errno.
macro_rules! syscall {
    ($nr:ident $(, $arg:expr)* $(,)?) => {{
        // SAFETY: the caller passes arguments valid for this system call.
        let r = unsafe { libc::syscall(libc::$nr $(, $arg as libc::c_long)*) };
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
    }};
}

/// Map a libc return value (`-1` on error) into `io::Result`.
fn cvt<T: PartialOrd + Default>(r: T) -> io::Result<T> {
    if r < T::default() {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    syscall!(SYS_read, fd, buf.as_mut_ptr(), buf.len()).map(|n| n as usize)
}

/// Read into raw memory (a ring), for sendfile/splice sources.
///
/// # Safety
/// `ptr..ptr+len` must be writable memory owned by the caller.
pub unsafe fn read_raw(fd: RawFd, ptr: *mut u8, len: usize) -> io::Result<usize> {
    syscall!(SYS_read, fd, ptr, len).map(|n| n as usize)
}

/// Positional read into raw memory.
///
/// # Safety
/// As [`read_raw`].
pub unsafe fn pread_raw(fd: RawFd, ptr: *mut u8, len: usize, off: i64) -> io::Result<usize> {
    syscall!(SYS_pread64, fd, ptr, len, off).map(|n| n as usize)
}

pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    syscall!(SYS_write, fd, buf.as_ptr(), buf.len()).map(|n| n as usize)
}

/// Write from raw memory (a ring), for splice destinations.
///
/// # Safety
/// `ptr..ptr+len` must be readable memory.
pub unsafe fn write_raw(fd: RawFd, ptr: *const u8, len: usize) -> io::Result<usize> {
    syscall!(SYS_write, fd, ptr, len).map(|n| n as usize)
}

pub fn close(fd: RawFd) -> io::Result<()> {
    syscall!(SYS_close, fd).map(drop)
}

/// An fd the shim owns. Unlike `Fd`, it is closed with a raw system call (never
/// through libc's `close`, which the preload intercepts), and its life is reported to an
/// observer: the preload keeps a bitmap of the shim's fds so that an application that
/// closes fds it never opened (daemons do) cannot close ours.
#[derive(Debug)]
pub struct Fd(RawFd);

static FD_OBSERVER: OnceLock<fn(RawFd, bool)> = OnceLock::new();

/// Install the observer told of every [`Fd`] made (`true`) and closed (`false`).
pub fn set_fd_observer(f: fn(RawFd, bool)) {
    let _ = FD_OBSERVER.set(f);
}

impl Fd {
    pub fn raw(&self) -> RawFd {
        self.0
    }
}

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        if let Some(f) = FD_OBSERVER.get() {
            f(self.0, false);
        }
        let _ = close(self.0);
        crate::wait::hidden_fd_closed(self.0);
    }
}

/// Take ownership of a raw fd returned by a successful system call.
pub fn owned(fd: RawFd) -> Fd {
    if let Some(f) = FD_OBSERVER.get() {
        f(fd, true);
    }
    Fd(fd)
}

pub fn fcntl(fd: RawFd, cmd: libc::c_int, arg: libc::c_long) -> io::Result<libc::c_int> {
    syscall!(SYS_fcntl, fd, cmd, arg).map(|r| r as libc::c_int)
}

/// Is O_NONBLOCK set on the open file description behind `fd`? Read from the kernel each
/// time, so that a change made through a dup, a forked child or ioctl(FIONBIO) is seen.
pub fn is_nonblocking(fd: RawFd) -> io::Result<bool> {
    Ok(fcntl(fd, libc::F_GETFL, 0)? & libc::O_NONBLOCK != 0)
}

/// Duplicate `fd` to the lowest free number >= `min`, close-on-exec.
pub fn dup_min(fd: RawFd, min: RawFd) -> io::Result<RawFd> {
    fcntl(fd, libc::F_DUPFD_CLOEXEC, min as libc::c_long)
}

pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    syscall!(SYS_poll, fds.as_mut_ptr(), fds.len(), timeout_ms).map(|n| n as usize)
}

/// poll(2) with a timespec and an optional signal mask, as ppoll(2).
pub fn ppoll(
    fds: &mut [libc::pollfd],
    timeout: Option<&libc::timespec>,
    sigmask: Option<&libc::sigset_t>,
) -> io::Result<usize> {
    let ts = timeout.map_or(std::ptr::null(), |t| t as *const libc::timespec);
    let mask = sigmask.map_or(std::ptr::null(), |m| m as *const libc::sigset_t);
    // The kernel's sigset is 64 bits on x86_64 (_NSIG / 8).
    syscall!(SYS_ppoll, fds.as_mut_ptr(), fds.len(), ts, mask, 8).map(|n| n as usize)
}

pub fn getsockopt_raw(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    val: *mut libc::c_void,
    len: *mut libc::socklen_t,
) -> io::Result<()> {
    syscall!(SYS_getsockopt, fd, level, name, val, len).map(drop)
}

/// Read a fixed-size socket option value.
pub fn getsockopt<T: Copy + Default>(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<T> {
    let mut v = T::default();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    getsockopt_raw(fd, level, name, &mut v as *mut T as *mut libc::c_void, &mut len)?;
    Ok(v)
}

pub fn setsockopt<T: Copy>(fd: RawFd, level: libc::c_int, name: libc::c_int, v: T) -> io::Result<()> {
    let len = std::mem::size_of::<T>() as libc::socklen_t;
    syscall!(SYS_setsockopt, fd, level, name, &v as *const T, len).map(drop)
}

/// A socket's receive or send timeout (SO_RCVTIMEO / SO_SNDTIMEO); `None` when unset.
pub fn sock_timeout(fd: RawFd, name: libc::c_int) -> io::Result<Option<std::time::Duration>> {
    let tv: libc::timeval = getsockopt_tv(fd, name)?;
    if tv.tv_sec == 0 && tv.tv_usec == 0 {
        return Ok(None);
    }
    Ok(Some(std::time::Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000)))
}

fn getsockopt_tv(fd: RawFd, name: libc::c_int) -> io::Result<libc::timeval> {
    let mut tv = libc::timeval { tv_sec: 0, tv_usec: 0 };
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    getsockopt_raw(fd, libc::SOL_SOCKET, name, &mut tv as *mut _ as *mut libc::c_void, &mut len)?;
    Ok(tv)
}

/// The socket's type (SOCK_STREAM, ...), or an error when `fd` is not a socket.
pub fn sock_type(fd: RawFd) -> io::Result<libc::c_int> {
    getsockopt::<libc::c_int>(fd, libc::SOL_SOCKET, libc::SO_TYPE)
}

pub fn sock_domain(fd: RawFd) -> io::Result<libc::c_int> {
    getsockopt::<libc::c_int>(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)
}

pub fn getsockname(fd: RawFd) -> io::Result<crate::addr::SockAddr> {
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    syscall!(SYS_getsockname, fd, &mut ss as *mut libc::sockaddr_storage, &mut len as *mut libc::socklen_t)?;
    crate::addr::SockAddr::from_storage(&ss).ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))
}

pub fn getpeername(fd: RawFd) -> io::Result<crate::addr::SockAddr> {
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    syscall!(SYS_getpeername, fd, &mut ss as *mut libc::sockaddr_storage, &mut len as *mut libc::socklen_t)?;
    crate::addr::SockAddr::from_storage(&ss).ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))
}

/// recv(2) with flags, on a kernel socket.
pub fn recv(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    syscall!(SYS_recvfrom, fd, buf.as_mut_ptr(), buf.len(), flags, 0, 0).map(|n| n as usize)
}

/// send(2) from raw memory (a ring), on a kernel socket.
///
/// # Safety
/// `ptr..ptr+len` must be readable memory.
pub unsafe fn send_raw(fd: RawFd, ptr: *const u8, len: usize, flags: libc::c_int) -> io::Result<usize> {
    syscall!(SYS_sendto, fd, ptr, len, flags, 0, 0).map(|n| n as usize)
}

/// Send all of `len` bytes at `ptr` on a kernel socket, waiting for room as needed
/// (the bytes a fabric re-sends when it hands the stream back). False if the socket
/// failed: the kernel will say so to the application's next call.
///
/// # Safety
/// `ptr..ptr+len` must stay readable for the call.
pub unsafe fn send_all(sock: RawFd, mut ptr: *const u8, mut len: usize) -> bool {
    while len > 0 {
        match send_raw(sock, ptr, len, libc::MSG_NOSIGNAL) {
            Ok(n) => {
                // SAFETY: n <= len.
                ptr = ptr.add(n);
                len -= n;
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                let mut p = [libc::pollfd { fd: sock, events: libc::POLLOUT, revents: 0 }];
                let _ = poll(&mut p, -1);
            }
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(_) => return false,
        }
    }
    true
}

/// shutdown(SHUT_WR) on a kernel socket (a half-close handed over from a fabric).
pub fn shutdown_write(fd: RawFd) {
    let _ = syscall!(SYS_shutdown, fd, libc::SHUT_WR);
}

/// send(2) with flags, on a kernel socket.
pub fn send(fd: RawFd, buf: &[u8], flags: libc::c_int) -> io::Result<usize> {
    syscall!(SYS_sendto, fd, buf.as_ptr(), buf.len(), flags, 0, 0).map(|n| n as usize)
}

pub fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a valid out-pointer.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

pub fn lstat(path: &str) -> io::Result<libc::stat> {
    let c = cstr(path)?;
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated, st a valid out-pointer.
    cvt(unsafe { libc::lstat(c.as_ptr(), &mut st) })?;
    Ok(st)
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// open(2) without the intercepted wrappers' involvement (open is not intercepted, but
/// this keeps every fd the shim makes close-on-exec).
pub fn open(path: &str, flags: libc::c_int, mode: libc::mode_t) -> io::Result<Fd> {
    let c = cstr(path)?;
    // SAFETY: c is NUL-terminated.
    let fd = cvt(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) })?;
    Ok(owned(fd))
}

pub fn mkdir(path: &str, mode: libc::mode_t) -> io::Result<()> {
    let c = cstr(path)?;
    // SAFETY: c is NUL-terminated.
    cvt(unsafe { libc::mkdir(c.as_ptr(), mode) }).map(drop)
}

pub fn unlink(path: &str) -> io::Result<()> {
    let c = cstr(path)?;
    // SAFETY: c is NUL-terminated.
    cvt(unsafe { libc::unlink(c.as_ptr()) }).map(drop)
}

pub fn rename(from: &str, to: &str) -> io::Result<()> {
    let (a, b) = (cstr(from)?, cstr(to)?);
    // SAFETY: both NUL-terminated.
    cvt(unsafe { libc::rename(a.as_ptr(), b.as_ptr()) }).map(drop)
}

pub fn readlink(path: &str) -> io::Result<String> {
    let c = cstr(path)?;
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length.
    let n = cvt(unsafe { libc::readlink(c.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, buf.len()) })?;
    Ok(String::from_utf8_lossy(&buf[..n as usize]).into_owned())
}

/// flock(2); `Ok(false)` when a non-blocking request would block.
pub fn flock(fd: &Fd, op: libc::c_int) -> io::Result<bool> {
    // SAFETY: plain syscall on an owned fd.
    match cvt(unsafe { libc::flock(fd.as_raw_fd(), op) }) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e),
    }
}

pub fn ftruncate(fd: &Fd, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on an owned fd.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) }).map(drop)
}

pub fn pwrite_all(fd: &Fd, buf: &[u8], off: u64) -> io::Result<()> {
    let n = syscall!(SYS_pwrite64, fd.as_raw_fd(), buf.as_ptr(), buf.len(), off)?;
    if n as usize != buf.len() {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(())
}

pub fn pread_exact(fd: &Fd, buf: &mut [u8], off: u64) -> io::Result<()> {
    let n = syscall!(SYS_pread64, fd.as_raw_fd(), buf.as_mut_ptr(), buf.len(), off)?;
    if n as usize != buf.len() {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(())
}

/// A pipe, both ends close-on-exec; the read end blocking (waits block in read(2), which
/// gives the same SA_RESTART behaviour as a blocking recv), the write end non-blocking
/// (a full doorbell pipe already rings).
pub fn doorbell_pipe() -> io::Result<(Fd, Fd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid out-array of two ints.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    let (r, w) = (owned(fds[0]), owned(fds[1]));
    fcntl(w.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK as libc::c_long)?;
    Ok((r, w))
}

pub fn eventfd() -> io::Result<Fd> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) }).map(owned)
}

/// Does a process with this pid exist (whoever owns it)?
pub fn process_exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

pub fn getpid() -> u32 {
    // SAFETY: always succeeds.
    unsafe { libc::getpid() as u32 }
}

/// This process's id as the preload last noted it (0: not noted, ask the kernel).
static PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Note this process's id (the preload does, at start and in every forked child; its
/// hooks check `getpid() == noted` once on entry, which covers a vfork child borrowing
/// our memory), so that [`pid`] needs no system call.
pub fn note_pid(pid: u32) {
    PID.store(pid, std::sync::atomic::Ordering::Relaxed);
}

/// This process's id: the noted one, or getpid(2) where none was noted (tests, tools).
pub fn pid() -> u32 {
    match PID.load(std::sync::atomic::Ordering::Relaxed) {
        0 => getpid(),
        p => p,
    }
}

pub fn getuid() -> u32 {
    // SAFETY: always succeeds.
    unsafe { libc::getuid() }
}

/// The CPU this thread runs on now (vDSO/rseq, no system call on current glibc).
pub fn current_cpu() -> u32 {
    // SAFETY: always safe to call.
    let c = unsafe { libc::sched_getcpu() };
    if c < 0 { u32::MAX } else { c as u32 }
}

pub fn sched_yield() {
    // SAFETY: always safe to call.
    unsafe { libc::sched_yield() };
}

pub fn online_cpus() -> usize {
    // SAFETY: always safe to call.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n < 1 { 1 } else { n as usize }
}

/// Send SIGPIPE to the calling thread, as the kernel does for a write to a closed stream.
pub fn raise_sigpipe() {
    // SAFETY: tgkill on our own thread.
    unsafe {
        libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), libc::SIGPIPE);
    }
}

/// A shared, read-write mapping of `len` bytes of `fd`.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all shared access goes through atomics or
// through the ring's single-producer/single-consumer protocol.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    pub fn shared(fd: RawFd, len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh mapping at an address the kernel chooses.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr: p as *mut u8, len })
    }
    pub fn shared_readonly(fd: RawFd, len: usize) -> io::Result<Mapping> {
        // SAFETY: as `shared`, read-only.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, fd, 0) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr: p as *mut u8, len })
    }
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    /// Move the mapping out, leaving an empty one (which unmaps nothing).
    pub fn take(&mut self) -> Mapping {
        std::mem::replace(self, Mapping { ptr: std::ptr::null_mut(), len: 0 })
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: we own the mapping.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// The inode of this process's network namespace (so that registry entries of one
/// namespace are never matched in another).
pub fn netns_id() -> u64 {
    readlink("/proc/self/ns/net")
        .ok()
        .and_then(|s| s.trim_start_matches("net:[").trim_end_matches(']').parse().ok())
        .unwrap_or(0)
}

/// Current soft RLIMIT_NOFILE.
pub fn nofile_limit() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: r is a valid out-pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    r.rlim_cur
}

/// A memfd of `len` bytes, close-on-exec, sealed against shrinking and growing (and
/// against further seals), so that no mapping of it can ever fault (SIGBUS).
pub fn sealed_memfd(name: &str, len: u64) -> io::Result<Fd> {
    let mfd = memfd::MemfdOptions::default()
        .close_on_exec(true)
        .allow_sealing(true)
        .create(name)
        .map_err(|e| match e {
            memfd::Error::Create(e) | memfd::Error::AddSeals(e) | memfd::Error::GetSeals(e) => e,
        })?;
    mfd.as_file().set_len(len)?;
    mfd.add_seals(&[memfd::FileSeal::SealShrink, memfd::FileSeal::SealGrow, memfd::FileSeal::SealSeal])
        .map_err(|_| io::Error::from_raw_os_error(libc::EPERM))?;
    Ok(owned(std::os::fd::IntoRawFd::into_raw_fd(mfd.into_file())))
}

/// Another process's open file `fd`, as a close-on-exec descriptor of ours, and whether
/// it is that very open file (pidfd_getfd(2): flags shared with the owner) rather than
/// a new open of it through /proc/<pid>/fd/<fd> with `flags`. pidfd_getfd costs 1.3 µs
/// here against 4.5 µs for the /proc open, but needs Linux ≥ 5.6 and ptrace-attach
/// rights over the owner (Yama scope 1 or a container's seccomp profile may deny it):
/// anything it refuses goes the /proc way, which needs only read rights. Callers check
/// what they got (type, inode) either way: the owner may have closed or reused `fd`.
pub fn peer_fd(pid: u32, fd: i32, flags: libc::c_int) -> io::Result<(Fd, bool)> {
    if let Some(f) = PIDFDS.getfd(pid, fd) {
        return Ok((f, true));
    }
    open(&format!("/proc/{pid}/fd/{fd}"), flags, 0).map(|f| (f, false))
}

/// Recently used pidfds, one per peer process (a server claims many connections from
/// the same clients). A pidfd names one process, not a number: once that process is
/// gone its pidfd answers ESRCH, and a new process with the same pid gets a new pidfd.
struct Pidfds {
    /// (pid, its pidfd or None where pidfd_getfd was refused), most recent last.
    map: parking_lot::Mutex<Vec<(u32, Option<Fd>)>>,
    /// No pidfd_getfd in this kernel (ENOSYS): every take goes through /proc.
    off: std::sync::atomic::AtomicBool,
}

const PIDFDS_MAX: usize = 8;

static PIDFDS: Pidfds = Pidfds { map: parking_lot::Mutex::new(Vec::new()), off: std::sync::atomic::AtomicBool::new(false) };

impl Pidfds {
    fn getfd(&self, pid: u32, fd: i32) -> Option<Fd> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.off.load(Relaxed) {
            return None;
        }
        // A forked child may inherit the lock held: then go without the cache.
        let mut map = self.map.try_lock()?;
        for fresh in [false, true] {
            let i = match map.iter().position(|(p, _)| *p == pid) {
                Some(i) if !fresh => i,
                _ => {
                    map.retain(|(p, _)| *p != pid);
                    if map.len() >= PIDFDS_MAX {
                        map.remove(0);
                    }
                    let pidfd = syscall!(SYS_pidfd_open, pid, 0).ok().map(|r| crate::wait::hide_fd(owned(r as RawFd)));
                    map.push((pid, pidfd));
                    map.len() - 1
                }
            };
            let pidfd = map[i].1.as_ref()?.as_raw_fd();
            match syscall!(SYS_pidfd_getfd, pidfd, fd, 0) {
                Ok(r) => return Some(owned(r as RawFd)),
                // The process our pidfd named is gone: the pid may be someone new.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) && !fresh => continue,
                Err(e) => {
                    match e.raw_os_error() {
                        Some(libc::ENOSYS) => self.off.store(true, Relaxed),
                        Some(libc::EPERM) => map[i].1 = None,
                        _ => {}
                    }
                    return None;
                }
            }
        }
        None
    }
}

/// Map another process's sealed memfd, named by its fd number there, after checking it
/// is the object expected: inode `ino`, exactly `len` bytes, sealed against shrinking
/// and growing (EINVAL otherwise). The fd is closed again; the mapping stays.
pub fn map_peer_sealed(pid: u32, fd: i32, ino: u64, len: u64) -> io::Result<Mapping> {
    let (f, _) = peer_fd(pid, fd, libc::O_RDWR)?;
    let st = fstat(f.as_raw_fd())?;
    let seals = fcntl(f.as_raw_fd(), libc::F_GET_SEALS, 0)?;
    let sealed = seals & libc::F_SEAL_SHRINK != 0 && seals & libc::F_SEAL_GROW != 0;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_ino != ino || st.st_size as u64 != len || !sealed {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Mapping::shared(f.as_raw_fd(), len as usize)
}

fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Monotonic clock in nanoseconds (vDSO).
pub fn now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Monotonic clock in nanoseconds, as of the last kernel tick (vDSO, no TSC read: 6.5 ns
/// here against 25 ns for [`now_ns`]; resolution 1-4 ms). For checks made on every
/// message that only need to happen about once per millisecond.
pub fn coarse_now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

/// Wall-clock seconds (vDSO), to compare with file times.
pub fn wall_secs() -> i64 {
    (clock_ns(libc::CLOCK_REALTIME) / 1_000_000_000) as i64
}

/// 64 bits for names and nonces, unpredictable to other processes and not repeated in
/// this one: SplitMix64 over a counter that starts at a key from the kernel (one
/// getrandom per process), mixed with the clock so that a forked child, which inherits
/// the counter, does not replay its parent's values. Never a secret: a nonce only tells
/// one offer of a segment from another.
pub fn random_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    if NEXT.load(Relaxed) == 0 {
        let mut v = 0u64;
        // SAFETY: v is 8 writable bytes.
        unsafe { libc::getrandom(&mut v as *mut u64 as *mut libc::c_void, 8, 0) };
        let _ = NEXT.compare_exchange(0, (v ^ now_ns()) | 1, Relaxed, Relaxed);
    }
    let mut z = NEXT.fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed) ^ now_ns().rotate_left(29);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pidfd_getfd hands over the very open file (the flags are shared).
    #[test]
    fn peer_fd_takes_the_open_file() {
        let (r, _w) = doorbell_pipe().unwrap();
        let (got, same) = peer_fd(getpid(), r.as_raw_fd(), libc::O_RDONLY).unwrap();
        assert!(same, "pidfd_getfd works on this kernel");
        assert_eq!(fstat(got.as_raw_fd()).unwrap().st_ino, fstat(r.as_raw_fd()).unwrap().st_ino);
        fcntl(r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK as libc::c_long).unwrap();
        assert!(is_nonblocking(got.as_raw_fd()).unwrap());
        // A number that names nothing is an error, not someone else's file.
        assert!(peer_fd(getpid(), 1 << 20, libc::O_RDONLY).is_err());
    }

    /// Where pidfd_getfd is refused (here by a seccomp filter, as in a container's
    /// default profile), the file comes through /proc: a new open with our flags.
    #[test]
    fn peer_fd_falls_back_to_proc() {
        let (r, _w) = doorbell_pipe().unwrap();
        let parent = getpid();
        let ino = fstat(r.as_raw_fd()).unwrap().st_ino;
        // SAFETY: the child only makes system calls and leaves with _exit.
        let child = unsafe { libc::fork() };
        assert!(child >= 0);
        if child == 0 {
            let code = (|| {
                deny_pidfd_getfd()?;
                let (got, same) = peer_fd(parent, r.as_raw_fd(), libc::O_RDONLY | libc::O_NONBLOCK).ok()?;
                let ok = !same && fstat(got.as_raw_fd()).ok()?.st_ino == ino && is_nonblocking(got.as_raw_fd()).ok()?
                    && !is_nonblocking(r.as_raw_fd()).ok()?;
                // Refused once, remembered: the second take goes straight to /proc.
                let again = peer_fd(parent, r.as_raw_fd(), libc::O_RDONLY).ok()?;
                ok.then_some(()).filter(|_| !again.1)
            })()
            .map_or(1, |_| 0);
            // SAFETY: leaving the forked child without running the harness's exit path.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(child, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status:#x}");
    }

    /// A seccomp filter that fails pidfd_getfd with EPERM and allows everything else.
    fn deny_pidfd_getfd() -> Option<()> {
        #[repr(C)]
        struct Insn(u16, u8, u8, u32);
        #[repr(C)]
        struct Prog(u16, *const Insn);
        const LD_W_ABS: u16 = 0x20;
        const JEQ_K: u16 = 0x15;
        const RET_K: u16 = 0x06;
        let prog = [
            Insn(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
            Insn(JEQ_K, 0, 1, libc::SYS_pidfd_getfd as u32),
            Insn(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
            Insn(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
        ];
        let fprog = Prog(prog.len() as u16, prog.as_ptr());
        // SAFETY: a valid filter program that outlives the call.
        unsafe {
            (libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0).then_some(())?;
            (libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &fprog as *const Prog) == 0).then_some(())
        }
    }
}
