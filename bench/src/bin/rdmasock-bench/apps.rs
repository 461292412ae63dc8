//! Application figures, kernel TCP against the shim (both ends shimmed): sockperf
//! ping-pong (16 B), iperf3, redis-benchmark GET -c 1 / -c 50, wrk against nginx
//! -c 1 / -c 50 (formerly bench/apps.sh). Servers listen on a free port of
//! 127.0.0.1; the harness waits until /proc/net/tcp shows the port listening (no probe
//! connection, no sleeps), runs the client(s) with deadlines, then stops the server.

use crate::procs::{free_port, shim_paths, spawn, wait_listen, Proc, Spec};
use crate::{Ctx, Placement, Sample};
use std::time::Duration;

pub const SOCKPERF: &str = "sockperf ping-pong 16 B";
pub const IPERF3: &str = "iperf3";
pub const REDIS1: &str = "redis-benchmark GET -c 1";
pub const REDIS50: &str = "redis-benchmark GET -c 50";
pub const WRK1: &str = "wrk + nginx -c 1";
pub const WRK50: &str = "wrk + nginx -c 50";

/// (name, what must be installed, Debian package)
pub const APPS: &[(&str, &[&str], &str)] = &[
    ("sockperf", &["sockperf"], "sockperf"),
    ("iperf3", &["iperf3"], "iperf3"),
    ("redis", &["redis-server", "redis-benchmark"], "redis-server redis-tools"),
    ("nginx", &["nginx", "wrk"], "nginx-light wrk"),
];

pub fn which(prog: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else { return false };
    std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]).any(|d| {
        let p = d.join(prog);
        std::fs::metadata(&p).map(|m| m.is_file()).unwrap_or(false)
    })
}

/// A program by name when it is on PATH, else from /usr/sbin (nginx lives there).
fn prog(name: &str) -> String {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    if !on_path && std::path::Path::new("/usr/sbin").join(name).is_file() {
        return format!("/usr/sbin/{name}");
    }
    name.to_string()
}

/// Runs one application round (one server, its client runs) and returns its samples.
pub fn round(ctx: &Ctx, app: &str, mode: &str, pl: Placement, run: usize) -> Vec<Sample> {
    let items: &[&str] = match app {
        "sockperf" => &[SOCKPERF],
        "iperf3" => &[IPERF3],
        "redis" => &[REDIS1, REDIS50],
        _ => &[WRK1, WRK50],
    };
    let mut out: Vec<Sample> = items.iter().map(|i| Sample::new("apps", i, pl, mode, run)).collect();
    let shim = mode == "shim";
    let r = (|| -> Result<(), String> {
        let port = free_port()?;
        let p = port.to_string();
        let d = &ctx.d;
        let server: Vec<String> = match app {
            "sockperf" => svec(&["sockperf", "server", "-i", "127.0.0.1", "-p", &p, "--tcp"]),
            "iperf3" => svec(&["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", &p]),
            "redis" => svec(&[
                "redis-server", "--port", &p, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--protected-mode", "no", "--logfile", "",
            ]),
            _ => {
                let dir = nginx_conf(ctx, port)?;
                vec![prog("nginx"), "-c".into(), format!("{dir}/nginx.conf"), "-p".into(), dir]
            }
        };
        let sspec = Spec::new(&server).cpu(pl.server).shim(shim);
        let show = sspec.display(&ctx.env);
        let mut srv = spawn(&ctx.env, &ctx.logs, sspec)?;
        for s in out.iter_mut() {
            s.commands.push(show.clone());
        }
        wait_listen(&mut srv, port, Duration::from_secs(15))?;
        let res = clients(ctx, app, &p, pl, shim, &mut out);
        if app == "iperf3" && res.is_ok() {
            // iperf3 -s -1 exits by itself after its one test
            if srv.wait_for(Duration::from_secs(10)).is_err() {
                srv.stop();
            }
        } else {
            srv.stop();
        }
        let _ = d;
        res
    })();
    if let Err(e) = r {
        for s in out.iter_mut() {
            if s.error.is_none() && s.value.is_none() {
                s.fail(e.clone());
            }
        }
    }
    out
}

fn svec(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn nginx_conf(ctx: &Ctx, port: u16) -> Result<String, String> {
    let dir = ctx.tmp.join(format!("nginx-{}", ctx.next_id()));
    let html = dir.join("html");
    std::fs::create_dir_all(&html).map_err(|e| e.to_string())?;
    std::fs::write(html.join("index.html"), "hello\n").map_err(|e| e.to_string())?;
    let d = dir.display();
    let conf = format!(
        "user root; worker_processes 2; daemon off; master_process on; pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log off; sendfile on; keepalive_timeout 60; keepalive_requests 1000000;\n\
         client_body_temp_path {d}/ct; proxy_temp_path {d}/pt; fastcgi_temp_path {d}/ft;\n\
         uwsgi_temp_path {d}/ut; scgi_temp_path {d}/st;\n\
         server {{ listen 127.0.0.1:{port}; root {d}/html; }} }}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).map_err(|e| e.to_string())?;
    Ok(d.to_string())
}

/// Runs a client to completion; its stdout and stderr text.
fn run_client(ctx: &Ctx, argv: Vec<String>, pl: Placement, shim: bool, timeout: u64, s: &mut Sample) -> Result<Proc, String> {
    let spec = Spec::new(&argv).cpu(pl.client).shim(shim);
    s.commands.push(spec.display(&ctx.env));
    let mut c = spawn(&ctx.env, &ctx.logs, spec)?;
    c.finish(Duration::from_secs(timeout))?;
    Ok(c)
}

/// Counts the client's connections by path (shim runs) and notes them on the sample.
fn note_paths(s: &mut Sample, c: &Proc, shim: bool) {
    if !shim {
        s.path = "kernel".into();
        return;
    }
    let (shm, tcp, why) = shim_paths(&c.stderr_text(), "connect");
    s.path = if tcp == 0 && shm > 0 {
        format!("shm ({shm} conns)")
    } else if shm + tcp == 0 {
        "unknown (no shim log line)".into()
    } else {
        format!("shm {shm}/{} conns, tcp: {why}", shm + tcp)
    };
    s.put("conns_shm", Some(shm as f64));
    s.put("conns_tcp", Some(tcp as f64));
}

fn clients(ctx: &Ctx, app: &str, port: &str, pl: Placement, shim: bool, out: &mut [Sample]) -> Result<(), String> {
    let d = &ctx.d;
    match app {
        "sockperf" => {
            let s = &mut out[0];
            // --mps: sockperf sizes its table of samples for its default top rate, which
            // a fabric round trip of 0.4 µs overruns ("_seqN > m_maxSequenceNo", exit 6).
            let argv = svec(&[
                "sockperf", "ping-pong", "-i", "127.0.0.1", "-p", port, "--tcp", "-t", &d.sockperf_t.to_string(), "-m",
                "16", "--full-rtt", "--mps", "10000000",
            ]);
            let c = run_client(ctx, argv, pl, shim, 30 + d.sockperf_t, s)?;
            let text = c.stdout_text() + &c.stderr_text();
            let pct = |p: &str| -> Option<f64> {
                text.lines()
                    .find(|l| l.contains(&format!("percentile {p} =")))
                    .and_then(|l| l.rsplit('=').next())
                    .and_then(|v| v.trim().parse().ok())
            };
            s.value = pct("50.000");
            s.put("p99_us", pct("99.000"));
            s.put("p999_us", pct("99.900"));
            if s.value.is_none() {
                return Err(format!("no percentile in sockperf's output{}", c.err_tail()));
            }
            note_paths(s, &c, shim);
        }
        "iperf3" => {
            let s = &mut out[0];
            let argv = svec(&["iperf3", "-c", "127.0.0.1", "-p", port, "-J", "-t", &d.iperf_t.to_string()]);
            let c = run_client(ctx, argv, pl, shim, 30 + d.iperf_t, s)?;
            let v: serde_json::Value = serde_json::from_str(&c.stdout_text())
                .map_err(|e| format!("iperf3 -J output: {e}{}", c.err_tail()))?;
            let bps = v["end"]["sum_received"]["bits_per_second"].as_f64();
            s.value = bps.map(|b| b / 8e9);
            s.put("secs", v["end"]["sum_received"]["seconds"].as_f64());
            if s.value.is_none() {
                return Err(format!("no end.sum_received in iperf3's report: {}", v["error"]));
            }
            note_paths(s, &c, shim);
        }
        "redis" => {
            for (i, (c, n)) in [(1, d.redis_n1), (50, d.redis_n50)].into_iter().enumerate() {
                let s = &mut out[i];
                let argv = svec(&[
                    "redis-benchmark", "-h", "127.0.0.1", "-p", port, "-c", &c.to_string(), "-n", &n.to_string(), "-t",
                    "get", "--csv",
                ]);
                let cl = run_client(ctx, argv, pl, shim, 120, s)?;
                let text = cl.stdout_text();
                let row: Vec<f64> = text
                    .lines()
                    .find(|l| l.starts_with("\"GET\""))
                    .map(|l| l.split(',').skip(1).filter_map(|f| f.trim_matches('"').parse().ok()).collect())
                    .unwrap_or_default();
                if row.len() < 6 {
                    return Err(format!("no GET line in redis-benchmark's output{}", cl.err_tail()));
                }
                // "rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms",...
                s.value = Some(row[0]);
                s.put("p50_us", Some(row[3] * 1e3));
                s.put("p99_us", Some(row[5] * 1e3));
                note_paths(s, &cl, shim);
            }
        }
        _ => {
            for (i, c) in [1, 50].into_iter().enumerate() {
                let s = &mut out[i];
                let url = format!("http://127.0.0.1:{port}/index.html");
                let argv = svec(&[
                    "wrk", "-t1", &format!("-c{c}"), &format!("-d{}s", d.wrk_secs), "--latency", &url,
                ]);
                let cl = run_client(ctx, argv, pl, shim, 30 + d.wrk_secs, s)?;
                let text = cl.stdout_text();
                let rps = text
                    .lines()
                    .find(|l| l.starts_with("Requests/sec:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<f64>().ok());
                if rps.is_none() {
                    return Err(format!("no Requests/sec in wrk's output{}", cl.err_tail()));
                }
                s.value = rps;
                let lat = |p: &str| {
                    text.lines()
                        .find(|l| l.trim_start().starts_with(p))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(wrk_time_us)
                };
                s.put("p50_us", lat("50%"));
                s.put("p99_us", lat("99%"));
                // non-2xx responses or socket errors make the figure meaningless
                if let Some(l) = text.lines().find(|l| l.contains("Non-2xx") || l.contains("Socket errors")) {
                    s.note = l.trim().to_string();
                }
                note_paths(s, &cl, shim);
            }
        }
    }
    Ok(())
}

/// wrk's "1.23ms" / "850.00us" / "1.02s" in microseconds.
fn wrk_time_us(v: &str) -> Option<f64> {
    let (num, mul) = if let Some(x) = v.strip_suffix("us") {
        (x, 1.0)
    } else if let Some(x) = v.strip_suffix("ms") {
        (x, 1e3)
    } else if let Some(x) = v.strip_suffix('m') {
        (x, 60e6)
    } else if let Some(x) = v.strip_suffix('s') {
        (x, 1e6)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().ok().map(|n| n * mul)
}
