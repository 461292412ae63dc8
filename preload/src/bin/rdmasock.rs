//! The rdmasock command: `rdmasock stat [--json]` lists the current user's live
//! connections (each once, with every process holding it, its path and the bytes moved
//! on the fabric and on kernel TCP); `rdmasock run [--] CMD ARGS...` runs a program with the library preloaded;
//! `rdmasock bench [ARGS...]` runs the benchmark harness (`rdmasock-bench`, built by
//! `cargo build --release -p rdmasock-bench`, found next to this executable).

use rdmasock_transport::config::Config;
use rdmasock_transport::registry::Registry;
use rdmasock_transport::stats;
use std::os::unix::process::CommandExt;
use std::process::{exit, Command};

const USAGE: &str = "usage: rdmasock stat [--json]\n       rdmasock run [--] CMD [ARGS...]\n       rdmasock bench [--quick] [ARGS...]   (rdmasock bench --help)\n";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("stat") => stat(args[1..].iter().any(|a| a == "--json")),
        Some("run") => run(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("-h") | Some("--help") => print!("{USAGE}"),
        _ => {
            eprint!("{USAGE}");
            exit(2);
        }
    }
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn stat(json: bool) {
    let cfg = Config::from_env();
    let mut registry_error = None;
    let mut used = None;
    let mut passed_over = Vec::new();
    let rows = match Registry::open_first(&cfg.registry_dirs()) {
        Ok((reg, passed)) => {
            for (d, e) in passed {
                let why = registry_trouble(&d).unwrap_or_else(|| e.to_string());
                eprintln!("rdmasock: registry {d}: {why}: using {} instead", reg.dir());
                passed_over.push(format!("{{\"dir\":{},\"why\":{}}}", json_str(&d), json_str(&why)));
            }
            used = Some(reg.dir().to_string());
            reg.sweep();
            stats::read_all(&reg)
        }
        Err(passed) => {
            let mut whys = Vec::new();
            for (d, e) in passed {
                let why = registry_trouble(&d).unwrap_or_else(|| e.to_string());
                eprintln!("rdmasock: registry {d}: {why}");
                passed_over.push(format!("{{\"dir\":{},\"why\":{}}}", json_str(&d), json_str(&why)));
                whys.push(format!("{d}: {why}"));
            }
            eprintln!("rdmasock: no registry usable: the fabric is off for this user's programs (their connections stay on TCP, reason registry-unavailable)");
            registry_error = Some(whys.join("; "));
            Vec::new()
        }
    };
    if json {
        let items: Vec<String> = rows
            .iter()
            .map(|r| {
                let holders: Vec<String> = r.holders.iter().map(|(p, f)| format!("{{\"pid\":{p},\"fd\":{f}}}")).collect();
                format!(
                    "{{\"pid\":{},\"fd\":{},\"holders\":[{}],\"role\":{},\"path\":{},\"reason\":{},\"local\":{},\"peer\":{},\"bytes_in\":{},\"bytes_out\":{}}}",
                    r.pid(), r.fd(), holders.join(","), json_str(r.role), json_str(r.path), json_str(r.reason),
                    json_str(&r.local.to_string()), json_str(&r.peer.to_string()), r.bytes_in, r.bytes_out
                )
            })
            .collect();
        let reg = registry_error.map_or("null".to_string(), |e| json_str(&e));
        let dir = used.map_or("null".to_string(), |d| json_str(&d));
        println!(
            "{{\"connections\":[{}],\"registry\":{dir},\"registry_passed_over\":[{}],\"registry_error\":{reg}}}",
            items.join(","),
            passed_over.join(",")
        );
        return;
    }
    println!("{:>7} {:>5} {:<6} {:<7} {:<22} {:<22} {:>14} {:>14}  reason", "pid", "fd", "role", "path", "local", "peer", "bytes_in", "bytes_out");
    for r in &rows {
        println!(
            "{:>7} {:>5} {:<6} {:<7} {:<22} {:<22} {:>14} {:>14}  {}",
            r.pid(), r.fd(), r.role, r.path, r.local.to_string(), r.peer.to_string(), r.bytes_in, r.bytes_out, r.reason
        );
        // A socket shared across fork: the other processes holding it.
        for (pid, fd) in &r.holders[1..] {
            println!("{pid:>7} {fd:>5} (also holds the connection above)");
        }
    }
}

/// Why the registry directory cannot be used, in words, where that is one of the
/// checks' reasons: someone else made it (another user can pre-empt the default name,
/// issue 21.6), it is open to others, or a directory above it is (issue 21.5).
fn registry_trouble(dir: &str) -> Option<String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let me = unsafe { libc::getuid() };
    let md = std::fs::symlink_metadata(dir).ok()?;
    if md.file_type().is_symlink() || !md.is_dir() {
        return Some("not a directory (a symlink or a file is in its place)".into());
    }
    if md.uid() != me {
        return Some(format!("owned by uid {}, not by us (uid {me}): another user made it first", md.uid()));
    }
    if md.permissions().mode() & 0o077 != 0 {
        return Some(format!("open to others (mode {:o}; it must be 0700)", md.permissions().mode() & 0o7777));
    }
    let canon = std::fs::canonicalize(dir).ok()?;
    for a in canon.ancestors().skip(1) {
        let Ok(m) = std::fs::symlink_metadata(a) else { continue };
        let mode = m.permissions().mode();
        if (m.uid() != 0 && m.uid() != me) || (mode & 0o022 != 0 && mode & 0o1000 == 0) {
            return Some(format!("{} above it can be changed by another user (uid {}, mode {:o})", a.display(), m.uid(), mode & 0o7777));
        }
    }
    None
}

/// The library next to this executable, unless RDMASOCK_LIB names one.
fn library() -> String {
    if let Ok(p) = std::env::var("RDMASOCK_LIB") {
        return p;
    }
    let exe = std::env::current_exe().unwrap_or_default();
    exe.with_file_name("librdmasock.so").to_string_lossy().into_owned()
}

fn run(args: &[String]) {
    let args = if args.first().map(String::as_str) == Some("--") { &args[1..] } else { args };
    let Some(cmd) = args.first() else {
        eprint!("{USAGE}");
        exit(2);
    };
    let lib = library();
    if !std::path::Path::new(&lib).exists() {
        eprintln!("rdmasock: library {lib} not found (set RDMASOCK_LIB)");
        exit(127);
    }
    let preload = match std::env::var("LD_PRELOAD") {
        Ok(p) if !p.is_empty() => format!("{lib}:{p}"),
        _ => lib,
    };
    let err = Command::new(cmd).args(&args[1..]).env("LD_PRELOAD", preload).exec();
    eprintln!("rdmasock: cannot run {cmd}: {err}");
    exit(127);
}

/// Execs `rdmasock-bench` from the directory of this executable with the remaining args.
fn bench(args: &[String]) {
    let exe = std::env::current_exe().unwrap_or_default();
    let prog = exe.with_file_name("rdmasock-bench");
    if !prog.is_file() {
        eprintln!(
            "rdmasock: {} not found: build it with `cargo build --release -p rdmasock-bench`",
            prog.display()
        );
        exit(127);
    }
    let err = Command::new(&prog).args(args).exec();
    eprintln!("rdmasock: cannot run {}: {err}", prog.display());
    exit(127);
}
