//! The scenarios every combination runs. Each takes the test's name and the
//! combination, runs its programs on the combination's sides, checks their
//! results and the shim's decisions, and ends with `TestEnv::finish`.

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdmasock_conformance::proto::{parse_size, Gen};

use super::process::{Finished, Proc};
use super::{c_program, rstream, tool, Combo, Count, Role, Side, TestEnv, Via};

/// Generous bounds for work that takes a second or two on a laptop; they only
/// turn a hang into a failure.
const SHORT: Duration = Duration::from_secs(60);
const LONG: Duration = Duration::from_secs(180);

/// The bound on how long the survivor of a SIGKILLed peer may take to see
/// EOF or an error.
const KILL_NOTICE: Duration = Duration::from_secs(1);

fn endpoint(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Waits for the client, then the server; if the client failed the server is
/// stopped rather than waited for. Panics with both outputs unless both
/// exited 0.
fn finish_both(client: Proc, server: Proc, timeout: Duration) -> (Finished, Finished) {
    let c = client.finish(Instant::now() + timeout);
    let s = if c.status.success() {
        server.finish(Instant::now() + SHORT)
    } else {
        server.stop()
    };
    assert!(
        c.status.success() && s.status.success(),
        "{}\n{}",
        c.describe(),
        s.describe()
    );
    (c, s)
}

/// The value of `key=` in a summary line such as "OK conns=2 bytes_out=5".
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// Which implementation of the stream protocol runs a side.
#[derive(Clone, Copy)]
enum Impl {
    C,
    Rust,
}

impl Impl {
    fn program(self) -> PathBuf {
        match self {
            Impl::C => c_program("stream"),
            Impl::Rust => rstream(),
        }
    }
}

/// One run of the stream protocol (see `conformance/c/stream.c`).
struct Stream<'a> {
    host: &'a str,
    server: Impl,
    /// Server MODE and, for prefork, the number of workers.
    mode: &'a [&'a str],
    client: Impl,
    /// Per connection; "~N" is random in 0..=N per connection.
    bytes_out: &'a str,
    bytes_in: &'a str,
    /// Client threads, and connections each makes one after the other.
    threads: u64,
    conns: u64,
    /// Bound on the client's run.
    timeout: Duration,
}

fn run_stream(name: &str, combo: Combo, run: Stream) {
    let t = TestEnv::new(name, combo);
    let total = run.conns * run.threads;
    let total_arg = total.to_string();
    let mut server_args = vec!["server", run.host, "0", run.mode[0], &total_arg];
    server_args.extend_from_slice(&run.mode[1..]);
    let server = t.spawn(
        Role::Server,
        Via::Preload,
        run.server.program(),
        &server_args,
    );
    let port = server.ready_port();
    let (port_arg, conns_arg, threads_arg) = (
        port.to_string(),
        run.conns.to_string(),
        run.threads.to_string(),
    );
    let client = t.spawn(
        Role::Client,
        Via::Preload,
        run.client.program(),
        &[
            "client",
            run.host,
            &port_arg,
            run.bytes_out,
            run.bytes_in,
            "1",
            &conns_arg,
            &threads_arg,
        ],
    );
    let (c, s) = finish_both(client, server, run.timeout);

    let (ok, done) = (c.line("OK "), s.line("DONE "));
    assert_eq!(
        (field(ok, "conns"), field(done, "conns")),
        (total, total),
        "{ok} / {done}"
    );
    assert_eq!(
        field(ok, "bytes_out"),
        field(done, "bytes_in"),
        "{ok} / {done}"
    );
    assert_eq!(
        field(ok, "bytes_in"),
        field(done, "bytes_out"),
        "{ok} / {done}"
    );
    for (spec, key) in [(run.bytes_out, "bytes_out"), (run.bytes_in, "bytes_in")] {
        if let Ok(each) = parse_size(spec) {
            assert_eq!(field(ok, key), each * total, "{ok}");
        }
    }
    let ep = endpoint(run.host, port);
    t.check_decisions(Role::Client, &c, &ep, Count::Exactly(total as usize));
    t.check_decisions(Role::Server, &s, &ep, Count::Exactly(total as usize));
    t.finish();
}

/// 1 GiB client to server and 256 MiB back over one connection.
pub fn stream_1gib(name: &str, combo: Combo) {
    run_stream(
        name,
        combo,
        Stream {
            host: "127.0.0.1",
            server: Impl::C,
            mode: &["iter"],
            client: Impl::C,
            bytes_out: "1G",
            bytes_in: "256M",
            conns: 1,
            threads: 1,
            timeout: LONG,
        },
    );
}

/// The same protocol over ::1.
pub fn stream_ipv6(name: &str, combo: Combo) {
    run_stream(
        name,
        combo,
        Stream {
            host: "::1",
            server: Impl::C,
            mode: &["iter"],
            client: Impl::C,
            bytes_out: "8M",
            bytes_in: "8M",
            conns: 4,
            threads: 1,
            timeout: SHORT,
        },
    );
}

/// Four forked workers accepting from one inherited listener.
pub fn stream_prefork_server(name: &str, combo: Combo) {
    run_stream(
        name,
        combo,
        Stream {
            host: "127.0.0.1",
            server: Impl::C,
            mode: &["prefork", "4"],
            client: Impl::C,
            bytes_out: "4M",
            bytes_in: "4M",
            conns: 8,
            threads: 2,
            timeout: SHORT,
        },
    );
}

/// A child forked per accepted connection, the parent closing its copy.
pub fn stream_forkconn_server(name: &str, combo: Combo) {
    run_stream(
        name,
        combo,
        Stream {
            host: "127.0.0.1",
            server: Impl::C,
            mode: &["forkconn"],
            client: Impl::C,
            bytes_out: "4M",
            bytes_in: "4M",
            conns: 8,
            threads: 1,
            timeout: SHORT,
        },
    );
}

/// 8 client threads making 8 connections each to a thread-per-connection
/// server.
pub fn stream_8_threads_x_8_conns(name: &str, combo: Combo) {
    run_stream(
        name,
        combo,
        Stream {
            host: "127.0.0.1",
            server: Impl::C,
            mode: &["threads"],
            client: Impl::C,
            bytes_out: "2M",
            bytes_in: "2M",
            conns: 8,
            threads: 8,
            timeout: SHORT,
        },
    );
}

/// Many short connections of random sizes, empty ones included (EOF and the
/// half-close with nothing sent).
pub fn stream_many_small_conns(name: &str, combo: Combo) {
    run_stream(
        name,
        combo,
        Stream {
            host: "127.0.0.1",
            server: Impl::C,
            mode: &["iter"],
            client: Impl::C,
            bytes_out: "~64K",
            bytes_in: "~64K",
            conns: 200,
            threads: 1,
            timeout: SHORT,
        },
    );
}

/// The Rust client against the C server.
pub fn rust_client_c_server(name: &str, combo: Combo) {
    run_stream(
        name,
        combo,
        Stream {
            host: "127.0.0.1",
            server: Impl::C,
            mode: &["threads"],
            client: Impl::Rust,
            bytes_out: "16M",
            bytes_in: "~16M",
            conns: 4,
            threads: 2,
            timeout: SHORT,
        },
    );
}

/// The C client against the Rust server.
pub fn c_client_rust_server(name: &str, combo: Combo) {
    run_stream(
        name,
        combo,
        Stream {
            host: "127.0.0.1",
            server: Impl::Rust,
            mode: &["threads"],
            client: Impl::C,
            bytes_out: "~16M",
            bytes_in: "16M",
            conns: 4,
            threads: 2,
            timeout: SHORT,
        },
    );
}

/// How the survivor of a SIGKILL may see its peer's death.
#[derive(Clone, Copy, PartialEq)]
enum Notice {
    /// A reader: EOF after exactly the bytes the victim wrote, or ECONNRESET.
    EofOrReset,
    /// A writer: EPIPE or ECONNRESET.
    PipeOrReset,
}

/// One side stalls after moving `stalled` bytes, the other keeps reading or
/// writing until it blocks; then the stalled side (the victim) is SIGKILLed.
/// The survivor must notice within `KILL_NOTICE`, as `notice` says.
fn run_kill(
    name: &str,
    combo: Combo,
    victim: Role,
    server_does: &str,
    client_does: &str,
    stalled: u64,
    notice: Notice,
) {
    let t = TestEnv::new(name, combo);
    let killpeer = c_program("killpeer");
    let server = t.spawn(
        Role::Server,
        Via::Preload,
        &killpeer,
        &["server", "127.0.0.1", "0", server_does],
    );
    let port = server.ready_port();
    let client = t.spawn(
        Role::Client,
        Via::Preload,
        &killpeer,
        &["client", "127.0.0.1", &port.to_string(), client_does],
    );
    let ep = endpoint("127.0.0.1", port);
    let (victim_proc, survivor) = match victim {
        Role::Server => (server, client),
        Role::Client => (client, server),
    };
    victim_proc.expect_stdout("STALLED", SHORT, |l| (l == "STALLED").then_some(()));
    survivor.wait_blocked(SHORT);
    if combo.any_shim() {
        let victim_does = if victim == Role::Server {
            server_does
        } else {
            client_does
        };
        let moved = if victim_does.starts_with("write") {
            (0, stalled)
        } else {
            (stalled, 0)
        };
        check_live_stat(&t, victim, &victim_proc, &survivor, &ep, moved);
    }

    let killed_at = Instant::now();
    victim_proc.sigkill();
    // A survivor that hangs is killed at twice the bound; one that is only
    // slow fails the assertion on its time below.
    let s = survivor.finish(killed_at + 2 * KILL_NOTICE);
    let v = victim_proc.finish(Instant::now() + SHORT);
    let took = s.exited_at - killed_at;
    assert!(
        took <= KILL_NOTICE,
        "the survivor took {took:?} to notice its peer's SIGKILL: {}",
        s.describe()
    );
    assert_eq!(
        v.status.signal(),
        Some(libc::SIGKILL),
        "the victim should have died of SIGKILL: {}",
        v.describe()
    );
    s.assert_success();
    let seen = s.stdout.lines().last().unwrap_or("");
    let ok = match notice {
        Notice::EofOrReset => {
            seen.starts_with(&format!("EOF after {stalled} bytes "))
                || seen.starts_with("ERR ECONNRESET ")
        }
        Notice::PipeOrReset => {
            seen.starts_with("ERR EPIPE ") || seen.starts_with("ERR ECONNRESET ")
        }
    };
    assert!(ok, "unexpected ending for the survivor: {}", s.describe());

    let (c, sv) = match victim {
        Role::Server => (&s, &v),
        Role::Client => (&v, &s),
    };
    t.check_decisions(Role::Client, c, &ep, Count::Exactly(1));
    t.check_decisions(Role::Server, sv, &ep, Count::Exactly(1));
    t.finish();
}

/// While both sides are alive, `rdmasock stat --json` lists exactly one
/// connection for each shimmed process, as its decision says. On the fabric,
/// the victim's (bytes_in, bytes_out) are `moved`: what it did before it
/// stalled.
fn check_live_stat(
    t: &TestEnv,
    victim: Role,
    victim_proc: &Proc,
    survivor: &Proc,
    ep: &str,
    moved: (u64, u64),
) {
    let conns = t.stat();
    let mut expected = 0;
    for (role, p) in [(victim, victim_proc), (victim.other(), survivor)] {
        if t.combo.side(role) == Side::Plain {
            continue;
        }
        expected += 1;
        let mine: Vec<_> = conns
            .iter()
            .filter(|c| c.pid == i64::from(p.pid()))
            .collect();
        assert_eq!(
            mine.len(),
            1,
            "stat should list one connection for pid {}: {conns:?}",
            p.pid()
        );
        let c = mine[0];
        let (path, reason) = t.combo.expected(role);
        let (role_name, server_end) = match role {
            Role::Client => ("client", &c.peer),
            Role::Server => ("server", &c.local),
        };
        assert_eq!(
            (
                c.role.as_str(),
                c.path.as_str(),
                c.reason.as_str(),
                server_end.as_str()
            ),
            (role_name, path, reason.unwrap_or(""), ep),
            "{c:?}"
        );
        if role == victim && path == super::fabric() {
            assert_eq!(
                (c.bytes_in, c.bytes_out),
                moved,
                "the victim's byte counts: {c:?}"
            );
        }
    }
    assert_eq!(
        conns.len(),
        expected,
        "stat lists other connections: {conns:?}"
    );
}

/// The server stalls after writing 4 MiB; the client reads them all and
/// blocks in read; the server is killed.
pub fn kill_server_while_client_reads(name: &str, combo: Combo) {
    run_kill(
        name,
        combo,
        Role::Server,
        "write-stall:4M",
        "read",
        4 << 20,
        Notice::EofOrReset,
    );
}

/// The server stalls after reading 1 MiB; the client fills the buffers and
/// blocks in write; the server is killed.
pub fn kill_server_while_client_writes(name: &str, combo: Combo) {
    run_kill(
        name,
        combo,
        Role::Server,
        "read-stall:1M",
        "write",
        1 << 20,
        Notice::PipeOrReset,
    );
}

/// The client stalls after writing 4 MiB; the server reads them all and
/// blocks in read; the client is killed.
pub fn kill_client_while_server_reads(name: &str, combo: Combo) {
    run_kill(
        name,
        combo,
        Role::Client,
        "read",
        "write-stall:4M",
        4 << 20,
        Notice::EofOrReset,
    );
}

/// The client stalls after reading 1 MiB; the server fills the buffers and
/// blocks in write; the client is killed.
pub fn kill_client_while_server_writes(name: &str, combo: Combo) {
    run_kill(
        name,
        combo,
        Role::Client,
        "write",
        "read-stall:1M",
        1 << 20,
        Notice::PipeOrReset,
    );
}

/// 8 threads write 1000-byte records to one socket at once; the server
/// checks that no record is torn and each thread's records are in order.
pub fn threads_share_one_socket(name: &str, combo: Combo) {
    let t = TestEnv::new(name, combo);
    let prog = c_program("threadsock");
    let shape = ["8", "5000", "1000"]; // THREADS RECORDS RECSIZE
    let server = t.spawn(
        Role::Server,
        Via::Preload,
        &prog,
        &[&["server", "127.0.0.1", "0"][..], &shape].concat(),
    );
    let port = server.ready_port().to_string();
    let client = t.spawn(
        Role::Client,
        Via::Preload,
        &prog,
        &[&["client", "127.0.0.1", &port][..], &shape].concat(),
    );
    let (c, s) = finish_both(client, server, SHORT);
    assert_eq!(c.line("OK "), "OK records=40000");
    assert_eq!(s.line("DONE "), "DONE records=40000");
    let ep = format!("127.0.0.1:{port}");
    t.check_decisions(Role::Client, &c, &ep, Count::Exactly(1));
    t.check_decisions(Role::Server, &s, &ep, Count::Exactly(1));
    t.finish();
}

/// Writes `len` bytes from `fill` to a new file.
fn write_file(path: &Path, len: usize, mut fill: impl FnMut(&mut [u8])) {
    let mut f = fs::File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        fill(&mut buf[..n]);
        f.write_all(&buf[..n])
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        left -= n;
    }
}

fn read_file(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A 48 MiB random file sent by `socat -u FILE TCP:` to `socat -u
/// TCP-LISTEN: FILE`, both run with `rdmasock run`, must arrive unchanged.
pub fn socat_file_transfer(name: &str, combo: Combo) {
    let Some(socat) = tool("socat") else { return };
    let t = TestEnv::new(name, combo);
    let (input, output) = (t.scratch().join("in.bin"), t.scratch().join("out.bin"));
    let mut g = Gen::new(0x50CA7);
    write_file(&input, 48 << 20, |b| g.fill(b));

    let server = t.spawn(
        Role::Server,
        Via::RunCommand,
        &socat,
        &[
            "-d",
            "-d",
            "-u",
            "TCP4-LISTEN:0,bind=127.0.0.1,reuseaddr",
            &format!("OPEN:{},creat,trunc", output.display()),
        ],
    );
    let port: u16 = server.expect_stderr("socat's \"listening on\" notice", SHORT, |l| {
        l.split_once("listening on AF=2 127.0.0.1:")?
            .1
            .trim()
            .parse()
            .ok()
    });
    let client = t.spawn(
        Role::Client,
        Via::RunCommand,
        &socat,
        &[
            "-u",
            &format!("OPEN:{}", input.display()),
            &format!("TCP4:127.0.0.1:{port}"),
        ],
    );
    let (c, s) = finish_both(client, server, SHORT);

    let (sent, got) = (read_file(&input), read_file(&output));
    if let Some(i) = (0..sent.len().min(got.len())).find(|&i| sent[i] != got[i]) {
        panic!("socat: the received file differs from the sent one at byte {i}");
    }
    assert_eq!(
        got.len(),
        sent.len(),
        "socat: received {} of {} bytes",
        got.len(),
        sent.len()
    );
    let ep = format!("127.0.0.1:{port}");
    t.check_decisions(Role::Client, &c, &ep, Count::Exactly(1));
    t.check_decisions(Role::Server, &s, &ep, Count::Exactly(1));
    t.finish();
}

/// A port that was free a moment ago (iperf3 cannot pick its own).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a probe socket");
    l.local_addr().expect("probe socket address").port()
}

/// `iperf3 -c -F FILE -n SIZE` to `iperf3 -s -1 -F FILE`, both run with
/// `rdmasock run`.
///
/// iperf3 -F is not a faithful file transfer, even over plain TCP (seen
/// with iperf3 3.12; esnet/iperf#301, #382): the receiver stops reading at
/// the end of the test, dropping what is still in flight, and after a
/// partial non-blocking send the sender splices earlier buffer contents into
/// the stream. So the file sent is one repeated byte, which keeps every byte
/// iperf3 sends a byte of the file, and the checks are that the client sent
/// the whole file, and that the server wrote exactly as many bytes as it
/// reports receiving, all of them that byte.
pub fn iperf3_file_transfer(name: &str, combo: Combo) {
    const SIZE: usize = 64 << 20;
    const BYTE: u8 = 0xA5;
    let Some(iperf3) = tool("iperf3") else { return };
    let t = TestEnv::new(name, combo);
    let (input, output) = (t.scratch().join("in.bin"), t.scratch().join("out.bin"));
    write_file(&input, SIZE, |b| b.fill(BYTE));
    let (input, output) = (input.display().to_string(), output.display().to_string());

    // The probed port can be taken before iperf3 binds it: try a few.
    let (server, port) = (0..5)
        .find_map(|_| {
            let port = free_port().to_string();
            let server = t.spawn(
                Role::Server,
                Via::RunCommand,
                &iperf3,
                &[
                    "-s",
                    "-1",
                    "-B",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-F",
                    &output,
                    "--forceflush",
                ],
            );
            let listening = format!("Server listening on {port}");
            server.wait_stdout(SHORT, |l| l.starts_with(&listening).then_some(()))?;
            Some((server, port))
        })
        .expect("iperf3 -s did not start listening in 5 attempts");
    let client = t.spawn(
        Role::Client,
        Via::RunCommand,
        &iperf3,
        &[
            "-c",
            "127.0.0.1",
            "-p",
            &port,
            "-F",
            &input,
            "-n",
            &SIZE.to_string(),
            "-J",
        ],
    );
    let (c, s) = finish_both(client, server, SHORT);

    let report: serde_json::Value = serde_json::from_str(&c.stdout)
        .unwrap_or_else(|e| panic!("iperf3 -J printed invalid JSON ({e}): {}", c.describe()));
    let bytes = |key: &str| {
        report["end"][key]["bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("iperf3 report without end.{key}.bytes: {}", c.describe()))
    };
    assert_eq!(
        bytes("sum_sent"),
        SIZE as u64,
        "the client should send the whole file"
    );
    let got = read_file(Path::new(&output));
    assert_eq!(
        got.len() as u64,
        bytes("sum_received"),
        "the server's file should hold what it reports receiving"
    );
    assert!(!got.is_empty(), "the server received nothing");
    if let Some(i) = got.iter().position(|&b| b != BYTE) {
        panic!(
            "iperf3: byte {i} of the received file is {:#04x}, not a byte of the file sent",
            got[i]
        );
    }
    // A control connection and a data connection.
    let ep = format!("127.0.0.1:{port}");
    t.check_decisions(Role::Client, &c, &ep, Count::AtLeast(2));
    t.check_decisions(Role::Server, &s, &ep, Count::AtLeast(2));
    t.finish();
}
