//! Real applications on the shm fabric: servers and their own clients and benchmark
//! tools (redis, nginx, memcached, sockperf, iperf3, socat, Python's http.server and
//! asyncio), run with `rdmasock run`, all on 127.0.0.1.
//!
//! `CASES` is the table: for each application, the server's command, how the test knows
//! it is ready, the clients' commands and the check of each (content compared, or the
//! tool's own verification). Each case runs in two combinations, one test each:
//!
//! - `shim_shim::CASE`: client and server shimmed; every data connection must be
//!   `path=shm` in both sides' logs (paired by port), and a live `rdmasock stat
//!   --json` snapshot must list the connection as shm on both sides.
//! - `plainclient_shimserver::CASE`: the client plain; the server must log `path=tcp
//!   reason=peer-not-shim` for every connection, list it so in the snapshot, and the
//!   checks must pass all the same.
//!
//! The cases run one at a time (timed tools on a small machine). See `apps/harness.rs`
//! for a run's steps and `apps/checks.rs` for the checks. A program that is missing
//! skips its case with a message, unless CI is set, where it fails.

#[allow(dead_code, unused_macros, unused_imports)]
mod util;

#[path = "apps/checks.rs"]
mod checks;
#[path = "apps/harness.rs"]
mod harness;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use harness::{Case, Client, Ctx, Live, Ready, Stream, PY};
use util::process::Finished;
use util::{Combo, Side};

/// Requests per redis-benchmark test.
const REDIS_N: &str = "20000";
/// Bytes the asyncio client sends and expects back.
const AECHO_BYTES: &str = "8388608";

#[rustfmt::skip]
static CASES: &[Case] = &[
    // --- 1. redis -----------------------------------------------------------------------
    Case {
        name: "redis",
        tools: &[
            ("redis-server", "redis-server"),
            ("redis-benchmark", "redis-tools"),
            ("redis-cli", "redis-tools"),
            (PY, "python3"),
        ],
        setup: nothing,
        server: &[
            "redis-server", "--bind", "127.0.0.1", "--port", "{port}", "--save", "",
            "--appendonly", "no", "--dir", "{dir}",
        ],
        ready: Ready::Probe,
        server_exits: false,
        live: Live::Holder {
            send: "PING\\r\\n",
            expect: "+PONG\\r\\n",
        },
        waves: &[
            &[Client::new(
                "redis-benchmark -c 1",
                &[
                    "redis-benchmark", "-h", "127.0.0.1", "-p", "{port}", "-c", "1", "-n",
                    REDIS_N, "-t", "set,get", "--csv",
                ],
                checks::redis_benchmark,
            )],
            &[Client::new(
                "redis-benchmark -c 50",
                &[
                    "redis-benchmark", "-h", "127.0.0.1", "-p", "{port}", "-c", "50", "-n",
                    REDIS_N, "-t", "set,get", "--csv",
                ],
                checks::redis_benchmark,
            )],
            &[Client::new(
                "redis-cli SET random value",
                &["redis-cli", "-h", "127.0.0.1", "-p", "{port}", "SET", "apps:key", "{rand}"],
                redis_set,
            )],
            &[Client::new(
                "redis-cli GET it back",
                &["redis-cli", "-h", "127.0.0.1", "-p", "{port}", "GET", "apps:key"],
                redis_get,
            )],
            &[Client::new(
                "redis-cli INFO all (the server's counts)",
                &["redis-cli", "-h", "127.0.0.1", "-p", "{port}", "INFO", "all"],
                redis_counts,
            )],
        ],
        after: None,
    },
    // --- 2. nginx -----------------------------------------------------------------------
    Case {
        name: "nginx",
        tools: &[("nginx", "nginx-light"), ("curl", "curl"), ("wrk", "wrk"), ("ab", "apache2-utils")],
        setup: nginx_setup,
        server: &["nginx", "-p", "{dir}/", "-c", "{dir}/nginx.conf", "-e", "stderr"],
        ready: Ready::Probe,
        server_exits: false,
        live: Live::During,
        waves: &[
            &[Client::new(
                "curl index and 1 MB file (one keep-alive connection)",
                &[
                    "curl", "-sS", "--fail", "-o", "{dir}/got-index.html", "http://{ep}/", "-o",
                    "{dir}/got-big.bin", "http://{ep}/big.bin",
                ],
                web_index_and_big,
            )],
            &[Client::live(
                "wrk -c 50 -d 2s",
                &["wrk", "-t", "2", "-c", "50", "-d", "2s", "http://{ep}/"],
                checks::wrk,
            )],
            &[Client::new(
                "wrk -c 1 -d 2s",
                &["wrk", "-t", "1", "-c", "1", "-d", "2s", "http://{ep}/"],
                checks::wrk,
            )],
            // A new connection per request, through APR's epoll pollset, which aborts
            // if EPOLL_CTL_DEL of a connection the server ended fails (issue 14.2).
            &[Client::new(
                "ab -n 1000 -c 10 (a connection per request)",
                &["ab", "-n", "1000", "-c", "10", "http://{ep}/"],
                checks::ab,
            )],
        ],
        after: None,
    },
    // --- 3. memcached ---------------------------------------------------------------------
    Case {
        name: "memcached",
        tools: &[("memcached", "memcached"), ("memcaslap", "libmemcached-tools")],
        setup: nothing,
        server: &[
            "memcached", "-u", "root", "-t", "2", "-l", "127.0.0.1", "-p", "{port}", "-U", "0",
            "-m", "64",
        ],
        ready: Ready::Probe,
        server_exits: false,
        live: Live::During,
        waves: &[&[Client::live(
            "memcaslap --verify=1 for 2 s",
            &["memcaslap", "-s", "{ep}", "-T", "2", "-c", "16", "-t", "2s", "--verify=1"],
            checks::memcaslap,
        )]],
        after: None,
    },
    // --- 4. sockperf, one case per server I/O multiplexer ---------------------------------
    Case {
        name: "sockperf",
        tools: SOCKPERF_TOOLS,
        setup: nothing,
        server: &["sockperf", "server", "-i", "127.0.0.1", "-p", "{port}", "--tcp"],
        ready: Ready::Probe,
        server_exits: false,
        live: Live::During,
        waves: SOCKPERF_ONE_BY_ONE,
        after: None,
    },
    Case {
        name: "sockperf_select",
        tools: SOCKPERF_TOOLS,
        setup: sockperf_feed,
        server: &["sockperf", "server", "-f", "{dir}/feed.txt", "-F", "s"],
        ready: Ready::Probe,
        server_exits: false,
        live: Live::During,
        waves: SOCKPERF_AT_ONCE,
        after: None,
    },
    Case {
        name: "sockperf_poll",
        tools: SOCKPERF_TOOLS,
        setup: sockperf_feed,
        server: &["sockperf", "server", "-f", "{dir}/feed.txt", "-F", "p"],
        ready: Ready::Probe,
        server_exits: false,
        live: Live::During,
        waves: SOCKPERF_AT_ONCE,
        after: None,
    },
    Case {
        name: "sockperf_epoll",
        tools: SOCKPERF_TOOLS,
        setup: sockperf_feed,
        server: &["sockperf", "server", "-f", "{dir}/feed.txt", "-F", "e"],
        ready: Ready::Probe,
        server_exits: false,
        live: Live::During,
        waves: SOCKPERF_AT_ONCE,
        after: None,
    },
    // --- 5. iperf3 (the server serves one test and exits) ---------------------------------
    Case {
        name: "iperf3_reverse",
        tools: IPERF3_TOOLS,
        setup: nothing,
        server: IPERF3_SERVER,
        ready: IPERF3_READY,
        server_exits: true,
        live: Live::During,
        waves: &[&[Client::live(
            "iperf3 -R -t 2",
            &["iperf3", "-c", "127.0.0.1", "-p", "{port}", "-t", "2", "-R", "-J"],
            iperf3_reverse,
        )]],
        after: None,
    },
    Case {
        name: "iperf3_parallel",
        tools: IPERF3_TOOLS,
        setup: nothing,
        server: IPERF3_SERVER,
        ready: IPERF3_READY,
        server_exits: true,
        live: Live::During,
        waves: &[&[Client::live(
            "iperf3 -P 4 -t 2",
            &["iperf3", "-c", "127.0.0.1", "-p", "{port}", "-t", "2", "-P", "4", "-J"],
            iperf3_parallel,
        )]],
        after: None,
    },
    Case {
        name: "iperf3_bidir",
        tools: IPERF3_TOOLS,
        setup: nothing,
        server: IPERF3_SERVER,
        ready: IPERF3_READY,
        server_exits: true,
        live: Live::During,
        waves: &[&[Client::live(
            "iperf3 --bidir -t 2",
            &["iperf3", "-c", "127.0.0.1", "-p", "{port}", "-t", "2", "--bidir", "-J"],
            iperf3_bidir,
        )]],
        after: None,
    },
    // --- 6. socat: a file through TCP-LISTEN / TCP ----------------------------------------
    // The client connects, then reads the file from a fifo the test feeds: the
    // connection stays open for the live snapshot after the first 64 KiB.
    Case {
        name: "socat",
        tools: &[("socat", "socat"), ("sha256sum", "coreutils")],
        setup: socat_setup,
        server: &[
            "socat", "-d", "-d", "-u", "TCP4-LISTEN:0,bind=127.0.0.1",
            "OPEN:{dir}/out.bin,creat,trunc",
        ],
        ready: Ready::Announce(Stream::Stderr, "listening on AF=2 127.0.0.1:"),
        server_exits: true,
        live: Live::Fifo {
            fifo: "in.fifo",
            src: "in.bin",
        },
        waves: &[&[Client::live(
            "socat -U TCP4: OPEN:fifo (16 MiB)",
            &["socat", "-U", "TCP4:{ep}", "OPEN:{dir}/in.fifo,rdonly"],
            nothing_printed,
        )]],
        after: Some(socat_after),
    },
    // --- 7. Python http.server --------------------------------------------------------------
    Case {
        name: "python_http_server",
        tools: &[(PY, "python3"), ("curl", "curl")],
        setup: www_setup,
        server: &[
            PY, "-m", "http.server", "{port}", "--bind", "127.0.0.1", "--directory", "{dir}/www",
        ],
        ready: Ready::Probe,
        server_exits: false,
        // An unfinished request: HTTP/1.0 closes after a response.
        live: Live::Holder {
            send: "GET /index.html HTTP/1.1\\r\\n",
            expect: "",
        },
        waves: &[&[Client::new(
            "curl 1 MB file",
            &["curl", "-sS", "--fail", "-o", "{dir}/got-big.bin", "http://{ep}/big.bin"],
            web_big,
        )]],
        after: None,
    },
    // --- 8. Python asyncio echo (conformance/py/aecho.py) -----------------------------------
    Case {
        name: "python_asyncio_echo",
        tools: &[(PY, "python3")],
        setup: nothing,
        server: &[PY, "{py}/aecho.py", "server", "127.0.0.1", "0"],
        ready: Ready::Announce(Stream::Stdout, "READY "),
        server_exits: false,
        live: Live::Holder {
            send: "hold\\n",
            expect: "hold\\n",
        },
        waves: &[&[Client::new(
            "aecho client, 8 MiB echoed",
            &[PY, "{py}/aecho.py", "client", "127.0.0.1", "{port}", AECHO_BYTES],
            aecho,
        )]],
        after: None,
    },
];

const SOCKPERF_TOOLS: &[(&str, &str)] = &[("sockperf", "sockperf")];

// --mps: sockperf sizes its table of samples for its default top rate, which a fabric
// round trip of 0.4 µs overruns ("_seqN > m_maxSequenceNo", exit 6).
#[rustfmt::skip]
const PING_PONG: Client = Client::live(
    "sockperf ping-pong -t 2",
    &["sockperf", "ping-pong", "-i", "127.0.0.1", "-p", "{port}", "--tcp", "-t", "2", "--mps", "10000000"],
    checks::sockperf_latency,
);
#[rustfmt::skip]
const UNDER_LOAD: Client = Client::new(
    "sockperf under-load -t 2",
    &["sockperf", "under-load", "-i", "127.0.0.1", "-p", "{port}", "--tcp", "-t", "2"],
    checks::sockperf_latency,
);
#[rustfmt::skip]
const THROUGHPUT: Client = Client::new(
    "sockperf throughput -t 2",
    &["sockperf", "throughput", "-i", "127.0.0.1", "-p", "{port}", "--tcp", "-t", "2"],
    checks::sockperf_throughput,
);

/// The default server blocks in recvfrom(2) on one connection at a time (a second
/// client is not accepted until the first is done: with the shim its claim times out
/// and it goes over TCP), so its clients run one after the other. under-load runs
/// against the multiplexing servers only, to keep the suite within its time (every
/// sockperf client spends 2 s in a fixed sleep before its 2 s test).
const SOCKPERF_ONE_BY_ONE: &[&[Client]] = &[&[PING_PONG], &[THROUGHPUT]];

/// The multiplexing servers (-F s/p/e) serve the three client modes at once.
const SOCKPERF_AT_ONCE: &[&[Client]] = &[&[PING_PONG, UNDER_LOAD, THROUGHPUT]];

const IPERF3_TOOLS: &[(&str, &str)] = &[("iperf3", "iperf3")];
#[rustfmt::skip]
const IPERF3_SERVER: &[&str] = &["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", "{port}", "--forceflush"];
const IPERF3_READY: Ready = Ready::StdoutLine("Server listening on {port}");

// --- setups ------------------------------------------------------------------------------

fn nothing(_: &Ctx) {}

/// www/: index.html (with the run's token) and big.bin (1 MiB random).
fn www_setup(ctx: &Ctx) {
    checks::write(
        &ctx.path("www/index.html"),
        ctx.expand("<html><body>apps index {rand}</body></html>\n")
            .as_bytes(),
    );
    checks::random_file(&ctx.path("www/big.bin"), 1 << 20);
}

fn nginx_setup(ctx: &Ctx) {
    www_setup(ctx);
    for d in ["tmp", "logs"] {
        std::fs::create_dir_all(ctx.path(d)).unwrap();
    }
    let conf = "\
# Written by conformance/tests/apps.rs.
worker_processes 2;
# Workers of another uid than the client correctly fall back to TCP (peer-other-uid).
user root;
master_process on;
daemon off;
pid {dir}/nginx.pid;
error_log stderr notice;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    keepalive_timeout 60s;
    keepalive_requests 10000;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    types { text/html html; application/octet-stream bin; }
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:{port};
        root {dir}/www;
        index index.html;
    }
}
";
    checks::write(&ctx.path("nginx.conf"), ctx.expand(conf).as_bytes());
}

/// sockperf's feed file: one TCP listener.
fn sockperf_feed(ctx: &Ctx) {
    checks::write(
        &ctx.path("feed.txt"),
        ctx.expand("T:127.0.0.1:{port}\n").as_bytes(),
    );
}

/// in.bin (16 MiB random) and the fifo in.fifo the client reads it through.
fn socat_setup(ctx: &Ctx) {
    checks::random_file(&ctx.path("in.bin"), 16 << 20);
    let fifo = ctx.path("in.fifo");
    let _ = std::fs::remove_file(&fifo);
    let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo(3) on a NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(
        rc,
        0,
        "mkfifo {}: {}",
        fifo.display(),
        std::io::Error::last_os_error()
    );
}

// --- checks --------------------------------------------------------------------------------

fn nothing_printed(_: &Ctx, _: &Finished) {}

fn redis_set(_: &Ctx, f: &Finished) {
    checks::require(f, "OK", f.stdout.trim() == "OK");
}

fn redis_get(ctx: &Ctx, f: &Finished) {
    checks::require(
        f,
        &format!("the value set, {}", ctx.rand),
        f.stdout.trim() == ctx.rand,
    );
}

/// The server counted exactly the SETs and GETs sent (both benchmarks and redis-cli),
/// none failed or rejected, and no error reply.
fn redis_counts(_: &Ctx, f: &Finished) {
    let n: u64 = REDIS_N.parse().unwrap();
    let calls = |cmd: &str| -> (u64, u64, u64) {
        let line = f
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
            .unwrap_or_else(|| panic!("no cmdstat_{cmd} in INFO: {}", f.describe()));
        let num = |k: &str| checks::number_after(line, k).unwrap_or(-1.0) as u64;
        (num("calls="), num("failed_calls="), num("rejected_calls="))
    };
    assert_eq!(
        calls("set"),
        (2 * n + 1, 0, 0),
        "SET calls, failed, rejected: {}",
        f.stdout
    );
    assert_eq!(
        calls("get"),
        (2 * n + 1, 0, 0),
        "GET calls, failed, rejected: {}",
        f.stdout
    );
    checks::require(
        f,
        "total_error_replies:0",
        f.stdout
            .lines()
            .any(|l| l.trim() == "total_error_replies:0"),
    );
    checks::require(f, "no errorstat_ line", !f.stdout.contains("errorstat_"));
}

fn web_big(ctx: &Ctx, _: &Finished) {
    checks::same_file(&ctx.path("got-big.bin"), &ctx.path("www/big.bin"));
}

fn web_index_and_big(ctx: &Ctx, f: &Finished) {
    checks::same_file(&ctx.path("got-index.html"), &ctx.path("www/index.html"));
    web_big(ctx, f);
}

fn iperf3_reverse(_: &Ctx, f: &Finished) {
    checks::iperf3(f, &["sum_sent", "sum_received"], 1);
}

fn iperf3_parallel(_: &Ctx, f: &Finished) {
    checks::iperf3(f, &["sum_sent", "sum_received"], 4);
}

fn iperf3_bidir(_: &Ctx, f: &Finished) {
    checks::iperf3(
        f,
        &[
            "sum_sent",
            "sum_received",
            "sum_sent_bidir_reverse",
            "sum_received_bidir_reverse",
        ],
        2,
    );
}

fn socat_after(ctx: &Ctx) {
    checks::same_sha256(&ctx.path("out.bin"), &ctx.path("in.bin"));
}

fn aecho(_: &Ctx, f: &Finished) {
    checks::require(
        f,
        "OK with every byte echoed",
        f.stdout
            .lines()
            .any(|l| l.starts_with(&format!("OK bytes={AECHO_BYTES} "))),
    );
}

// --- the tests -------------------------------------------------------------------------------

fn case(name: &str) -> &'static Case {
    CASES
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case {name} in CASES"))
}

/// One test per case in each combination: `shim_shim::CASE` and
/// `plainclient_shimserver::CASE`.
macro_rules! app_tests {
    ($($case:ident),* $(,)?) => {
        const TESTED: &[&str] = &[$(stringify!($case)),*];

        mod shim_shim {
            use super::*;
            $(
                #[test]
                fn $case() {
                    harness::run(case(stringify!($case)), Combo { client: Side::Shim, server: Side::Shim });
                }
            )*
        }

        mod plainclient_shimserver {
            use super::*;
            $(
                #[test]
                fn $case() {
                    harness::run(case(stringify!($case)), Combo { client: Side::Plain, server: Side::Shim });
                }
            )*
        }
    };
}

app_tests! {
    redis,
    nginx,
    memcached,
    sockperf,
    sockperf_select,
    sockperf_poll,
    sockperf_epoll,
    iperf3_reverse,
    iperf3_parallel,
    iperf3_bidir,
    socat,
    python_http_server,
    python_asyncio_echo,
}

#[test]
fn every_case_has_its_tests() {
    let names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
    assert_eq!(names, TESTED, "CASES and app_tests! list different cases");
}
