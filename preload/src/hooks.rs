//! The intercepted symbols, declared once. From this one list the macro derives:
//! * `Real`, the table of the next definitions (libc's), resolved with dlsym(RTLD_NEXT);
//! * the exported `extern "C"` functions, each a thin boundary around `crate::imp`;
//! * `SYMBOLS`, the list a test compares with `nm -D` of the library.
//!
//! Variadic C functions (fcntl, fcntl64, ioctl) are declared with their one optional
//! argument as a machine word: stable Rust cannot define C-variadic functions, and on
//! x86_64 and aarch64 Linux the first variadic integer/pointer argument travels in the
//! same register as a fixed one. (This is one reason redhook could not serve; see
//! ARCHITECTURE.md.)
#![allow(unsafe_code)]

use libc::{c_char, c_int, c_uint, c_ulong, c_void, epoll_event, fd_set, FILE, iovec, loff_t, mmsghdr, msghdr, nfds_t, off64_t,
    off_t, pollfd, sigset_t, size_t, sockaddr, socklen_t, ssize_t, timespec, timeval};
use std::sync::OnceLock;

macro_rules! hooks {
    ($( fn $name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty ; )*) => {
        /// libc's definitions of the intercepted functions.
        #[allow(non_snake_case)]
        pub struct Real {
            $( pub $name: unsafe extern "C" fn($($ty),*) -> $ret, )*
        }

        /// Every exported symbol, in declaration order.
        pub const SYMBOLS: &[&str] = &[$(stringify!($name)),*];

        impl Real {
            fn resolve() -> Real {
                Real {
                    $( $name: {
                        let p = next_symbol(concat!(stringify!($name), "\0"));
                        // SAFETY: dlsym returned libc's definition of exactly this
                        // function (or we abort in next_symbol).
                        unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($ty),*) -> $ret>(p) }
                    }, )*
                }
            }
        }

        $(
            #[no_mangle]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
                crate::imp::$name($($arg),*)
            }
        )*
    };
}

hooks! {
    fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int;
    fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    fn listen(fd: c_int, backlog: c_int) -> c_int;
    fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int;
    fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    fn shutdown(fd: c_int, how: c_int) -> c_int;
    fn close(fd: c_int) -> c_int;
    fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int;
    fn dup(fd: c_int) -> c_int;
    fn dup2(old: c_int, new: c_int) -> c_int;
    fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int;
    fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int;
    fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int;
    fn ioctl(fd: c_int, req: c_ulong, arg: *mut c_void) -> c_int;
    fn getsockopt(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int;
    fn setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int;
    fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t;
    fn readv(fd: c_int, iov: *const iovec, iovcnt: c_int) -> ssize_t;
    fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t;
    fn writev(fd: c_int, iov: *const iovec, iovcnt: c_int) -> ssize_t;
    fn recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t;
    fn recvfrom(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int, addr: *mut sockaddr, alen: *mut socklen_t) -> ssize_t;
    fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t;
    fn recvmmsg(fd: c_int, msgs: *mut mmsghdr, vlen: c_uint, flags: c_int, timeout: *mut timespec) -> c_int;
    fn send(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t;
    fn sendto(fd: c_int, buf: *const c_void, len: size_t, flags: c_int, addr: *const sockaddr, alen: socklen_t) -> ssize_t;
    fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t;
    fn sendmmsg(fd: c_int, msgs: *mut mmsghdr, vlen: c_uint, flags: c_int) -> c_int;
    fn sendfile(out_fd: c_int, in_fd: c_int, offset: *mut off_t, count: size_t) -> ssize_t;
    fn sendfile64(out_fd: c_int, in_fd: c_int, offset: *mut off64_t, count: size_t) -> ssize_t;
    fn splice(fd_in: c_int, off_in: *mut loff_t, fd_out: c_int, off_out: *mut loff_t, len: size_t, flags: c_uint) -> ssize_t;
    fn __read_chk(fd: c_int, buf: *mut c_void, count: size_t, buflen: size_t) -> ssize_t;
    fn __recv_chk(fd: c_int, buf: *mut c_void, len: size_t, buflen: size_t, flags: c_int) -> ssize_t;
    fn __recvfrom_chk(fd: c_int, buf: *mut c_void, len: size_t, buflen: size_t, flags: c_int, addr: *mut sockaddr, alen: *mut socklen_t) -> ssize_t;
    fn poll(fds: *mut pollfd, nfds: nfds_t, timeout: c_int) -> c_int;
    fn ppoll(fds: *mut pollfd, nfds: nfds_t, timeout: *const timespec, sigmask: *const sigset_t) -> c_int;
    fn __poll_chk(fds: *mut pollfd, nfds: nfds_t, timeout: c_int, fdslen: size_t) -> c_int;
    fn __ppoll_chk(fds: *mut pollfd, nfds: nfds_t, timeout: *const timespec, sigmask: *const sigset_t, fdslen: size_t) -> c_int;
    fn select(nfds: c_int, r: *mut fd_set, w: *mut fd_set, e: *mut fd_set, timeout: *mut timeval) -> c_int;
    fn pselect(nfds: c_int, r: *mut fd_set, w: *mut fd_set, e: *mut fd_set, timeout: *const timespec, sigmask: *const sigset_t) -> c_int;
    fn epoll_create(size: c_int) -> c_int;
    fn epoll_create1(flags: c_int) -> c_int;
    fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut epoll_event) -> c_int;
    fn epoll_wait(epfd: c_int, events: *mut epoll_event, max: c_int, timeout: c_int) -> c_int;
    fn epoll_pwait(epfd: c_int, events: *mut epoll_event, max: c_int, timeout: c_int, sigmask: *const sigset_t) -> c_int;
    fn epoll_pwait2(epfd: c_int, events: *mut epoll_event, max: c_int, timeout: *const timespec, sigmask: *const sigset_t) -> c_int;
    fn closefrom(low: c_int) -> ();
    fn fdopen(fd: c_int, mode: *const c_char) -> *mut FILE;
    fn fclose(f: *mut FILE) -> c_int;
}

static REAL: OnceLock<Real> = OnceLock::new();

/// libc's functions. Resolved before main by the constructor, or on first use if some
/// other library's constructor calls us earlier.
pub fn real() -> &'static Real {
    REAL.get_or_init(Real::resolve)
}

fn next_symbol(name: &str) -> *mut c_void {
    // SAFETY: name is NUL-terminated (concat! above).
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr() as *const c_char) };
    if p.is_null() {
        // Without libc's definition we cannot pass anything through: nothing sensible
        // is left to do.
        let msg = b"rdmasock: cannot resolve a libc symbol; aborting\n";
        crate::log::raw_stderr(msg);
        // SAFETY: abort never returns.
        unsafe { libc::abort() };
    }
    p
}
