//! Medians, tables, JSON.

use crate::apps;
use crate::{Placement, Sample, TRANSPORTS};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub med: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(v: &[f64]) -> Option<Stat> {
        if v.is_empty() {
            return None;
        }
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let med = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Stat { med, min: v[0], max: v[n - 1], n })
    }
    fn json(&self) -> Value {
        json!({"median": self.med, "min": self.min, "max": self.max, "n": self.n})
    }
}

pub struct Group {
    pub section: String,
    pub item: String,
    pub placement: &'static str,
    pub transport: String,
    pub value: Option<Stat>,
    pub extra: BTreeMap<String, Stat>,
    pub runs: usize,
    pub failed: usize,
    pub excluded: usize,
    pub paths: Vec<String>,
    pub why: Vec<String>,
}

/// (unit, lower is better)
pub fn meta(section: &str, item: &str) -> (&'static str, bool) {
    match section {
        "pingpong" => ("µs", true),
        "stream" => ("GB/s", false),
        "connrate" => ("conn/s", false),
        "idle" => ("% of a vCPU", true),
        "rss" => ("KiB/conn", true),
        _ => match item {
            apps::SOCKPERF => ("µs", true),
            apps::IPERF3 => ("GB/s", false),
            _ => ("req/s", false),
        },
    }
}

/// A number with as many decimals as it deserves.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The short form printed while the benchmark runs.
pub fn brief(s: &Sample, _digits: usize) -> String {
    if let Some(e) = &s.error {
        let e: String = e.chars().take(60).collect();
        return format!("FAILED({e})");
    }
    match (s.value, &s.excluded) {
        (Some(v), None) => num(v),
        (Some(v), Some(_)) => format!("{}[{}]", num(v), s.path),
        (None, _) => "n/a".into(),
    }
}

pub fn summarize(samples: &[Sample]) -> Vec<Group> {
    let mut order: Vec<(String, String)> = vec![];
    for s in samples {
        let k = (s.section.clone(), s.item.clone());
        if !order.contains(&k) {
            order.push(k);
        }
    }
    let placements: Vec<&'static str> = crate::PLACEMENTS.iter().map(|p| p.name).collect();
    let mut out = vec![];
    for (section, item) in &order {
        for pl in &placements {
            for (t, _) in TRANSPORTS {
                let ss: Vec<&Sample> = samples
                    .iter()
                    .filter(|s| &s.section == section && &s.item == item && s.placement == *pl && s.transport == *t)
                    .collect();
                if ss.is_empty() {
                    continue;
                }
                let vals: Vec<f64> = ss.iter().filter_map(|s| s.usable()).collect();
                let mut keys: Vec<&String> = ss.iter().flat_map(|s| s.extra.keys()).collect();
                keys.sort();
                keys.dedup();
                let mut extra = BTreeMap::new();
                for k in keys {
                    let v: Vec<f64> = ss
                        .iter()
                        .filter(|s| s.usable().is_some())
                        .filter_map(|s| s.extra.get(k).copied())
                        .collect();
                    if let Some(st) = Stat::of(&v) {
                        extra.insert(k.clone(), st);
                    }
                }
                let mut paths: Vec<String> = ss.iter().map(|s| s.path.clone()).filter(|p| !p.is_empty()).collect();
                paths.dedup();
                let mut why: Vec<String> = ss
                    .iter()
                    .filter_map(|s| s.error.clone().or(s.excluded.clone()))
                    .chain(ss.iter().map(|s| s.note.clone()).filter(|n| !n.is_empty()))
                    .collect();
                why.dedup();
                out.push(Group {
                    section: section.clone(),
                    item: item.clone(),
                    placement: pl,
                    transport: t.to_string(),
                    value: Stat::of(&vals),
                    extra,
                    runs: ss.len(),
                    failed: ss.iter().filter(|s| s.error.is_some()).count(),
                    excluded: ss.iter().filter(|s| s.error.is_none() && s.excluded.is_some()).count(),
                    paths,
                    why,
                });
            }
        }
    }
    out
}

pub fn find<'a>(groups: &'a [Group], section: &str, item: &str, pl: &str, t: &str) -> Option<&'a Group> {
    groups.iter().find(|g| g.section == section && g.item == item && g.placement == pl && g.transport == t)
}

/// How many times better than kernel TCP (same figure, same placement): > 1 is better.
pub fn speedup(groups: &[Group], g: &Group) -> Option<f64> {
    let tcp = find(groups, &g.section, &g.item, g.placement, "tcp")?.value?.med;
    let x = g.value?.med;
    let (_, lower) = meta(&g.section, &g.item);
    let r = if lower { tcp / x } else { x / tcp };
    r.is_finite().then_some(r)
}

fn cell(s: Option<&Stat>, runs: usize) -> String {
    match s {
        None => "n/a".into(),
        Some(s) => {
            let mut c = if s.n > 1 && num(s.min) != num(s.max) {
                format!("{} ({}-{})", num(s.med), num(s.min), num(s.max))
            } else {
                num(s.med)
            };
            if s.n < runs {
                c += &format!(" [{}/{runs}]", s.n);
            }
            c
        }
    }
}

fn gcell(g: &Group) -> String {
    if g.value.is_none() {
        let why = g.why.first().map(|w| w.chars().take(50).collect::<String>()).unwrap_or_default();
        return format!("n/a ({why})");
    }
    cell(g.value.as_ref(), g.runs)
}

fn xcell(g: &Group, k: &str) -> String {
    cell(g.extra.get(k), g.runs)
}

fn ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{}x", num(r))).unwrap_or_else(|| "-".into())
}

fn items(groups: &[Group], section: &str) -> Vec<String> {
    let mut v: Vec<String> = vec![];
    for g in groups.iter().filter(|g| g.section == section) {
        if !v.contains(&g.item) {
            v.push(g.item.clone());
        }
    }
    v
}

pub fn print_tables(groups: &[Group], samples: &[Sample], placements: &[Placement], rss_conns: usize) {
    let runs = samples.iter().map(|s| s.run).max().unwrap_or(0);
    println!("== results: median of {runs} run(s) (min-max); [k/n]: only k of n runs usable");
    println!("   speedup = how many times better than kernel TCP in the same placement (> 1: better)");
    println!("   transports: {}", TRANSPORTS.iter().map(|t| t.0).collect::<Vec<_>>().join(", "));
    for (t, what) in TRANSPORTS {
        println!("     {t:<9} {what}");
    }
    let pls: Vec<&str> = placements.iter().map(|p| p.name).collect();
    let each = |section: &str, f: &mut dyn FnMut(&str, &str, &Group)| {
        for item in items(groups, section) {
            for pl in &pls {
                for g in groups.iter().filter(|g| g.section == section && g.item == item && g.placement == *pl) {
                    f(&item, pl, g);
                }
            }
        }
    };

    if groups.iter().any(|g| g.section == "pingpong") {
        println!("\n== ping-pong round trip, µs (lower is better)");
        println!("{:<8} {:<10} {:<9} {:<26} {:<26} {:<26} {}", "size", "placement", "transport", "p50", "p99", "p99.9", "speedup(p50)");
        each("pingpong", &mut |item, pl, g| {
            println!(
                "{:<8} {:<10} {:<9} {:<26} {:<26} {:<26} {}",
                item, pl, g.transport, gcell(g), xcell(g, "p99_us"), xcell(g, "p999_us"), ratio(speedup(groups, g))
            );
        });
    }
    if groups.iter().any(|g| g.section == "stream") {
        println!("\n== stream throughput, GB/s (10^9 bytes/s; higher is better)");
        println!("{:<8} {:<10} {:<9} {:<26} {}", "write", "placement", "transport", "GB/s", "speedup");
        each("stream", &mut |item, pl, g| {
            println!("{:<8} {:<10} {:<9} {:<26} {}", item, pl, g.transport, gcell(g), ratio(speedup(groups, g)));
        });
    }
    if groups.iter().any(|g| g.section == "connrate") {
        println!("\n== connection set-up: connect, accept, one exchange, close (higher is better)");
        println!("{:<10} {:<9} {:<26} {:<26} {:<26} {}", "placement", "transport", "connections/s", "set-up p50 µs", "set-up p99 µs", "speedup");
        each("connrate", &mut |_, pl, g| {
            println!(
                "{:<10} {:<9} {:<26} {:<26} {:<26} {}",
                pl, g.transport, gcell(g), xcell(g, "p50_us"), xcell(g, "p99_us"), ratio(speedup(groups, g))
            );
        });
    }
    if groups.iter().any(|g| g.section == "apps") {
        println!("\n== applications, kernel TCP vs the shim (both ends shimmed)");
        println!("{:<26} {:<6} {:<10} {:<28} {:<28} {:<9} {}", "figure", "unit", "placement", "tcp", "shim", "speedup", "shim connections");
        for item in items(groups, "apps") {
            let (unit, _) = meta("apps", &item);
            for pl in &pls {
                let t = find(groups, "apps", &item, pl, "tcp");
                let s = find(groups, "apps", &item, pl, "shim");
                if t.is_none() && s.is_none() {
                    continue;
                }
                println!(
                    "{:<26} {:<6} {:<10} {:<28} {:<28} {:<9} {}",
                    item,
                    unit,
                    pl,
                    t.map(gcell).unwrap_or_else(|| "-".into()),
                    s.map(gcell).unwrap_or_else(|| "-".into()),
                    ratio(s.and_then(|s| speedup(groups, s))),
                    s.map(|s| s.paths.join("; ")).unwrap_or_default()
                );
            }
        }
    }
    if groups.iter().any(|g| g.section == "idle") {
        println!("\n== CPU used by one idle connection after the spin window, % of one vCPU (schedstat; /proc/PID/stat utime+stime in brackets, 10 ms ticks)");
        println!("{:<10} {:<9} {:<24} {:<30} {}", "placement", "transport", "both ends", "server [stat]", "client [stat]");
        each("idle", &mut |_, pl, g| {
            println!(
                "{:<10} {:<9} {:<24} {:<30} {}",
                pl,
                g.transport,
                gcell(g),
                format!("{} [{}]", xcell(g, "server_pct"), xcell(g, "server_stat_pct")),
                format!("{} [{}]", xcell(g, "client_pct"), xcell(g, "client_stat_pct"))
            );
        });
    }
    if groups.iter().any(|g| g.section == "rss") {
        println!("\n== resident memory per idle connection, {rss_conns} connections open, KiB (VmRSS difference / {rss_conns})");
        println!("{:<10} {:<9} {:<24} {:<24} {:<24} {}", "placement", "transport", "both ends (RSS)", "server", "client", "both ends (Pss)");
        each("rss", &mut |_, pl, g| {
            println!(
                "{:<10} {:<9} {:<24} {:<24} {:<24} {}",
                pl, g.transport, gcell(g), xcell(g, "server_kib"), xcell(g, "client_kib"), xcell(g, "pss_kib")
            );
        });
        println!("   (kernel TCP's socket buffers are kernel memory, not in any process's RSS)");
    }
    let ov = overhead(groups);
    if !ov.is_empty() {
        println!("\n== the shim's overhead on connections that stay on TCP: client shimmed, server plain (shim-tcp) vs no shim");
        println!("{:<34} {:<10} {:<26} {:<26} {}", "figure", "placement", "tcp", "shim-tcp", "cost");
        for o in &ov {
            println!("{:<34} {:<10} {:<26} {:<26} {}", o.0, o.1, o.2, o.3, o.4);
        }
        if let Some((g, n)) = overhead_geomean(groups) {
            println!("all {n} figures together (geometric mean of the cost factors): {:+.1}%", g * 100.0);
            println!("   (one figure's run-to-run spread on this VM is larger than the goal of 3%; the mean over");
            println!("    every figure and placement is the figure to compare with it)");
        }
    }
}

/// The cost factors shim-tcp/tcp of every overhead figure (> 0: the shim makes TCP
/// slower), as (geometric mean - 1, count). One figure's run-to-run noise here is
/// ±10-25%, much more than the cost itself; across figures and placements the noise
/// averages out and a real cost, paid on every call or connection, does not.
pub fn overhead_geomean(groups: &[Group]) -> Option<(f64, usize)> {
    let mut logs = vec![];
    for g in groups.iter().filter(|g| g.transport == "shim-tcp") {
        let Some(t) = find(groups, &g.section, &g.item, g.placement, "tcp") else { continue };
        let (_, lower) = meta(&g.section, &g.item);
        if let (Some(a), Some(b)) = (t.value, g.value) {
            let f = if lower { b.med / a.med } else { a.med / b.med };
            if f.is_finite() && f > 0.0 {
                logs.push(f.ln());
            }
        }
    }
    (!logs.is_empty()).then(|| ((logs.iter().sum::<f64>() / logs.len() as f64).exp() - 1.0, logs.len()))
}

/// (figure, placement, tcp, shim-tcp, cost) rows; cost > 0: the shim makes TCP worse.
fn overhead(groups: &[Group]) -> Vec<(String, String, String, String, String)> {
    let mut v = vec![];
    for g in groups.iter().filter(|g| g.transport == "shim-tcp") {
        let Some(t) = find(groups, &g.section, &g.item, g.placement, "tcp") else { continue };
        let (unit, lower) = meta(&g.section, &g.item);
        let what = match g.section.as_str() {
            "pingpong" => format!("ping-pong {} p50 ({unit})", g.item),
            "stream" => format!("stream {} ({unit})", g.item),
            _ => format!("connections ({unit})"),
        };
        let cost = match (t.value, g.value) {
            (Some(a), Some(b)) => {
                let c = if lower { b.med / a.med - 1.0 } else { a.med / b.med - 1.0 };
                format!("{:+.1}%", c * 100.0)
            }
            _ => "-".into(),
        };
        v.push((what, g.placement.to_string(), gcell(t), gcell(g), cost));
    }
    v
}

pub struct Meta {
    pub quick: bool,
    /// /proc/loadavg at the start and at the end (other work on the machine disturbs
    /// the figures)
    pub load: (String, String),
    pub runs: usize,
    pub wall_s: f64,
    pub placements: Vec<Placement>,
    pub lib: Option<PathBuf>,
    pub notes: Vec<String>,
    pub skipped_apps: Vec<String>,
    pub durations: Value,
    /// the source tree's commit when the run started
    pub git: String,
}

fn read(p: &str) -> String {
    std::fs::read_to_string(p).unwrap_or_default().trim().to_string()
}

pub fn loadavg() -> String {
    read("/proc/loadavg")
}

pub fn hostname() -> String {
    read("/proc/sys/kernel/hostname")
}

pub fn kernel() -> String {
    read("/proc/sys/kernel/osrelease")
}

pub fn cpu_model() -> String {
    read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|x| x.1.trim().to_string())
        .unwrap_or_default()
}

/// UTC now as 2024-01-31T12:34:56Z (civil-from-days, no date crate).
pub fn utc_now() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, secs) = (t.div_euclid(86400), t.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

pub fn git_rev(tree: &Option<PathBuf>) -> String {
    let Some(t) = tree else { return String::new() };
    std::process::Command::new("git")
        .arg("-C")
        .arg(t)
        .args(["rev-parse", "--short", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn write_json(path: &Path, m: &Meta, groups: &[Group], samples: &[Sample]) -> std::io::Result<()> {
    let summary: Vec<Value> = groups
        .iter()
        .map(|g| {
            let (unit, lower) = meta(&g.section, &g.item);
            json!({
                "section": g.section, "item": g.item, "placement": g.placement, "transport": g.transport,
                "unit": unit, "lower_is_better": lower,
                "value": g.value.map(|s| s.json()),
                "speedup_vs_tcp": speedup(groups, g),
                "extra": g.extra.iter().map(|(k, s)| (k.clone(), s.json())).collect::<serde_json::Map<_, _>>(),
                "runs": g.runs, "failed": g.failed, "excluded": g.excluded,
                "paths": g.paths, "problems": g.why,
            })
        })
        .collect();
    let overhead: Vec<Value> = overhead(groups)
        .into_iter()
        .map(|o| json!({"figure": o.0, "placement": o.1, "tcp": o.2, "shim_tcp": o.3, "cost": o.4}))
        .collect();
    let raw: Vec<Value> = samples
        .iter()
        .map(|s| {
            json!({
                "section": s.section, "item": s.item, "placement": s.placement, "transport": s.transport,
                "run": s.run, "value": s.value, "extra": s.extra, "path": s.path,
                "excluded": s.excluded, "error": s.error, "note": s.note, "commands": s.commands,
            })
        })
        .collect();
    let env: serde_json::Map<String, Value> =
        std::env::vars().filter(|(k, _)| k.starts_with("RDMASOCK_")).map(|(k, v)| (k, json!(v))).collect();
    let doc = json!({
        "bench": "rdmasock-bench",
        "format": 1,
        "generated": utc_now(),
        "quick": m.quick,
        "host": hostname(), "kernel": kernel(), "cpu_model": cpu_model(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "git": m.git,
        "runs_per_config": m.runs,
        "wall_s": m.wall_s,
        "loadavg_start": m.load.0, "loadavg_end": m.load.1,
        "placements": m.placements.iter().map(|p| json!({"name": p.name, "label": p.label, "server_cpu": p.server, "client_cpu": p.client})).collect::<Vec<_>>(),
        "transports": TRANSPORTS.iter().map(|(t, d)| json!({"name": t, "what": d})).collect::<Vec<_>>(),
        "shim_lib": m.lib.as_ref().map(|l| l.display().to_string()),
        "shim_env": env,
        "durations": m.durations,
        "notes": m.notes,
        "skipped_apps": m.skipped_apps,
        "summary": summary,
        "overhead": overhead,
        "overhead_geomean": overhead_geomean(groups).map(|(g, n)| json!({"cost": format!("{:+.1}%", g * 100.0), "figures": n})),
        "samples": raw,
    });
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&doc).unwrap() + "\n")?;
    std::fs::rename(&tmp, path)
}
