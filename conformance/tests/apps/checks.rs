//! Checks of what the applications' clients printed, and the files the cases write.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use crate::harness::Ctx;
use crate::util::process::Finished;

/// stdout and stderr without the shim's own lines.
pub fn output(f: &Finished) -> String {
    let mut all = f.stdout.clone();
    for l in f.stderr.lines().filter(|l| !l.starts_with("rdmasock[")) {
        all.push_str(l);
        all.push('\n');
    }
    all
}

/// The number that follows `key` in `text` (digits, a decimal point allowed).
pub fn number_after(text: &str, key: &str) -> Option<f64> {
    let rest = &text[text.find(key)? + key.len()..];
    let rest = rest.trim_start();
    let num: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse().ok()
}

pub fn require(f: &Finished, what: &str, ok: bool) {
    assert!(ok, "{}: expected {what}: {}", f.label, f.describe());
}

/// `n` random bytes in a new file.
pub fn random_file(path: &Path, n: usize) {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .expect("reading /dev/urandom");
    write(path, &buf);
}

pub fn write(path: &Path, data: &[u8]) {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    fs::File::create(path)
        .and_then(|mut f| f.write_all(data))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Two files must be the same: same length, same bytes.
pub fn same_file(got: &Path, want: &Path) {
    let (g, w) = (read(got), read(want));
    if let Some(i) = (0..g.len().min(w.len())).find(|&i| g[i] != w[i]) {
        panic!(
            "{} differs from {} at byte {i}",
            got.display(),
            want.display()
        );
    }
    assert_eq!(
        g.len(),
        w.len(),
        "{} has {} bytes, {} has {}",
        got.display(),
        g.len(),
        want.display(),
        w.len()
    );
}

pub fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// sha256sum's digest of a file.
pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run sha256sum: {e}"));
    assert!(
        out.status.success(),
        "sha256sum {}: {out:?}",
        path.display()
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum's output")
        .to_string()
}

/// The file's digest and length match the source's.
pub fn same_sha256(got: &Path, want: &Path) {
    let (g, w) = (sha256(got), sha256(want));
    assert_eq!(
        g,
        w,
        "sha256 of {} ({} bytes) is not that of {} ({} bytes)",
        got.display(),
        read(got).len(),
        want.display(),
        read(want).len()
    );
}

// --- redis -------------------------------------------------------------------------

/// `redis-benchmark --csv -t set,get`: a SET and a GET row with a positive rate, and
/// no error anywhere in the output.
pub fn redis_benchmark(_: &Ctx, f: &Finished) {
    let out = output(f);
    require(
        f,
        "no error in redis-benchmark's output",
        !out.to_lowercase().contains("error"),
    );
    for test in ["SET", "GET"] {
        let rps = f
            .stdout
            .lines()
            .find_map(|l| {
                let mut cols = l.split(',').map(|c| c.trim_matches('"'));
                (cols.next() == Some(test)).then(|| cols.next()?.parse::<f64>().ok())?
            })
            .unwrap_or_else(|| panic!("no {test} row in redis-benchmark's CSV: {}", f.describe()));
        require(f, &format!("a positive {test} rate"), rps > 0.0);
    }
}

// --- nginx, http.server ------------------------------------------------------------

/// wrk: some requests, no socket error, no response other than 2xx/3xx.
pub fn wrk(_: &Ctx, f: &Finished) {
    let out = output(f);
    let requests = out
        .lines()
        .find_map(|l| {
            let (n, rest) = l.trim().split_once(' ')?;
            rest.starts_with("requests in")
                .then(|| n.parse::<u64>().ok())?
        })
        .unwrap_or_else(|| panic!("no \"N requests in\" line from wrk: {}", f.describe()));
    require(f, "some requests", requests > 0);
    require(f, "no socket errors", !out.contains("Socket errors"));
    require(
        f,
        "no non-2xx/3xx responses",
        !out.contains("Non-2xx or 3xx responses"),
    );
}

/// ApacheBench: every request complete, none failed, no APR error.
pub fn ab(_: &Ctx, f: &Finished) {
    let out = output(f);
    let field = |name: &str| out.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()));
    require(f, "1000 complete requests", field("Complete requests:").as_deref() == Some("1000"));
    require(f, "no failed request", field("Failed requests:").as_deref() == Some("0"));
    require(f, "no APR error", !out.contains("apr_"));
}

// --- memcached -----------------------------------------------------------------------

/// memcaslap --verify: no failed verification, operations done, gets and sets.
pub fn memcaslap(_: &Ctx, f: &Finished) {
    let out = output(f);
    let num = |key: &str| {
        number_after(&out, key)
            .unwrap_or_else(|| panic!("no {key:?} in memcaslap's report: {}", f.describe()))
    };
    require(f, "verify_failed: 0", num("verify_failed:") == 0.0);
    require(f, "Ops > 0", num("Ops:") > 0.0);
    require(f, "cmd_get > 0", num("cmd_get:") > 0.0);
    require(f, "cmd_set > 0", num("cmd_set:") > 0.0);
}

// --- sockperf ------------------------------------------------------------------------

/// ping-pong and under-load: nothing dropped, duplicated or out of order; messages
/// measured; a latency summary.
pub fn sockperf_latency(_: &Ctx, f: &Finished) {
    let out = output(f);
    require(
        f,
        "no dropped, duplicated or out-of-order message",
        out.contains(
            "# dropped messages = 0; # duplicated messages = 0; # out-of-order messages = 0",
        ),
    );
    let received = out
        .lines()
        .find(|l| l.contains("[Valid Duration]"))
        .and_then(|l| number_after(l, "ReceivedMessages="))
        .unwrap_or_else(|| panic!("no [Valid Duration] line from sockperf: {}", f.describe()));
    require(f, "messages received", received > 0.0);
    let latency = number_after(&out, "Summary: Latency is")
        .unwrap_or_else(|| panic!("no latency summary from sockperf: {}", f.describe()));
    require(f, "a latency", latency > 0.0);
}

/// throughput: a positive message rate and bandwidth.
pub fn sockperf_throughput(_: &Ctx, f: &Finished) {
    let out = output(f);
    let rate = number_after(&out, "Summary: Message Rate is")
        .unwrap_or_else(|| panic!("no message rate from sockperf: {}", f.describe()));
    let bw = number_after(&out, "Summary: BandWidth is")
        .unwrap_or_else(|| panic!("no bandwidth from sockperf: {}", f.describe()));
    require(
        f,
        "a positive message rate and bandwidth",
        rate > 0.0 && bw > 0.0,
    );
}

// --- iperf3 --------------------------------------------------------------------------

/// iperf3 -J: valid JSON without "error"; the totals of `sums` positive; `streams`
/// streams, each of which received something.
pub fn iperf3(f: &Finished, sums: &[&str], streams: usize) {
    let report: serde_json::Value = serde_json::from_str(&f.stdout)
        .unwrap_or_else(|e| panic!("iperf3 -J printed invalid JSON ({e}): {}", f.describe()));
    assert!(
        report.get("error").is_none(),
        "iperf3 reports an error: {}",
        report["error"]
    );
    for key in sums {
        let bytes = report["end"][key]["bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("no end.{key}.bytes in iperf3's report: {}", f.describe()));
        assert!(bytes > 0, "iperf3: end.{key}.bytes is 0: {}", f.describe());
    }
    let list = report["end"]["streams"]
        .as_array()
        .unwrap_or_else(|| panic!("no end.streams in iperf3's report: {}", f.describe()));
    assert_eq!(list.len(), streams, "iperf3's streams: {}", f.describe());
    for s in list {
        let got = s["receiver"]["bytes"].as_u64().unwrap_or(0);
        assert!(got > 0, "an iperf3 stream received nothing: {s}");
    }
}
