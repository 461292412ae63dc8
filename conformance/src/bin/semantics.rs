//! semantics: socket-semantics cases, in the manner of Linux's vsock_test. Each case
//! drives one TCP connection (the *data* connection, the one under test) through a
//! sequence of steps on both ends; the ends sequence their steps over a separate
//! *control* channel, an abstract-namespace Unix socket (never a TCP connection, so
//! the shim never carries it).
//!
//!     semantics list                       the case names, one a line
//!     semantics server CASE CTL            prints "READY <port>", then runs CASE
//!     semantics client PORT CASE CTL       connects to 127.0.0.1:PORT and runs CASE
//!     semantics solo CASE                  a case whose two ends live in one thread;
//!                                          prints "PORT <port>"
//!
//! CTL is the abstract Unix socket name both ends meet on. Every step prints one
//! observation line, `obs <what> -> <result>`, that must not depend on timing, buffer
//! sizes or the transport: the conformance test (`tests/semantics.rs`) runs every case
//! with both ends plain (the kernel's TCP: the reference) and with both ends shimmed,
//! and requires identical observations. Numbers that may differ (how many bytes a
//! write took, the elapsed time) go on `info` lines, which are not compared.
//!
//! A step that may block runs with a bound (`HANG`); still blocked at the bound, it is
//! recorded as `still blocked` and the program exits (3). Waiting for the peer is done
//! over the control channel, never by sleeping; the few conditions that come with no
//! notification (a thread is asleep, a byte count reached) are polled, bounded.
//! Exit status: 0 when the case ran to its end (whatever it observed), 1 when the case
//! could not be run (set-up failure, control channel out of step), 3 on a hang.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::process::exit;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Bound on every step that may block, and on every polled condition.
const HANG: Duration = Duration::from_secs(5);
/// "Promptly": a call that must not wait returns within this (generous: it only has
/// to tell "did not wait" from "waited for a timeout of seconds").
const PROMPT: Duration = Duration::from_millis(1000);
/// Bound on each control-channel read.
const CTL_TIMEOUT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------ output

fn obs(line: impl AsRef<str>) {
    println!("obs {}", line.as_ref());
}

fn info(line: impl AsRef<str>) {
    println!("info {}", line.as_ref());
}

/// The case could not be run as designed.
fn fail(why: impl AsRef<str>) -> ! {
    println!("FAILED {}", why.as_ref());
    eprintln!("semantics: {}", why.as_ref());
    let _ = std::io::stdout().flush();
    exit(1)
}

fn hung(what: &str) -> ! {
    obs(format!("{what} -> still blocked after {HANG:?}"));
    println!("HUNG {what}");
    let _ = std::io::stdout().flush();
    exit(3)
}

/// Runs `f` on a helper thread and waits for it at most `HANG`; a step still blocked
/// then is recorded and ends the program (its thread cannot be taken back).
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(HANG) {
        Ok(v) => v,
        Err(_) => hung(what),
    }
}

/// Polls `cond` (for conditions that come with no notification) until it holds, at
/// most `HANG`; returns whether it held.
fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + HANG;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

// ------------------------------------------------------------------ errno and calls

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn ename(e: i32) -> String {
    let name = match e {
        libc::EAGAIN => "EAGAIN",
        libc::ECONNRESET => "ECONNRESET",
        libc::EPIPE => "EPIPE",
        libc::EINVAL => "EINVAL",
        libc::EBADF => "EBADF",
        libc::ENOTCONN => "ENOTCONN",
        libc::EISDIR => "EISDIR",
        libc::ESPIPE => "ESPIPE",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::EFAULT => "EFAULT",
        libc::ENOSYS => "ENOSYS",
        libc::EOVERFLOW => "EOVERFLOW",
        _ => return format!("errno {e}"),
    };
    name.to_string()
}

/// A syscall's count or errno.
fn sys(r: isize) -> Result<usize, i32> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as usize)
    }
}

fn show_count(r: &Result<usize, i32>) -> String {
    match r {
        Ok(n) => n.to_string(),
        Err(e) => ename(*e),
    }
}

/// What one receive returned: bytes (empty: end of stream) or an errno.
type Got = Result<Vec<u8>, i32>;

fn show_got(g: &Got) -> String {
    match g {
        Ok(b) if b.is_empty() => "0 (EOF)".to_string(),
        Ok(b) if b.len() <= 64 => format!("{} bytes {:?}", b.len(), String::from_utf8_lossy(b)),
        Ok(b) => format!("{} bytes", b.len()),
        Err(e) => ename(*e),
    }
}

fn recv(fd: RawFd, len: usize, flags: i32) -> Got {
    let mut buf = vec![0u8; len];
    // SAFETY: buf holds len bytes.
    let r = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), len, flags) };
    sys(r).map(|n| {
        buf.truncate(n);
        buf
    })
}

fn read(fd: RawFd, len: usize) -> Got {
    let mut buf = vec![0u8; len];
    // SAFETY: buf holds len bytes.
    let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), len) };
    sys(r).map(|n| {
        buf.truncate(n);
        buf
    })
}

/// Runs a receive that may block, bounded, and records what it returned.
fn obs_got(what: &str, f: impl FnOnce() -> Got + Send + 'static) {
    obs(format!("{what} -> {}", show_got(&bounded(what, f))));
}

/// Runs a call that may block, bounded, and records its count or errno.
fn obs_count(what: &str, f: impl FnOnce() -> Result<usize, i32> + Send + 'static) {
    obs(format!("{what} -> {}", show_count(&bounded(what, f))));
}

/// Runs a poll that may block, bounded, and records what it returned.
fn obs_poll(what: &str, f: impl FnOnce() -> Result<(usize, i16), i32> + Send + 'static) {
    obs(format!("{what} -> {}", show_poll(&bounded(what, f))));
}

fn send(fd: RawFd, data: &[u8], flags: i32) -> Result<usize, i32> {
    // SAFETY: data is a valid buffer.
    sys(unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), flags) })
}

fn write(fd: RawFd, data: &[u8]) -> Result<usize, i32> {
    // SAFETY: data is a valid buffer.
    sys(unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) })
}

/// Sends all of `data` (blocking socket).
fn send_all(fd: RawFd, data: Vec<u8>) -> Result<usize, i32> {
    let mut off = 0;
    while off < data.len() {
        match send(fd, &data[off..], libc::MSG_NOSIGNAL) {
            Ok(n) => off += n,
            Err(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(off)
}

/// Receives exactly `len` bytes (fewer at end of stream; the bytes so far, if an
/// error comes after some).
fn recv_exact(fd: RawFd, len: usize) -> Got {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        match recv(fd, len - out.len(), 0) {
            Ok(b) if b.is_empty() => break,
            Ok(mut b) => out.append(&mut b),
            Err(e) if out.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    Ok(out)
}

fn shutdown(fd: RawFd, how: i32) -> Result<usize, i32> {
    // SAFETY: plain syscall.
    sys(unsafe { libc::shutdown(fd, how) } as isize)
}

fn close(fd: RawFd) -> Result<usize, i32> {
    // SAFETY: the caller owns fd.
    sys(unsafe { libc::close(fd) } as isize)
}

/// Whether a case closed the data connection itself.
static DATA_CLOSED: AtomicBool = AtomicBool::new(false);

/// A case closes the data connection.
fn close_data_in_case(fd: RawFd) -> Result<usize, i32> {
    DATA_CLOSED.store(true, Ordering::SeqCst);
    close(fd)
}

/// The end of a case: the data connection is closed, unless the case did.
fn close_data(fd: RawFd) {
    if !DATA_CLOSED.load(Ordering::SeqCst) {
        close(fd).ok();
    }
}

fn poll1(fd: RawFd, events: i16, timeout_ms: i32) -> Result<(usize, i16), i32> {
    let mut p = [libc::pollfd {
        fd,
        events,
        revents: 0,
    }];
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(p.as_mut_ptr(), 1, timeout_ms) };
    sys(r as isize).map(|n| (n, p[0].revents))
}

fn show_events(ev: i16) -> String {
    const NAMES: [(i16, &str); 9] = [
        (libc::POLLIN, "IN"),
        (libc::POLLPRI, "PRI"),
        (libc::POLLOUT, "OUT"),
        (libc::POLLERR, "ERR"),
        (libc::POLLHUP, "HUP"),
        (libc::POLLNVAL, "NVAL"),
        (libc::POLLRDNORM, "RDNORM"),
        (libc::POLLWRNORM, "WRNORM"),
        (libc::POLLRDHUP, "RDHUP"),
    ];
    let v: Vec<&str> = NAMES
        .iter()
        .filter(|(b, _)| ev & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join("|")
    }
}

fn show_poll(r: &Result<(usize, i16), i32>) -> String {
    match r {
        Ok((n, ev)) => format!("{n} [{}]", show_events(*ev)),
        Err(e) => ename(*e),
    }
}

/// The readiness a zero-timeout poll reports for IN, OUT and RDHUP (ERR and HUP are
/// always reported).
fn readiness(fd: RawFd) -> String {
    show_poll(&poll1(
        fd,
        libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP,
        0,
    ))
}

fn fionread(fd: RawFd) -> Result<usize, i32> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    sys(r as isize).map(|_| n as usize)
}

fn so_error(fd: RawFd) -> String {
    let mut v: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for getsockopt.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    match sys(r as isize) {
        Ok(_) if v == 0 => "0".to_string(),
        Ok(_) => ename(v),
        Err(e) => format!("getsockopt failed: {}", ename(e)),
    }
}

fn setsockopt<T>(fd: RawFd, level: i32, name: i32, v: &T) -> Result<usize, i32> {
    // SAFETY: v is a valid T of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    sys(r as isize)
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: plain fcntl calls.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            fail(format!("fcntl O_NONBLOCK: {}", ename(errno())));
        }
    }
}

fn gettid() -> i32 {
    // SAFETY: plain syscall.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// The scheduler state of one of our threads ('R', 'S', ...).
fn thread_state(tid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
        .unwrap_or('?')
}

/// A pipe (read end, write end).
fn pipe() -> (RawFd, RawFd) {
    let mut p = [0; 2];
    // SAFETY: p has room for two fds.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        fail(format!("pipe2: {}", ename(errno())));
    }
    (p[0], p[1])
}

fn splice(from: RawFd, to: RawFd, len: usize, flags: u32) -> Result<usize, i32> {
    // SAFETY: no offsets; plain syscall.
    sys(unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            flags,
        )
    })
}

/// The test pattern: byte `i` of a stream.
fn pat(i: usize) -> u8 {
    (i % 251) as u8
}

fn pattern(from: usize, len: usize) -> Vec<u8> {
    (from..from + len).map(pat).collect()
}

/// Where `data`, meant to be the pattern from `from` on, first differs from it.
fn pattern_mismatch(data: &[u8], from: usize) -> Option<usize> {
    data.iter()
        .enumerate()
        .position(|(i, &b)| b != pat(from + i))
}

// ------------------------------------------------------------------ SIGPIPE

static SIGPIPES: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_sigpipe(_: libc::c_int) {
    SIGPIPES.fetch_add(1, Ordering::SeqCst);
}

/// Catch SIGPIPE with a counting handler (instead of the SIG_IGN Rust starts with).
fn count_sigpipe() {
    // SAFETY: installs an async-signal-safe handler.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigpipe as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGPIPE, &sa, std::ptr::null_mut()) != 0 {
            fail("sigaction");
        }
    }
}

// ------------------------------------------------------------------ control channel

/// The control channel: lines over an abstract Unix socket.
struct Ctl {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Ctl {
    fn new(s: UnixStream) -> Ctl {
        s.set_read_timeout(Some(CTL_TIMEOUT))
            .unwrap_or_else(|e| fail(format!("ctl: {e}")));
        let w = s.try_clone().unwrap_or_else(|e| fail(format!("ctl: {e}")));
        Ctl {
            r: BufReader::new(s),
            w,
        }
    }

    fn send(&mut self, msg: &str) {
        if let Err(e) = writeln!(self.w, "{msg}") {
            fail(format!("ctl: sending {msg:?}: {e}"));
        }
    }

    fn recv(&mut self) -> String {
        let mut line = String::new();
        match self.r.read_line(&mut line) {
            Ok(0) => fail("ctl: the peer went away"),
            Ok(_) => line.trim_end().to_string(),
            Err(e) => fail(format!("ctl: {e}")),
        }
    }

    fn expect(&mut self, msg: &str) {
        let got = self.recv();
        if got != msg {
            fail(format!("ctl: expected {msg:?}, got {got:?}"));
        }
    }

    /// Both ends reach the same point.
    fn sync(&mut self, point: &str) {
        self.send(point);
        self.expect(point);
    }
}

fn ctl_addr(name: &str) -> SocketAddr {
    SocketAddr::from_abstract_name(name.as_bytes())
        .unwrap_or_else(|e| fail(format!("ctl address: {e}")))
}

// ------------------------------------------------------------------ the cases

type Side = fn(RawFd, &mut Ctl);

enum Kind {
    /// A client and a server process, each with its side of the data connection.
    Pair { client: Side, server: Side },
    /// Both ends in one single-threaded process.
    Solo(fn()),
}

struct Case {
    name: &'static str,
    kind: Kind,
}

const CASES: &[Case] = &[
    Case {
        name: "waiter_leaving_keeps_others_armed",
        kind: Kind::Pair {
            client: waiter_client,
            server: waiter_server,
        },
    },
    Case {
        name: "shutdown_wakes_blocked_reader",
        kind: Kind::Pair {
            client: shutwake_client,
            server: shutwake_server,
        },
    },
    Case {
        name: "splice_into_full_pipe_returns",
        kind: Kind::Pair {
            client: splicefull_client,
            server: splicefull_server,
        },
    },
    Case {
        name: "splice_respects_len",
        kind: Kind::Pair {
            client: splicelen_client,
            server: splicelen_server,
        },
    },
    Case {
        name: "splice_without_pipe_fails",
        kind: Kind::Pair {
            client: splicenopipe_client,
            server: splicenopipe_server,
        },
    },
    Case {
        name: "sendfile_from_bad_source_fails",
        kind: Kind::Pair {
            client: sendfile_client,
            server: sendfile_server,
        },
    },
    Case {
        name: "reset_after_partial_read",
        kind: Kind::Pair {
            client: partial_reset_client,
            server: partial_reset_server,
        },
    },
    Case {
        name: "linger_zero_close_is_reset",
        kind: Kind::Pair {
            client: linger_client,
            server: linger_server,
        },
    },
    Case {
        name: "linger_zero_so_error_first",
        kind: Kind::Pair {
            client: linger_soerr_client,
            server: linger_server,
        },
    },
    Case {
        name: "poll_sees_peer_reset_behind_data",
        kind: Kind::Pair {
            client: pollreset_client,
            server: pollreset_server,
        },
    },
    Case {
        name: "poll_sees_peer_close_behind_data",
        kind: Kind::Pair {
            client: pollfin_client,
            server: pollfin_server,
        },
    },
    Case {
        name: "nonblocking_first_use_does_not_wait",
        kind: Kind::Solo(nonblocking_first_use),
    },
    Case {
        name: "nonblocking_connect_pollout_in_a_loop",
        kind: Kind::Solo(nonblocking_connect_pollout),
    },
    Case {
        name: "dontwait_send_before_accept_is_queued",
        kind: Kind::Solo(dontwait_send_before_accept),
    },
    Case {
        name: "blocking_send_before_accept_is_queued",
        kind: Kind::Solo(blocking_send_before_accept),
    },
    Case {
        name: "half_close_both_ways",
        kind: Kind::Pair {
            client: halfclose_client,
            server: halfclose_server,
        },
    },
    Case {
        name: "peek_then_read",
        kind: Kind::Pair {
            client: peek_client,
            server: peek_server,
        },
    },
    Case {
        name: "peek_waitall_waits_for_all",
        kind: Kind::Pair {
            client: peekwaitall_client,
            server: peekwaitall_server,
        },
    },
    Case {
        name: "waitall_across_writes",
        kind: Kind::Pair {
            client: waitall_client,
            server: waitall_server,
        },
    },
    Case {
        name: "dontwait_empty_is_eagain",
        kind: Kind::Pair {
            client: dontwait_client,
            server: dontwait_server,
        },
    },
    Case {
        name: "rcvtimeo_is_eagain",
        kind: Kind::Pair {
            client: timeo_client,
            server: timeo_server,
        },
    },
    Case {
        name: "rcvtimeo_is_one_limit_per_call",
        kind: Kind::Pair {
            client: timeo_trickle_client,
            server: timeo_trickle_server,
        },
    },
    Case {
        name: "sigpipe_after_peer_close",
        kind: Kind::Pair {
            client: sigpipe_client,
            server: sigpipe_server,
        },
    },
    Case {
        name: "fionread_counts_bytes",
        kind: Kind::Pair {
            client: fionread_client,
            server: fionread_server,
        },
    },
];

/// Starts a thread blocked in recv(fd, len, flags) and waits until it sleeps in the
/// call. Returns the channel its result arrives on.
fn blocked_reader(fd: RawFd, len: usize, flags: i32) -> mpsc::Receiver<Got> {
    let (tid_tx, tid_rx) = mpsc::channel();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tid_tx.send(gettid());
        let _ = tx.send(recv(fd, len, flags));
    });
    let tid = tid_rx.recv().unwrap_or_else(|_| fail("reader thread"));
    if !wait_until(|| thread_state(tid) == 'S') {
        info(format!(
            "the reader thread never slept (state {})",
            thread_state(tid)
        ));
    }
    rx
}

/// The result of a `blocked_reader`, bounded.
fn reader_result(what: &str, rx: &mpsc::Receiver<Got>) -> Got {
    rx.recv_timeout(HANG).unwrap_or_else(|_| hung(what))
}

// --- 1. A waiter that gives up (poll timing out) must not disarm another one.

fn waiter_client(fd: RawFd, ctl: &mut Ctl) {
    let a = blocked_reader(fd, 10, 0);
    obs(format!(
        "poll(IN, 200 ms) while another thread is in recv -> {}",
        show_poll(&poll1(fd, libc::POLLIN, 200))
    ));
    ctl.send("send");
    ctl.expect("sent");
    obs(format!(
        "the blocked recv, once the peer sent -> {}",
        show_got(&reader_result("the blocked recv, once the peer sent", &a))
    ));
    ctl.sync("end");
}

fn waiter_server(fd: RawFd, ctl: &mut Ctl) {
    ctl.expect("send");
    obs(format!(
        "send(hello) -> {}",
        show_count(&send(fd, b"hello", 0))
    ));
    ctl.send("sent");
    ctl.sync("end");
}

// --- 2. shutdown(SHUT_RDWR) wakes a thread blocked in recv on the same socket.

fn shutwake_client(fd: RawFd, ctl: &mut Ctl) {
    let a = blocked_reader(fd, 10, 0);
    obs(format!(
        "shutdown(RDWR) from another thread -> {}",
        show_count(&shutdown(fd, libc::SHUT_RDWR))
    ));
    obs(format!(
        "the blocked recv -> {}",
        show_got(&reader_result("the blocked recv", &a))
    ));
    obs_got("recv again", move || recv(fd, 10, 0));
    obs(format!(
        "send after shutdown -> {}",
        show_count(&send(fd, b"x", libc::MSG_NOSIGNAL))
    ));
    ctl.send("shut");
    ctl.sync("end");
}

fn shutwake_server(fd: RawFd, ctl: &mut Ctl) {
    ctl.expect("shut");
    obs_got("recv after the peer's shutdown", move || recv(fd, 10, 0));
    ctl.sync("end");
}

// --- 3. splice into a pipe with less room than `len` moves what fits, never blocks.

const SPLICE_TOTAL: usize = 300_000;

fn splicefull_client(fd: RawFd, ctl: &mut Ctl) {
    ctl.expect("sending");
    let (pr, pw) = pipe();
    // SAFETY: plain fcntl.
    let cap = unsafe { libc::fcntl(pw, libc::F_SETPIPE_SZ, 4096) };
    if cap < 0 {
        fail(format!("F_SETPIPE_SZ: {}", ename(errno())));
    }
    let cap = cap as usize;
    // More is waiting than the pipe can take.
    if !wait_until(|| fionread(fd).is_ok_and(|n| n > cap)) {
        obs(format!("FIONREAD never exceeded the pipe's {cap} bytes"));
    }
    let what = format!("splice(1 MiB) into a {cap}-byte pipe");
    let n = match bounded(&what, move || splice(fd, pw, 1 << 20, 0)) {
        Ok(n) if n >= 1 && n <= cap => {
            obs(format!("{what} -> 1..=capacity bytes"));
            n
        }
        Ok(n) => {
            obs(format!("{what} -> {n}, more than the pipe holds"));
            n.min(cap)
        }
        Err(e) => {
            obs(format!("{what} -> {}", ename(e)));
            0
        }
    };
    info(format!("splice moved {n} bytes"));
    let mut got = match read(pr, n) {
        Ok(b) => b,
        Err(e) => fail(format!("reading the pipe: {}", ename(e))),
    };
    match pattern_mismatch(&got, 0) {
        None if got.len() == n => obs("the pipe holds the first bytes of the stream"),
        None => obs(format!(
            "the pipe holds {} of the {n} bytes spliced",
            got.len()
        )),
        Some(i) => obs(format!("the pipe's byte {i} is wrong")),
    }
    let left = SPLICE_TOTAL - got.len();
    match bounded("reading the rest", move || recv_exact(fd, left)) {
        Ok(mut rest) => got.append(&mut rest),
        Err(e) => obs(format!("reading the rest -> {}", ename(e))),
    }
    match pattern_mismatch(&got, 0) {
        None if got.len() == SPLICE_TOTAL => obs("pipe + rest: the whole stream, in order"),
        None => obs(format!(
            "pipe + rest: {} bytes of {SPLICE_TOTAL}",
            got.len()
        )),
        Some(i) => obs(format!("pipe + rest: byte {i} is wrong")),
    }
    close(pr).ok();
    close(pw).ok();
    ctl.send("drained");
    ctl.sync("end");
}

fn splicefull_server(fd: RawFd, ctl: &mut Ctl) {
    ctl.send("sending");
    obs_count("send 300000 bytes", move || {
        send_all(fd, pattern(0, SPLICE_TOTAL))
    });
    ctl.expect("drained");
    ctl.sync("end");
}

// --- 4. splice(len) moves at most len bytes, also across the ring's wrap point (the
// shimmed run uses a 4 KiB ring), and the next recv continues after them.

const WRAP_FILL: usize = 4090;

fn splicelen_client(fd: RawFd, ctl: &mut Ctl) {
    obs_got("recv 4090 filler bytes", move || recv_exact(fd, WRAP_FILL));
    ctl.send("filled");
    ctl.expect("sent");
    if !wait_until(|| fionread(fd).is_ok_and(|n| n >= 100)) {
        obs("FIONREAD never reached 100");
    }
    let (pr, pw) = pipe();
    let n = match bounded("splice(len 20)", move || splice(fd, pw, 20, 0)) {
        Ok(n) if (1..=20).contains(&n) => {
            obs("splice(len 20) -> 1..=20 bytes");
            n
        }
        Ok(n) => {
            obs(format!("splice(len 20) -> {n}, more than len"));
            n
        }
        Err(e) => {
            obs(format!("splice(len 20) -> {}", ename(e)));
            0
        }
    };
    info(format!("splice moved {n} bytes"));
    let piped = if n > 0 {
        read(pr, n).unwrap_or_default()
    } else {
        Vec::new()
    };
    if piped.len() == n && pattern_mismatch(&piped, 0).is_none() {
        obs("the pipe holds the first bytes sent");
    } else {
        obs(format!(
            "the pipe holds {:?}",
            &piped[..piped.len().min(32)]
        ));
    }
    let left = 100 - n.min(100);
    let rest = bounded("recv the rest", move || recv_exact(fd, left)).unwrap_or_default();
    match rest.first() {
        Some(&b) if b as usize == n => obs("the next recv continues where splice stopped"),
        Some(&b) => obs(format!(
            "the next recv starts at byte {b}, after a splice of {n}"
        )),
        None => obs("nothing left to recv"),
    }
    if piped.len() + rest.len() == 100 && pattern_mismatch(&rest, piped.len()).is_none() {
        obs("splice + recv: all 100 bytes, in order");
    } else {
        obs(format!(
            "splice + recv: {} + {} bytes, not the 100 in order",
            piped.len(),
            rest.len()
        ));
    }
    close(pr).ok();
    close(pw).ok();
    ctl.sync("end");
}

fn splicelen_server(fd: RawFd, ctl: &mut Ctl) {
    obs_count("send 4090 filler bytes", move || {
        send_all(fd, vec![b'a'; WRAP_FILL])
    });
    ctl.expect("filled");
    obs_count("send 100 bytes", move || send_all(fd, pattern(0, 100)));
    ctl.send("sent");
    ctl.sync("end");
}

// --- 4b. splice needs a pipe on one side: a file into a socket, or a socket into a
// file, fails with EINVAL and moves nothing.

fn splicenopipe_client(fd: RawFd, ctl: &mut Ctl) {
    let dir = scratch();
    let src = format!("{dir}/splice-src");
    std::fs::write(&src, b"0123456789").unwrap_or_else(|e| fail(format!("{src}: {e}")));
    let f = std::fs::File::open(&src)
        .unwrap_or_else(|e| fail(format!("{src}: {e}")))
        .into_raw_fd();
    obs_count("splice(file -> socket, 10)", move || splice(f, fd, 10, 0));
    let dst = format!("{dir}/splice-dst");
    let g = std::fs::File::create(&dst)
        .unwrap_or_else(|e| fail(format!("{dst}: {e}")))
        .into_raw_fd();
    ctl.send("send");
    ctl.expect("sent");
    if !wait_until(|| fionread(fd).is_ok_and(|n| n >= 5)) {
        obs("FIONREAD never reached 5");
    }
    obs_count("splice(socket -> file, 5)", move || splice(fd, g, 5, 0));
    obs(format!(
        "the file then holds {} bytes",
        std::fs::metadata(&dst).map(|m| m.len()).unwrap_or(0)
    ));
    obs(format!(
        "recv(DONTWAIT) -> {}",
        show_got(&recv(fd, 100, libc::MSG_DONTWAIT))
    ));
    close(f).ok();
    close(g).ok();
    let _ = std::fs::remove_dir_all(&dir);
    ctl.send("sent-done");
    ctl.sync("end");
}

fn splicenopipe_server(fd: RawFd, ctl: &mut Ctl) {
    ctl.expect("send");
    obs(format!(
        "send(hello) -> {}",
        show_count(&send(fd, b"hello", 0))
    ));
    ctl.send("sent");
    ctl.expect("sent-done");
    // Whatever the failed splice may have sent shows up here.
    obs(format!(
        "recv(DONTWAIT) -> {}",
        show_got(&recv(fd, 100, libc::MSG_DONTWAIT))
    ));
    ctl.sync("end");
}

/// A private scratch directory: under SEMANTICS_SCRATCH (the test's own directory)
/// if set, else the system's temporary directory.
fn scratch() -> String {
    let base = std::env::var_os("SEMANTICS_SCRATCH").map_or_else(std::env::temp_dir, Into::into);
    let dir = format!("{}/semantics-{}", base.display(), std::process::id());
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(format!("{dir}: {e}")));
    dir
}

// --- 5. sendfile from a source that cannot be read fails at once, as on TCP, and the
// connection still works afterwards.

fn sendfile(
    out: RawFd,
    inp: RawFd,
    off: Option<i64>,
    count: usize,
) -> (Result<usize, i32>, Option<i64>) {
    let mut o: libc::off_t = off.unwrap_or(0);
    let p = if off.is_some() {
        &mut o as *mut libc::off_t
    } else {
        std::ptr::null_mut()
    };
    // SAFETY: p is null or points to o.
    let r = sys(unsafe { libc::sendfile(out, inp, p, count) });
    (r, off.map(|_| o))
}

fn sendfile_client(fd: RawFd, ctl: &mut Ctl) {
    let dir = scratch();
    let path = std::ffi::CString::new(dir.clone()).unwrap();
    // SAFETY: a valid path.
    let dfd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dfd < 0 {
        fail(format!("open {dir}: {}", ename(errno())));
    }
    obs_count("sendfile(from a directory, offset 0)", move || {
        sendfile(fd, dfd, Some(0), 100).0
    });
    obs_count("sendfile(from a directory, no offset)", move || {
        sendfile(fd, dfd, None, 100).0
    });

    let wpath = format!("{dir}/write-only");
    std::fs::write(&wpath, b"0123456789").unwrap_or_else(|e| fail(format!("{wpath}: {e}")));
    let wo = std::fs::OpenOptions::new()
        .write(true)
        .open(&wpath)
        .unwrap_or_else(|e| fail(format!("{wpath}: {e}")))
        .into_raw_fd();
    obs_count("sendfile(from an O_WRONLY file, no offset)", move || {
        sendfile(fd, wo, None, 100).0
    });
    obs_count("sendfile(from an O_WRONLY file, offset 0)", move || {
        sendfile(fd, wo, Some(0), 100).0
    });
    obs_count("sendfile(from a closed fd)", move || {
        sendfile(fd, 9999, None, 100).0
    });

    // A good source still works, and stops at its end.
    let gpath = format!("{dir}/good");
    std::fs::write(&gpath, pattern(0, 100)).unwrap_or_else(|e| fail(format!("{gpath}: {e}")));
    let good = std::fs::File::open(&gpath)
        .unwrap_or_else(|e| fail(format!("{gpath}: {e}")))
        .into_raw_fd();
    let what = "sendfile(file, offset 0, 100)";
    let (r, off) = bounded(what, move || sendfile(fd, good, Some(0), 100));
    obs(format!("{what} -> {}, offset now {off:?}", show_count(&r)));
    let what = "sendfile(file, offset 50, 100)";
    let (r, off) = bounded(what, move || sendfile(fd, good, Some(50), 100));
    obs(format!("{what} -> {}, offset now {off:?}", show_count(&r)));
    for f in [dfd, wo, good] {
        close(f).ok();
    }
    let _ = std::fs::remove_dir_all(&dir);
    ctl.send("sent");
    ctl.sync("end");
}

fn sendfile_server(fd: RawFd, ctl: &mut Ctl) {
    ctl.expect("sent");
    let got = bounded("recv 150", move || recv_exact(fd, 150));
    match &got {
        Ok(b)
            if b.len() == 150
                && pattern_mismatch(&b[..100], 0).is_none()
                && pattern_mismatch(&b[100..], 50).is_none() =>
        {
            obs("recv 150 -> the file, then its second half")
        }
        other => obs(format!("recv 150 -> {}", show_got(other))),
    }
    obs(format!(
        "recv(DONTWAIT) -> {}",
        show_got(&recv(fd, 100, libc::MSG_DONTWAIT))
    ));
    ctl.sync("end");
}

// --- 6. The peer sends, then closes with bytes of ours unread (an RST on TCP): the
// data comes first, then ECONNRESET, once.

/// tcp_info.tcpi_state values (include/net/tcp_states.h).
const TCP_CLOSE: u8 = 7;
const TCP_CLOSE_WAIT: u8 = 8;

/// The kernel's TCP state of a socket.
fn tcp_state(fd: RawFd) -> Option<u8> {
    let mut info = [0u8; 8];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: info has len bytes.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (r == 0).then_some(info[0])
}

/// Waits until the peer's close (its FIN or RST) has reached this socket's kernel
/// half, without reading and without poll (whose answer some cases test): on TCP the
/// control message can overtake the FIN or RST on loopback; the shim keeps the kernel
/// connection, which the peer's close ends too.
fn wait_peer_close_arrived(fd: RawFd) {
    if !wait_until(|| matches!(tcp_state(fd), Some(TCP_CLOSE | TCP_CLOSE_WAIT))) {
        info(format!(
            "the peer's close never reached the kernel socket (state {:?})",
            tcp_state(fd)
        ));
    }
}

fn partial_reset_client(fd: RawFd, ctl: &mut Ctl) {
    obs(format!("send(x) -> {}", show_count(&send(fd, b"x", 0))));
    ctl.send("sent-x");
    ctl.expect("closed");
    wait_peer_close_arrived(fd);
    obs_got("recv(100, WAITALL)", move || {
        recv(fd, 100, libc::MSG_WAITALL)
    });
    obs_got("recv(100, WAITALL)", move || {
        recv(fd, 100, libc::MSG_WAITALL)
    });
    obs_got("recv(100)", move || recv(fd, 100, 0));
    obs(format!("SO_ERROR -> {}", so_error(fd)));
    obs(format!(
        "send -> {}",
        show_count(&send(fd, b"y", libc::MSG_NOSIGNAL))
    ));
    ctl.sync("end");
}

fn partial_reset_server(fd: RawFd, ctl: &mut Ctl) {
    ctl.expect("sent-x");
    // The byte is here, and stays unread.
    if !wait_until(|| fionread(fd).is_ok_and(|n| n >= 1)) {
        obs("the peer's byte never arrived");
    }
    obs(format!(
        "send(12345) -> {}",
        show_count(&send(fd, b"12345", 0))
    ));
    obs(format!(
        "close with 1 byte unread -> {}",
        show_count(&close_data_in_case(fd))
    ));
    ctl.send("closed");
    ctl.sync("end");
}

// --- 7. SO_LINGER {1, 0} then close: an abortive close, a reset at the peer.

fn linger_server(fd: RawFd, ctl: &mut Ctl) {
    ctl.expect("sent-q");
    obs_got("recv", move || recv(fd, 1, 0));
    obs(format!("send(x) -> {}", show_count(&send(fd, b"x", 0))));
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    obs(format!(
        "SO_LINGER {{1, 0}} -> {}",
        show_count(&setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, &l))
    ));
    obs(format!("close -> {}", show_count(&close_data_in_case(fd))));
    ctl.send("closed");
    ctl.sync("end");
}

fn linger_client(fd: RawFd, ctl: &mut Ctl) {
    obs(format!("send(q) -> {}", show_count(&send(fd, b"q", 0))));
    ctl.send("sent-q");
    ctl.expect("closed");
    wait_peer_close_arrived(fd);
    obs_got("recv", move || recv(fd, 10, 0));
    obs_got("recv", move || recv(fd, 10, 0));
    obs_got("recv", move || recv(fd, 10, 0));
    obs(format!("SO_ERROR -> {}", so_error(fd)));
    obs(format!(
        "send -> {}",
        show_count(&send(fd, b"y", libc::MSG_NOSIGNAL))
    ));
    obs(format!("poll(IN|OUT|RDHUP, 0) -> {}", readiness(fd)));
    ctl.sync("end");
}

fn linger_soerr_client(fd: RawFd, ctl: &mut Ctl) {
    obs(format!("send(q) -> {}", show_count(&send(fd, b"q", 0))));
    ctl.send("sent-q");
    ctl.expect("closed");
    wait_peer_close_arrived(fd);
    obs(format!("SO_ERROR -> {}", so_error(fd)));
    obs(format!("SO_ERROR -> {}", so_error(fd)));
    obs_got("recv", move || recv(fd, 10, 0));
    obs_got("recv", move || recv(fd, 10, 0));
    obs(format!(
        "send -> {}",
        show_count(&send(fd, b"y", libc::MSG_NOSIGNAL))
    ));
    ctl.sync("end");
}

// --- poll reports the peer's close at once, also while data is still unread.

fn pollclose_client(fd: RawFd, ctl: &mut Ctl, reset: bool) {
    obs(format!("send(x) -> {}", show_count(&send(fd, b"x", 0))));
    ctl.send("sent-x");
    ctl.expect("closed");
    wait_peer_close_arrived(fd);
    let what = if reset { "reset" } else { "close" };
    obs(format!(
        "poll(IN|OUT|RDHUP, 0) with data unread, after the peer's {what} -> {}",
        readiness(fd)
    ));
    obs_poll("poll(RDHUP, 3 s)", move || poll1(fd, libc::POLLRDHUP, 3000));
    obs_got("recv(5)", move || recv(fd, 5, 0));
    obs(format!("poll(IN|OUT|RDHUP, 0) -> {}", readiness(fd)));
    obs_got("recv", move || recv(fd, 100, 0));
    obs(format!("poll(IN|OUT|RDHUP, 0) -> {}", readiness(fd)));
    ctl.sync("end");
}

fn pollclose_server(fd: RawFd, ctl: &mut Ctl, reset: bool) {
    ctl.expect("sent-x");
    if reset {
        // The byte stays unread: the close is a reset.
        if !wait_until(|| fionread(fd).is_ok_and(|n| n >= 1)) {
            obs("the peer's byte never arrived");
        }
    } else {
        obs_got("recv", move || recv(fd, 1, 0));
    }
    obs(format!(
        "send(12345) -> {}",
        show_count(&send(fd, b"12345", 0))
    ));
    obs(format!("close -> {}", show_count(&close_data_in_case(fd))));
    ctl.send("closed");
    ctl.sync("end");
}

fn pollreset_client(fd: RawFd, ctl: &mut Ctl) {
    pollclose_client(fd, ctl, true)
}

fn pollreset_server(fd: RawFd, ctl: &mut Ctl) {
    pollclose_server(fd, ctl, true)
}

fn pollfin_client(fd: RawFd, ctl: &mut Ctl) {
    pollclose_client(fd, ctl, false)
}

fn pollfin_server(fd: RawFd, ctl: &mut Ctl) {
    pollclose_server(fd, ctl, false)
}

// --- 8. A non-blocking client's first calls, before the server accepts, return at
// once (on TCP they never wait for the accept).

fn loopback(port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// A listener on 127.0.0.1 (printing "PORT <port>") and a non-blocking socket
/// connecting to it.
fn nonblocking_connect() -> (TcpListener, RawFd, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| fail(format!("bind: {e}")));
    let port = l.local_addr().unwrap().port();
    println!("PORT {port}");
    // SAFETY: plain syscall.
    let c = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if c < 0 {
        fail(format!("socket: {}", ename(errno())));
    }
    let a = loopback(port);
    let t = Instant::now();
    // SAFETY: a is a valid sockaddr_in.
    let r = unsafe {
        libc::connect(
            c,
            (&a as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    let e = errno();
    match (r, e) {
        (0, _) | (_, libc::EINPROGRESS) => obs("non-blocking connect -> 0 or EINPROGRESS"),
        _ => obs(format!("non-blocking connect -> {}", ename(e))),
    }
    prompt("non-blocking connect", t);
    (l, c, port)
}

/// Records whether a call that must not wait returned promptly.
fn prompt(what: &str, since: Instant) {
    let took = since.elapsed();
    info(format!("{what} took {took:?}"));
    if took <= PROMPT {
        obs(format!("{what}: returned promptly"));
    } else {
        obs(format!(
            "{what}: returned only after {:.1} s",
            took.as_secs_f64()
        ));
    }
}

fn nonblocking_first_use() {
    let (l, c, _) = nonblocking_connect();
    let t = Instant::now();
    obs(format!(
        "poll(IN, 0) before the accept -> {}",
        show_poll(&poll1(c, libc::POLLIN, 0))
    ));
    prompt("poll(IN, 0)", t);
    let t = Instant::now();
    obs(format!(
        "recv before the accept -> {}",
        show_got(&recv(c, 10, 0))
    ));
    prompt("recv", t);
    let msg = pattern(0, 1000);
    let t = Instant::now();
    // EAGAIN or a count, either is right (TCP may still be connecting; the shim may not
    // know its path yet): only that it returns at once is compared.
    let first = write(c, &msg);
    prompt("write before the accept", t);
    info(format!("write before the accept -> {}", show_count(&first)));
    let mut off = match first {
        Ok(n) => n,
        Err(libc::EAGAIN) => 0,
        Err(e) => {
            obs(format!("write before the accept -> {}", ename(e)));
            0
        }
    };
    let (s, _) = l.accept().unwrap_or_else(|e| fail(format!("accept: {e}")));
    let s = s.into_raw_fd();
    while off < msg.len() {
        let p = bounded("poll(OUT) after the accept", move || {
            poll1(c, libc::POLLOUT, -1)
        });
        if !p.is_ok_and(|(n, _)| n == 1) {
            obs(format!("poll(OUT) after the accept -> {}", show_poll(&p)));
            break;
        }
        match write(c, &msg[off..]) {
            Ok(n) => off += n,
            Err(libc::EAGAIN) => {}
            Err(e) => {
                obs(format!("write after the accept -> {}", ename(e)));
                break;
            }
        }
    }
    let got = bounded("server recv 1000", move || recv_exact(s, 1000));
    match &got {
        Ok(b) if b.len() == 1000 && pattern_mismatch(b, 0).is_none() => {
            obs("server recv 1000 -> all, in order")
        }
        other => obs(format!("server recv 1000 -> {}", show_got(other))),
    }
    obs(format!(
        "server send(pong) -> {}",
        show_count(&send(s, b"pong", 0))
    ));
    obs_poll("client poll(IN)", move || poll1(c, libc::POLLIN, -1));
    obs(format!("client recv -> {}", show_got(&recv(c, 10, 0))));
    close(c).ok();
    obs_got("server recv after the client closed", move || {
        recv(s, 10, 0)
    });
    close(s).ok();
}

/// A blocking connect, then at once a send with MSG_DONTWAIT, before anyone accepts (as
/// CPython's testSendmsgDontWait): TCP queues the bytes in the server's receive buffer;
/// so must the shim (it gives up the fabric for this connection rather than fail).
fn dontwait_send_before_accept() {
    let (l, c) = blocking_connect();
    let msg = pattern(0, 1000);
    let t = Instant::now();
    obs(format!("send(1000, DONTWAIT) before the accept -> {}", show_count(&send(c, &msg, libc::MSG_DONTWAIT))));
    prompt("send(DONTWAIT) before the accept", t);
    accept_and_check(l, c, 1000);
}

/// A blocking connect, then a blocking send, in the thread that will accept later.
fn blocking_send_before_accept() {
    let (l, c) = blocking_connect();
    let msg = pattern(0, 1000);
    let t = Instant::now();
    obs(format!("send(1000) before the accept -> {}", show_count(&send(c, &msg, 0))));
    prompt("blocking send before the accept", t);
    accept_and_check(l, c, 1000);
}

fn blocking_connect() -> (TcpListener, RawFd) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| fail(format!("bind: {e}")));
    let port = l.local_addr().unwrap().port();
    println!("PORT {port}");
    // SAFETY: plain syscall.
    let c = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if c < 0 {
        fail(format!("socket: {}", ename(errno())));
    }
    let a = loopback(port);
    // SAFETY: a is a valid sockaddr_in.
    let r = unsafe {
        libc::connect(c, (&a as *const libc::sockaddr_in).cast(), std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
    };
    obs(format!("connect -> {}", if r == 0 { "0".to_string() } else { ename(errno()) }));
    (l, c)
}

/// Accepts, checks that the server reads the client's `n` pattern bytes whole, then a
/// reply and the client's close the other way.
fn accept_and_check(l: TcpListener, c: RawFd, n: usize) {
    let (s, _) = l.accept().unwrap_or_else(|e| fail(format!("accept: {e}")));
    let s = s.into_raw_fd();
    let got = bounded("server recv", move || recv_exact(s, n));
    match &got {
        Ok(b) if b.len() == n && pattern_mismatch(b, 0).is_none() => obs("server recv -> all, in order"),
        other => obs(format!("server recv -> {}", show_got(other))),
    }
    obs(format!("server send(pong) -> {}", show_count(&send(s, b"pong", 0))));
    obs_got("client recv", move || recv(c, 10, 0));
    close(c).ok();
    obs_got("server recv after the client closed", move || recv(s, 10, 0));
    close(s).ok();
}

/// The usual way to learn that a non-blocking connect completed: poll(OUT), in an event
/// loop that also watches the listener (as asyncio does with both ends in one loop).
/// The loop sees the listener readable, accepts, and then the client writable.
/// (Polling the client alone before accepting differs under the shim: the connection's
/// path is undecided until the server's shim claims it or the claim deadline passes,
/// and only then is it reported writable. See README, "Known differences".)
fn nonblocking_connect_pollout() {
    let (l, c, _) = nonblocking_connect();
    let t = Instant::now();
    let lfd = l.as_raw_fd();
    obs_poll("poll(listener IN, 3 s)", move || poll1(lfd, libc::POLLIN, 3000));
    prompt("poll(listener IN, 3 s)", t);
    let (s, _) = l.accept().unwrap_or_else(|e| fail(format!("accept: {e}")));
    let t = Instant::now();
    obs_poll("poll(client OUT, 3 s) after the accept", move || {
        poll1(c, libc::POLLOUT, 3000)
    });
    prompt("poll(client OUT, 3 s) after the accept", t);
    obs(format!("SO_ERROR -> {}", so_error(c)));
    let s = s.into_raw_fd();
    obs_count("client send(ping)", move || send(c, b"ping", 0));
    obs_got("server recv", move || recv(s, 10, 0));
    close(c).ok();
    close(s).ok();
}

// --- 9. half-close, both ways.

fn halfclose_client(fd: RawFd, ctl: &mut Ctl) {
    obs(format!("send(c2s) -> {}", show_count(&send(fd, b"c2s", 0))));
    obs(format!(
        "shutdown(WR) -> {}",
        show_count(&shutdown(fd, libc::SHUT_WR))
    ));
    obs(format!(
        "send after shutdown(WR) -> {}",
        show_count(&send(fd, b"x", libc::MSG_NOSIGNAL))
    ));
    obs(format!("poll(IN|OUT|RDHUP, 0) -> {}", readiness(fd)));
    ctl.send("client-shut");
    ctl.expect("server-shut");
    obs_got("recv", move || recv(fd, 100, 0));
    obs_got("recv", move || recv(fd, 100, 0));
    obs(format!("poll(IN|OUT|RDHUP, 0) -> {}", readiness(fd)));
    ctl.sync("end");
}

fn halfclose_server(fd: RawFd, ctl: &mut Ctl) {
    ctl.expect("client-shut");
    obs_got("recv", move || recv(fd, 100, 0));
    obs_got("recv", move || recv(fd, 100, 0));
    obs(format!("poll(IN|OUT|RDHUP, 0) -> {}", readiness(fd)));
    obs(format!(
        "send(s2c) after the peer's shutdown(WR) -> {}",
        show_count(&send(fd, b"s2c", 0))
    ));
    obs(format!(
        "shutdown(WR) -> {}",
        show_count(&shutdown(fd, libc::SHUT_WR))
    ));
    obs_got("recv", move || recv(fd, 100, 0));
    ctl.send("server-shut");
    ctl.sync("end");
}

// --- 9. MSG_PEEK leaves the data in place.

fn peek_client(fd: RawFd, ctl: &mut Ctl) {
    ctl.expect("sent");
    if !wait_until(|| fionread(fd).is_ok_and(|n| n >= 11)) {
        obs("FIONREAD never reached 11");
    }
    obs_got("recv(5, PEEK)", move || recv(fd, 5, libc::MSG_PEEK));
    obs_got("recv(100, PEEK)", move || recv(fd, 100, libc::MSG_PEEK));
    obs(format!("FIONREAD -> {}", show_count(&fionread(fd))));
    obs_got("recv(5)", move || recv(fd, 5, 0));
    obs(format!(
        "recv(100, PEEK|DONTWAIT) -> {}",
        show_got(&recv(fd, 100, libc::MSG_PEEK | libc::MSG_DONTWAIT))
    ));
    obs_got("recv(100)", move || recv(fd, 100, 0));
    obs(format!(
        "recv(100, PEEK|DONTWAIT) -> {}",
        show_got(&recv(fd, 100, libc::MSG_PEEK | libc::MSG_DONTWAIT))
    ));
    ctl.send("read");
    ctl.expect("shut");
    obs_got("recv(100, PEEK) after the peer's shutdown(WR)", move || {
        recv(fd, 100, libc::MSG_PEEK)
    });
    obs_got("recv(100)", move || recv(fd, 100, 0));
    ctl.sync("end");
}

fn peek_server(fd: RawFd, ctl: &mut Ctl) {
    obs(format!(
        "send(hello world) -> {}",
        show_count(&send(fd, b"hello world", 0))
    ));
    ctl.send("sent");
    ctl.expect("read");
    obs(format!(
        "shutdown(WR) -> {}",
        show_count(&shutdown(fd, libc::SHUT_WR))
    ));
    ctl.send("shut");
    ctl.sync("end");
}

// --- MSG_PEEK|MSG_WAITALL waits, as on TCP, until the whole length is there.

fn peekwaitall_client(fd: RawFd, ctl: &mut Ctl) {
    ctl.expect("sent");
    if !wait_until(|| fionread(fd).is_ok_and(|n| n >= 3)) {
        obs("FIONREAD never reached 3");
    }
    let (tid_tx, tid_rx) = mpsc::channel();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tid_tx.send(gettid());
        let _ = tx.send(recv(fd, 6, libc::MSG_PEEK | libc::MSG_WAITALL));
    });
    let tid = tid_rx.recv().unwrap_or_else(|_| fail("reader thread"));
    // Either the call sleeps (waiting for the rest) or it returns.
    let mut early = None;
    wait_until(|| {
        if let Ok(g) = rx.try_recv() {
            early = Some(g);
            return true;
        }
        thread_state(tid) == 'S'
    });
    if let Some(g) = early {
        obs(format!(
            "recv(6, PEEK|WAITALL) with 3 bytes there -> returned {}",
            show_got(&g)
        ));
        ctl.send("more");
        ctl.expect("sent-more");
    } else {
        obs("recv(6, PEEK|WAITALL) with 3 bytes there -> waits");
        ctl.send("more");
        ctl.expect("sent-more");
        obs(format!(
            "recv(6, PEEK|WAITALL) once 6 are there -> {}",
            show_got(&reader_result(
                "recv(6, PEEK|WAITALL) once 6 are there",
                &rx
            ))
        ));
    }
    obs_got("recv(100)", move || recv(fd, 100, 0));
    ctl.sync("end");
}

fn peekwaitall_server(fd: RawFd, ctl: &mut Ctl) {
    obs(format!("send(abc) -> {}", show_count(&send(fd, b"abc", 0))));
    ctl.send("sent");
    ctl.expect("more");
    obs(format!("send(def) -> {}", show_count(&send(fd, b"def", 0))));
    ctl.send("sent-more");
    ctl.sync("end");
}

// --- 9. MSG_WAITALL gathers several writes; stops early at end of stream.

fn waitall_client(fd: RawFd, ctl: &mut Ctl) {
    ctl.expect("sent-abc");
    let a = blocked_reader(fd, 8, libc::MSG_WAITALL);
    ctl.send("waiting");
    ctl.expect("sent-defgh");
    obs(format!(
        "recv(8, WAITALL) across two writes -> {}",
        show_got(&reader_result("recv(8, WAITALL) across two writes", &a))
    ));
    ctl.send("next");
    ctl.expect("sent-xy-shut");
    obs_got("recv(8, WAITALL) with 2 bytes then EOF", move || {
        recv(fd, 8, libc::MSG_WAITALL)
    });
    obs_got("recv(8, WAITALL)", move || recv(fd, 8, libc::MSG_WAITALL));
    ctl.sync("end");
}

fn waitall_server(fd: RawFd, ctl: &mut Ctl) {
    obs(format!("send(abc) -> {}", show_count(&send(fd, b"abc", 0))));
    ctl.send("sent-abc");
    ctl.expect("waiting");
    obs(format!(
        "send(defgh) -> {}",
        show_count(&send(fd, b"defgh", 0))
    ));
    ctl.send("sent-defgh");
    ctl.expect("next");
    obs(format!("send(xy) -> {}", show_count(&send(fd, b"xy", 0))));
    obs(format!(
        "shutdown(WR) -> {}",
        show_count(&shutdown(fd, libc::SHUT_WR))
    ));
    ctl.send("sent-xy-shut");
    ctl.sync("end");
}

// --- 9. Nothing to read or no room to write: EAGAIN, never a wait.

fn dontwait_client(fd: RawFd, ctl: &mut Ctl) {
    let t = Instant::now();
    obs(format!(
        "recv(DONTWAIT) on an empty socket -> {}",
        show_got(&recv(fd, 10, libc::MSG_DONTWAIT))
    ));
    prompt("recv(DONTWAIT)", t);
    set_nonblocking(fd);
    let t = Instant::now();
    obs(format!(
        "O_NONBLOCK: recv -> {}",
        show_got(&recv(fd, 10, 0))
    ));
    obs(format!("O_NONBLOCK: read -> {}", show_got(&read(fd, 10))));
    prompt("O_NONBLOCK recv and read", t);
    // Fill whatever buffering there is until a write fails.
    let chunk = 65536;
    let mut total = 0usize;
    let t = Instant::now();
    let end = loop {
        match write(fd, &pattern(total, chunk)) {
            Ok(n) => total += n,
            Err(e) => break e,
        }
        if total > (256 << 20) {
            break 0;
        }
    };
    info(format!("wrote {total} bytes before {}", ename(end)));
    obs(format!(
        "O_NONBLOCK: write until it fails -> {} after some bytes",
        ename(end)
    ));
    prompt("filling the socket", t);
    ctl.send(&format!("drain {total}"));
    ctl.expect("drained");
    obs_poll("poll(OUT) once the peer drained", move || {
        poll1(fd, libc::POLLOUT, -1)
    });
    ctl.send("send");
    ctl.expect("sent");
    if !wait_until(|| poll1(fd, libc::POLLIN, 0).is_ok_and(|(n, _)| n == 1)) {
        obs("poll never reported IN");
    }
    obs(format!(
        "recv(DONTWAIT) -> {}",
        show_got(&recv(fd, 10, libc::MSG_DONTWAIT))
    ));
    obs(format!(
        "recv(DONTWAIT) -> {}",
        show_got(&recv(fd, 10, libc::MSG_DONTWAIT))
    ));
    ctl.sync("end");
}

fn dontwait_server(fd: RawFd, ctl: &mut Ctl) {
    let msg = ctl.recv();
    let total: usize = msg
        .strip_prefix("drain ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| fail(format!("ctl: expected \"drain N\", got {msg:?}")));
    let got = bounded("drain", move || recv_exact(fd, total));
    match &got {
        Ok(b) if b.len() == total && pattern_mismatch(b, 0).is_none() => {
            obs("drain -> every byte written, in order")
        }
        Ok(b) => obs(format!(
            "drain -> {} bytes of {total}, first wrong at {:?}",
            b.len(),
            pattern_mismatch(b, 0)
        )),
        Err(e) => obs(format!("drain -> {}", ename(*e))),
    }
    ctl.send("drained");
    ctl.expect("send");
    obs(format!("send(z) -> {}", show_count(&send(fd, b"z", 0))));
    ctl.send("sent");
    ctl.sync("end");
}

// --- 9. SO_RCVTIMEO / SO_SNDTIMEO: a timed-out call fails with EAGAIN, or returns
// what it moved.

fn timeo_client(fd: RawFd, ctl: &mut Ctl) {
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    obs(format!(
        "SO_RCVTIMEO 100 ms -> {}",
        show_count(&setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv))
    ));
    obs(format!(
        "SO_SNDTIMEO 100 ms -> {}",
        show_count(&setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &tv))
    ));
    obs_got("recv with nothing sent", move || recv(fd, 10, 0));
    ctl.send("send");
    ctl.expect("sent");
    obs_got("recv(8, WAITALL) with 2 bytes sent", move || {
        recv(fd, 8, libc::MSG_WAITALL)
    });
    // A write bigger than all the buffering returns what it moved when the time is up,
    // and the next one moves nothing.
    let big = 32 << 20;
    let first = bounded("write(32 MiB) with SO_SNDTIMEO", move || {
        write(fd, &pattern(0, big))
    });
    let moved = match first {
        Ok(n) if n > 0 && n < big => {
            obs("write(32 MiB) with SO_SNDTIMEO -> a partial count");
            n
        }
        Ok(n) => {
            obs(format!("write(32 MiB) with SO_SNDTIMEO -> {n}"));
            n
        }
        Err(e) => {
            obs(format!("write(32 MiB) with SO_SNDTIMEO -> {}", ename(e)));
            0
        }
    };
    info(format!("the first write moved {moved} bytes"));
    // On TCP a little more may still fit (the last segment's tail room): write until a
    // write moves nothing.
    let (more, end) = bounded("a write that can move nothing", move || {
        let mut more = 0usize;
        for _ in 0..4096 {
            match write(fd, &pattern(moved + more, 4096)) {
                Ok(n) => more += n,
                Err(e) => return (more, Some(e)),
            }
        }
        (more, None)
    });
    info(format!("then {more} more bytes"));
    obs(format!(
        "a write that can move nothing -> {}",
        end.map_or("never happened".to_string(), ename)
    ));
    let total = moved + more;
    ctl.send(&format!("drain {total}"));
    ctl.sync("end");
}

fn timeo_server(fd: RawFd, ctl: &mut Ctl) {
    ctl.expect("send");
    obs(format!("send(ab) -> {}", show_count(&send(fd, b"ab", 0))));
    ctl.send("sent");
    let msg = ctl.recv();
    let total: usize = msg
        .strip_prefix("drain ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| fail(format!("ctl: expected \"drain N\", got {msg:?}")));
    let got = bounded("drain", move || recv_exact(fd, total));
    match &got {
        Ok(b) if b.len() == total && pattern_mismatch(b, 0).is_none() => {
            obs("drain -> every byte written, in order")
        }
        Ok(b) => obs(format!(
            "drain -> {} bytes of {total}, first wrong at {:?}",
            b.len(),
            pattern_mismatch(b, 0)
        )),
        Err(e) => obs(format!("drain -> {}", ename(*e))),
    }
    ctl.sync("end");
}

// --- SO_RCVTIMEO bounds the whole call: a recv(MSG_WAITALL) fed a byte at a time,
// more often than the timeout, still returns when the timeout is up (not when a gap
// between bytes exceeds it).

const TRICKLE_BYTES: usize = 30;
/// The gap between the trickled bytes: pacing of the stimulus, not synchronisation.
const TRICKLE_GAP: Duration = Duration::from_millis(40);

fn timeo_trickle_client(fd: RawFd, ctl: &mut Ctl) {
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 250_000,
    };
    obs(format!(
        "SO_RCVTIMEO 250 ms -> {}",
        show_count(&setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv))
    ));
    let a = blocked_reader(fd, 100, libc::MSG_WAITALL);
    ctl.send("trickle");
    let what = "recv(100, WAITALL) while a byte comes every 40 ms";
    let n = match reader_result(what, &a) {
        Ok(b) if !b.is_empty() && b.len() < TRICKLE_BYTES => {
            obs(format!("{what} -> a partial count, when the timeout is up"));
            b.len()
        }
        other => {
            obs(format!("{what} -> {}", show_got(&other)));
            other.map(|b| b.len()).unwrap_or(0)
        }
    };
    info(format!("it returned {n} bytes"));
    ctl.expect("trickled");
    let left = TRICKLE_BYTES.saturating_sub(n);
    let rest = bounded("recv the rest", move || recv_exact(fd, left));
    obs(format!(
        "recv the rest -> {} in all",
        rest.map_or_else(ename, |b| (n + b.len()).to_string())
    ));
    ctl.sync("end");
}

fn timeo_trickle_server(fd: RawFd, ctl: &mut Ctl) {
    ctl.expect("trickle");
    let mut sent = 0;
    for _ in 0..TRICKLE_BYTES {
        if send(fd, b"t", 0).is_ok() {
            sent += 1;
        }
        thread::sleep(TRICKLE_GAP);
    }
    obs(format!("sent {sent} bytes, one every 40 ms"));
    ctl.send("trickled");
    ctl.sync("end");
}

// --- 9. Writing after the peer closed: EPIPE (with SIGPIPE unless MSG_NOSIGNAL).

fn sigpipe_client(fd: RawFd, ctl: &mut Ctl) {
    count_sigpipe();
    ctl.expect("closed");
    obs_got("recv", move || recv(fd, 10, 0));
    // The first writes may still succeed (on TCP the peer answers them with RST).
    let mut ok = 0;
    let first_err = loop {
        let before = SIGPIPES.load(Ordering::SeqCst);
        match write(fd, &[b'w'; 1024]) {
            Ok(_) => ok += 1,
            Err(e) => break (e, SIGPIPES.load(Ordering::SeqCst) - before),
        }
        if ok == 100 {
            break (0, 0);
        }
    };
    info(format!("{ok} writes succeeded first"));
    obs(if ok == 0 {
        "write -> never succeeded"
    } else {
        "write -> succeeded, 1 or more times"
    });
    obs(format!(
        "write -> {}, {} SIGPIPE",
        ename(first_err.0),
        first_err.1
    ));
    for what in ["write", "write"] {
        let before = SIGPIPES.load(Ordering::SeqCst);
        let r = write(fd, b"w");
        obs(format!(
            "{what} -> {}, {} SIGPIPE",
            show_count(&r),
            SIGPIPES.load(Ordering::SeqCst) - before
        ));
    }
    let before = SIGPIPES.load(Ordering::SeqCst);
    let r = send(fd, b"w", libc::MSG_NOSIGNAL);
    obs(format!(
        "send(NOSIGNAL) -> {}, {} SIGPIPE",
        show_count(&r),
        SIGPIPES.load(Ordering::SeqCst) - before
    ));
    obs_got("recv", move || recv(fd, 10, 0));
    obs(format!("SO_ERROR -> {}", so_error(fd)));
    ctl.sync("end");
}

fn sigpipe_server(fd: RawFd, ctl: &mut Ctl) {
    obs(format!("close -> {}", show_count(&close_data_in_case(fd))));
    ctl.send("closed");
    ctl.sync("end");
}

// --- 9. FIONREAD counts the bytes waiting.

fn fionread_client(fd: RawFd, ctl: &mut Ctl) {
    obs(format!(
        "FIONREAD with nothing sent -> {}",
        show_count(&fionread(fd))
    ));
    ctl.send("send");
    ctl.expect("sent");
    if !wait_until(|| fionread(fd).is_ok_and(|n| n >= 10)) {
        obs("FIONREAD never reached 10");
    }
    obs(format!("FIONREAD -> {}", show_count(&fionread(fd))));
    obs_got("recv(4, PEEK)", move || recv(fd, 4, libc::MSG_PEEK));
    obs(format!("FIONREAD -> {}", show_count(&fionread(fd))));
    obs_got("recv(4)", move || recv(fd, 4, 0));
    obs(format!("FIONREAD -> {}", show_count(&fionread(fd))));
    obs_got("recv(100)", move || recv(fd, 100, 0));
    obs(format!("FIONREAD -> {}", show_count(&fionread(fd))));
    ctl.send("shut");
    ctl.expect("shut-done");
    obs_got("recv at the peer's shutdown(WR)", move || recv(fd, 100, 0));
    obs(format!("FIONREAD at EOF -> {}", show_count(&fionread(fd))));
    ctl.sync("end");
}

fn fionread_server(fd: RawFd, ctl: &mut Ctl) {
    ctl.expect("send");
    obs(format!(
        "send(0123456789) -> {}",
        show_count(&send(fd, b"0123456789", 0))
    ));
    ctl.send("sent");
    ctl.expect("shut");
    obs(format!(
        "shutdown(WR) -> {}",
        show_count(&shutdown(fd, libc::SHUT_WR))
    ));
    ctl.send("shut-done");
    ctl.sync("end");
}

// ------------------------------------------------------------------ main

fn find(name: &str) -> &'static Case {
    CASES
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| fail(format!("no case {name:?} (see `semantics list`)")))
}

fn usage() -> ! {
    eprintln!("usage: semantics list | server CASE CTL | client PORT CASE CTL | solo CASE");
    exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["list"] => {
            for c in CASES {
                let kind = match c.kind {
                    Kind::Pair { .. } => "pair",
                    Kind::Solo(_) => "solo",
                };
                println!("{} {kind}", c.name);
            }
        }
        ["server", case, ctl] => {
            let Kind::Pair { server, .. } = find(case).kind else {
                fail(format!("{case} is a solo case"))
            };
            let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| fail(format!("bind: {e}")));
            let cl = UnixListener::bind_addr(&ctl_addr(ctl))
                .unwrap_or_else(|e| fail(format!("ctl bind: {e}")));
            println!("READY {}", l.local_addr().unwrap().port());
            let (c, _) = cl
                .accept()
                .unwrap_or_else(|e| fail(format!("ctl accept: {e}")));
            let mut ctl = Ctl::new(c);
            let (s, _) = l.accept().unwrap_or_else(|e| fail(format!("accept: {e}")));
            drop(l);
            let fd = s.into_raw_fd();
            server(fd, &mut ctl);
            close_data(fd);
            println!("DONE");
        }
        ["client", port, case, ctl] => {
            let Kind::Pair { client, .. } = find(case).kind else {
                fail(format!("{case} is a solo case"))
            };
            let port: u16 = port.parse().unwrap_or_else(|_| usage());
            let c = UnixStream::connect_addr(&ctl_addr(ctl))
                .unwrap_or_else(|e| fail(format!("ctl connect: {e}")));
            let mut ctl = Ctl::new(c);
            let s = TcpStream::connect(("127.0.0.1", port))
                .unwrap_or_else(|e| fail(format!("connect: {e}")));
            let fd = s.into_raw_fd();
            client(fd, &mut ctl);
            close_data(fd);
            println!("DONE");
        }
        ["solo", case] => {
            let Kind::Solo(f) = find(case).kind else {
                fail(format!("{case} needs a client and a server"))
            };
            f();
            println!("DONE");
        }
        _ => usage(),
    }
    let _ = std::io::stdout().flush();
}
