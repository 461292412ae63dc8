//! Shared machinery of the conformance tests: building the programs and the
//! shim, running programs with or without the shim, and the checks every
//! test ends with.
//!
//! Each `tests/<combination>.rs` runs the same scenarios (`scenarios.rs`)
//! for one combination of shimmed and plain client and server.

pub mod process;
pub mod scenarios;

/// Defines one `#[test]` per scenario for a combination:
/// `combination_tests! { COMBO; test_name => scenario, ... }`, where
/// `scenario` is a function of `scenarios` and the test's name is passed on.
macro_rules! combination_tests {
    ($combo:expr; $($test:ident => $scenario:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                util::scenarios::$scenario(stringify!($test), $combo);
            }
        )*
    };
}

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdmasock_conformance::decisions;

use process::{Finished, Proc};

/// Whether a program runs with the shim preloaded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    Plain,
    Shim,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    Client,
    Server,
}

impl Role {
    pub fn other(self) -> Role {
        match self {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
        }
    }
}

/// Which sides of a connection run under the shim.
#[derive(Clone, Copy, Debug)]
pub struct Combo {
    pub client: Side,
    pub server: Side,
}

impl Combo {
    pub fn side(self, role: Role) -> Side {
        match role {
            Role::Client => self.client,
            Role::Server => self.server,
        }
    }

    pub fn any_shim(self) -> bool {
        self.client == Side::Shim || self.server == Side::Shim
    }

    /// The decision a shimmed side must log for each connection: the fabric
    /// under test ([`fabric`]) when both sides run the shim, otherwise path=tcp
    /// with the reason the contract names for the missing peer (a shimmed
    /// client finds no shimmed listener; a shimmed server finds its peer is not
    /// shimmed).
    pub fn expected(self, role: Role) -> (&'static str, Option<&'static str>) {
        match (self.client, self.server, role) {
            (Side::Shim, Side::Shim, _) => (fabric(), None),
            (_, _, Role::Client) => ("tcp", Some("no-shim-listener")),
            (_, _, Role::Server) => ("tcp", Some("peer-not-shim")),
        }
    }
}

/// How many connections a program's log must show a decision for.
#[derive(Clone, Copy, Debug)]
pub enum Count {
    Exactly(usize),
    AtLeast(usize),
}

/// The fabric the matrix runs on: `RDMASOCK_CONFORMANCE_FABRIC` (default shm).
/// Shimmed sides run with `RDMASOCK_TRANSPORT` set to it, and every connection
/// between two shimmed sides must be decided for it. The VM harness
/// (mailbox-driver/test/run.sh) runs the matrix again with `kmod`.
pub fn fabric() -> &'static str {
    static F: OnceLock<String> = OnceLock::new();
    F.get_or_init(|| std::env::var("RDMASOCK_CONFORMANCE_FABRIC").unwrap_or_else(|_| "shm".into()))
}

/// A directory the environment names instead of what cargo built (the VM has
/// no cargo and no compiler: the harness copies the built programs in).
fn prebuilt(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).map(PathBuf::from)
}

/// Where tests keep their scratch files: `RDMASOCK_CONFORMANCE_SCRATCH`, else
/// cargo's CARGO_TARGET_TMPDIR.
pub fn scratch_root() -> PathBuf {
    prebuilt("RDMASOCK_CONFORMANCE_SCRATCH").unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

/// The cargo target directory this test was built in: CARGO_TARGET_TMPDIR
/// is `<target-dir>/tmp`, whatever CARGO_TARGET_DIR or config chose.
fn target_dir() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR has a parent")
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives in the workspace")
}

/// The shim's artifacts (docs/contract.md, "Artifacts").
pub struct Shim {
    pub lib: PathBuf,
    pub cmd: PathBuf,
}

/// Builds the shim once per test binary with `cargo build --release -p
/// rdmasock` into this test's target directory. Failing to build it, or to
/// find the library and command afterwards, fails every shim test with the
/// reason.
pub fn shim() -> &'static Shim {
    static SHIM: OnceLock<Result<Shim, String>> = OnceLock::new();
    let built = SHIM.get_or_init(|| {
        // Prebuilt (RDMASOCK_CONFORMANCE_SHIM: a directory with both).
        if let Some(dir) = prebuilt("RDMASOCK_CONFORMANCE_SHIM") {
            return Ok(Shim { lib: dir.join("librdmasock.so"), cmd: dir.join("rdmasock") });
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "rdmasock",
            "--target-dir",
        ])
        .arg(target_dir())
        .current_dir(workspace_root());
        let out = Proc::spawn("cargo build --release -p rdmasock", cmd)
            .finish(Instant::now() + Duration::from_secs(900));
        if !out.status.success() {
            return Err(format!("building the shim failed:\n{}", out.describe()));
        }
        let release = target_dir().join("release");
        let shim = Shim {
            lib: release.join("librdmasock.so"),
            cmd: release.join("rdmasock"),
        };
        for p in [&shim.lib, &shim.cmd] {
            if !p.is_file() {
                return Err(format!(
                    "`cargo build --release -p rdmasock` succeeded but {} is missing",
                    p.display()
                ));
            }
        }
        Ok(shim)
    });
    built
        .as_ref()
        .unwrap_or_else(|e| panic!("the shim is not available: {e}"))
}

/// Path of a purpose-built C program from `conformance/c/`. All of them are
/// compiled once per test binary, into the target directory.
pub fn c_program(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        if let Some(dir) = prebuilt("RDMASOCK_CONFORMANCE_C") {
            return Ok(dir);
        }
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("conformance-c");
        fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        for prog in ["stream", "killpeer", "threadsock"] {
            // Compile under a private name and rename, so that a test binary
            // running at the same time never sees a half-written program.
            let tmp = out.join(format!("{prog}.{}.tmp", std::process::id()));
            let result = Command::new("cc")
                .args([
                    "-O2",
                    "-D_FORTIFY_SOURCE=2",
                    "-Wall",
                    "-Werror",
                    "-pthread",
                    "-o",
                ])
                .arg(&tmp)
                .arg(src.join(format!("{prog}.c")))
                .output()
                .map_err(|e| format!("cannot run cc: {e}"))?;
            if !result.status.success() {
                return Err(format!(
                    "cc {prog}.c failed:\n{}",
                    String::from_utf8_lossy(&result.stderr)
                ));
            }
            fs::rename(&tmp, out.join(prog)).map_err(|e| format!("{}: {e}", tmp.display()))?;
        }
        Ok(out)
    });
    dir.as_ref().unwrap_or_else(|e| panic!("{e}")).join(name)
}

/// A program of this crate's `src/bin`: where cargo built it, or in
/// `RDMASOCK_CONFORMANCE_BIN`.
pub fn crate_bin(name: &str, built: &'static str) -> PathBuf {
    prebuilt("RDMASOCK_CONFORMANCE_BIN").map_or_else(|| PathBuf::from(built), |d| d.join(name))
}

/// The Rust test program.
pub fn rstream() -> PathBuf {
    crate_bin("rstream", env!("CARGO_BIN_EXE_rstream"))
}

/// A third-party program (socat, iperf3) from PATH. When it is missing the
/// test is skipped with a message, unless CI is set, where missing tools
/// are a failure.
pub fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
        assert!(
            !ci,
            "{name} is not on PATH and CI is set: install it (apt-get install -y socat iperf3)"
        );
        eprintln!(
            "SKIPPED: {name} is not on PATH; install it to run this test (with CI=true this fails)"
        );
    }
    found
}

/// How a shimmed program gets the shim.
#[derive(Clone, Copy)]
pub enum Via {
    /// LD_PRELOAD set by the test (the purpose-built programs, so that the
    /// pid the test signals is the program itself).
    Preload,
    /// `rdmasock run -- PROGRAM ARGS`, the way a user runs a program.
    RunCommand,
}

/// One test's environment: its combination, its own RDMASOCK_DIR (so tests
/// run in parallel) and its scratch directory.
pub struct TestEnv {
    name: String,
    pub combo: Combo,
    registry: Option<PathBuf>,
    scratch: PathBuf,
}

impl TestEnv {
    pub fn new(name: &str, combo: Combo) -> TestEnv {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        // A short path: a shim may put sockets in it, and socket paths are
        // limited to 107 bytes.
        let registry = combo.any_shim().then(|| {
            shim();
            let base = if Path::new("/dev/shm").is_dir() {
                PathBuf::from("/dev/shm")
            } else {
                std::env::temp_dir()
            };
            let dir = base.join(format!(
                "rsc-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .unwrap_or_else(|e| panic!("creating RDMASOCK_DIR {}: {e}", dir.display()));
            dir
        });
        let scratch = scratch_root()
            .join("conformance")
            .join(name);
        if scratch.exists() {
            fs::remove_dir_all(&scratch).unwrap_or_else(|e| panic!("{}: {e}", scratch.display()));
        }
        fs::create_dir_all(&scratch).unwrap_or_else(|e| panic!("{}: {e}", scratch.display()));
        TestEnv {
            name: name.to_string(),
            combo,
            registry,
            scratch,
        }
    }

    /// A directory for this test's files, removed when the test passes.
    pub fn scratch(&self) -> &Path {
        &self.scratch
    }

    /// A command for `program` run on the given side. Every RDMASOCK_*
    /// setting and LD_PRELOAD inherited from the caller is dropped, so only
    /// what the test chooses applies; a shimmed program logs its decisions
    /// (RDMASOCK_LOG=info) and uses this test's RDMASOCK_DIR.
    pub fn command(
        &self,
        side: Side,
        via: Via,
        program: impl AsRef<OsStr>,
        args: &[&str],
    ) -> Command {
        let mut cmd = match (side, via) {
            (Side::Shim, Via::RunCommand) => {
                let mut c = Command::new(&shim().cmd);
                c.arg("run").arg("--").arg(program);
                c
            }
            _ => Command::new(program),
        };
        cmd.args(args).env_remove("LD_PRELOAD");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RDMASOCK_") {
                cmd.env_remove(key);
            }
        }
        if side == Side::Shim {
            cmd.env("RDMASOCK_DIR", self.registry.as_ref().unwrap())
                .env("RDMASOCK_LOG", "info")
                .env("RDMASOCK_TRANSPORT", fabric());
            // A slow machine (the VM harness runs under TCG, where one accept of 64
            // takes longer than the default deadline) may give the claims more time.
            if let Some(ms) = std::env::var_os("RDMASOCK_CONFORMANCE_CLAIM_TIMEOUT_MS") {
                cmd.env("RDMASOCK_CLAIM_TIMEOUT_MS", ms);
            }
            if let Via::Preload = via {
                cmd.env("LD_PRELOAD", &shim().lib);
            }
        }
        cmd
    }

    /// Starts `program` in `role` on that role's side of the combination.
    pub fn spawn(&self, role: Role, via: Via, program: impl AsRef<OsStr>, args: &[&str]) -> Proc {
        let side = self.combo.side(role);
        let label = format!(
            "{} {:?} ({:?})",
            Path::new(program.as_ref()).display(),
            role,
            side
        );
        Proc::spawn(&label, self.command(side, via, program, args))
    }

    /// Checks the decisions `out` logged for connections to `endpoint`
    /// (IP:PORT of the server): a plain program has no shim and logs none; a
    /// shimmed one logs `count` decisions (connect for a client, accept for
    /// a server), each as `Combo::expected` says.
    pub fn check_decisions(&self, role: Role, out: &Finished, endpoint: &str, count: Count) {
        let expected = self.combo.expected(role);
        self.check_decisions_any(role, out, endpoint, count, &[expected]);
    }

    /// As [`check_decisions`](Self::check_decisions), each decision being one of
    /// `allowed` (path, reason) for a shimmed side.
    pub fn check_decisions_any(&self, role: Role, out: &Finished, endpoint: &str, count: Count, allowed: &[(&str, Option<&str>)]) {
        if self.combo.side(role) == Side::Plain {
            assert!(
                !out.stderr.contains("rdmasock["),
                "{}: a plain program logged shim lines: {}",
                self.name,
                out.describe()
            );
            return;
        }
        let op = if role == Role::Client {
            "connect"
        } else {
            "accept"
        };
        let mine: Vec<_> = decisions::parse(&out.stderr)
            .into_iter()
            .filter(|d| {
                d.op == op
                    && if role == Role::Client {
                        d.peer == endpoint
                    } else {
                        d.local == endpoint
                    }
            })
            .collect();
        let count_ok = match count {
            Count::Exactly(n) => mine.len() == n,
            Count::AtLeast(n) => mine.len() >= n,
        };
        assert!(
            count_ok,
            "{}: expected {count:?} {op} decisions for {endpoint}, found {}: {}",
            self.name,
            mine.len(),
            out.describe()
        );
        for d in &mine {
            assert!(
                allowed.iter().any(|&(path, reason)| d.path == path && d.reason.as_deref() == reason),
                "{}: expected one of {allowed:?} (path, reason), got {:?}: {}",
                self.name,
                d.line,
                out.describe()
            );
        }
    }

    /// Runs `rdmasock stat --json` (docs/contract.md, "rdmasock stat") on this
    /// test's RDMASOCK_DIR and returns the connections it lists.
    pub fn stat(&self) -> Vec<StatConn> {
        let dir = self.registry.as_ref().expect("stat needs a shimmed side");
        let mut cmd = Command::new(&shim().cmd);
        cmd.args(["stat", "--json"])
            .env("RDMASOCK_DIR", dir)
            .env_remove("LD_PRELOAD");
        let out = Proc::spawn("rdmasock stat --json", cmd)
            .finish(Instant::now() + Duration::from_secs(30));
        out.assert_success();
        let json: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "rdmasock stat --json printed invalid JSON ({e}): {}",
                out.describe()
            )
        });
        let conns = json["connections"].as_array().unwrap_or_else(|| {
            panic!(
                "rdmasock stat --json: no \"connections\" array: {}",
                out.describe()
            )
        });
        conns.iter().map(|c| StatConn::from_json(c, &out)).collect()
    }

    /// The checks every test ends with. With a shimmed side: once everything
    /// has exited, one `rdmasock stat` lists no connections and leaves
    /// RDMASOCK_DIR empty, whatever happened to the processes (SIGKILL
    /// included). The test's directories are removed when it passes.
    pub fn finish(self) {
        if let Some(dir) = &self.registry {
            let live = self.stat();
            assert!(
                live.is_empty(),
                "{}: rdmasock stat lists connections after every process exited: {live:?}",
                self.name
            );
            // The registry holds nothing but its (empty) offer directory and its change
            // counter.
            let list = |d: &Path| -> Vec<std::ffi::OsString> {
                fs::read_dir(d)
                    .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
                    .map(|e| e.map(|e| e.file_name()))
                    .collect::<Result<_, _>>()
                    .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
            };
            let offers = dir.join("offers");
            let mut left: Vec<_> = list(dir).into_iter().filter(|n| n != "offers" && n != "gen").collect();
            if offers.exists() {
                left.extend(list(&offers));
            }
            assert!(
                left.is_empty(),
                "{}: RDMASOCK_DIR {} is not empty after rdmasock stat: {left:?}",
                self.name,
                dir.display()
            );
            if offers.exists() {
                fs::remove_dir(&offers).unwrap_or_else(|e| panic!("{}: {e}", offers.display()));
            }
            let _ = fs::remove_file(dir.join("gen"));
            fs::remove_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
        fs::remove_dir_all(&self.scratch)
            .unwrap_or_else(|e| panic!("{}: {e}", self.scratch.display()));
    }
}

/// One connection listed by `rdmasock stat --json`.
#[derive(Debug)]
pub struct StatConn {
    pub pid: i64,
    pub role: String,
    pub path: String,
    pub reason: String,
    pub local: String,
    pub peer: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl StatConn {
    fn from_json(v: &serde_json::Value, out: &Finished) -> StatConn {
        let missing = |k: &str| -> ! {
            panic!(
                "rdmasock stat --json: connection without {k:?}: {v}\n{}",
                out.describe()
            )
        };
        let text = |k: &str| {
            v[k].as_str()
                .map(str::to_string)
                .unwrap_or_else(|| missing(k))
        };
        let num = |k: &str| v[k].as_u64().unwrap_or_else(|| missing(k));
        v["fd"].as_i64().unwrap_or_else(|| missing("fd"));
        StatConn {
            pid: v["pid"].as_i64().unwrap_or_else(|| missing("pid")),
            role: text("role"),
            path: text("path"),
            reason: text("reason"),
            local: text("local"),
            peer: text("peer"),
            bytes_in: num("bytes_in"),
            bytes_out: num("bytes_out"),
        }
    }
}
