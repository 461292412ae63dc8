//! Runs one case of the application table (`tests/apps.rs`) in one combination.
//!
//! A run: find the case's programs (a missing one skips the test, or fails it under
//! CI); write the case's files; start the server on a free port (or one it picks and
//! announces) and wait until it is ready; take a live `rdmasock stat --json` snapshot
//! while a connection is open; run the clients wave after wave (the clients of a wave
//! at once), each checked by its own check; check every shim decision the programs
//! logged; stop the server (or wait for it, for servers that exit by themselves); run
//! the case's final check; end with `TestEnv::finish` (nothing left in the registry).
//!
//! Decisions expected (docs/contract.md, "Log lines"):
//! - shim/shim: every client connect decision for the server's endpoint is `path=shm`
//!   (each client logs one at least), and the server logs `path=shm` for the same port
//!   pair. A shimmed client decides at a connection's first I/O, so a connection it
//!   closes before any (wrk checks the address that way) has no client decision; the
//!   server's end of such a connection may be either path (shm, or tcp
//!   reason=peer-not-shim when the offer was withdrawn first) and is only reported.
//! - plain client, shimmed server: the clients log nothing; every server accept is
//!   `path=tcp reason=peer-not-shim`.
//!
//! The readiness probe (a plain connection from the test itself) is an unshimmed peer
//! in both combinations: the server must log it as `path=tcp reason=peer-not-shim`,
//! and it is left out of the other checks.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use rdmasock_conformance::decisions::{self, Decision};

use crate::util::process::{Finished, Proc};
use crate::util::{Combo, Role, Side, StatConn, TestEnv, Via};

/// The Python every Python program runs with (`python3` on PATH may be a pyenv shim).
pub const PY: &str = "/usr/bin/python3";

/// Bounds that only turn a hang into a failure.
const START: Duration = Duration::from_secs(30);
const CLIENT: Duration = Duration::from_secs(60);
const LIVE: Duration = Duration::from_secs(10);
const SERVER_EXIT: Duration = Duration::from_secs(30);
/// Interval of the retries while the server's port does not accept connections yet.
const PROBE_RETRY: Duration = Duration::from_millis(5);

/// One application: its server, how the test knows the server is ready, how the live
/// snapshot is taken, its clients and their checks.
pub struct Case {
    pub name: &'static str,
    /// Programs the case runs, with the Debian package that installs each.
    pub tools: &'static [(&'static str, &'static str)],
    /// Writes the files the programs need (configuration, content) into `Ctx::dir`,
    /// once the port is known.
    pub setup: fn(&Ctx),
    /// The server's command line (see `Ctx::expand` for the placeholders).
    pub server: &'static [&'static str],
    pub ready: Ready,
    /// The server exits by itself once its clients are done (`iperf3 -s -1`, socat
    /// without fork); otherwise it is killed (with its process group) at the end.
    pub server_exits: bool,
    pub live: Live,
    /// Waves of clients: the waves one after the other, the clients of a wave at once.
    pub waves: &'static [&'static [Client]],
    /// A check once the server is gone (what it wrote).
    pub after: Option<fn(&Ctx)>,
}

/// One client program: a command line (placeholders as for the server) and the check
/// of what it printed. It must exit 0.
pub struct Client {
    pub what: &'static str,
    pub argv: &'static [&'static str],
    pub check: fn(&Ctx, &Finished),
    /// The live snapshot is taken while this client runs (`Live::During`,
    /// `Live::Fifo`).
    pub live: bool,
}

impl Client {
    pub const fn new(
        what: &'static str,
        argv: &'static [&'static str],
        check: fn(&Ctx, &Finished),
    ) -> Client {
        Client {
            what,
            argv,
            check,
            live: false,
        }
    }

    /// A client that runs for seconds, during which the live snapshot is taken.
    pub const fn live(
        what: &'static str,
        argv: &'static [&'static str],
        check: fn(&Ctx, &Finished),
    ) -> Client {
        Client {
            what,
            argv,
            check,
            live: true,
        }
    }
}

#[derive(Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How the test knows that the server listens.
pub enum Ready {
    /// The test picks a free port; the server listens once a connection from the test
    /// is accepted (the server's shim logs the accept).
    Probe,
    /// The test picks a free port; the server prints a line on stdout starting with
    /// this text ("{port}" expanded) once it listens.
    StdoutLine(&'static str),
    /// The server picks its port and prints it after this text.
    Announce(Stream, &'static str),
}

/// How the live `rdmasock stat --json` snapshot is taken: while a connection between
/// a client and the server is open and has carried data (a client's decision is taken
/// at its first I/O).
pub enum Live {
    /// `conformance/py/hold.py` (on the client's side) connects, sends `send`, waits for
    /// a reply starting with `expect` (backslash escapes decoded) and holds the
    /// connection open while the snapshot is taken, before the clients run.
    Holder {
        send: &'static str,
        expect: &'static str,
    },
    /// While the client marked `live` runs (for seconds).
    During,
    /// The client marked `live` reads its input from the fifo `fifo` (made by the
    /// case's setup) that the test feeds from the file `src`: the first 64 KiB, the
    /// snapshot, then the rest, and EOF.
    Fifo {
        fifo: &'static str,
        src: &'static str,
    },
}

/// What a case's commands and checks know about the run.
pub struct Ctx {
    /// The test's scratch directory.
    pub dir: PathBuf,
    pub port: u16,
    /// "127.0.0.1:PORT", the server's endpoint.
    pub ep: String,
    /// A random token (32 hex digits), new for each run.
    pub rand: String,
    tools: HashMap<&'static str, PathBuf>,
}

impl Ctx {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Replaces {port}, {ep}, {dir}, {rand} and {py} (the directory of the
    /// conformance Python programs).
    pub fn expand(&self, s: &str) -> String {
        s.replace("{port}", &self.port.to_string())
            .replace("{ep}", &self.ep)
            .replace("{dir}", &self.dir.display().to_string())
            .replace("{rand}", &self.rand)
            .replace("{py}", &py_dir().display().to_string())
    }

    /// A command line expanded, its program resolved to where it was found.
    fn argv(&self, argv: &[&str]) -> (PathBuf, Vec<String>) {
        let prog = self
            .tools
            .get(argv[0])
            .cloned()
            .unwrap_or_else(|| PathBuf::from(argv[0]));
        (prog, argv[1..].iter().map(|a| self.expand(a)).collect())
    }
}

fn py_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py")
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Where `name` is: an absolute path as is, else the first match on PATH, then the
/// sbin directories (nginx lives in /usr/sbin, which a user's PATH may lack).
fn find_tool(name: &str) -> Option<PathBuf> {
    if name.starts_with('/') {
        return Path::new(name).is_file().then(|| PathBuf::from(name));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The application cases run one at a time: they are timed benchmarks on a small
/// machine, and two at once would fight over the CPUs.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The two combinations of the suite.
pub fn combo_name(combo: Combo) -> &'static str {
    match (combo.client, combo.server) {
        (Side::Shim, Side::Shim) => "shim_shim",
        (Side::Plain, Side::Shim) => "plainclient_shimserver",
        _ => panic!("the application suite runs shim/shim and plain client/shim server only"),
    }
}

fn random_token() -> String {
    let mut b = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .expect("reading /dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a probe socket")
        .port()
}

/// Whether the process has exited (a zombie not reaped yet, or gone).
fn has_exited(p: &Proc) -> bool {
    match fs::read_to_string(format!("/proc/{}/stat", p.pid())) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        Err(_) => true,
    }
}

/// The first decision in one log line.
fn decision(line: &str) -> Option<Decision> {
    decisions::parse(line).into_iter().next()
}

/// The local ports of the established kernel TCP connections of process `p` to
/// 127.0.0.1:`server_port` (/proc/PID/fd and /proc/net/tcp).
fn kernel_ports_to(p: &Proc, server_port: u16) -> Vec<u16> {
    let remote = format!("0100007F:{server_port:04X}");
    let inodes: Vec<String> = fs::read_dir(format!("/proc/{}/fd", p.pid()))
        .map(|dir| {
            dir.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let table = fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            (f.len() > 9 && f[2] == remote && f[3] == "01" && inodes.iter().any(|i| i == f[9]))
                .then(|| u16::from_str_radix(f[1].rsplit_once(':')?.1, 16).ok())?
        })
        .collect()
}

/// Parses the port printed after `marker` in `line`.
fn port_after(line: &str, marker: &str) -> Option<u16> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

/// A started server: its process, port and the readiness probe's local port.
struct Server {
    proc: Proc,
    probe: Option<u16>,
}

pub fn run(case: &Case, combo: Combo) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut tools = HashMap::new();
    for &(name, package) in case.tools {
        match find_tool(name) {
            Some(p) => {
                tools.insert(name, p);
            }
            None if ci() => panic!(
                "{}: {name} is missing and CI is set: install it (apt-get install -y {package})",
                case.name
            ),
            None => {
                eprintln!(
                    "SKIPPED {}: {name} is missing; install it (apt-get install -y {package}) \
                     to run this test (with CI=true this fails)",
                    case.name
                );
                return;
            }
        }
    }
    let started = Instant::now();
    let t = TestEnv::new(&format!("apps-{}-{}", combo_name(combo), case.name), combo);
    let mut ctx = Ctx {
        dir: t.scratch().to_path_buf(),
        port: 0,
        ep: String::new(),
        rand: random_token(),
        tools,
    };
    let server = start_server(&t, case, &mut ctx);
    let mut clients: Vec<Finished> = Vec::new();

    if let Live::Holder { send, expect } = case.live {
        let hold = py_dir().join("hold.py");
        let holder = t.spawn(
            Role::Client,
            Via::RunCommand,
            PY,
            &[
                hold.to_str().unwrap(),
                "127.0.0.1",
                &ctx.port.to_string(),
                send,
                expect,
            ],
        );
        let local: u16 = holder.expect_stdout("hold.py's HELD line", LIVE, |l| {
            l.strip_prefix("HELD ")?.trim().parse().ok()
        });
        live_snapshot(&t, &ctx, &server, &holder, Some(local));
        let f = holder.stop();
        assert!(
            !f.stdout.contains("UNEXPECTED"),
            "{}: the holder's reply: {}",
            case.name,
            f.describe()
        );
        clients.push(f);
    }

    for wave in case.waves {
        let procs: Vec<(&Client, Proc)> = wave
            .iter()
            .map(|c| {
                let (prog, args) = ctx.argv(c.argv);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                (c, t.spawn(Role::Client, Via::RunCommand, &prog, &args))
            })
            .collect();
        for (c, p) in &procs {
            if !c.live {
                continue;
            }
            match case.live {
                Live::During => live_snapshot(&t, &ctx, &server, p, None),
                Live::Fifo { fifo, src } => feed_fifo(&ctx, fifo, src, || {
                    live_snapshot(&t, &ctx, &server, p, None)
                }),
                Live::Holder { .. } => panic!("{}: a live client with a holder", case.name),
            }
        }
        let deadline = Instant::now() + CLIENT;
        for (c, p) in procs {
            let f = p.finish(deadline);
            assert!(
                f.status.success(),
                "{} / {}: the client failed: {}",
                case.name,
                c.what,
                f.describe()
            );
            (c.check)(&ctx, &f);
            eprintln!("{} / {}: ok", case.name, c.what);
            clients.push(f);
        }
    }

    let client_locals = check_client_decisions(&t, case, &ctx, &clients);
    // Each client connect decision has the server's accept decision for the same
    // port pair (logged when the server accepted, which may be after the client's).
    if combo.client == Side::Shim {
        for local in &client_locals {
            server.proc.expect_stderr(
                &format!("the server's accept decision for the client at {local}"),
                LIVE,
                |l| decision(l).filter(|d| d.op == "accept" && &d.peer == local),
            );
        }
    }
    let s = if case.server_exits {
        let s = server.proc.finish(Instant::now() + SERVER_EXIT);
        assert!(
            s.status.success(),
            "{}: the server failed: {}",
            case.name,
            s.describe()
        );
        s
    } else {
        server.proc.stop()
    };
    check_server_decisions(&t, case, &ctx, &s, server.probe, &client_locals);
    if let Some(after) = case.after {
        after(&ctx);
    }
    t.finish();
    eprintln!(
        "{} ({}): passed in {:.1?}",
        case.name,
        combo_name(combo),
        started.elapsed()
    );
}

/// Starts the server and waits until it is ready; a port taken meanwhile is
/// retried with another.
fn start_server(t: &TestEnv, case: &Case, ctx: &mut Ctx) -> Server {
    for _attempt in 0..5 {
        ctx.port = match case.ready {
            Ready::Announce(..) => 0,
            _ => free_port(),
        };
        ctx.ep = format!("127.0.0.1:{}", ctx.port);
        (case.setup)(ctx);
        let (prog, args) = ctx.argv(case.server);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = t.spawn(Role::Server, Via::RunCommand, &prog, &args);
        match case.ready {
            Ready::Announce(stream, marker) => {
                let pick = |l: &str| port_after(l, marker);
                ctx.port = match stream {
                    Stream::Stdout => proc.expect_stdout(marker, START, pick),
                    Stream::Stderr => proc.expect_stderr(marker, START, pick),
                };
                ctx.ep = format!("127.0.0.1:{}", ctx.port);
                return Server { proc, probe: None };
            }
            Ready::StdoutLine(text) => {
                let text = ctx.expand(text);
                if proc
                    .wait_stdout(START, |l| l.starts_with(&text).then_some(()))
                    .is_some()
                {
                    return Server { proc, probe: None };
                }
                // Exited (port taken?) or silent: the next attempt says why if it
                // fails as well.
                eprintln!("{}: the server did not print {text:?}; retrying", case.name);
            }
            Ready::Probe => {
                if let Some(probe) = probe(case, ctx, &proc) {
                    return Server {
                        proc,
                        probe: Some(probe),
                    };
                }
                eprintln!(
                    "{}: the server exited before port {} accepted a connection; retrying",
                    case.name, ctx.port
                );
            }
        }
        drop(proc.stop());
    }
    panic!("{}: the server did not start in 5 attempts", case.name);
}

/// Connects to the server until it accepts, and waits for the server's shim to log
/// the accept (so a server that lost its port to another program is not mistaken
/// for ready). Returns the probe's local port, or None if the server exited.
fn probe(case: &Case, ctx: &Ctx, server: &Proc) -> Option<u16> {
    let deadline = Instant::now() + START;
    loop {
        match TcpStream::connect(("127.0.0.1", ctx.port)) {
            Ok(s) => {
                let local = s.local_addr().expect("probe address").port();
                let peer = format!("127.0.0.1:{local}");
                server.expect_stderr(
                    &format!("the accept decision for the readiness probe from {peer}"),
                    START,
                    |l| decision(l).filter(|d| d.op == "accept" && d.peer == peer),
                );
                return Some(local);
            }
            Err(e) => {
                if has_exited(server) {
                    return None;
                }
                assert!(
                    Instant::now() < deadline,
                    "{}: port {} accepts no connection within {START:?} ({e})",
                    case.name,
                    ctx.port
                );
                thread::sleep(PROBE_RETRY);
            }
        }
    }
}

/// Feeds the fifo: opens it (socat opens it once connected), writes the first part
/// (the client's first I/O, when it decides), runs `snapshot`, then writes the rest and
/// closes. If anything fails, the guard opens the fifo for reading so that a feeder
/// still waiting in open(2) returns.
fn feed_fifo(ctx: &Ctx, fifo: &str, src: &str, snapshot: impl FnOnce()) {
    const FIRST: usize = 64 << 10;
    struct Release(PathBuf);
    impl Drop for Release {
        fn drop(&mut self) {
            let c = std::ffi::CString::new(self.0.as_os_str().as_bytes()).unwrap();
            // SAFETY: a plain open(2)/close(2) of a path we own.
            unsafe {
                let fd = libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK);
                if fd >= 0 {
                    libc::close(fd);
                }
            }
        }
    }
    let (fifo, src) = (ctx.path(fifo), ctx.path(src));
    let data = fs::read(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    assert!(data.len() > FIRST);
    let (go, wait) = mpsc::channel::<()>();
    let path = fifo.clone();
    let feeder = thread::spawn(move || -> Result<(), String> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        f.write_all(&data[..FIRST])
            .map_err(|e| format!("writing the fifo: {e}"))?;
        wait.recv().map_err(|_| "the snapshot failed".to_string())?;
        f.write_all(&data[FIRST..])
            .map_err(|e| format!("writing the fifo: {e}"))
    });
    let release = Release(fifo);
    snapshot();
    go.send(()).expect("the fifo feeder is gone");
    feeder
        .join()
        .expect("the fifo feeder panicked")
        .unwrap_or_else(|e| panic!("feeding the fifo: {e}"));
    std::mem::forget(release);
}

/// The live `rdmasock stat --json` snapshot, while `client` holds a connection to the
/// server that has carried data. `local`: the client's port if known (the holder says
/// it; a shimmed client's decision says it too).
///
/// shim/shim: the client's connection is listed for its pid as role client, path shm;
/// the server's end (same port pair) as role server, path shm; and every connection
/// to or from the endpoint is shm. Plain client: nothing is listed as a client, and
/// the server's ends (one at least) are path tcp reason peer-not-shim. The readiness
/// probe is left out. The shim adds a connection to the table just after it logs its
/// decision, so the snapshot is retaken until it holds, within `LIVE`.
fn live_snapshot(t: &TestEnv, ctx: &Ctx, server: &Server, client: &Proc, local: Option<u16>) {
    let ep = ctx.ep.as_str();
    let probe = server.probe.map(|p| format!("127.0.0.1:{p}"));
    let shim_client = t.combo.client == Side::Shim;
    // A shimmed client's end: from its decision, then the server's decision for it.
    // A plain client's ends: its established kernel connections to the server, read
    // again for each snapshot (wrk, for one, makes a short-lived connection first).
    let decided_end: Option<String> = shim_client.then(|| {
        let d = client.expect_stderr("the client's connect decision", LIVE, |l| {
            decision(l).filter(|d| {
                d.op == "connect"
                    && d.peer == ep
                    && (local.is_none() || local == Some(port_of(&d.local)))
            })
        });
        server.proc.expect_stderr(
            &format!("the server's accept decision for the client at {}", d.local),
            LIVE,
            |l| decision(l).filter(|s| s.op == "accept" && s.local == ep && s.peer == d.local),
        );
        d.local
    });
    let client_ends = || -> Vec<String> {
        match (&decided_end, local) {
            (Some(end), _) => vec![end.clone()],
            (None, Some(p)) => vec![format!("127.0.0.1:{p}")],
            (None, None) => kernel_ports_to(client, ctx.port)
                .into_iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect(),
        }
    };
    let (path, reason) = if shim_client {
        ("shm", "")
    } else {
        ("tcp", "peer-not-shim")
    };
    let deadline = Instant::now() + LIVE;
    loop {
        let ends = client_ends();
        let conns = t.stat();
        let mine: Vec<&StatConn> = conns
            .iter()
            .filter(|c| {
                (c.role == "server" && c.local == ep && Some(&c.peer) != probe.as_ref())
                    || (c.role == "client" && c.peer == ep)
            })
            .collect();
        let client_listed = conns
            .iter()
            .any(|c| c.pid == i64::from(client.pid()) && c.role == "client");
        let pair_server = mine
            .iter()
            .any(|c| c.role == "server" && ends.contains(&c.peer));
        let pair_client = mine.iter().any(|c| {
            c.role == "client" && ends.contains(&c.local) && c.pid == i64::from(client.pid())
        });
        let all_right = mine.iter().all(|c| c.path == path && c.reason == reason);
        let ok = all_right
            && pair_server
            && if shim_client {
                pair_client
            } else {
                !client_listed && mine.iter().all(|c| c.role == "server")
            };
        if ok {
            eprintln!(
                "live rdmasock stat: {} connection(s) of {ep}, all path={path} (client ends {ends:?})",
                mine.len()
            );
            return;
        }
        if Instant::now() >= deadline || has_exited(client) {
            panic!(
                "{}: the live `rdmasock stat --json` snapshot is not as expected \
                 (every connection of {ep} path={path} reason={reason:?}, one of the \
                 client's ends {ends:?} listed {}): {conns:#?}",
                t.scratch().display(),
                if shim_client {
                    "on both sides"
                } else {
                    "on the server's side only"
                },
            );
        }
    }
}

/// The clients' decisions: shimmed, each client connected to the endpoint at least
/// once, every connection `path=shm`; plain, no shim line at all. Returns the local
/// ends of the shimmed clients' connections.
fn check_client_decisions(
    t: &TestEnv,
    case: &Case,
    ctx: &Ctx,
    clients: &[Finished],
) -> Vec<String> {
    let mut locals = Vec::new();
    for f in clients {
        if t.combo.client == Side::Plain {
            assert!(
                !f.stderr.contains("rdmasock["),
                "{}: a plain client logged shim lines: {}",
                case.name,
                f.describe()
            );
            continue;
        }
        let mine: Vec<Decision> = decisions::parse(&f.stderr)
            .into_iter()
            .filter(|d| d.op == "connect" && d.peer == ctx.ep)
            .collect();
        assert!(
            !mine.is_empty(),
            "{}: the client logged no connect decision for {}: {}",
            case.name,
            ctx.ep,
            f.describe()
        );
        for d in &mine {
            assert!(
                d.path == "shm",
                "{}: expected path=shm for the client's connection, got {:?}: {}",
                case.name,
                d.line,
                f.describe()
            );
            locals.push(d.local.clone());
        }
    }
    locals
}

/// The server's accept decisions for the endpoint: the probe's `path=tcp
/// reason=peer-not-shim`; the others (one at least) as the combination says, and with
/// shimmed clients, exactly the clients' connections.
fn check_server_decisions(
    t: &TestEnv,
    case: &Case,
    ctx: &Ctx,
    s: &Finished,
    probe: Option<u16>,
    client_locals: &[String],
) {
    let probe = probe.map(|p| format!("127.0.0.1:{p}"));
    let accepts: Vec<Decision> = decisions::parse(&s.stderr)
        .into_iter()
        .filter(|d| d.op == "accept" && d.local == ctx.ep)
        .collect();
    let (path, reason) = if t.combo.client == Side::Shim {
        ("shm", None)
    } else {
        ("tcp", Some("peer-not-shim"))
    };
    // Shimmed clients log their decision at a connection's first I/O: a connection
    // they closed before any (wrk checks the address that way) has none, and its
    // server end may have gone either way. Every other connection is a data connection.
    let clients: BTreeSet<&String> = client_locals.iter().collect();
    let (mut data, mut unused) = (0, Vec::new());
    for d in &accepts {
        let (want_path, want_reason) = if Some(&d.peer) == probe.as_ref() {
            ("tcp", Some("peer-not-shim"))
        } else if t.combo.client == Side::Shim && !clients.contains(&d.peer) {
            unused.push(d.line.clone());
            // The client withdrew its offer as it closed; how far the server got with
            // it decides the reason (docs/protocol.md §8, case 2): the record gone,
            // its /proc objects gone, or the claim lost.
            let withdrawn = ["peer-not-shim", "claim-failed", "claim-timeout"];
            if d.path == "shm" || (d.path == "tcp" && d.reason.as_deref().is_some_and(|r| withdrawn.contains(&r))) {
                continue;
            }
            ("tcp", Some("peer-not-shim"))
        } else {
            data += 1;
            (path, reason)
        };
        assert!(
            d.path == want_path && d.reason.as_deref() == want_reason,
            "{}: expected path={want_path} reason={want_reason:?} for the server's accept, got {:?}: {}",
            case.name,
            d.line,
            s.describe()
        );
    }
    assert!(
        data > 0,
        "{}: the server logged no accept decision for a client's data connection to {}: {}",
        case.name,
        ctx.ep,
        s.describe()
    );
    if !unused.is_empty() {
        eprintln!(
            "{}: {} connection(s) closed by the client before any I/O (no client decision): {unused:#?}",
            case.name,
            unused.len()
        );
    }
    eprintln!(
        "{}: server accepts for {}: {data} path={path}; client connects path=shm: {}",
        case.name,
        ctx.ep,
        client_locals.len()
    );
}
