//! The exported symbols of librdmasock.so are exactly the hook list in src/hooks.rs
//! (nothing missing, nothing extra beyond what the Rust toolchain always exports).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

/// The names declared inside `hooks! { ... }`, and the jump hooks of vfork.rs.
fn declared() -> BTreeSet<String> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/hooks.rs")).unwrap();
    let body = src.split("hooks! {").nth(1).expect("hooks! invocation").split("\n}\n").next().unwrap();
    let jumps = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/vfork.rs")).unwrap();
    body.lines()
        .filter_map(|l| l.trim().strip_prefix("fn "))
        .chain(jumps.split("jump_hooks! {").nth(1).expect("jump_hooks! invocation").lines().filter_map(|l| l.trim().strip_prefix("fn ")))
        .map(|l| l.split('(').next().unwrap().trim().to_string())
        .collect()
}

/// The library cargo built for this test run (target/<profile>/librdmasock.so).
fn library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    profile_dir.join("librdmasock.so")
}

#[test]
fn exported_symbols_match_the_hook_list() {
    let lib = library();
    assert!(lib.exists(), "{} not built", lib.display());
    let out = Command::new("nm").args(["-D", "--defined-only"]).arg(&lib).output().expect("nm (binutils) installed");
    assert!(out.status.success());
    let exported: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, kind, name) = (f.next()?, f.next()?, f.next()?);
            // Functions only (T), without version suffixes.
            (kind == "T").then(|| name.split('@').next().unwrap().to_string())
        })
        // The toolchain's own exports, not ours.
        .filter(|n| !n.starts_with("rust_") && !n.starts_with("__rust") && !n.starts_with("_ZN"))
        .collect();
    let declared = declared();
    let missing: Vec<_> = declared.difference(&exported).collect();
    let extra: Vec<_> = exported.difference(&declared).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing exports: {missing:?}; unexpected exports: {extra:?}");
}

#[test]
fn the_issue_list_is_covered() {
    let want = "socket bind listen accept accept4 connect shutdown close close_range dup dup2 dup3 fcntl fcntl64 \
        ioctl getsockopt setsockopt getsockname getpeername read readv write writev recv recvfrom recvmsg recvmmsg \
        send sendto sendmsg sendmmsg sendfile sendfile64 splice __read_chk __recv_chk __recvfrom_chk";
    let declared = declared();
    for name in want.split_whitespace() {
        assert!(declared.contains(name), "{name} is not intercepted");
    }
}
