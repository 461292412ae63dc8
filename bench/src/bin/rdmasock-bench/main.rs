//! rdmasock-bench (run as `rdmasock bench`): kernel TCP loopback, Unix domain sockets, a
//! raw shared-memory ping-pong (the physical limit) and the shim, measured in one run:
//!
//! * ping-pong round trip, 16 B / 1 KiB / 64 KiB messages: p50, p99, p99.9 (HDR histogram)
//! * stream throughput with 1 KiB / 64 KiB / 1 MiB writes
//! * connection set-up rate (connect, accept, one exchange, close)
//! * applications: sockperf ping-pong, iperf3, redis-benchmark -c 1 / -c 50, wrk against
//!   nginx -c 1 / -c 50 (each skipped, and said so, when not installed)
//! * the CPU an idle fabric connection uses after the spin window
//! * the shim's overhead on connections that stay on TCP (client shimmed, server plain),
//!   in ping-pong, stream and connection rate: the `shim-tcp` transport
//! * resident memory per idle connection with 1000 connections open
//!
//! each in three placements (both processes on vCPU 0; server on 0 and client on 1;
//! unpinned), configurations interleaved (the transports one after another for every
//! figure, their order rotated from run to run), every figure the median of the runs
//! with min-max. Prints tables with ratios against kernel TCP, writes
//! bench/results/latest.json and draws bench/results/latest.png.

mod apps;
mod chart;
mod measure;
mod procs;
mod report;

use procs::Env;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::exit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

const USAGE: &str = "\
usage: rdmasock bench [options]            (or: rdmasock-bench [options])
  --quick          smoke test: every benchmark, tiny (seconds), one run; asserts nothing
                   about speed
  --runs N         runs of every configuration, interleaved (default 3; --quick: 1)
  --only LIST      comma-separated sections: pingpong,stream,connrate,apps,idle,rss
  --placements L   comma-separated: same-cpu,cross-cpu,unpinned (default all)
  --no-apps        leave out the application benchmarks
  --out DIR        where latest.json and latest.png go (default bench/results of the
                   source tree this binary was built in, else ./bench-results)
  --lib PATH       the shim library (default: RDMASOCK_LIB, else librdmasock.so next to
                   this binary)
  --keep-logs      keep every process's stdout/stderr (the temporary directory is named)
Applications need sockperf, iperf3, redis-server + redis-benchmark, nginx + wrk (Debian:
sockperf iperf3 redis-server redis-tools nginx-light wrk); missing ones are skipped.
RDMASOCK_* settings in the environment are passed to the shimmed processes.
Exit status: 0 when every measurement ran, 1 when one failed (results are written
anyway), 2 on bad usage.";

pub const SECTIONS: &[&str] = &["pingpong", "stream", "connrate", "idle", "apps", "rss"];
pub const PP_SIZES: &[usize] = &[16, 1024, 64 << 10];
pub const STREAM_SIZES: &[usize] = &[1024, 64 << 10, 1 << 20];

/// Transports and what they are.
pub const TRANSPORTS: &[(&str, &str)] = &[
    ("tcp", "kernel TCP over 127.0.0.1, no preload"),
    ("unix", "Unix domain stream socket, no preload"),
    ("shm", "raw shared memory: two processes spinning on a shared mmap'd page (the physical limit; yields when both share a vCPU)"),
    ("shim", "librdmasock on both ends (connection on the shared-memory fabric)"),
    ("shim-tcp", "librdmasock on the client only, plain server: the connection stays on TCP (the shim's overhead)"),
];

#[derive(Clone, Copy, Debug)]
pub struct Placement {
    pub name: &'static str,
    pub label: &'static str,
    pub server: Option<usize>,
    pub client: Option<usize>,
}

pub const PLACEMENTS: &[Placement] = &[
    Placement { name: "same-cpu", label: "both on vCPU 0", server: Some(0), client: Some(0) },
    Placement { name: "cross-cpu", label: "server vCPU 0, client vCPU 1", server: Some(0), client: Some(1) },
    Placement { name: "unpinned", label: "not pinned", server: None, client: None },
];

pub struct Durations {
    pub pp_warmup: f64,
    pub pp_secs: f64,
    pub stream_secs: f64,
    pub conn_secs: f64,
    pub idle_settle: f64,
    pub idle_window: f64,
    pub rss_conns: usize,
    pub sockperf_t: u64,
    pub iperf_t: u64,
    pub redis_n1: u64,
    pub redis_n50: u64,
    pub wrk_secs: u64,
}

impl Durations {
    fn full() -> Self {
        Durations {
            pp_warmup: 0.05,
            pp_secs: 0.4,
            stream_secs: 0.4,
            conn_secs: 1.0,
            idle_settle: 0.3,
            idle_window: 1.5,
            rss_conns: 1000,
            sockperf_t: 1,
            iperf_t: 1,
            redis_n1: 10_000,
            redis_n50: 50_000,
            wrk_secs: 1,
        }
    }
    fn quick() -> Self {
        Durations {
            pp_warmup: 0.005,
            pp_secs: 0.02,
            stream_secs: 0.02,
            conn_secs: 0.02,
            idle_settle: 0.1,
            idle_window: 0.2,
            rss_conns: 50,
            sockperf_t: 1,
            iperf_t: 1,
            redis_n1: 300,
            redis_n50: 2000,
            wrk_secs: 1,
        }
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "pingpong_warmup_s": self.pp_warmup, "pingpong_s": self.pp_secs,
            "stream_s": self.stream_secs, "connrate_s": self.conn_secs,
            "idle_settle_s": self.idle_settle, "idle_window_s": self.idle_window,
            "rss_conns": self.rss_conns, "sockperf_t_s": self.sockperf_t,
            "iperf3_t_s": self.iperf_t,
            "redis_requests_c1": self.redis_n1, "redis_requests_c50": self.redis_n50,
            "wrk_s": self.wrk_secs,
        })
    }
}

pub struct Ctx {
    pub env: Env,
    pub sockbench: PathBuf,
    pub tmp: PathBuf,
    pub logs: PathBuf,
    pub d: Durations,
    ids: AtomicUsize,
}

impl Ctx {
    pub fn next_id(&self) -> usize {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// One measurement.
#[derive(Clone, Debug)]
pub struct Sample {
    pub section: String,
    pub item: String,
    pub placement: &'static str,
    pub transport: String,
    pub run: usize,
    /// the figure (unit and direction per section/item, see report::meta)
    pub value: Option<f64>,
    pub extra: BTreeMap<String, f64>,
    /// where the connection(s) went: kernel, shm (n conns), tcp (reason)...
    pub path: String,
    /// set when the sample does not measure what its transport says (a shim connection
    /// that fell back to TCP): reported, left out of the figures
    pub excluded: Option<String>,
    pub error: Option<String>,
    pub note: String,
    pub commands: Vec<String>,
}

impl Sample {
    pub fn new(section: &str, item: &str, pl: Placement, transport: &str, run: usize) -> Sample {
        Sample {
            section: section.into(),
            item: item.into(),
            placement: pl.name,
            transport: transport.into(),
            run,
            value: None,
            extra: BTreeMap::new(),
            path: String::new(),
            excluded: None,
            error: None,
            note: String::new(),
            commands: vec![],
        }
    }
    pub fn put(&mut self, k: &str, v: Option<f64>) {
        if let Some(v) = v {
            if v.is_finite() {
                self.extra.insert(k.into(), v);
            }
        }
    }
    pub fn fail(&mut self, e: String) {
        self.value = None;
        self.error = Some(e);
    }
    pub fn exclude(&mut self, why: &str) {
        self.excluded = Some(why.into());
    }
    pub fn usable(&self) -> Option<f64> {
        if self.error.is_none() && self.excluded.is_none() {
            self.value
        } else {
            None
        }
    }
}

pub fn size_label(n: usize) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else if n >= 1024 && n % 1024 == 0 {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} B")
    }
}

struct Args {
    quick: bool,
    runs: usize,
    only: Vec<String>,
    placements: Vec<Placement>,
    out: Option<PathBuf>,
    lib: Option<PathBuf>,
    keep_logs: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        quick: false,
        runs: 0,
        only: SECTIONS.iter().map(|s| s.to_string()).collect(),
        placements: PLACEMENTS.to_vec(),
        out: None,
        lib: None,
        keep_logs: false,
    };
    let bad = |m: String| -> ! {
        eprintln!("rdmasock bench: {m}\n{USAGE}");
        exit(2)
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut val = |name: &str| it.next().unwrap_or_else(|| bad(format!("{name} needs a value")));
        match x.as_str() {
            "--quick" => a.quick = true,
            "--runs" => {
                a.runs = val("--runs").parse().ok().filter(|&n| n > 0).unwrap_or_else(|| bad("--runs: a number > 0".into()))
            }
            "--only" => {
                a.only = val("--only").split(',').map(|s| s.trim().to_string()).collect();
                if let Some(s) = a.only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
                    bad(format!("unknown section {s:?}"));
                }
            }
            "--placements" => {
                let v = val("--placements");
                a.placements = v
                    .split(',')
                    .map(|n| {
                        *PLACEMENTS.iter().find(|p| p.name == n.trim()).unwrap_or_else(|| bad(format!("unknown placement {n:?}")))
                    })
                    .collect();
            }
            "--no-apps" => a.only.retain(|s| s != "apps"),
            "--out" => a.out = Some(val("--out").into()),
            "--lib" => a.lib = Some(val("--lib").into()),
            "--keep-logs" => a.keep_logs = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                exit(0);
            }
            other => bad(format!("unknown option {other:?}")),
        }
    }
    if a.runs == 0 {
        a.runs = if a.quick { 1 } else { 3 };
    }
    a
}

/// The source tree this binary was built in (target/release/.. holding bench/Cargo.toml),
/// else the one the current directory is in.
fn source_tree() -> Option<PathBuf> {
    let is_tree = |d: &Path| d.join("bench/Cargo.toml").is_file() && d.join("preload").is_dir();
    let exe = std::env::current_exe().ok()?;
    let cwd = std::env::current_dir().ok()?;
    let found = exe.ancestors().skip(1).find(|d| is_tree(d)).or_else(|| cwd.ancestors().find(|d| is_tree(d)));
    found.map(Path::to_path_buf)
}

fn make_tmp() -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    let bases = [PathBuf::from("/dev/shm"), std::env::temp_dir()];
    for b in bases {
        for i in 0..100 {
            let p = b.join(format!("rdmasock-bench.{}.{i}", std::process::id()));
            if std::fs::DirBuilder::new().mode(0o700).create(&p).is_ok() {
                return Ok(p);
            }
        }
    }
    Err("cannot create a temporary directory in /dev/shm or TMPDIR".into())
}

fn main() {
    let args = parse_args();
    let t_start = Instant::now();
    let load_start = report::loadavg();
    let exe = std::env::current_exe().unwrap_or_default();
    let here = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let sockbench = here.join("sockbench");
    if !sockbench.is_file() {
        eprintln!(
            "rdmasock bench: {} not found: build it with `cargo build --release -p rdmasock-bench`",
            sockbench.display()
        );
        exit(1);
    }
    let lib = args
        .lib
        .clone()
        .or_else(|| std::env::var_os("RDMASOCK_LIB").map(PathBuf::from))
        .unwrap_or_else(|| here.join("librdmasock.so"));
    let (lib, shim_note) = if lib.is_file() {
        (Some(std::fs::canonicalize(&lib).unwrap_or(lib)), String::new())
    } else {
        let n = format!(
            "{} not found (cargo build --release -p rdmasock): shim and shim-tcp skipped",
            lib.display()
        );
        eprintln!("NOTE: {n}");
        (None, n)
    };
    let tree = source_tree();
    let git = report::git_rev(&tree);
    let out_dir = args.out.clone().unwrap_or_else(|| match &tree {
        Some(t) => t.join("bench/results"),
        None => PathBuf::from("bench-results"),
    });
    if let Err(e) = std::fs::create_dir_all(&out_dir) {
        eprintln!("rdmasock bench: {}: {e}", out_dir.display());
        exit(1);
    }
    let tmp = make_tmp().unwrap_or_else(|e| {
        eprintln!("rdmasock bench: {e}");
        exit(1)
    });
    let registry = tmp.join("registry");
    let logs = tmp.join("logs");
    {
        use std::os::unix::fs::DirBuilderExt;
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&registry);
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&logs);
    }
    let shim_log = match std::env::var("RDMASOCK_LOG").as_deref() {
        Ok("debug") => "debug".to_string(),
        _ => "info".to_string(),
    };
    let ctx = Ctx {
        env: Env { lib: lib.clone(), registry, shim_log },
        sockbench,
        tmp: tmp.clone(),
        logs,
        d: if args.quick { Durations::quick() } else { Durations::full() },
        ids: AtomicUsize::new(0),
    };

    let cpus = procs::allowed_cpus();
    let ncpu = cpus.len();
    let mut placements = args.placements.clone();
    let mut notes: Vec<String> = vec![];
    if !shim_note.is_empty() {
        notes.push(shim_note.clone());
    }
    if ncpu < 2 {
        placements.retain(|p| p.name != "cross-cpu");
        notes.push(format!("only {ncpu} CPU: the cross-cpu placement is left out"));
    }
    if cpus.len() >= 2 && cpus[..2] != [0, 1] {
        notes.push(format!("vCPU 0 and 1 of the placements are CPUs {} and {}", cpus[0], cpus[1]));
    }
    let want = |s: &str| args.only.iter().any(|x| x == s);
    let mut transports: Vec<&str> = TRANSPORTS.iter().map(|t| t.0).collect();
    if lib.is_none() {
        transports.retain(|t| !t.starts_with("shim"));
    }
    let conn_transports: Vec<&str> = transports.iter().copied().filter(|&t| t != "shm").collect();
    let pair: Vec<&str> = transports.iter().copied().filter(|&t| t == "tcp" || t == "shim").collect();
    // applications present
    let mut apps: Vec<&str> = vec![];
    let mut skipped_apps: Vec<String> = vec![];
    if want("apps") {
        for (name, progs, pkg) in apps::APPS {
            let missing: Vec<&str> = progs.iter().copied().filter(|p| !apps::which(p)).collect();
            if missing.is_empty() {
                apps.push(name);
            } else {
                skipped_apps.push(format!("{name}: {} not installed (apt-get install {pkg})", missing.join(", ")));
            }
        }
        for s in &skipped_apps {
            notes.push(format!("skipped {s}"));
        }
    }
    // --quick runs the applications in one placement only (they take seconds each)
    let app_placement = if args.quick { placements.last().map(|p| p.name) } else { None };

    println!("== rdmasock bench{}", if args.quick { " --quick (smoke test: figures are not meaningful)" } else { "" });
    println!("host {}, {} vCPUs ({}), kernel {}", report::hostname(), ncpu, report::cpu_model(), report::kernel());
    println!(
        "{} run(s) of every configuration, interleaved; placements: {}",
        args.runs,
        placements.iter().map(|p| format!("{} ({})", p.name, p.label)).collect::<Vec<_>>().join(", ")
    );
    println!("shim: {}", lib.as_ref().map(|l| l.display().to_string()).unwrap_or(shim_note.clone()));
    for (k, v) in std::env::vars().filter(|(k, _)| k.starts_with("RDMASOCK_")) {
        println!("shim setting from the environment: {k}={v}");
    }
    let load1: f64 = load_start.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    println!("load average at the start: {load_start}");
    if load1 >= 0.5 {
        notes.push(format!(
            "load average {load1:.2} at the start: other work on this machine disturbs the figures"
        ));
    }
    for n in &notes {
        println!("NOTE: {n}");
    }
    println!();

    let mut samples: Vec<Sample> = vec![];
    let rotate = |v: &[&'static str], run: usize| -> Vec<&'static str> {
        let mut v = v.to_vec();
        if !v.is_empty() {
            let k = (run - 1) % v.len();
            v.rotate_left(k);
        }
        v
    };
    let transports: Vec<&'static str> = TRANSPORTS.iter().map(|t| t.0).filter(|t| transports.contains(t)).collect();
    let conn_transports: Vec<&'static str> =
        TRANSPORTS.iter().map(|t| t.0).filter(|t| conn_transports.contains(t)).collect();
    let pair: Vec<&'static str> = TRANSPORTS.iter().map(|t| t.0).filter(|t| pair.contains(t)).collect();

    for run in 1..=args.runs {
        for &pl in &placements {
            let tag = |what: &str| format!("[run {run}/{} {:<9} {:>5.0}s] {what}", args.runs, pl.name, t_start.elapsed().as_secs_f64());
            if want("pingpong") {
                for &size in PP_SIZES {
                    let mut line = tag(&format!("ping-pong {:<7} p50 µs:", size_label(size)));
                    for t in rotate(&transports, run) {
                        let s = measure::micro(&ctx, "pingpong", size, t, pl, run);
                        line += &format!("  {t} {}", report::brief(&s, 2));
                        samples.push(s);
                    }
                    println!("{line}");
                }
            }
            if want("stream") {
                for &size in STREAM_SIZES {
                    let mut line = tag(&format!("stream {:<10} GB/s:", size_label(size)));
                    for t in rotate(&transports, run) {
                        let s = measure::micro(&ctx, "stream", size, t, pl, run);
                        line += &format!("  {t} {}", report::brief(&s, 2));
                        samples.push(s);
                    }
                    println!("{line}");
                }
            }
            if want("connrate") {
                let mut line = tag("connections/s:");
                for t in rotate(&conn_transports, run) {
                    let s = measure::micro(&ctx, "connrate", 1, t, pl, run);
                    line += &format!("  {t} {}", report::brief(&s, 0));
                    samples.push(s);
                }
                println!("{line}");
            }
            if want("idle") {
                let mut line = tag("idle connection, CPU % (both ends):");
                for t in rotate(&pair, run) {
                    let s = measure::idle(&ctx, t, pl, run);
                    line += &format!("  {t} {}", report::brief(&s, 2));
                    samples.push(s);
                }
                println!("{line}");
            }
            if want("apps") && app_placement.map_or(true, |p| p == pl.name) {
                for &app in &apps {
                    let mut rows: BTreeMap<String, String> = BTreeMap::new();
                    for t in rotate(&pair, run) {
                        for s in apps::round(&ctx, app, t, pl, run) {
                            *rows.entry(s.item.clone()).or_default() += &format!("  {t} {}", report::brief(&s, 2));
                            samples.push(s);
                        }
                    }
                    for (item, r) in rows {
                        println!("{}{r}", tag(&format!("{item}:")));
                    }
                }
            }
            if want("rss") && pl.name == placements.last().map(|p| p.name).unwrap_or("") {
                let mut line = tag(&format!("RSS KiB per idle connection ({} open, both ends):", ctx.d.rss_conns));
                for t in rotate(&pair, run) {
                    let s = measure::rss(&ctx, t, pl, run);
                    line += &format!("  {t} {}", report::brief(&s, 1));
                    samples.push(s);
                }
                println!("{line}");
            }
        }
    }

    let wall = t_start.elapsed().as_secs_f64();
    let groups = report::summarize(&samples);
    println!();
    report::print_tables(&groups, &samples, &placements, ctx.d.rss_conns);
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.error.is_some()).collect();
    let excluded: Vec<&Sample> = samples.iter().filter(|s| s.excluded.is_some() && s.error.is_none()).collect();
    if !failed.is_empty() || !excluded.is_empty() {
        println!("\n== problems");
        for s in failed.iter().chain(excluded.iter()) {
            println!(
                "  {} {} {} {} run {}: {}",
                s.section,
                s.item,
                s.placement,
                s.transport,
                s.run,
                s.error.as_deref().or(s.excluded.as_deref()).unwrap_or("")
            );
        }
    }
    let load_end = report::loadavg();
    println!("\nload average at the end: {load_end}");
    let meta = report::Meta {
        quick: args.quick,
        load: (load_start.clone(), load_end),
        runs: args.runs,
        wall_s: wall,
        placements: placements.clone(),
        lib: lib.clone(),
        notes: notes.clone(),
        skipped_apps,
        durations: ctx.d.json(),
        git,
    };
    let json_path = out_dir.join("latest.json");
    let png_path = out_dir.join("latest.png");
    let mut status = 0;
    if let Err(e) = report::write_json(&json_path, &meta, &groups, &samples) {
        eprintln!("rdmasock bench: {}: {e}", json_path.display());
        status = 1;
    }
    if let Err(e) = chart::draw(&png_path, &meta, &groups) {
        eprintln!("rdmasock bench: {}: {e}", png_path.display());
        status = 1;
    }
    println!("\nwall time {wall:.1} s; results: {} and {}", json_path.display(), png_path.display());
    if args.keep_logs {
        println!("process logs kept in {}", ctx.logs.display());
    } else {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if !failed.is_empty() {
        eprintln!("rdmasock bench: {} measurement(s) failed (see above)", failed.len());
        status = 1;
    }
    exit(status);
}
