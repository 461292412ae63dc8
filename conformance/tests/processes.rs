//! fork, exec and nested epoll, as whole programs: each Python script (run with Debian's
//! /usr/bin/python3) prints what it observed; under the shim (both ends, fabric) it must
//! print exactly what it prints without it, and the log must show the fabric was used.

use std::path::PathBuf;
use std::process::Command;

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py").join(name)
}

fn target_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().to_path_buf()
}

fn library() -> PathBuf {
    let lib = target_dir().join("release/librdmasock.so");
    if !lib.exists() {
        let st = Command::new(env!("CARGO"))
            .args(["build", "--release", "-q", "-p", "rdmasock", "--target-dir"])
            .arg(target_dir())
            .status()
            .unwrap();
        assert!(st.success(), "building the shim failed");
    }
    lib
}

/// Run `name` with `args` plain and under the shim; compare stdout; return the shim run's
/// stderr (the shim's log).
fn compare(name: &str, args: &[&str]) -> String {
    compare_with(name, args, &[])
}

/// As [`compare`], with settings for both runs (RDMASOCK_* ones matter only to the shim's).
fn compare_with(name: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let log = observe(name, args, env);
    assert!(log.contains("path=shm"), "{name}: no fabric connection was made:\n{log}");
    log
}

/// Run `name` plain and under the shim (RDMASOCK_LOG=info) with settings `env` (which may
/// name the RDMASOCK_DIR); the two runs must print the same. Returns the shim's log.
fn observe(name: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let run = |shim: bool| {
        let dir = tempdir();
        let mut cmd = Command::new("timeout");
        cmd.args(["60", "/usr/bin/python3"]).arg(script(name)).args(args).env("RDMASOCK_DIR", &dir).env_remove("LD_PRELOAD").envs(env.iter().copied());
        if shim {
            cmd.env("LD_PRELOAD", library()).env("RDMASOCK_LOG", "info");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{name} {args:?} (shim: {shim}) failed: {}", String::from_utf8_lossy(&out.stderr));
        let _ = std::fs::remove_dir_all(&dir);
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (plain, _) = run(false);
    let (shim, log) = run(true);
    assert_eq!(plain, shim, "{name}: the shim changed what the program observed");
    log
}

fn tempdir() -> PathBuf {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let d = std::env::temp_dir().join(format!("rdmasock-proc-{}-{n}", std::process::id()));
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    d
}

#[test]
fn fork_parent_and_child_write_in_turn() {
    compare("fork_both_write.py", &[]);
}

#[test]
fn fork_before_first_use_then_child_and_parent_write() {
    compare("fork_before_first_use.py", &[]);
}

/// RDMASOCK_LOG=summary: no line per connection, one line at exit with the counts.
#[test]
fn log_summary_counts_the_decisions_at_exit() {
    let dir = tempdir();
    let out = Command::new("timeout")
        .args(["60", "/usr/bin/python3"])
        .arg(script("summary.py"))
        .env("RDMASOCK_DIR", &dir)
        .env("LD_PRELOAD", library())
        .env("RDMASOCK_LOG", "summary")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let (stdout, log) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "summary.py failed: {log}");
    assert_eq!(stdout, "ping 0\nping 1\nping 2\n");
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with("rdmasock[")).collect();
    assert_eq!(lines.len(), 1, "one line, at exit: {log}");
    assert!(lines[0].ends_with(": summary connect shm=3 tcp=0 accept shm=3 tcp=0"), "{log}");
}

#[test]
fn exec_into_a_program_without_the_shim() {
    compare("exec_keeps_stream.py", &["plain"]);
}

#[test]
fn exec_into_a_program_with_the_shim() {
    compare("exec_keeps_stream.py", &["shim"]);
}

#[test]
fn nested_epoll_and_select_on_an_epoll_fd() {
    compare("nested_epoll.py", &[]);
}

#[test]
fn scm_rights_pass_and_close() {
    compare("pass_fd.py", &["close"]);
}

#[test]
fn scm_rights_pass_and_keep_writing() {
    compare("pass_fd.py", &["keep"]);
}

/// A program of conformance/c/, compiled as the other C programs are (-O2
/// -D_FORTIFY_SOURCE=2), once per test binary.
fn c_prog(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = built.iter().find(|(n, _)| n == name) {
        return p.clone();
    }
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("c/{name}.c"));
    let st = Command::new("cc")
        .args(["-O2", "-D_FORTIFY_SOURCE=2", "-Wall", "-Werror", "-pthread", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success(), "compiling {name}.c failed");
    built.push((name.to_string(), out.clone()));
    out
}

/// Run the C program `prog` with `args` plain and under the shim; the transcripts must
/// be identical, and the shim's run must have used the fabric.
fn compare_prog(prog: &str, args: &[&str]) -> String {
    let run = |shim: bool| {
        let dir = tempdir();
        let mut cmd = Command::new("timeout");
        cmd.arg("120").arg(c_prog(prog)).args(args).env("RDMASOCK_DIR", &dir).env_remove("LD_PRELOAD");
        if shim {
            cmd.env("LD_PRELOAD", library()).env("RDMASOCK_LOG", "summary");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{prog} {args:?} (shim: {shim}) failed ({}): {}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let _ = std::fs::remove_dir_all(&dir);
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (plain, _) = run(false);
    let (shim, log) = run(true);
    assert_eq!(plain, shim, "{prog} {args:?}: the shim changed what the program observed");
    let on_fabric = log.split_whitespace().any(|w| w.strip_prefix("shm=").is_some_and(|n| n.parse::<u64>().is_ok_and(|n| n > 0)));
    assert!(on_fabric, "{prog} {args:?}: no fabric connection was made:\n{log}");
    shim
}

/// Run `procsem CASE` plain and under the shim; the transcripts must be identical.
fn compare_c(case: &str) {
    compare_prog("procsem", &[case]);
}

/// Issue 14.2: an event loop that unregisters a connection after reading it to EOF (the
/// server wrote its reply and closed at once, so the fabric connection went back to TCP
/// while registered) gets 0 from EPOLL_CTL_DEL, as APR's pollset needs, and nothing of
/// the closed fd afterwards.
#[test]
fn epoll_del_after_the_peer_wrote_and_closed() {
    let out = compare_prog("epollcheck", &["unreg", "50"]);
    assert!(out.contains("EPOLL_CTL_DEL ok 50 "), "{out}");
}

/// Issue 14.1: threads with an epoll set each, and one set shared by all, under churn
/// (close with and without DEL, DEL and re-ADD, MOD, connections the server ends at
/// once): no epoll_wait ever returns a data word the program did not register (the
/// shim's doorbells once came back to the application, which crashed on them). Run
/// several times: the race it guards against was hit in about one run in five.
#[test]
fn epoll_threads_never_see_a_foreign_event() {
    for conns in ["1", "2", "8", "2", "1"] {
        let out = compare_prog("epollcheck", &["mt", "4", conns, "1500"]);
        assert!(out.contains("foreign events 0, failed DEL 0, MOD 0, ADD 0, bad replies 0"), "{out}");
    }
}

#[test]
fn signals_interrupt_and_restart_as_linux() {
    compare_c("signals");
}

#[test]
fn socket_options_as_linux() {
    compare_c("sockopts");
}

#[test]
fn dup_dup2_dup3_over_fabric_fds() {
    compare_c("dups");
}

#[test]
fn posix_spawn_child_writes_to_an_inherited_socket() {
    compare_c("spawn");
}

#[test]
fn vfork_child_writes_to_an_inherited_socket() {
    compare_c("vfork");
}

/// Timeouts set before the connection existed (on the listener, on the client before
/// connect) or through a dup bound the fabric's waits as they bound TCP's.
#[test]
fn timeouts_set_before_the_connection_or_through_a_dup() {
    compare_c("timeouts");
}

/// A clone(CLONE_VM) child runs in our memory: its closes and dup2s are its own.
#[test]
fn clone_vm_child_leaves_the_parents_connection_alone() {
    compare_c("clone");
}

/// Connections that follow each other between two processes end as on Linux (EOF to a
/// sleeping reader, on either side, and after the server is killed), although under the
/// shim no doorbell hangs up when one ends in order (docs/protocol.md §1.4).
#[test]
fn back_to_back_connections_end_as_on_linux() {
    compare("kept_doorbells.py", &[]);
}

/// Issue 14.3: `rdmasock stat` lists every connection once with the processes holding
/// it (a fork-per-connection server's children; a socket shared across fork), and a
/// connection that moved back to kernel TCP as tcp (moved-to-tcp) with the kernel's
/// byte count. The script checks the rows itself (there is no plain run to compare).
#[test]
fn stat_lists_forked_holders_and_moved_connections() {
    let lib = library();
    let dir = tempdir();
    let out = Command::new("timeout")
        .args(["60", "/usr/bin/python3"])
        .arg(script("stat_truth.py"))
        .arg(lib.with_file_name("rdmasock"))
        .env("RDMASOCK_DIR", &dir)
        .env("LD_PRELOAD", &lib)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok", "stat_truth.py: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// Issue 14.4: a SIGKILLed client's registry records (its connection table) are gone
/// once the server has seen its end and made its next connection.
#[test]
fn records_of_a_killed_process_go_with_the_next_connection() {
    let lib = library();
    let dir = tempdir();
    let out = Command::new("timeout")
        .args(["60", "/usr/bin/python3"])
        .arg(script("killed_records.py"))
        .env("RDMASOCK_DIR", &dir)
        .env("LD_PRELOAD", &lib)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "killed_records.py: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// Issue 21.8: buffers that are not user memory give EFAULT (when there are bytes to
/// copy), and zero lengths behave as Linux's (recv waits, or EAGAIN; read is 0 at once).
#[test]
fn bad_buffers_and_zero_lengths_as_linux() {
    compare_c("apiedge");
}

/// Issue 21.1: a client that writes a live thread id into its segment's lock words for
/// the server's side (which a forked server takes for its shared streams) must not stop
/// the server serving its other clients: the side locks live where no peer can write.
#[test]
fn a_client_holding_segment_locks_does_not_stop_the_server() {
    let log = compare("attack_locks.py", &[]);
    assert!(log.contains("scribbled"), "the attacker found no segment to write:\n{log}");
}

/// Issue 14.5: peers that write random bytes over every shared page they map (segment
/// header, indices, flags, wait words, ring data; the listener's mailbox) in the middle
/// of their traffic, and a peer stopped (SIGSTOP) in the middle of a flood: the victim
/// (one select loop) survives and keeps serving honest clients.
#[test]
fn peers_scribbling_on_shared_memory_or_stopped_do_not_hurt_the_server() {
    let log = compare("attack_scribble.py", &[]);
    assert!(log.contains("scribbled"), "the attackers found nothing to write:\n{log}");
}

/// A worker that dropped privileges after its master registered the listener (nginx,
/// apache): at most the first client waits for a claim that cannot come; the worker
/// marks the listener's mailbox and every later client stays on TCP at once.
#[test]
fn a_worker_of_another_user_sends_its_clients_to_tcp_at_once() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (setuid to nobody)");
        return;
    }
    let log = observe("dropped_privileges.py", &[], &[]);
    let connects: Vec<&str> = log.lines().filter(|l| l.contains("]: connect fd=")).collect();
    let waited = connects.iter().filter(|l| l.contains("reason=claim-timeout")).count();
    let at_once = connects.iter().filter(|l| l.contains("reason=peer-other-uid")).count();
    assert!(connects.len() == 10 && waited <= 1 && at_once >= 9, "{log}");
}

/// Issue 15: two processes started with different RDMASOCK_TRANSPORT settings agree on
/// a fabric both allow, or the client stays on TCP at once with its reason (never
/// claim-timeout: no offer waits out the deadline). This host has shm only; the
/// driver's combinations run in the VM (mailbox-driver/test/init, "pair").
#[test]
fn different_transport_settings_agree_or_stay_on_tcp_at_once() {
    let cases: [(&str, &str, &str); 6] = [
        ("shm", "auto", "path=shm"),
        ("kmod,shm", "shm,kmod", "path=shm"),
        // kmod is not here: the client has no fabric the listener could serve
        ("auto", "kmod", "reason=no-common-fabric"),
        // ... nor the server: it announces nothing
        ("kmod", "auto", "reason=no-shim-listener"),
        ("tcp", "shm", "reason=no-shim-listener"),
        ("shm", "tcp", "reason=forced-tcp"),
    ];
    for (server, client, want) in cases {
        let log = observe("two_settings.py", &[server, client], &[]);
        let connects: Vec<&str> = log.lines().filter(|l| l.contains("]: connect fd=")).collect();
        assert!(connects.len() == 1 && connects[0].contains(want), "server {server}, client {client}: want {want}:\n{log}");
        assert!(!log.contains("claim-timeout"), "{log}");
        if want == "path=shm" {
            assert!(log.lines().any(|l| l.contains("]: accept fd=") && l.contains("path=shm")), "{log}");
        }
    }
}

/// Issue 21.4: a FIFO named like a registry record makes no client block (records are
/// opened non-blocking and must be regular files).
#[test]
fn a_fifo_named_like_a_record_blocks_nobody() {
    compare("fifo_record.py", &[]);
}

/// Issue 21.3: truncating the registry's files (a process's connection-table record
/// among them) kills nobody: the table lives in a sealed memfd the record only names.
#[test]
fn truncated_registry_files_kill_nobody() {
    compare("truncated_records.py", &[]);
}

/// Issue 14.5: close(2) while another thread is blocked in recv on the socket, as Linux.
#[test]
fn close_while_another_thread_is_blocked_in_recv() {
    compare_c("closewhileblocked");
}

/// Issue 14.5: garbage in every RDMASOCK_* setting changes nothing the program sees
/// (each falls back to its default; the connection still uses the fabric).
#[test]
fn garbage_settings_change_nothing() {
    compare_with(
        "fork_both_write.py",
        &[],
        &[
            ("RDMASOCK_RING_SIZE", "12345xyz"),
            ("RDMASOCK_SPIN_US", "-7"),
            ("RDMASOCK_CLAIM_TIMEOUT_MS", "\u{1F600}"),
            ("RDMASOCK_TRANSPORT", "warp-drive"),
            ("RDMASOCK_OFF", "maybe"),
        ],
    );
}

/// Issue 21.5: a registry under a directory another user owns (who could swap it and
/// carry our connections over rings of theirs) is refused: connections stay on TCP
/// (registry-unavailable), and the program sees what it sees without the shim.
#[test]
fn a_registry_below_another_users_directory_is_refused() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (a directory owned by nobody)");
        return;
    }
    let parent = tempdir();
    std::fs::set_permissions(&parent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // SAFETY: chown on a path we made.
    let c = std::ffi::CString::new(parent.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
    let reg = parent.join("reg");
    std::fs::create_dir(&reg).unwrap();
    std::fs::set_permissions(&reg, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let log = observe("fork_both_write.py", &[], &[("RDMASOCK_DIR", reg.to_str().unwrap())]);
    let _ = std::fs::remove_dir_all(&parent);
    assert!(!log.contains("path=shm") && log.contains("reason=registry-unavailable"), "{log}");
}

/// Issue 21.2: a peer that leaves the ring (its LEFT flag) with megabytes of the
/// server's bytes unread and never reads its kernel socket: the server's move back to
/// TCP re-sends without blocking, and goes on serving its other clients (it used to sit
/// in a blocking send). 16 MiB rings, so that more is owed than the kernel queues.
#[test]
fn a_peer_leaving_with_a_full_ring_does_not_stall_the_server() {
    let log = compare_with("attack_left.py", &[], &[("RDMASOCK_RING_SIZE", "16777216")]);
    assert!(log.contains("left"), "the attacker found no segment:\n{log}");
}

/// Issue 21.6: another user who makes `/dev/shm/rdmasock-<uid>` before its owner does
/// must not turn the fabric off for that user where a place exists that nobody else
/// can take: root's registry is `/run/rdmasock`, another user's falls back to
/// `/run/user/<uid>/rdmasock` (the login manager's runtime directory). Where no such
/// place exists the connections stay on TCP (registry-unavailable) and `rdmasock stat`
/// names the user who took the name. Each run is compared with the same program
/// without the shim.
#[test]
fn a_registry_name_taken_by_another_user_takes_nothing_away() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (directories of other users)");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let lib = library();
    let stat_bin = lib.with_file_name("rdmasock");
    let make_dir = |path: &str, uid: u32| {
        std::fs::create_dir(path).unwrap();
        std::fs::set_permissions(path, PermissionsExt::from_mode(0o700)).unwrap();
        let c = std::ffi::CString::new(path).unwrap();
        // SAFETY: chown on a NUL-terminated path we made.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), uid, uid) }, 0);
    };
    // `as_uid`: None runs as root; the default registry (no RDMASOCK_DIR) either way.
    let run = |as_uid: Option<u32>, shim: bool, args: &[&str]| {
        let mut cmd = Command::new("timeout");
        cmd.arg("60");
        if let Some(u) = as_uid {
            cmd.args(["setpriv", &format!("--reuid={u}"), &format!("--regid={u}"), "--clear-groups"]);
        }
        cmd.args(args).env_remove("RDMASOCK_DIR").env_remove("LD_PRELOAD").env_remove("RDMASOCK_TRANSPORT");
        if shim {
            cmd.env("LD_PRELOAD", &lib).env("RDMASOCK_LOG", "info");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{args:?} as {as_uid:?} (shim {shim}): {}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let prog = script("fork_both_write.py");
    let prog = ["/usr/bin/python3", prog.to_str().unwrap()];
    let compared = |as_uid: Option<u32>| {
        let (plain, _) = run(as_uid, false, &prog);
        let (shim, log) = run(as_uid, true, &prog);
        assert_eq!(plain, shim, "as {as_uid:?}: the shim changed what the program observed");
        log
    };
    let stat = |as_uid: Option<u32>| {
        let (json, err) = run(as_uid, false, &[stat_bin.to_str().unwrap(), "stat", "--json"]);
        format!("{json}{err}")
    };

    // Root: `/dev/shm/rdmasock-0` taken by nobody (unless root's own is there already).
    let root_taken = "/dev/shm/rdmasock-0";
    let planted = !std::path::Path::new(root_taken).exists();
    if planted {
        make_dir(root_taken, 65534);
    }
    let log = compared(None);
    let st = stat(None);
    if planted {
        let _ = std::fs::remove_dir(root_taken);
    }
    assert!(log.contains("path=shm"), "root: not on the fabric:\n{log}");
    if std::path::Path::new("/run").is_dir() {
        assert!(st.contains("\"registry\":\"/run/rdmasock\""), "root's registry is not /run/rdmasock:\n{st}");
    }

    // Another user (nobody, 65534) whose name 65533 took first.
    let taken = "/dev/shm/rdmasock-65534";
    let runtime = "/run/user/65534";
    if std::path::Path::new(runtime).exists() {
        eprintln!("skipped the second half: {runtime} exists (a session of that user?)");
        return;
    }
    let _ = std::fs::remove_dir_all(taken);
    make_dir(taken, 65533);
    let made_run_user = !std::path::Path::new("/run/user").exists();
    if made_run_user {
        std::fs::create_dir_all("/run/user").unwrap();
    }
    let cleanup = || {
        let _ = std::fs::remove_dir_all(runtime);
        let _ = std::fs::remove_dir_all(taken);
        if made_run_user {
            let _ = std::fs::remove_dir("/run/user");
        }
    };
    let no_place = compared(Some(65534));
    let no_place_stat = stat(Some(65534));
    make_dir(runtime, 65534);
    let moved = compared(Some(65534));
    let moved_stat = stat(Some(65534));
    cleanup();
    assert!(!no_place.contains("path=shm") && no_place.contains("reason=registry-unavailable"), "{no_place}");
    assert!(no_place_stat.contains("owned by uid 65533"), "stat does not say who took the name:\n{no_place_stat}");
    assert!(moved.contains("path=shm"), "with a runtime directory, still not on the fabric:\n{moved}");
    assert!(moved_stat.contains("\"registry\":\"/run/user/65534/rdmasock\"") && moved_stat.contains("owned by uid 65533"), "{moved_stat}");
}
