//! Child processes with captured output and deadlines.
//!
//! Every program runs in its own process group so that a failing test can
//! take down whatever it forked (prefork workers, forkconn children) with
//! it: dropping a `Proc` that was not waited for kills its group.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Interval of the bounded polls for conditions that have no notification
/// (a process's exit, its scheduler state).
const POLL: Duration = Duration::from_millis(1);

/// How long the output pipes may stay open after the process itself exited
/// (only something it left running can hold them).
const PIPE_GRACE: Duration = Duration::from_secs(5);

/// Everything a pipe delivered so far, filled by a reader thread.
struct Capture {
    state: Mutex<(String, bool)>, // (text, pipe closed)
    changed: Condvar,
}

impl Capture {
    fn start(mut pipe: impl Read + Send + 'static) -> Arc<Capture> {
        let cap = Arc::new(Capture {
            state: Mutex::new((String::new(), false)),
            changed: Condvar::new(),
        });
        let writer = Arc::clone(&cap);
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                let n = pipe.read(&mut buf).unwrap_or(0);
                let mut st = writer.state.lock().unwrap();
                if n == 0 {
                    st.1 = true;
                } else {
                    st.0.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
                writer.changed.notify_all();
                if n == 0 {
                    return;
                }
            }
        });
        cap
    }

    fn text(&self) -> String {
        self.state.lock().unwrap().0.clone()
    }

    /// Waits until `pick` accepts a complete line, the pipe closes (None) or
    /// the deadline passes (None).
    fn wait_line<T>(
        &self,
        deadline: Instant,
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> Option<T> {
        let mut st = self.state.lock().unwrap();
        loop {
            let (text, closed) = &*st;
            let complete = if *closed {
                text.as_str()
            } else {
                text.rsplit_once('\n').map_or("", |(l, _)| l)
            };
            if let Some(found) = complete.lines().find_map(&mut pick) {
                return Some(found);
            }
            let now = Instant::now();
            if *closed || now >= deadline {
                return None;
            }
            st = self.changed.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    fn wait_closed(&self, deadline: Instant) -> bool {
        self.wait_line(deadline, |_| None::<()>);
        self.state.lock().unwrap().1
    }
}

/// A running program.
pub struct Proc {
    label: String,
    child: Child,
    stdout: Arc<Capture>,
    stderr: Arc<Capture>,
    reaped: bool,
}

/// A program that has exited.
pub struct Finished {
    pub label: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// When the exit was noticed (within `POLL` of the exit itself).
    pub exited_at: Instant,
}

impl Finished {
    pub fn describe(&self) -> String {
        format!(
            "{} exited with {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.label, self.status, self.stdout, self.stderr
        )
    }

    /// Panics unless the program exited 0.
    pub fn assert_success(&self) -> &Finished {
        assert!(self.status.success(), "{}", self.describe());
        self
    }

    /// The first stdout line starting with `prefix`; panics if none.
    pub fn line(&self, prefix: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?}: {}", self.describe()))
    }
}

impl Proc {
    pub fn spawn(label: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{label}: cannot start {cmd:?}: {e}"));
        let stdout = Capture::start(child.stdout.take().unwrap());
        let stderr = Capture::start(child.stderr.take().unwrap());
        Proc {
            label: label.to_string(),
            child,
            stdout,
            stderr,
            reaped: false,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn describe(&self) -> String {
        format!(
            "{} (pid {})\n--- stdout ---\n{}--- stderr ---\n{}",
            self.label,
            self.pid(),
            self.stdout.text(),
            self.stderr.text()
        )
    }

    /// Waits for a stdout line that `pick` accepts; None if the program
    /// closes stdout (exits) or the timeout passes first.
    pub fn wait_stdout<T>(
        &self,
        timeout: Duration,
        pick: impl FnMut(&str) -> Option<T>,
    ) -> Option<T> {
        self.stdout.wait_line(Instant::now() + timeout, pick)
    }

    /// Like `wait_stdout`, but a missing line panics, showing the output.
    pub fn expect_stdout<T>(
        &self,
        what: &str,
        timeout: Duration,
        pick: impl FnMut(&str) -> Option<T>,
    ) -> T {
        self.wait_stdout(timeout, pick).unwrap_or_else(|| {
            panic!(
                "no {what} on stdout within {timeout:?}: {}",
                self.describe()
            )
        })
    }

    /// Like `expect_stdout`, for stderr.
    pub fn expect_stderr<T>(
        &self,
        what: &str,
        timeout: Duration,
        pick: impl FnMut(&str) -> Option<T>,
    ) -> T {
        self.stderr
            .wait_line(Instant::now() + timeout, pick)
            .unwrap_or_else(|| {
                panic!(
                    "no {what} on stderr within {timeout:?}: {}",
                    self.describe()
                )
            })
    }

    /// The port from the "READY <port>" line of the test programs.
    pub fn ready_port(&self) -> u16 {
        self.expect_stdout("READY line", Duration::from_secs(30), |l| {
            l.strip_prefix("READY ")?.trim().parse().ok()
        })
    }

    /// Whether the process has exited, without reaping it: while it is not
    /// reaped its pid (and process group id) cannot be reused, so signalling
    /// them stays safe.
    fn exited(&self) -> bool {
        // SAFETY: waitid only writes the siginfo_t we own.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let rc = libc::waitid(
                libc::P_PID,
                self.pid() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            assert_eq!(
                rc,
                0,
                "waitid({}): {}",
                self.pid(),
                std::io::Error::last_os_error()
            );
            info.si_pid() != 0
        }
    }

    fn kill_group(&self) {
        // SAFETY: plain syscall; the group leader is not reaped yet (see `exited`).
        unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
    }

    /// SIGKILLs the process itself (not its group).
    pub fn sigkill(&self) {
        assert!(!self.reaped);
        // SAFETY: plain syscall on a child we have not reaped.
        let rc = unsafe { libc::kill(self.pid(), libc::SIGKILL) };
        assert_eq!(
            rc,
            0,
            "kill({}): {}",
            self.pid(),
            std::io::Error::last_os_error()
        );
    }

    /// The scheduler state of the main thread ('R', 'S', 'D', ...).
    fn state(&self) -> char {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        stat.rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .unwrap_or('?')
    }

    /// Waits until the process sleeps in the kernel ('S'): for the kill
    /// tests, that it is blocked in its read or write. Panics on timeout.
    pub fn wait_blocked(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.state() != 'S' {
            assert!(
                Instant::now() < deadline && !self.exited(),
                "never saw {} blocked (state {}) within {timeout:?}: {}",
                self.label,
                self.state(),
                self.describe()
            );
            thread::sleep(POLL);
        }
    }

    /// Waits for the exit and the end of the output. Panics (after killing
    /// the group) if the program is still running at the deadline or if
    /// something it left running keeps its output pipes open.
    pub fn finish(mut self, deadline: Instant) -> Finished {
        while !self.exited() {
            if Instant::now() >= deadline {
                self.kill_group();
                panic!(
                    "{} still running at its deadline; killed: {}",
                    self.label,
                    self.describe()
                );
            }
            thread::sleep(POLL);
        }
        let exited_at = Instant::now();
        let grace = exited_at + PIPE_GRACE;
        if !(self.stdout.wait_closed(grace) && self.stderr.wait_closed(grace)) {
            self.kill_group();
            panic!(
                "{} exited but left processes holding its output; killed: {}",
                self.label,
                self.describe()
            );
        }
        let status = self.child.wait().expect("reaping a child");
        self.reaped = true;
        Finished {
            label: self.label.clone(),
            status,
            stdout: self.stdout.text(),
            stderr: self.stderr.text(),
            exited_at,
        }
    }

    /// Kills the program and its group and returns what it printed.
    pub fn stop(self) -> Finished {
        self.kill_group();
        self.finish(Instant::now() + Duration::from_secs(10))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill_group();
            let _ = self.child.wait();
        }
    }
}
