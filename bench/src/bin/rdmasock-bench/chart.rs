//! bench/results/latest.png: six panels a person can read at a glance. Bars are medians,
//! whiskers min-max; every axis is logarithmic. Text uses the DejaVu Sans font shipped in
//! bench/assets (plotters' ab_glyph backend), so no system fonts are needed.

use crate::report::{find, meta, num, speedup, Group, Meta};
use crate::{apps, size_label, PP_SIZES, STREAM_SIZES};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;

static FONT: &[u8] = include_bytes!("../../../assets/DejaVuSans.ttf");

const W: u32 = 1800;
const H: u32 = 1560;

fn tcolor(t: &str) -> RGBColor {
    match t {
        "tcp" => RGBColor(100, 100, 100),
        "unix" => RGBColor(140, 86, 75),
        "shm" => RGBColor(44, 160, 44),
        "shim" => RGBColor(31, 119, 180),
        _ => RGBColor(255, 127, 14),
    }
}

fn pcolor(p: &str) -> RGBColor {
    match p {
        "same-cpu" => RGBColor(148, 103, 189),
        "cross-cpu" => RGBColor(23, 190, 207),
        _ => RGBColor(188, 189, 34),
    }
}

fn tname(t: &str) -> &str {
    match t {
        "tcp" => "kernel TCP",
        "unix" => "Unix socket",
        "shm" => "raw shared memory (limit)",
        "shim" => "librdmasock shim",
        _ => "shim client, plain server (stays TCP)",
    }
}

fn pshort(p: &str) -> &str {
    match p {
        "same-cpu" => "same vCPU",
        "cross-cpu" => "2 vCPUs",
        _ => "unpinned",
    }
}

type Val = Option<(f64, f64, f64)>;

/// Axis labels: 0.1, 1, 10, 100, 1000, 10k, 1M.
fn axis_num(v: f64) -> String {
    let trim = |s: String| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if v >= 1e6 {
        trim(format!("{:.1}", v / 1e6)) + "M"
    } else if v >= 1e4 {
        trim(format!("{:.1}", v / 1e3)) + "k"
    } else {
        trim(format!("{v:.3}"))
    }
}

struct Bars {
    title: String,
    ylabel: String,
    /// two label lines under each group
    groups: Vec<(String, String)>,
    series: Vec<(String, RGBColor)>,
    /// [group][series]
    vals: Vec<Vec<Val>>,
    /// horizontal reference line (1x for ratios)
    reference: Option<f64>,
    /// print the median above each bar
    labels: bool,
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn font(size: f64) -> TextStyle<'static> {
    ("sans-serif", size).into_font().color(&BLACK)
}

fn draw_bars(root: &Area, area: &Area, b: &Bars) -> Result<(), String> {
    let e = |x: DrawingAreaErrorKind<_>| format!("drawing: {x:?}");
    let all: Vec<f64> = b.vals.iter().flatten().flatten().flat_map(|v| [v.0, v.1, v.2]).filter(|v| *v > 0.0).collect();
    let (lo, hi) = if all.is_empty() {
        (0.1, 10.0)
    } else {
        let lo = all.iter().cloned().fold(f64::MAX, f64::min);
        let hi = all.iter().cloned().fold(f64::MIN, f64::max);
        let lo = lo.min(b.reference.unwrap_or(lo));
        let hi = hi.max(b.reference.unwrap_or(hi));
        (10f64.powf(lo.log10().floor()), 10f64.powf((hi.log10() + if b.labels { 0.35 } else { 0.08 }).ceil().max(hi.log10() + 0.3)))
    };
    let ng = b.groups.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(&b.title, font(21.0))
        .margin(12)
        .margin_right(20)
        .x_label_area_size(46)
        .y_label_area_size(78)
        .build_cartesian_2d(0f64..ng as f64, (lo..hi).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .x_label_formatter(&|_| String::new())
        .y_desc(&b.ylabel)
        .y_label_formatter(&|v| axis_num(*v))
        .label_style(font(14.0))
        .axis_desc_style(font(15.0))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(200, 200, 200))
        .draw()
        .map_err(e)?;
    if let Some(r) = b.reference {
        chart
            .draw_series(LineSeries::new([(0.0, r), (ng as f64, r)], RED.stroke_width(2)))
            .map_err(e)?;
    }
    let ns = b.series.len().max(1) as f64;
    let bw = 0.8 / ns;
    for (gi, row) in b.vals.iter().enumerate() {
        for (si, v) in row.iter().enumerate() {
            let x0 = gi as f64 + 0.1 + si as f64 * bw;
            let x1 = x0 + bw * 0.92;
            let xm = (x0 + x1) / 2.0;
            let color = b.series[si].1;
            match v {
                Some((med, min, max)) if *med > 0.0 => {
                    chart
                        .draw_series([Rectangle::new([(x0, lo), (x1, *med)], color.filled())])
                        .map_err(e)?;
                    if max > min {
                        let cap = bw * 0.22;
                        chart
                            .draw_series([
                                PathElement::new(vec![(xm, min.max(lo)), (xm, *max)], BLACK.stroke_width(1)),
                                PathElement::new(vec![(xm - cap, *max), (xm + cap, *max)], BLACK.stroke_width(1)),
                                PathElement::new(vec![(xm - cap, min.max(lo)), (xm + cap, min.max(lo))], BLACK.stroke_width(1)),
                            ])
                            .map_err(e)?;
                    }
                    if b.labels {
                        let (px, py) = chart.backend_coord(&(xm, max.max(*med)));
                        root.draw(&Text::new(
                            format!("{}x", num(*med)),
                            (px - 13, py - 18),
                            font(13.0),
                        ))
                        .map_err(e)?;
                    }
                }
                _ => {
                    let (px, py) = chart.backend_coord(&(xm, lo));
                    root.draw(&Text::new("n/a", (px - 4, py - 40), font(11.0).transform(FontTransform::Rotate270)))
                        .map_err(e)?;
                }
            }
        }
    }
    // group labels, two lines, centred under each group
    for (gi, (l1, l2)) in b.groups.iter().enumerate() {
        let (px, py) = chart.backend_coord(&((gi as f64) + 0.5, lo));
        for (k, l) in [l1, l2].iter().enumerate() {
            let st = font(if k == 0 { 15.0 } else { 13.0 });
            let w = root.estimate_text_size(l, &st).map(|s| s.0 as i32).unwrap_or(0);
            root.draw(&Text::new(l.to_string(), (px - w / 2, py + 6 + 18 * k as i32), st)).map_err(e)?;
        }
        if gi > 0 {
            let (sx, sy) = chart.backend_coord(&(gi as f64, lo));
            root.draw(&PathElement::new(vec![(sx, sy), (sx, sy + 40)], RGBColor(180, 180, 180))).map_err(e)?;
        }
    }
    Ok(())
}

fn val(groups: &[Group], section: &str, item: &str, pl: &str, t: &str, extra: Option<&str>) -> Val {
    let g = find(groups, section, item, pl, t)?;
    let s = match extra {
        None => g.value?,
        Some(k) => *g.extra.get(k)?,
    };
    Some((s.med, s.min, s.max))
}

pub fn draw(path: &Path, m: &Meta, groups: &[Group]) -> Result<(), String> {
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, FONT);
    let e = |x: DrawingAreaErrorKind<_>| format!("drawing: {x:?}");
    let root = BitMapBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;

    // title, subtitle and the transport legend
    let title = format!(
        "librdmasock benchmark{}: kernel TCP vs Unix sockets vs raw shared memory vs the shim",
        if m.quick { " (--quick smoke test: figures not meaningful)" } else { "" }
    );
    root.draw(&Text::new(title, (20, 12), font(28.0))).map_err(e)?;
    let sub = format!(
        "{} · {} vCPUs ({}) · kernel {} · {} · git {} · bars: median of {} run(s), whiskers: min-max · {:.0} s",
        crate::report::hostname(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        crate::report::cpu_model(),
        crate::report::kernel(),
        crate::report::utc_now(),
        if m.git.is_empty() { "?" } else { &m.git },
        m.runs,
        m.wall_s
    );
    root.draw(&Text::new(sub, (20, 50), font(16.0).color(&RGBColor(70, 70, 70)))).map_err(e)?;
    let mut x = 20;
    let present: Vec<&str> = crate::TRANSPORTS
        .iter()
        .map(|t| t.0)
        .filter(|t| groups.iter().any(|g| g.transport == *t))
        .collect();
    for t in &present {
        root.draw(&Rectangle::new([(x, 80), (x + 22, 98)], tcolor(t).filled())).map_err(e)?;
        let label = tname(t);
        root.draw(&Text::new(label, (x + 28, 80), font(17.0))).map_err(e)?;
        x += 28 + root.estimate_text_size(label, &font(17.0)).map(|s| s.0 as i32).unwrap_or(150) + 30;
    }
    let body = root.margin(108, 0, 0, 0);
    let cells = body.split_evenly((3, 2));
    let pls: Vec<&str> = m.placements.iter().map(|p| p.name).collect();
    let series: Vec<(String, RGBColor)> = present.iter().map(|t| (t.to_string(), tcolor(t))).collect();

    // 1, 3: ping-pong p50 and p99.9; 2: stream
    let per_size = |section: &str, sizes: &[usize], extra: Option<&str>, title: &str, ylabel: &str| -> Bars {
        let mut gs = vec![];
        let mut vals = vec![];
        for &sz in sizes {
            for pl in &pls {
                gs.push((size_label(sz), pshort(pl).to_string()));
                vals.push(present.iter().map(|t| val(groups, section, &size_label(sz), pl, t, extra)).collect());
            }
        }
        Bars { title: title.into(), ylabel: ylabel.into(), groups: gs, series: series.clone(), vals, reference: None, labels: false }
    };
    draw_bars(&root, &cells[0], &per_size("pingpong", PP_SIZES, None, "Ping-pong round trip, p50 (lower is better)", "µs"))?;
    draw_bars(&root, &cells[1], &per_size("stream", STREAM_SIZES, None, "Stream throughput by write size (higher is better)", "GB/s"))?;
    draw_bars(&root, &cells[2], &per_size("pingpong", PP_SIZES, Some("p999_us"), "Ping-pong round trip, p99.9 (lower is better)", "µs"))?;

    // 4: connection set-up
    {
        let ts: Vec<&str> = present.iter().copied().filter(|t| *t != "shm").collect();
        let item = "connect+1 exchange+close";
        let b = Bars {
            title: "Connection set-up: connect, accept, 1 exchange, close (higher is better)".into(),
            ylabel: "connections/s".into(),
            groups: pls.iter().map(|p| (pshort(p).to_string(), String::new())).collect(),
            series: ts.iter().map(|t| (t.to_string(), tcolor(t))).collect(),
            vals: pls.iter().map(|p| ts.iter().map(|t| val(groups, "connrate", item, p, t, None)).collect()).collect(),
            reference: None,
            labels: false,
        };
        draw_bars(&root, &cells[3], &b)?;
    }

    // 5: applications, shim speedup over TCP per placement
    {
        let items = [apps::SOCKPERF, apps::IPERF3, apps::REDIS1, apps::REDIS50, apps::WRK1, apps::WRK50];
        let short = ["sockperf p50", "iperf3", "redis -c 1", "redis -c 50", "nginx -c 1", "nginx -c 50"];
        let app_pls: Vec<&str> = pls
            .iter()
            .copied()
            .filter(|p| items.iter().any(|i| find(groups, "apps", i, p, "shim").is_some()))
            .collect();
        let vals: Vec<Vec<Val>> = items
            .iter()
            .map(|i| {
                app_pls
                    .iter()
                    .map(|p| {
                        let g = find(groups, "apps", i, p, "shim")?;
                        let r = speedup(groups, g)?;
                        // min-max of the ratio from the extremes of both sides
                        let t = find(groups, "apps", i, p, "tcp")?.value?;
                        let s = g.value?;
                        let (_, lower) = meta("apps", i);
                        let (a, b) = if lower { (t.min / s.max, t.max / s.min) } else { (s.min / t.max, s.max / t.min) };
                        Some((r, a.min(b), a.max(b)))
                    })
                    .collect()
            })
            .collect();
        let b = Bars {
            title: "Applications: shim speedup over kernel TCP (> 1x: the shim is faster)".into(),
            ylabel: "speedup (x)".into(),
            groups: items
                .iter()
                .zip(short)
                .map(|(i, s)| (s.to_string(), meta("apps", i).0.to_string()))
                .collect(),
            series: app_pls.iter().map(|p| (p.to_string(), pcolor(p))).collect(),
            vals,
            reference: Some(1.0),
            labels: true,
        };
        draw_bars(&root, &cells[4], &b)?;
        // placement legend in the panel's top-left corner
        let (ox, oy) = cells[4].get_base_pixel();
        let mut lx = ox + 100;
        for p in &app_pls {
            root.draw(&Rectangle::new([(lx, oy + 40), (lx + 16, oy + 54)], pcolor(p).filled())).map_err(e)?;
            root.draw(&Text::new(pshort(p), (lx + 21, oy + 39), font(14.0))).map_err(e)?;
            lx += 120;
        }
        if app_pls.is_empty() {
            root.draw(&Text::new("(no application figures: tools not installed or --no-apps)", (ox + 100, oy + 200), font(16.0)))
                .map_err(e)?;
        }
    }

    // 6: text: idle CPU, memory, overhead on TCP, headline speedups
    {
        let (ox, oy) = cells[5].get_base_pixel();
        let mut y = oy + 14;
        let mut line = |s: String, size: f64, dy: i32| -> Result<(), String> {
            root.draw(&Text::new(s, (ox + 20, y), font(size))).map_err(e)?;
            y += dy;
            Ok(())
        };
        let fmt = |v: Val| v.map(|v| num(v.0)).unwrap_or_else(|| "n/a".into());
        line("Other figures (medians)".into(), 21.0, 36)?;
        line("Shim vs kernel TCP, 16 B ping-pong p50:".into(), 16.0, 22)?;
        for pl in &pls {
            let t = val(groups, "pingpong", "16 B", pl, "tcp", None);
            let s = val(groups, "pingpong", "16 B", pl, "shim", None);
            let l = val(groups, "pingpong", "16 B", pl, "shm", None);
            let r = match (t, s) {
                (Some(t), Some(s)) => format!("{}x faster", num(t.0 / s.0)),
                _ => "-".into(),
            };
            line(format!("    {:<10}  tcp {} µs, shim {} µs ({r}), raw shm {} µs", pshort(pl), fmt(t), fmt(s), fmt(l)), 15.0, 21)?;
        }
        line(String::new(), 15.0, 8)?;
        line("CPU of one idle connection after the spin window, % of a vCPU (both ends):".into(), 16.0, 22)?;
        let idle: Vec<String> = pls
            .iter()
            .map(|pl| {
                format!(
                    "{} tcp {} / shim {}",
                    pshort(pl),
                    fmt(val(groups, "idle", "idle connection", pl, "tcp", None)),
                    fmt(val(groups, "idle", "idle connection", pl, "shim", None))
                )
            })
            .collect();
        line(format!("    {}", idle.join(";  ")), 15.0, 29)?;
        let rss_pl = groups.iter().find(|g| g.section == "rss").map(|g| g.placement).unwrap_or("unpinned");
        let conns = m.durations["rss_conns"].as_u64().unwrap_or(0);
        line(format!("Resident memory per idle connection ({conns} open), KiB, both ends:"), 16.0, 22)?;
        let rv = |t: &str, k: &str| fmt(val(groups, "rss", "idle connections", rss_pl, t, Some(k)));
        line(
            format!(
                "    shim: RSS {} (server {}, client {}), Pss {};  tcp: RSS {}",
                fmt(val(groups, "rss", "idle connections", rss_pl, "shim", None)),
                rv("shim", "server_kib"),
                rv("shim", "client_kib"),
                rv("shim", "pss_kib"),
                fmt(val(groups, "rss", "idle connections", rss_pl, "tcp", None)),
            ),
            15.0,
            29,
        )?;
        line("The shim on connections that stay on TCP (shim-tcp vs tcp; + = slower):".into(), 16.0, 22)?;
        let cost = |section: &str, item: &str| -> String {
            pls.iter()
                .map(|pl| {
                    let t = find(groups, section, item, pl, "tcp").and_then(|g| g.value);
                    let s = find(groups, section, item, pl, "shim-tcp").and_then(|g| g.value);
                    let (_, lower) = meta(section, item);
                    match (t, s) {
                        (Some(t), Some(s)) => {
                            let c = if lower { s.med / t.med - 1.0 } else { t.med / s.med - 1.0 };
                            format!("{} {:+.1}%", pshort(pl), c * 100.0)
                        }
                        _ => format!("{} -", pshort(pl)),
                    }
                })
                .collect::<Vec<_>>()
                .join(",  ")
        };
        line(format!("    ping-pong 16 B p50:  {}", cost("pingpong", "16 B")), 15.0, 21)?;
        line(format!("    stream 64 KiB:  {}", cost("stream", "64 KiB")), 15.0, 21)?;
        line(format!("    connection rate:  {}", cost("connrate", "connect+1 exchange+close")), 15.0, 21)?;
        if let Some((g, n)) = crate::report::overhead_geomean(groups) {
            line(format!("    all {n} figures (geometric mean):  {:+.1}%", g * 100.0), 15.0, 29)?;
        }
        line("Placements: same vCPU = both processes on vCPU 0 (taskset -c 0);".into(), 14.0, 19)?;
        line("2 vCPUs = server on vCPU 0, client on vCPU 1; unpinned = left to the scheduler.".into(), 14.0, 19)?;
        for n in m.notes.iter().take(3) {
            let n: String = n.chars().take(110).collect();
            line(format!("NOTE: {n}"), 13.0, 18)?;
        }
    }
    root.present().map_err(|x| format!("writing {}: {x:?}", path.display()))?;
    Ok(())
}
