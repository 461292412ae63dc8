//! Child processes of the harness: every one in its own process group (so a server's
//! children, nginx's workers, go with it), killed if the harness dies (PR_SET_PDEATHSIG),
//! pinned with sched_setaffinity (as `taskset -c N` would), RLIMIT_NOFILE raised, and
//! bounded by a deadline enforced by a watchdog thread. Nothing here polls in a loop
//! while a measurement runs: waits block.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// What every child gets: the registry directory, and for shimmed ones the library.
pub struct Env {
    pub lib: Option<PathBuf>,
    pub registry: PathBuf,
    pub shim_log: String,
}

pub struct Spec {
    pub argv: Vec<String>,
    pub cpu: Option<usize>,
    pub shim: bool,
    /// stdout as lines on a channel (for READY/IDLE/... lines) instead of a file
    pub lines: bool,
    pub stdin: bool,
    pub cwd: Option<PathBuf>,
    /// The shim logs its decisions in one line at exit (RDMASOCK_LOG=summary) instead of
    /// one line per connection, which would cost a connection-rate run a formatted
    /// write(2) per connection that kernel TCP does not pay.
    pub summary: bool,
}

impl Spec {
    pub fn new<S: AsRef<str>>(argv: &[S]) -> Spec {
        Spec {
            argv: argv.iter().map(|s| s.as_ref().to_string()).collect(),
            cpu: None,
            shim: false,
            lines: false,
            stdin: false,
            cwd: None,
            summary: false,
        }
    }
    pub fn cpu(mut self, c: Option<usize>) -> Self {
        self.cpu = c;
        self
    }
    pub fn shim(mut self, s: bool) -> Self {
        self.shim = s;
        self
    }
    pub fn lines(mut self) -> Self {
        self.lines = true;
        self
    }
    pub fn summary(mut self) -> Self {
        self.summary = true;
        self
    }
    /// RDMASOCK_LOG for a shimmed process (a debug run stays debug).
    fn log_level<'a>(&self, env: &'a Env) -> &'a str {
        if self.summary && env.shim_log == "info" {
            "summary"
        } else {
            &env.shim_log
        }
    }
    pub fn stdin(mut self) -> Self {
        self.stdin = true;
        self
    }
    /// The command as a person would type it (for the JSON record).
    pub fn display(&self, env: &Env) -> String {
        let mut s = String::new();
        if let Some(c) = self.cpu {
            s += &format!("taskset -c {} ", real_cpu(c));
        }
        if self.shim {
            if let Some(l) = &env.lib {
                s += &format!("env LD_PRELOAD={} RDMASOCK_LOG={} ", l.display(), self.log_level(env));
            }
        }
        s += &self.argv.join(" ");
        s
    }
}

pub struct Proc {
    pub name: String,
    pub child: Child,
    pub pid: i32,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    pub stdin: Option<ChildStdin>,
    lines: Option<Receiver<String>>,
}

static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The CPUs this process may run on (placements' vCPU 0 and 1 are the first two).
pub fn allowed_cpus() -> Vec<usize> {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

static CPUS: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();

/// The real CPU number of a placement's vCPU index (0 or 1).
fn real_cpu(i: usize) -> usize {
    let v = CPUS.get_or_init(allowed_cpus);
    v.get(i).copied().unwrap_or(i)
}

pub fn spawn(env: &Env, dir: &Path, spec: Spec) -> Result<Proc, String> {
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base = Path::new(&spec.argv[0])
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = format!("{base}-{n}");
    let stdout_path = dir.join(format!("{name}.out"));
    let stderr_path = dir.join(format!("{name}.err"));
    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..]);
    cmd.env_remove("LD_PRELOAD");
    cmd.env("RDMASOCK_DIR", &env.registry);
    if spec.shim {
        let lib = env.lib.as_ref().ok_or("the shim library is not available")?;
        cmd.env("LD_PRELOAD", lib);
        cmd.env("RDMASOCK_LOG", spec.log_level(env));
    }
    if let Some(d) = &spec.cwd {
        cmd.current_dir(d);
    }
    cmd.stdin(if spec.stdin { Stdio::piped() } else { Stdio::null() });
    if spec.lines {
        cmd.stdout(Stdio::piped());
    } else {
        cmd.stdout(File::create(&stdout_path).map_err(|e| format!("{}: {e}", stdout_path.display()))?);
    }
    cmd.stderr(File::create(&stderr_path).map_err(|e| format!("{}: {e}", stderr_path.display()))?);
    cmd.process_group(0);
    let cpu = spec.cpu.map(real_cpu);
    let parent = unsafe { libc::getpid() };
    unsafe {
        cmd.pre_exec(move || {
            // Die with the harness (the signal is sent when the spawning thread exits:
            // the harness spawns from its main thread only).
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            if let Some(c) = cpu {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(c, &mut set);
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let mut rl: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
                rl.rlim_cur = rl.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {}: {e}", spec.argv[0]))?;
    let pid = child.id() as i32;
    let lines = if spec.lines {
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let copy = stdout_path.clone();
        std::thread::spawn(move || {
            let mut f = File::create(copy).ok();
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if let Some(f) = f.as_mut() {
                    let _ = writeln!(f, "{l}");
                }
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Some(rx)
    } else {
        None
    };
    let stdin = child.stdin.take();
    Ok(Proc { name, child, pid, stdout_path, stderr_path, stdin, lines })
}

impl Proc {
    /// The next stdout line that starts with `prefix` (other lines are skipped), or an
    /// error at the deadline or when the process closes its stdout.
    pub fn expect(&mut self, prefix: &str, timeout: Duration) -> Result<String, String> {
        let rx = self.lines.as_ref().expect("spawned with lines()");
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return Ok(l),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("{}: no {prefix:?} line within {:.0?}", self.name, timeout))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("{}: exited before printing {prefix:?}{}", self.name, self.err_tail()))
                }
            }
        }
    }

    /// All stdout lines printed so far and until the process closes stdout.
    pub fn rest_of_stdout(&mut self) -> Vec<String> {
        match &self.lines {
            Some(rx) => rx.iter().collect(),
            None => std::fs::read_to_string(&self.stdout_path)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect(),
        }
    }

    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The last lines of stderr that are not the shim's own log lines, for error messages.
    pub fn err_tail(&self) -> String {
        let t = self.stderr_text();
        let v: Vec<&str> = t.lines().filter(|l| !l.starts_with("rdmasock[")).collect();
        let tail = v[v.len().saturating_sub(3)..].join(" | ");
        if tail.is_empty() {
            String::new()
        } else {
            format!(" (stderr: {tail})")
        }
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn signal_group(&self, sig: i32) {
        unsafe {
            libc::kill(-self.pid, sig);
        }
    }

    /// Waits for the process to exit; at the deadline its group is killed and the wait
    /// reports a timeout. A watchdog thread sleeps until the deadline; the caller blocks.
    pub fn wait_for(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let (tx, rx) = mpsc::channel::<()>();
        let pid = self.pid;
        let dog = std::thread::spawn(move || match rx.recv_timeout(timeout) {
            Err(RecvTimeoutError::Timeout) => {
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                true
            }
            _ => false,
        });
        let st = self.child.wait();
        let _ = tx.send(());
        let fired = dog.join().unwrap_or(false);
        let st = st.map_err(|e| format!("{}: wait: {e}", self.name))?;
        if fired {
            return Err(format!("{}: timed out after {:.0?}", self.name, timeout));
        }
        Ok(st)
    }

    /// Waits and requires exit status 0.
    pub fn finish(&mut self, timeout: Duration) -> Result<(), String> {
        let st = self.wait_for(timeout)?;
        if !st.success() {
            return Err(format!("{}: {st}{}", self.name, self.err_tail()));
        }
        Ok(())
    }

    /// SIGTERM to the group, then SIGKILL to it if the leader has not exited within 3 s
    /// (the watchdog of wait_for). A group is only signalled while its leader is not yet
    /// reaped, so its id cannot have been reused.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        self.signal_group(libc::SIGTERM);
        if self.wait_for(Duration::from_secs(3)).is_err() {
            let _ = self.child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal_group(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// A port that was free a moment ago on 127.0.0.1 (for servers that need one given).
pub fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Whether a socket listens on 127.0.0.1:PORT or a wildcard address (IPv4 or IPv6),
/// from /proc/net/tcp and /proc/net/tcp6.
fn listening(port: u16) -> bool {
    let p = format!(":{port:04X}");
    let v4 = ["0100007F", "00000000"];
    // ::, ::1 and ::ffff:127.0.0.1 as /proc/net/tcp6 prints them
    let v6 = [
        "00000000000000000000000000000000",
        "00000000000000000000000001000000",
        "0000000000000000FFFF00000100007F",
    ];
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        let Ok(t) = std::fs::read_to_string(f) else { return false };
        t.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && f[3] == "0A"
                && f[1].ends_with(&p)
                && (v4.iter().chain(v6.iter())).any(|a| f[1].len() == a.len() + 5 && f[1].starts_with(a))
        })
    })
}

/// Waits until a server listens on PORT (checked every 5 ms, before any measurement), or
/// fails at the deadline or when the server exits first. No connection is made.
pub fn wait_listen(p: &mut Proc, port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if listening(port) {
            return Ok(());
        }
        if !p.alive() {
            return Err(format!("{} exited before listening on port {port}{}", p.name, p.err_tail()));
        }
        if Instant::now() > deadline {
            return Err(format!("{} did not listen on port {port} within {timeout:.0?}", p.name));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How the shim decided the connections of a process, from its RDMASOCK_LOG=info lines
/// or its RDMASOCK_LOG=summary line at exit: (connections on shm, connections on tcp,
/// the first reason given for tcp).
pub fn shim_paths(stderr: &str, verb: &str) -> (usize, usize, String) {
    let (mut shm, mut tcp, mut why) = (0, 0, String::new());
    let key = format!(": {verb} fd=");
    for l in stderr.lines() {
        // "rdmasock[PID]: summary connect shm=N tcp=M [reason=R] accept shm=N tcp=M ..."
        if let Some(rest) = l.strip_prefix("rdmasock[").and_then(|r| r.split_once("]: summary ")).map(|x| x.1) {
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let Some(i) = words.iter().position(|w| *w == verb) {
                let num = |k: &str| words.get(i + 1..i + 4).into_iter().flatten().find_map(|w| w.strip_prefix(k)?.parse::<usize>().ok());
                shm += num("shm=").unwrap_or(0);
                tcp += num("tcp=").unwrap_or(0);
                if why.is_empty() {
                    if let Some(r) = words.get(i + 3).and_then(|w| w.strip_prefix("reason=")) {
                        why = r.to_string();
                    }
                }
            }
            continue;
        }
        if !l.starts_with("rdmasock[") || !l.contains(&key) {
            continue;
        }
        if l.contains(" path=shm") {
            shm += 1;
        } else if l.contains(" path=tcp") {
            tcp += 1;
            if why.is_empty() {
                why = l.split(" reason=").nth(1).unwrap_or("unspecified").trim().to_string();
            }
        }
    }
    (shm, tcp, why)
}

/// CPU time of a process, all threads: (utime+stime in clock ticks from /proc/PID/stat,
/// nanoseconds on CPU summed from /proc/PID/task/*/schedstat).
pub fn cpu_time(pid: i32) -> Result<(u64, u64), String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // fields after the ")" that ends the command name: state is field 3, utime 14, stime 15
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let mut ns = 0u64;
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                ns += s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    Ok((ticks, ns))
}

/// (VmRSS, Pss) in KiB, from /proc/PID/status and /proc/PID/smaps_rollup.
pub fn memory_kib(pid: i32) -> Result<(f64, f64), String> {
    let field = |text: &str, key: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l[key.len()..].split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let rss = field(&st, "VmRSS:").ok_or("no VmRSS")?;
    let pss = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|t| field(&t, "Pss:"))
        .unwrap_or(f64::NAN);
    Ok((rss, pss))
}
