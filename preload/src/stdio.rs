//! stdio over fabric sockets. glibc's stdio reads, writes and closes through its
//! internal entry points, which no preload can intercept: a FILE made by fdopen on a
//! fabric socket would write into the idle kernel socket (lost bytes), and fclose would
//! close the fd behind the shim's back. So fdopen on a fabric socket returns a stream
//! whose I/O goes through the shim (fopencookie), and fclose/closefrom keep the fd
//! table right. (A cookie stream has no fileno(); that is the visible difference.)
#![allow(unsafe_code)]
#![allow(clippy::missing_safety_doc)]

use crate::hooks::real;
use crate::imp::{self, reentered};
use crate::table::{self, DATA, TRACKED};
use libc::{c_char, c_int, c_void, size_t, ssize_t, FILE};

#[repr(C)]
struct CookieIo {
    read: Option<unsafe extern "C" fn(*mut c_void, *mut c_char, size_t) -> ssize_t>,
    write: Option<unsafe extern "C" fn(*mut c_void, *const c_char, size_t) -> ssize_t>,
    seek: Option<unsafe extern "C" fn(*mut c_void, *mut i64, c_int) -> c_int>,
    close: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
}

extern "C" {
    fn fopencookie(cookie: *mut c_void, mode: *const c_char, funcs: CookieIo) -> *mut FILE;
}

unsafe extern "C" fn cookie_read(c: *mut c_void, buf: *mut c_char, n: size_t) -> ssize_t {
    imp::read(c as usize as c_int, buf as *mut c_void, n)
}

unsafe extern "C" fn cookie_write(c: *mut c_void, buf: *const c_char, n: size_t) -> ssize_t {
    imp::write(c as usize as c_int, buf as *const c_void, n)
}

unsafe extern "C" fn cookie_close(c: *mut c_void) -> c_int {
    imp::close(c as usize as c_int)
}

pub unsafe fn fdopen(fd: c_int, mode: *const c_char) -> *mut FILE {
    if fd < 0 || !DATA.get(fd) || reentered() {
        return (real().fdopen)(fd, mode);
    }
    // As glibc: the mode must start with r, w or a.
    if mode.is_null() || !matches!(*mode as u8, b'r' | b'w' | b'a') {
        crate::imp::set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    }
    let funcs = CookieIo { read: Some(cookie_read), write: Some(cookie_write), seek: None, close: Some(cookie_close) };
    fopencookie(fd as usize as *mut c_void, mode, funcs)
}

pub unsafe fn fclose(f: *mut FILE) -> c_int {
    if f.is_null() || reentered() {
        return (real().fclose)(f);
    }
    let fd = libc::fileno(f);
    if fd >= 0 && crate::table::PLAIN.get(fd) {
        crate::table::PLAIN.set(fd, false);
    }
    if fd >= 0 && TRACKED.get(fd) {
        let entry = table::remove(fd);
        let r = (real().fclose)(f);
        drop(entry);
        return r;
    }
    (real().fclose)(f)
}

pub unsafe fn closefrom(low: c_int) {
    // As glibc: close every fd >= low (but never the shim's own).
    imp::close_range(low.max(0) as u32, u32::MAX, 0);
}
