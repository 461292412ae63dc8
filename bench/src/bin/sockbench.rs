//! The measuring programs of `rdmasock bench` (bench/src/bin/rdmasock-bench): one server
//! and one client per measurement, over kernel TCP (127.0.0.1), Unix domain stream
//! sockets, or a raw shared-memory page mapped by both processes (no sockets at all: the
//! physical limit of two processes handing bytes to each other through memory).
//!
//!     sockbench server tcp|unix|shm [--path PATH] [--timeout S]
//!     sockbench client tcp|unix|shm ADDR --test TEST [--size N] [--duration S]
//!                      [--warmup S] [--conns N] [--timeout S]
//!
//! The server prints `READY ADDR PID` on stdout once it listens (ADDR: the port for tcp,
//! the path for unix and shm). A tcp/unix server serves connections one after another
//! until it is killed; each connection starts with a 16-byte header naming its test. A shm
//! server serves one session and exits. Nothing here knows about the shim: the harness
//! runs these programs with and without LD_PRELOAD.
//!
//! Tests (the client prints one JSON line on stdout at the end):
//!   pingpong  SIZE-byte messages echoed for --duration s after --warmup s; RTT
//!             percentiles from an HDR histogram (ns, 3 significant digits)
//!   stream    SIZE-byte writes for --duration s, then shutdown; the server answers with
//!             the byte count it read (reads of SIZE bytes); throughput = bytes / (time
//!             from the first write to that answer)
//!   connrate  connect, one exchange (16-byte header, 1-byte answer), close, for
//!             --duration s (tcp, unix)
//!   idle      ping-pong for --warmup s, then print `IDLE PID` and wait in poll() for a
//!             message that never comes (the server waits in read()); the harness
//!             measures the CPU both use while idle, then kills them (tcp, unix)
//!   many      open one connection (with one exchange), print `BASE PID`, wait for a line
//!             on stdin, open --conns more (each with one exchange), print `OPEN N`, wait
//!             for stdin to close; the harness reads both sides' memory at BASE and OPEN
//!
//! Every process bounds itself with alarm(--timeout) (default 60 s).

use hdrhistogram::Histogram;
use serde_json::json;
use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::exit;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: sockbench server tcp|unix|shm [--path PATH] [--timeout S]
       sockbench client tcp|unix|shm ADDR --test pingpong|stream|connrate|idle|many
                 [--size N] [--duration S] [--warmup S] [--conns N] [--timeout S]";

type Result<T> = std::result::Result<T, String>;

const MAGIC: [u8; 4] = *b"SBv1";
const MAX_SIZE: usize = 64 << 20;
const K_PINGPONG: u8 = b'P';
const K_STREAM: u8 = b'S';
const K_CONNRATE: u8 = b'C';
const K_MANY: u8 = b'M';

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("server") => server(&args[1..]),
        Some("client") => client(&args[1..]),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return;
        }
        _ => {
            eprintln!("{USAGE}");
            exit(2);
        }
    };
    if let Err(e) = r {
        eprintln!("sockbench: {e}");
        exit(1);
    }
}

fn ctx<'a>(what: &'a str) -> impl FnOnce(io::Error) -> String + 'a {
    move |e| format!("{what}: {e}")
}

#[derive(Clone, Copy, PartialEq)]
enum Transport {
    Tcp,
    Unix,
    Shm,
}

fn transport(s: Option<&String>) -> Result<Transport> {
    match s.map(String::as_str) {
        Some("tcp") => Ok(Transport::Tcp),
        Some("unix") => Ok(Transport::Unix),
        Some("shm") => Ok(Transport::Shm),
        other => Err(format!("transport must be tcp, unix or shm, not {other:?}\n{USAGE}")),
    }
}

struct Opts {
    pos: Vec<String>,
    path: Option<String>,
    test: Option<String>,
    size: usize,
    duration: f64,
    warmup: f64,
    conns: usize,
    timeout: u32,
}

fn parse_opts(args: &[String]) -> Result<Opts> {
    fn num<T: std::str::FromStr>(flag: &str, v: Option<&String>) -> Result<T> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        v.parse().map_err(|_| format!("{flag}: not a valid number: {v:?}"))
    }
    let mut o = Opts {
        pos: vec![],
        path: None,
        test: None,
        size: 16,
        duration: 1.0,
        warmup: 0.1,
        conns: 1000,
        timeout: 60,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--path" => o.path = Some(it.next().ok_or("--path needs a value")?.clone()),
            "--test" => o.test = Some(it.next().ok_or("--test needs a value")?.clone()),
            "--size" => o.size = num("--size", it.next())?,
            "--duration" => o.duration = num("--duration", it.next())?,
            "--warmup" => o.warmup = num("--warmup", it.next())?,
            "--conns" => o.conns = num("--conns", it.next())?,
            "--timeout" => o.timeout = num("--timeout", it.next())?,
            _ if a.starts_with("--") => return Err(format!("unknown option {a:?}\n{USAGE}")),
            _ => o.pos.push(a.clone()),
        }
    }
    if o.size == 0 || o.size > MAX_SIZE {
        return Err(format!("--size must be 1..={MAX_SIZE}"));
    }
    if !(o.duration > 0.0 && o.warmup >= 0.0) {
        return Err("--duration must be > 0 and --warmup >= 0".into());
    }
    // Bound the whole process: SIGALRM's default action ends it.
    unsafe { libc::alarm(o.timeout.max(1)) };
    Ok(o)
}

/// The soft RLIMIT_NOFILE raised to the hard limit (the `many` test keeps 1000+ fds).
fn raise_nofile() {
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

fn say(line: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}").and_then(|_| out.flush()).map_err(ctx("stdout"))
}

// ---------------------------------------------------------------------------------------
// tcp and unix streams

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn connect(t: Transport, addr: &str) -> io::Result<Stream> {
        match t {
            Transport::Tcp => {
                let port: u16 = addr
                    .parse()
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad port"))?;
                let s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Transport::Unix => Ok(Stream::Unix(UnixStream::connect(addr)?)),
            Transport::Shm => unreachable!(),
        }
    }
    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
        }
    }
    fn fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(b),
            Stream::Unix(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(b),
            Stream::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn header(kind: u8, size: usize) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&MAGIC);
    h[4] = kind;
    h[8..12].copy_from_slice(&(size as u32).to_le_bytes());
    h
}

/// `read_exact` that reports a clean EOF before the first byte as Ok(false).
fn read_message(s: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let first = loop {
        match s.read(buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    if first == 0 {
        return Ok(false);
    }
    s.read_exact(&mut buf[first..])?;
    Ok(true)
}

fn server(args: &[String]) -> Result<()> {
    let t = transport(args.first())?;
    let o = parse_opts(&args[1..])?;
    raise_nofile();
    let pid = std::process::id();
    if t == Transport::Shm {
        let path = o.path.ok_or("a shm server needs --path")?;
        return shm_server(&path, pid);
    }
    enum L {
        Tcp(TcpListener),
        Unix(UnixListener),
    }
    let l = match t {
        Transport::Tcp => {
            let l = TcpListener::bind("127.0.0.1:0").map_err(ctx("bind"))?;
            let port = l.local_addr().map_err(ctx("getsockname"))?.port();
            say(&format!("READY {port} {pid}"))?;
            L::Tcp(l)
        }
        _ => {
            let path = o.path.ok_or("a unix server needs --path")?;
            let _ = std::fs::remove_file(&path);
            let l = UnixListener::bind(&path).map_err(ctx("bind"))?;
            say(&format!("READY {path} {pid}"))?;
            L::Unix(l)
        }
    };
    let mut kept: Vec<Stream> = Vec::new();
    loop {
        let s = match &l {
            L::Tcp(l) => l.accept().map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
            L::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
        };
        match s {
            Ok(s) => {
                if let Err(e) = serve(s, &mut kept) {
                    eprintln!("sockbench server: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
}

fn serve(mut s: Stream, kept: &mut Vec<Stream>) -> Result<()> {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).map_err(ctx("read header"))?;
    if h[..4] != MAGIC {
        return Err("bad header: the peer is not a sockbench client".into());
    }
    let size = u32::from_le_bytes(h[8..12].try_into().unwrap()) as usize;
    match h[4] {
        K_PINGPONG => {
            if size == 0 || size > MAX_SIZE {
                return Err(format!("bad size {size}"));
            }
            let mut buf = vec![0u8; size];
            while read_message(&mut s, &mut buf).map_err(ctx("read"))? {
                s.write_all(&buf).map_err(ctx("write"))?;
            }
        }
        K_STREAM => {
            let mut buf = vec![0u8; size.clamp(1, MAX_SIZE)];
            let mut total: u64 = 0;
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("read: {e}")),
                }
            }
            s.write_all(&total.to_le_bytes()).map_err(ctx("write"))?;
        }
        K_CONNRATE => {
            s.write_all(b"!").map_err(ctx("write"))?;
        }
        K_MANY => {
            s.write_all(b"!").map_err(ctx("write"))?;
            kept.push(s);
        }
        k => return Err(format!("unknown test {k}")),
    }
    Ok(())
}

fn client(args: &[String]) -> Result<()> {
    let t = transport(args.first())?;
    let o = parse_opts(&args[1..])?;
    raise_nofile();
    let addr = o.pos.first().ok_or_else(|| format!("client needs ADDR\n{USAGE}"))?.clone();
    let test = o.test.clone().ok_or("--test is required")?;
    let out = match (t, test.as_str()) {
        (Transport::Shm, "pingpong") => shm_pingpong(&addr, &o)?,
        (Transport::Shm, "stream") => shm_stream(&addr, &o)?,
        (Transport::Shm, other) => return Err(format!("test {other} is not defined for shm")),
        (_, "pingpong") => {
            let mut s = Stream::connect(t, &addr).map_err(ctx("connect"))?;
            s.write_all(&header(K_PINGPONG, o.size)).map_err(ctx("write header"))?;
            let r = pingpong_loop(&mut s, o.size, o.warmup, o.duration)?;
            let _ = s.shutdown_write();
            r
        }
        (_, "stream") => stream_client(t, &addr, &o)?,
        (_, "connrate") => connrate_client(t, &addr, &o)?,
        (_, "idle") => idle_client(t, &addr, &o)?,
        (_, "many") => many_client(t, &addr, &o)?,
        (_, other) => return Err(format!("unknown test {other:?}")),
    };
    say(&out.to_string())
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("histogram bounds")
}

fn hist_json(h: &Histogram<u64>) -> serde_json::Value {
    let us = |v: u64| v as f64 / 1e3;
    json!({
        "count": h.len(),
        "p50_us": us(h.value_at_quantile(0.50)),
        "p99_us": us(h.value_at_quantile(0.99)),
        "p999_us": us(h.value_at_quantile(0.999)),
        "min_us": us(h.min()),
        "mean_us": h.mean() / 1e3,
        "max_us": us(h.max()),
    })
}

/// Round trips for `warmup` s untimed, then `duration` s timed (at least 10 timed).
fn pingpong_loop(
    s: &mut Stream,
    size: usize,
    warmup: f64,
    duration: f64,
) -> Result<serde_json::Value> {
    let mut msg: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut echo = vec![0u8; size];
    let mut h = new_hist();
    let start = Instant::now();
    let warm_end = start + Duration::from_secs_f64(warmup);
    let mut end: Option<Instant> = None;
    let mut i: u64 = 0;
    loop {
        let tag = (i as u8) ^ 0x5a;
        msg[0] = tag;
        msg[size - 1] = tag;
        let t0 = Instant::now();
        s.write_all(&msg).map_err(ctx("write"))?;
        s.read_exact(&mut echo).map_err(ctx("read"))?;
        let t1 = Instant::now();
        if echo[0] != tag || echo[size - 1] != tag || (i % 64 == 0 && echo != msg) {
            return Err(format!("round trip {i}: the echo differs from the message"));
        }
        i += 1;
        match end {
            None if t1 >= warm_end => end = Some(t1 + Duration::from_secs_f64(duration)),
            None => {}
            Some(e) => {
                h.saturating_record((t1 - t0).as_nanos() as u64);
                if t1 >= e && h.len() >= 10 {
                    break;
                }
            }
        }
    }
    let mut v = hist_json(&h);
    v["test"] = json!("pingpong");
    v["size"] = json!(size);
    Ok(v)
}

fn stream_client(t: Transport, addr: &str, o: &Opts) -> Result<serde_json::Value> {
    let mut s = Stream::connect(t, addr).map_err(ctx("connect"))?;
    s.write_all(&header(K_STREAM, o.size)).map_err(ctx("write header"))?;
    let buf: Vec<u8> = (0..o.size).map(|i| i as u8).collect();
    let dur = Duration::from_secs_f64(o.duration);
    let start = Instant::now();
    let mut sent: u64 = 0;
    while start.elapsed() < dur {
        s.write_all(&buf).map_err(ctx("write"))?;
        sent += o.size as u64;
    }
    s.shutdown_write().map_err(ctx("shutdown"))?;
    let mut ack = [0u8; 8];
    s.read_exact(&mut ack).map_err(ctx("read the byte count"))?;
    let secs = start.elapsed().as_secs_f64();
    let got = u64::from_le_bytes(ack);
    if got != sent {
        return Err(format!("the server read {got} bytes, {sent} were written"));
    }
    Ok(json!({"test": "stream", "size": o.size, "bytes": sent, "secs": secs,
              "gbytes_s": sent as f64 / secs / 1e9}))
}

fn connrate_client(t: Transport, addr: &str, o: &Opts) -> Result<serde_json::Value> {
    let hdr = header(K_CONNRATE, 1);
    let mut h = new_hist();
    let dur = Duration::from_secs_f64(o.duration);
    let start = Instant::now();
    let mut n: u64 = 0;
    loop {
        let t0 = Instant::now();
        let mut s = Stream::connect(t, addr).map_err(ctx("connect"))?;
        s.write_all(&hdr).map_err(ctx("write"))?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).map_err(ctx("read"))?;
        drop(s);
        let t1 = Instant::now();
        h.saturating_record((t1 - t0).as_nanos() as u64);
        n += 1;
        if t1 - start >= dur && n >= 5 {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let mut v = hist_json(&h);
    v["test"] = json!("connrate");
    v["conns"] = json!(n);
    v["secs"] = json!(secs);
    v["rate"] = json!(n as f64 / secs);
    Ok(v)
}

fn idle_client(t: Transport, addr: &str, o: &Opts) -> Result<serde_json::Value> {
    let mut s = Stream::connect(t, addr).map_err(ctx("connect"))?;
    s.write_all(&header(K_PINGPONG, 16)).map_err(ctx("write header"))?;
    let warm = pingpong_loop(&mut s, 16, 0.0, o.warmup.max(0.001))?;
    say(&format!("IDLE {}", std::process::id()))?;
    // Wait for a message that never comes; the harness kills us. Returns only if the
    // server goes away.
    let mut pfd = libc::pollfd { fd: s.fd(), events: libc::POLLIN, revents: 0 };
    loop {
        let r = unsafe { libc::poll(&mut pfd, 1, -1) };
        if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        break;
    }
    Ok(json!({"test": "idle", "warmup": warm, "woke": pfd.revents}))
}

fn many_client(t: Transport, addr: &str, o: &Opts) -> Result<serde_json::Value> {
    let hdr = header(K_MANY, 1);
    let open = |kept: &mut Vec<Stream>| -> Result<()> {
        let mut s = Stream::connect(t, addr).map_err(ctx("connect"))?;
        s.write_all(&hdr).map_err(ctx("write"))?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).map_err(ctx("read"))?;
        kept.push(s);
        Ok(())
    };
    let mut kept = Vec::with_capacity(o.conns + 1);
    open(&mut kept)?;
    say(&format!("BASE {}", std::process::id()))?;
    let stdin = io::stdin();
    let mut line = String::new();
    stdin.lock().read_line(&mut line).map_err(ctx("stdin"))?;
    let start = Instant::now();
    for i in 0..o.conns {
        open(&mut kept).map_err(|e| format!("connection {}: {e}", i + 2))?;
    }
    let secs = start.elapsed().as_secs_f64();
    say(&format!("OPEN {}", o.conns))?;
    line.clear();
    let _ = stdin.lock().read_line(&mut line);
    Ok(json!({"test": "many", "conns": o.conns, "open_secs": secs}))
}

// ---------------------------------------------------------------------------------------
// raw shared memory: one page of control words and two rings of 1 MiB (client to server,
// server to client; the shim's default ring size), in a file on tmpfs mapped MAP_SHARED
// by both processes. Ping-pong messages go round the rings as a stream would (message i
// at byte i*SIZE), so a side never writes a line the other has just read; the stream
// uses the client-to-server ring. Each side waits by
// spinning on the other's cache line; when the peer last ran on the same CPU it yields
// at once instead (spinning there only delays the peer), and every 1024 spins it yields
// anyway, in case both were moved onto one CPU.

const SHM_MAGIC: u32 = 0x5342_4d31; // "SBM1"
const CTRL: usize = 4096;
const RING: usize = 1 << 20; // as the shim's default RDMASOCK_RING_SIZE
const OFF_C2S: usize = CTRL;
const OFF_S2C: usize = CTRL + RING;
const SHM_LEN: usize = CTRL + 2 * RING;
const QUIT: u64 = u64::MAX;
/// Both sides of the stream publish their progress at least every CHUNK bytes, so that a
/// large write and the read of it overlap instead of taking turns.
const CHUNK: usize = 64 << 10;

/// Control words, one cache line each (128 B apart: adjacent-line prefetch).
struct Shm {
    base: *mut u8,
}

impl Shm {
    fn word<T>(&self, line: usize) -> &T {
        unsafe { &*(self.base.add(line * 128) as *const T) }
    }
    fn magic(&self) -> &AtomicU32 {
        self.word(0)
    }
    fn kind(&self) -> &AtomicU32 {
        unsafe { &*(self.base.add(4) as *const AtomicU32) }
    }
    fn size(&self) -> &AtomicU32 {
        unsafe { &*(self.base.add(8) as *const AtomicU32) }
    }
    fn attached(&self) -> &AtomicU32 {
        unsafe { &*(self.base.add(12) as *const AtomicU32) }
    }
    fn srv_cpu(&self) -> &AtomicI32 {
        self.word(1)
    }
    fn cli_cpu(&self) -> &AtomicI32 {
        self.word(2)
    }
    fn req(&self) -> &AtomicU64 {
        self.word(3)
    }
    fn resp(&self) -> &AtomicU64 {
        self.word(4)
    }
    fn head(&self) -> &AtomicU64 {
        self.word(5)
    }
    fn tail(&self) -> &AtomicU64 {
        self.word(6)
    }
    fn eof(&self) -> &AtomicU64 {
        self.word(7)
    }
    fn ack(&self) -> &AtomicU64 {
        self.word(8)
    }
    fn at(&self, off: usize) -> *mut u8 {
        unsafe { self.base.add(off) }
    }

    fn map(path: &str, create: bool) -> Result<Shm> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create)
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("{path}: {e}"))?;
        if create {
            f.set_len(SHM_LEN as u64).map_err(ctx("ftruncate"))?;
        }
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SHM_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap: {}", io::Error::last_os_error()));
        }
        Ok(Shm { base: p as *mut u8 })
    }
}

fn cpu() -> i32 {
    unsafe { libc::sched_getcpu() }
}

/// Waits until `ready()`; `me` is this side's CPU word, `peer` the other's.
#[inline(always)]
fn wait(me: &AtomicI32, peer: &AtomicI32, mut ready: impl FnMut() -> bool) {
    if ready() {
        return;
    }
    let mut mine = cpu();
    me.store(mine, Ordering::Relaxed);
    let mut spins: u32 = 0;
    loop {
        if ready() {
            return;
        }
        spins = spins.wrapping_add(1);
        if spins % 32 == 0 {
            // unpinned, either side may have been moved since it last said where it runs
            mine = cpu();
            me.store(mine, Ordering::Relaxed);
        }
        if peer.load(Ordering::Relaxed) == mine || spins % 1024 == 0 {
            unsafe { libc::sched_yield() };
            mine = cpu();
            me.store(mine, Ordering::Relaxed);
        } else {
            std::hint::spin_loop();
        }
    }
}

fn shm_server(path: &str, pid: u32) -> Result<()> {
    let m = Shm::map(path, true)?;
    m.srv_cpu().store(cpu(), Ordering::Relaxed);
    m.cli_cpu().store(-1, Ordering::Relaxed);
    m.magic().store(SHM_MAGIC, Ordering::Release);
    say(&format!("READY {path} {pid}"))?;
    // Until the client attaches (it is still starting), poll gently: this is not timed.
    while m.attached().load(Ordering::Acquire) == 0 {
        std::thread::sleep(Duration::from_micros(200));
    }
    let _ = std::fs::remove_file(path);
    let size = m.size().load(Ordering::Relaxed) as usize;
    let (me, peer) = (m.srv_cpu(), m.cli_cpu());
    me.store(cpu(), Ordering::Relaxed);
    match m.kind().load(Ordering::Relaxed) as u8 {
        K_PINGPONG => {
            let mut local = vec![0u8; size];
            let mut last = 0u64;
            loop {
                wait(me, peer, || m.req().load(Ordering::Acquire) != last);
                let v = m.req().load(Ordering::Acquire);
                if v == QUIT {
                    break;
                }
                // Two copies, as read() then write() of a socket would make.
                let pos = (v - 1) * size as u64;
                ring_copy_out(&m, OFF_C2S, pos, &mut local);
                ring_copy_in(&m, OFF_S2C, pos, &local);
                m.resp().store(v, Ordering::Release);
                last = v;
            }
        }
        K_STREAM => {
            let mut local = vec![0u8; size];
            let mut tail = 0u64;
            loop {
                wait(me, peer, || {
                    m.head().load(Ordering::Acquire) != tail || m.eof().load(Ordering::Acquire) != 0
                });
                let head = m.head().load(Ordering::Acquire);
                if head == tail {
                    // eof is set after the last head update, so nothing is left.
                    break;
                }
                let n = ((head - tail) as usize).min(size).min(CHUNK);
                ring_copy_out(&m, OFF_C2S, tail, &mut local[..n]);
                tail += n as u64;
                m.tail().store(tail, Ordering::Release);
            }
            m.ack().store(tail + 1, Ordering::Release);
        }
        k => return Err(format!("unknown test {k}")),
    }
    Ok(())
}

/// Copies out of the ring at `ring` from stream position `pos` (at most RING bytes).
fn ring_copy_out(m: &Shm, ring: usize, pos: u64, dst: &mut [u8]) {
    let off = (pos as usize) & (RING - 1);
    let first = dst.len().min(RING - off);
    unsafe {
        std::ptr::copy_nonoverlapping(m.at(ring + off), dst.as_mut_ptr(), first);
        std::ptr::copy_nonoverlapping(m.at(ring), dst.as_mut_ptr().add(first), dst.len() - first);
    }
}

/// Copies into the ring at `ring` at stream position `pos` (at most RING bytes).
fn ring_copy_in(m: &Shm, ring: usize, pos: u64, src: &[u8]) {
    let off = (pos as usize) & (RING - 1);
    let first = src.len().min(RING - off);
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), m.at(ring + off), first);
        std::ptr::copy_nonoverlapping(src.as_ptr().add(first), m.at(ring), src.len() - first);
    }
}

fn shm_attach(path: &str, kind: u8, size: usize) -> Result<Shm> {
    let m = Shm::map(path, false)?;
    if m.magic().load(Ordering::Acquire) != SHM_MAGIC {
        return Err(format!("{path}: not a sockbench shm server"));
    }
    m.cli_cpu().store(cpu(), Ordering::Relaxed);
    m.kind().store(kind as u32, Ordering::Relaxed);
    m.size().store(size as u32, Ordering::Relaxed);
    m.attached().store(1, Ordering::Release);
    Ok(m)
}

fn shm_pingpong(path: &str, o: &Opts) -> Result<serde_json::Value> {
    if o.size > RING {
        return Err(format!("shm ping-pong messages are at most {RING} bytes"));
    }
    let size = o.size;
    let m = shm_attach(path, K_PINGPONG, size)?;
    let (me, peer) = (m.cli_cpu(), m.srv_cpu());
    let mut msg: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut echo = vec![0u8; size];
    let mut h = new_hist();
    let start = Instant::now();
    let warm_end = start + Duration::from_secs_f64(o.warmup);
    let mut end: Option<Instant> = None;
    let mut i: u64 = 0;
    loop {
        i += 1;
        let tag = (i as u8) ^ 0x5a;
        msg[0] = tag;
        msg[size - 1] = tag;
        let t0 = Instant::now();
        let pos = (i - 1) * size as u64;
        ring_copy_in(&m, OFF_C2S, pos, &msg);
        m.req().store(i, Ordering::Release);
        wait(me, peer, || m.resp().load(Ordering::Acquire) == i);
        ring_copy_out(&m, OFF_S2C, pos, &mut echo);
        let t1 = Instant::now();
        if echo[0] != tag || echo[size - 1] != tag {
            return Err(format!("round trip {i}: the echo differs from the message"));
        }
        match end {
            None if t1 >= warm_end => end = Some(t1 + Duration::from_secs_f64(o.duration)),
            None => {}
            Some(e) => {
                h.saturating_record((t1 - t0).as_nanos() as u64);
                if t1 >= e && h.len() >= 10 {
                    break;
                }
            }
        }
    }
    m.req().store(QUIT, Ordering::Release);
    let mut v = hist_json(&h);
    v["test"] = json!("pingpong");
    v["size"] = json!(size);
    Ok(v)
}

fn shm_stream(path: &str, o: &Opts) -> Result<serde_json::Value> {
    let m = shm_attach(path, K_STREAM, o.size)?;
    let (me, peer) = (m.cli_cpu(), m.srv_cpu());
    let buf: Vec<u8> = (0..o.size).map(|i| i as u8).collect();
    let dur = Duration::from_secs_f64(o.duration);
    let start = Instant::now();
    let mut head = 0u64;
    while start.elapsed() < dur {
        // One "write" of o.size bytes: copy what fits, wait for room, repeat.
        let mut done = 0;
        while done < buf.len() {
            let tail = m.tail().load(Ordering::Acquire);
            let free = RING - (head - tail) as usize;
            if free == 0 {
                wait(me, peer, || m.tail().load(Ordering::Acquire) != tail);
                continue;
            }
            let n = free.min(buf.len() - done).min(CHUNK);
            ring_copy_in(&m, OFF_C2S, head, &buf[done..done + n]);
            head += n as u64;
            done += n;
            m.head().store(head, Ordering::Release);
        }
    }
    m.eof().store(1, Ordering::Release);
    wait(me, peer, || m.ack().load(Ordering::Acquire) != 0);
    let secs = start.elapsed().as_secs_f64();
    let got = m.ack().load(Ordering::Acquire) - 1;
    if got != head {
        return Err(format!("the server read {got} bytes, {head} were written"));
    }
    Ok(json!({"test": "stream", "size": o.size, "bytes": head, "secs": secs,
              "gbytes_s": head as f64 / secs / 1e9}))
}
