//! Socket semantics, shim against kernel TCP: every case of `src/bin/semantics.rs`
//! (one `#[test]` each) runs twice, with both ends plain (the kernel's TCP: the
//! reference) and with both ends shimmed. The two runs must observe exactly the same
//! things (the `obs` lines of each end), and in the shimmed run the data connection
//! must have gone over the fabric under test (`path=shm` on both ends, from the log;
//! `RDMASOCK_CONFORMANCE_FABRIC=kmod` in the VM harness: `path=kmod`).
//!
//! Most cases guard a bug found in review (the comment by each names it); a case fails
//! if the shim regresses. The program's steps are sequenced over a control channel,
//! never by sleeping; its timing checks are upper bounds that only catch hangs.

// Only part of the shared machinery is used here.
#[allow(dead_code, unused_macros)]
mod util;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use util::process::{Finished, Proc};
use util::{Combo, Count, Role, Side, TestEnv, Via};

/// How long one run of a case may take (its steps are bounded at 5 s each).
const RUN_LIMIT: Duration = Duration::from_secs(60);

fn program() -> &'static Path {
    static P: OnceLock<std::path::PathBuf> = OnceLock::new();
    P.get_or_init(|| util::crate_bin("semantics", env!("CARGO_BIN_EXE_semantics")))
}

/// The program's cases: name -> solo (both ends in one process) or not.
fn cases() -> &'static HashMap<String, bool> {
    static CASES: OnceLock<HashMap<String, bool>> = OnceLock::new();
    CASES.get_or_init(|| {
        let out = Command::new(program())
            .arg("list")
            .output()
            .expect("running semantics list");
        assert!(out.status.success(), "semantics list failed: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let (name, kind) = l
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("semantics list: {l:?}"));
                (name.to_string(), kind == "solo")
            })
            .collect()
    })
}

/// Settings a case needs in its shimmed run (the plain run ignores them anyway).
fn settings(case: &str) -> &'static [(&'static str, &'static str)] {
    match case {
        // A 4 KiB ring, so that the spliced bytes straddle the ring's wrap point.
        "splice_respects_len" => &[("RDMASOCK_RING_SIZE", "4096")],
        // The default deadline (a harness on a slow machine may raise it for the others).
        "blocking_send_before_accept_is_queued" => &[("RDMASOCK_CLAIM_TIMEOUT_MS", "200")],
        // A claim timeout far above the program's "promptly" (1 s): waiting for the
        // claim cannot pass for prompt.
        "nonblocking_first_use_does_not_wait" | "nonblocking_connect_pollout_in_a_loop" => {
            &[("RDMASOCK_CLAIM_TIMEOUT_MS", "5000")]
        }
        _ => &[],
    }
}

/// Cases whose connection may (or must) stay on TCP under the shim, and why: a client
/// that must send before anyone accepted gives the fabric up rather than fail or stall.
fn path_of(case: &str, role: Role) -> Option<Vec<(&'static str, Option<&'static str>)>> {
    let on: (&str, Option<&str>) = (util::fabric(), None);
    // The client withdrew its offer before the accept, which then finds none.
    const SERVER_TCP: (&str, Option<&str>) = ("tcp", Some("peer-not-shim"));
    match (case, role) {
        // The write before the accept may find the kernel still connecting (the write is
        // the kernel's, and the offer stays open for the claim) or connected.
        ("nonblocking_first_use_does_not_wait", Role::Client) => Some(vec![on, ("tcp", Some("write-before-accept"))]),
        ("nonblocking_first_use_does_not_wait", Role::Server) => Some(vec![on, SERVER_TCP]),
        ("dontwait_send_before_accept_is_queued", Role::Client) => Some(vec![("tcp", Some("write-before-accept"))]),
        ("blocking_send_before_accept_is_queued", Role::Client) => Some(vec![("tcp", Some("claim-timeout"))]),
        ("dontwait_send_before_accept_is_queued" | "blocking_send_before_accept_is_queued", Role::Server) => Some(vec![SERVER_TCP]),
        // A slow machine (the VM harness, under TCG: a claim takes milliseconds) may see
        // any non-blocking first write give the fabric up: TCP, as the rule says, and
        // the transcripts must still match.
        _ if std::env::var_os("RDMASOCK_CONFORMANCE_SLOW").is_some() => Some(match role {
            Role::Client => vec![on, ("tcp", Some("write-before-accept"))],
            Role::Server => vec![on, SERVER_TCP],
        }),
        _ => None,
    }
}

/// One run of a case under one combination.
struct Run {
    /// "client: ..." and "server: ..." (or "solo: ...") observation lines, in order
    /// per end, then each end's ending.
    transcript: Vec<String>,
    outputs: Vec<(Role, Finished)>,
    /// IP:PORT of the server's listener.
    endpoint: String,
}

impl Run {
    fn describe(&self) -> String {
        self.outputs
            .iter()
            .map(|(_, f)| f.describe())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The `obs` lines of one end, and how it ended.
fn transcript(end: &str, out: &Finished) -> Vec<String> {
    let mut t: Vec<String> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("obs "))
        .map(|l| format!("{end}: {l}"))
        .collect();
    let ending = if out.stdout.lines().any(|l| l == "DONE") {
        "ran to the end".to_string()
    } else if let Some(l) = out
        .stdout
        .lines()
        .find(|l| l.starts_with("HUNG ") || l.starts_with("FAILED "))
    {
        l.to_string()
    } else {
        format!("stopped early ({})", out.status)
    };
    t.push(format!("{end}: [{ending}]"));
    t
}

fn command(env: &TestEnv, side: Side, case: &str, args: &[&str]) -> Command {
    let mut cmd = env.command(side, Via::Preload, program(), args);
    cmd.env("SEMANTICS_SCRATCH", env.scratch());
    for (k, v) in settings(case) {
        cmd.env(k, v);
    }
    cmd
}

fn run(case: &str, combo: Combo) -> (TestEnv, Run) {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let tag = if combo.any_shim() { "shim" } else { "plain" };
    let env = TestEnv::new(&format!("semantics_{case}_{tag}"), combo);
    let solo = *cases()
        .get(case)
        .unwrap_or_else(|| panic!("the semantics program has no case {case:?}"));
    let deadline = Instant::now() + RUN_LIMIT;
    let run = if solo {
        let p = Proc::spawn(
            &format!("semantics solo {case} ({tag})"),
            command(&env, combo.client, case, &["solo", case]),
        );
        let out = p.finish(deadline);
        let port = out
            .line("PORT ")
            .trim_start_matches("PORT ")
            .trim()
            .to_string();
        Run {
            transcript: transcript("solo", &out),
            endpoint: format!("127.0.0.1:{port}"),
            outputs: vec![(Role::Client, out)],
        }
    } else {
        let ctl = format!(
            "rdmasock-semantics-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let server = Proc::spawn(
            &format!("semantics server {case} ({tag})"),
            command(&env, combo.server, case, &["server", case, &ctl]),
        );
        let port = server.ready_port().to_string();
        let client = Proc::spawn(
            &format!("semantics client {case} ({tag})"),
            command(&env, combo.client, case, &["client", &port, case, &ctl]),
        );
        let c = client.finish(deadline);
        let s = server.finish(deadline);
        let mut t = transcript("client", &c);
        t.extend(transcript("server", &s));
        Run {
            transcript: t,
            endpoint: format!("127.0.0.1:{port}"),
            outputs: vec![(Role::Client, c), (Role::Server, s)],
        }
    };
    (env, run)
}

/// The transcripts side by side, differing lines marked.
fn side_by_side(plain: &[String], shim: &[String]) -> String {
    let w = plain.iter().map(|l| l.len()).max().unwrap_or(0).min(90);
    let mut s = format!("  {:w$}   {}\n", "plain/plain (kernel TCP)", "shim/shim");
    for i in 0..plain.len().max(shim.len()) {
        let a = plain.get(i).map_or("", String::as_str);
        let b = shim.get(i).map_or("", String::as_str);
        let mark = if a == b { ' ' } else { '!' };
        s.push_str(&format!("{mark} {a:w$} | {b}\n"));
    }
    s
}

/// Runs `case` under plain/plain and shim/shim and compares.
fn check(case: &str) {
    let t0 = Instant::now();
    let (plain_env, plain) = run(
        case,
        Combo {
            client: Side::Plain,
            server: Side::Plain,
        },
    );
    for (_, out) in &plain.outputs {
        assert!(
            out.status.success() && out.stdout.lines().any(|l| l == "DONE"),
            "{case}: the reference run (plain/plain, kernel TCP) did not run to its end:\n{}",
            out.describe()
        );
    }
    let (shim_env, shim) = run(
        case,
        Combo {
            client: Side::Shim,
            server: Side::Shim,
        },
    );
    eprintln!("{case}: both runs took {:?}", t0.elapsed());

    if let Some(i) = (0..plain.transcript.len().max(shim.transcript.len()))
        .find(|&i| plain.transcript.get(i) != shim.transcript.get(i))
    {
        // Everything worth keeping is in the message below: tidy up first (this
        // reports, on its own, anything the shim left registered).
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            plain_env.finish();
            shim_env.finish();
        }));
        panic!(
            "{case}: the shim behaves differently from kernel TCP.\n\
             first difference (line {}):\n  plain/plain: {}\n  shim/shim:   {}\n\n{}\n\
             === shim/shim output ===\n{}",
            i + 1,
            plain.transcript.get(i).map_or("(nothing)", String::as_str),
            shim.transcript.get(i).map_or("(nothing)", String::as_str),
            side_by_side(&plain.transcript, &shim.transcript),
            shim.describe()
        );
    }
    for (_, out) in &shim.outputs {
        out.assert_success();
    }
    // The data connection went over the fabric, on both ends (a solo case logs both
    // in one process); the plain run logged nothing.
    for (env, r) in [(&plain_env, &plain), (&shim_env, &shim)] {
        for (role, out) in &r.outputs {
            let roles: &[Role] = if r.outputs.len() == 1 {
                &[Role::Client, Role::Server]
            } else {
                std::slice::from_ref(role)
            };
            for &role in roles {
                match path_of(case, role) {
                    Some(allowed) if env.combo.client == Side::Shim => {
                        env.check_decisions_any(role, out, &r.endpoint, Count::Exactly(1), &allowed)
                    }
                    _ => env.check_decisions(role, out, &r.endpoint, Count::Exactly(1)),
                }
            }
        }
    }
    plain_env.finish();
    shim_env.finish();
}

macro_rules! semantics_cases {
    ($($(#[$doc:meta])* $case:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            #[test]
            fn $case() {
                check(stringify!($case));
            }
        )*

        /// Every case of the program has a test here, and every test a case.
        #[test]
        fn every_case_has_a_test() {
            let mut here = vec![$(stringify!($case)),*];
            let mut there: Vec<&str> = cases().keys().map(String::as_str).collect();
            here.sort_unstable();
            there.sort_unstable();
            assert_eq!(here, there, "the cases of tests/semantics.rs and of `semantics list`");
        }
    };
}

semantics_cases! {
    /// A thread blocked in recv stays armed when another waiter (poll, 200 ms) times
    /// out and leaves: the peer's later send must wake it (review t1, lost wake-up).
    waiter_leaving_keeps_others_armed,
    /// shutdown(SHUT_RDWR) from another thread wakes a thread blocked in recv, which
    /// returns 0 (review t3).
    shutdown_wakes_blocked_reader,
    /// splice(socket -> pipe, 1 MiB) with 300 KB waiting and a 4 KiB pipe returns what
    /// fits instead of blocking on the full pipe (review t5).
    splice_into_full_pipe_returns,
    /// splice(len 20) across the ring's wrap point moves at most 20 bytes and the next
    /// recv continues after them (review t6; 4 KiB ring).
    splice_respects_len,
    /// splice with no pipe on either side (file -> socket, socket -> file) fails with
    /// EINVAL and moves nothing.
    splice_without_pipe_fails,
    /// sendfile from a directory, an O_WRONLY file or a closed fd fails at once with
    /// TCP's errno; a good source still works after (review t7).
    sendfile_from_bad_source_fails,
    /// The peer sends 5 bytes and closes with our byte unread (RST): recv(100,
    /// MSG_WAITALL) returns the 5, the next recv ECONNRESET, then 0 (review t4).
    reset_after_partial_read,
    /// The peer closes with SO_LINGER {1, 0}: its data, then ECONNRESET once, then 0;
    /// SO_ERROR afterwards is 0 (review t12).
    linger_zero_close_is_reset,
    /// As above, reading SO_ERROR first: it reports (and consumes) the reset, so the
    /// reads see the data and then 0 (review t12, SO_ERROR).
    linger_zero_so_error_first,
    /// poll(0) reports the peer's reset (ERR|HUP|RDHUP) at once, also while its data is
    /// still unread.
    poll_sees_peer_reset_behind_data,
    /// poll(0) reports the peer's orderly close (RDHUP) at once, also while its data is
    /// still unread.
    poll_sees_peer_close_behind_data,
    /// A non-blocking client's poll(0), recv and write before the server accepts
    /// return at once; the data arrives intact after the accept (review t2).
    nonblocking_first_use_does_not_wait,
    /// poll(POLLOUT) on a non-blocking connect reports OUT as soon as the handshake is
    /// done, before the server accepts.
    nonblocking_connect_pollout_in_a_loop,
    /// A send(MSG_DONTWAIT) right after a blocking connect, before the server accepts
    /// (CPython's testSendmsgDontWait) is queued whole, as TCP does: the client gives up
    /// the fabric for that connection instead of failing with EAGAIN.
    dontwait_send_before_accept_is_queued,
    /// A blocking send before the accept, in the thread that accepts later: it returns
    /// (after the claim deadline, 200 ms) with every byte queued on TCP.
    blocking_send_before_accept_is_queued,
    /// shutdown(SHUT_WR) one way then the other: EOF, EPIPE, readiness as TCP.
    half_close_both_ways,
    /// MSG_PEEK leaves the data in place; FIONREAD agrees; EOF after a peek.
    peek_then_read,
    /// recv(MSG_PEEK|MSG_WAITALL) waits until the whole length is there.
    peek_waitall_waits_for_all,
    /// recv(MSG_WAITALL) gathers two writes; stops at EOF with what it has.
    waitall_across_writes,
    /// MSG_DONTWAIT and O_NONBLOCK: EAGAIN on an empty socket and on a full one;
    /// every byte written before the EAGAIN arrives.
    dontwait_empty_is_eagain,
    /// SO_RCVTIMEO / SO_SNDTIMEO: EAGAIN when nothing moved, the partial count when
    /// something did.
    rcvtimeo_is_eagain,
    /// SO_RCVTIMEO limits the whole recv(MSG_WAITALL), not each wait inside it: fed
    /// a byte every 40 ms, it still returns when its 250 ms are up (review: one
    /// timeout per call).
    rcvtimeo_is_one_limit_per_call,
    /// Writing after the peer closed: accepted once, then EPIPE with SIGPIPE (none
    /// with MSG_NOSIGNAL).
    sigpipe_after_peer_close,
    /// FIONREAD counts the bytes waiting, unchanged by MSG_PEEK, 0 at EOF.
    fionread_counts_bytes,
}
