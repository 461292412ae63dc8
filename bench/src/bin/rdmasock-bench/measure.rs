//! One measurement of the micro benchmarks (ping-pong, stream, connection rate), the idle
//! CPU of a connection, and the memory of 1000 idle connections: a sockbench server and
//! client started for it, pinned as the placement says, stopped afterwards.

use crate::procs::{cpu_time, memory_kib, shim_paths, spawn, Spec};
use crate::{Ctx, Placement, Sample};
use serde_json::Value;
use std::io::Write;
use std::time::Duration;

/// (sockbench transport, shim on the server, shim on the client)
pub fn wiring(transport: &str) -> (&'static str, bool, bool) {
    match transport {
        "tcp" => ("tcp", false, false),
        "unix" => ("unix", false, false),
        "shm" => ("shm", false, false),
        "shim" => ("tcp", true, true),
        "shim-tcp" => ("tcp", false, true),
        other => panic!("unknown transport {other}"),
    }
}

fn server_argv(ctx: &Ctx, t: &str, timeout: u64) -> Vec<String> {
    let mut v = vec![
        ctx.sockbench.display().to_string(),
        "server".into(),
        t.into(),
        "--timeout".into(),
        timeout.to_string(),
    ];
    if t != "tcp" {
        let n = ctx.next_id();
        v.push("--path".into());
        v.push(ctx.tmp.join(format!("{t}-{n}")).display().to_string());
    }
    v
}

/// Judges where the connections went. For `shim` every connection must have taken the
/// shared-memory path on both sides (else the sample is excluded: it measured TCP); for
/// `shim-tcp` every one must have stayed on TCP.
fn check_paths(s: &mut Sample, transport: &str, cli_err: &str, srv_err: &str) {
    if transport != "shim" && transport != "shim-tcp" {
        s.path = "kernel".into();
        return;
    }
    let (cshm, ctcp, cwhy) = shim_paths(cli_err, "connect");
    let (sshm, stcp, swhy) = shim_paths(srv_err, "accept");
    let why = if cwhy.is_empty() { swhy } else { cwhy };
    if transport == "shim" {
        if cshm > 0 && ctcp == 0 && stcp == 0 {
            s.path = format!("shm ({cshm} conn)");
        } else if cshm + ctcp == 0 {
            s.path = "unknown".into();
            s.exclude("no connect line in the shim's log");
        } else {
            s.path = format!("tcp {ctcp}/{} conns", cshm + ctcp);
            s.exclude(&format!("fell back to tcp: {why}"));
        }
    } else if cshm == 0 && sshm == 0 && ctcp > 0 {
        s.path = format!("tcp ({why})");
    } else {
        s.path = format!("shm {cshm}/{}", cshm + ctcp);
        s.exclude("a connection went on the fabric with a plain server");
    }
}

fn last_json(lines: &[String]) -> Result<Value, String> {
    let l = lines
        .iter()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or("the client printed no result")?;
    serde_json::from_str(l).map_err(|e| format!("bad result line {l:?}: {e}"))
}

/// pingpong / stream / connrate between a sockbench server and client.
pub fn micro(ctx: &Ctx, section: &str, size: usize, transport: &str, pl: Placement, run: usize) -> Sample {
    let item = match section {
        "connrate" => "connect+1 exchange+close".to_string(),
        _ => crate::size_label(size),
    };
    let mut s = Sample::new(section, &item, pl, transport, run);
    let (t, srv_shim, cli_shim) = wiring(transport);
    let d = &ctx.d;
    let (dur, warm) = match section {
        "pingpong" => (d.pp_secs, d.pp_warmup),
        "stream" => (d.stream_secs, 0.0),
        _ => (d.conn_secs, 0.0),
    };
    let limit = 20 + (dur + warm) as u64 * 3;
    let r = (|| -> Result<(), String> {
        // Many connections: the shim counts its decisions instead of logging each (the
        // client's count at exit shows every one; a server claims only what its client
        // then finds claimed).
        let many = section == "connrate";
        let mut sspec = Spec::new(&server_argv(ctx, t, limit + 10)).cpu(pl.server).shim(srv_shim).lines();
        if many {
            sspec = sspec.summary();
        }
        s.commands.push(sspec.display(&ctx.env));
        let mut srv = spawn(&ctx.env, &ctx.logs, sspec)?;
        let ready = srv.expect("READY", Duration::from_secs(10))?;
        let addr = ready.split_whitespace().nth(1).ok_or("bad READY line")?.to_string();
        let argv: Vec<String> = vec![
            ctx.sockbench.display().to_string(),
            "client".into(),
            t.into(),
            addr,
            "--test".into(),
            section.into(),
            "--size".into(),
            size.to_string(),
            "--duration".into(),
            format!("{dur}"),
            "--warmup".into(),
            format!("{warm}"),
            "--timeout".into(),
            limit.to_string(),
        ];
        let mut cspec = Spec::new(&argv).cpu(pl.client).shim(cli_shim).lines();
        if many {
            cspec = cspec.summary();
        }
        s.commands.push(cspec.display(&ctx.env));
        let mut cli = spawn(&ctx.env, &ctx.logs, cspec)?;
        let res = cli.finish(Duration::from_secs(limit + 5));
        let lines = cli.rest_of_stdout();
        if t == "shm" {
            // a shm server serves one session and exits by itself
            if res.is_ok() {
                srv.finish(Duration::from_secs(10))?;
            } else {
                srv.stop();
            }
        } else {
            srv.stop();
        }
        res?;
        let v = last_json(&lines)?;
        match section {
            "pingpong" => {
                s.value = v["p50_us"].as_f64();
                for k in ["p99_us", "p999_us", "mean_us", "max_us", "count"] {
                    s.put(k, v[k].as_f64());
                }
            }
            "stream" => {
                s.value = v["gbytes_s"].as_f64();
                s.put("bytes", v["bytes"].as_f64());
                s.put("secs", v["secs"].as_f64());
            }
            _ => {
                s.value = v["rate"].as_f64();
                s.put("p50_us", v["p50_us"].as_f64());
                s.put("p99_us", v["p99_us"].as_f64());
                s.put("conns", v["conns"].as_f64());
            }
        }
        check_paths(&mut s, transport, &cli.stderr_text(), &srv.stderr_text());
        Ok(())
    })();
    if let Err(e) = r {
        s.fail(e);
    }
    s
}

/// CPU used by one idle connection: both sides ping-pong briefly, then the server waits
/// in read() and the client in poll(); after `idle_settle` s (well past the shim's spin
/// window) the CPU time of both processes is read twice, `idle_window` s apart.
pub fn idle(ctx: &Ctx, transport: &str, pl: Placement, run: usize) -> Sample {
    let mut s = Sample::new("idle", "idle connection", pl, transport, run);
    let (t, srv_shim, cli_shim) = wiring(transport);
    let d = &ctx.d;
    let limit = 30 + (d.idle_settle + d.idle_window) as u64;
    let r = (|| -> Result<(), String> {
        let sspec = Spec::new(&server_argv(ctx, t, limit)).cpu(pl.server).shim(srv_shim).lines();
        s.commands.push(sspec.display(&ctx.env));
        let mut srv = spawn(&ctx.env, &ctx.logs, sspec)?;
        let ready = srv.expect("READY", Duration::from_secs(10))?;
        let addr = ready.split_whitespace().nth(1).ok_or("bad READY line")?.to_string();
        let argv = vec![
            ctx.sockbench.display().to_string(),
            "client".into(),
            t.into(),
            addr,
            "--test".into(),
            "idle".into(),
            "--warmup".into(),
            "0.05".into(),
            "--timeout".into(),
            limit.to_string(),
        ];
        let cspec = Spec::new(&argv).cpu(pl.client).shim(cli_shim).lines();
        s.commands.push(cspec.display(&ctx.env));
        let mut cli = spawn(&ctx.env, &ctx.logs, cspec)?;
        cli.expect("IDLE", Duration::from_secs(20))?;
        // Both are now blocked (or spinning, which is what this measures).
        std::thread::sleep(Duration::from_secs_f64(d.idle_settle));
        let (s0, c0) = (cpu_time(srv.pid)?, cpu_time(cli.pid)?);
        let t0 = std::time::Instant::now();
        std::thread::sleep(Duration::from_secs_f64(d.idle_window));
        let (s1, c1) = (cpu_time(srv.pid)?, cpu_time(cli.pid)?);
        let secs = t0.elapsed().as_secs_f64();
        let (srv_alive, cli_alive) = (srv.alive(), cli.alive());
        cli.stop();
        srv.stop();
        if !srv_alive || !cli_alive {
            return Err(format!(
                "a side exited while idle{}{}",
                srv.err_tail(),
                cli.err_tail()
            ));
        }
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let pct_ns = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / 1e9 / secs * 100.0;
        let pct_ticks = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / hz / secs * 100.0;
        let (sp, cp) = (pct_ns(s0.1, s1.1), pct_ns(c0.1, c1.1));
        s.value = Some(sp + cp);
        s.put("server_pct", Some(sp));
        s.put("client_pct", Some(cp));
        s.put("server_stat_pct", Some(pct_ticks(s0.0, s1.0)));
        s.put("client_stat_pct", Some(pct_ticks(c0.0, c1.0)));
        s.put("window_s", Some(secs));
        check_paths(&mut s, transport, &cli.stderr_text(), &srv.stderr_text());
        Ok(())
    })();
    if let Err(e) = r {
        s.fail(e);
    }
    s
}

/// Resident memory per idle connection: the client opens one connection, both sides'
/// memory is read, the client opens `rss_conns` more (one exchange on each, so each is
/// decided and, under the shim, on the fabric), memory is read again; the difference
/// divided by the number of connections.
pub fn rss(ctx: &Ctx, transport: &str, pl: Placement, run: usize) -> Sample {
    let mut s = Sample::new("rss", "idle connections", pl, transport, run);
    let (t, srv_shim, cli_shim) = wiring(transport);
    let n = ctx.d.rss_conns;
    let limit = 120;
    let r = (|| -> Result<(), String> {
        let sspec = Spec::new(&server_argv(ctx, t, limit)).cpu(pl.server).shim(srv_shim).lines();
        s.commands.push(sspec.display(&ctx.env));
        let mut srv = spawn(&ctx.env, &ctx.logs, sspec)?;
        let ready = srv.expect("READY", Duration::from_secs(10))?;
        let addr = ready.split_whitespace().nth(1).ok_or("bad READY line")?.to_string();
        let argv = vec![
            ctx.sockbench.display().to_string(),
            "client".into(),
            t.into(),
            addr,
            "--test".into(),
            "many".into(),
            "--conns".into(),
            n.to_string(),
            "--timeout".into(),
            limit.to_string(),
        ];
        let cspec = Spec::new(&argv).cpu(pl.client).shim(cli_shim).lines().stdin();
        s.commands.push(cspec.display(&ctx.env));
        let mut cli = spawn(&ctx.env, &ctx.logs, cspec)?;
        cli.expect("BASE", Duration::from_secs(20))?;
        let (s0, c0) = (memory_kib(srv.pid)?, memory_kib(cli.pid)?);
        let mut stdin = cli.stdin.take().ok_or("no stdin")?;
        stdin.write_all(b"go\n").map_err(|e| format!("client stdin: {e}"))?;
        let opened = cli.expect("OPEN", Duration::from_secs(90));
        let mem = (memory_kib(srv.pid), memory_kib(cli.pid));
        drop(stdin);
        let res = cli.finish(Duration::from_secs(20));
        srv.stop();
        opened?;
        res?;
        let (s1, c1) = (mem.0?, mem.1?);
        let per = |a: f64, b: f64| (b - a) / n as f64;
        let (sk, ck) = (per(s0.0, s1.0), per(c0.0, c1.0));
        s.value = Some(sk + ck);
        s.put("server_kib", Some(sk));
        s.put("client_kib", Some(ck));
        s.put("pss_kib", Some(per(s0.1 + c0.1, s1.1 + c1.1)));
        s.put("conns", Some(n as f64));
        check_paths(&mut s, transport, &cli.stderr_text(), &srv.stderr_text());
        Ok(())
    })();
    if let Err(e) = r {
        s.fail(e);
    }
    s
}
