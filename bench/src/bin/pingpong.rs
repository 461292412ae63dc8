//! Round-trip latency over one TCP connection (std::net, blocking sockets).
//!
//!     pingpong server PORT [--bind ADDR]
//!     pingpong client HOST PORT [--size N] [--iters N] [--warmup N]
//!
//! The server listens (PORT 0 = let the kernel pick one), prints `READY PORT` on stdout
//! once it is listening, serves exactly one connection by echoing every N-byte message
//! back until EOF, then exits.  The client sends a message, waits for the whole echo and
//! times that round trip with `Instant` (a monotonic clock); after `--warmup` untimed
//! round trips it records `--iters` timed ones and prints one JSON line and one human
//! line on stdout.
//!
//! Nothing here knows about the shim: run both sides with and without LD_PRELOAD to
//! compare kernel TCP with the shared-memory path (see bench/pingpong.sh).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::exit;
use std::time::Instant;

const USAGE: &str = "\
usage: pingpong server PORT [--bind ADDR]
       pingpong client HOST PORT [--size N] [--iters N] [--warmup N]
  server: listen on ADDR:PORT (default 127.0.0.1; PORT 0 = pick one), print `READY PORT`,
          echo N-byte messages on one connection until EOF
  client: --size bytes per message (default 16), --iters timed round trips (default 200000),
          --warmup untimed round trips first (default 20000)";

/// The client opens every connection with this header so the server learns the message
/// size (and so a stray connection is rejected rather than echoed at a wrong size).
const MAGIC: [u8; 4] = *b"PPv1";
const MAX_SIZE: usize = 64 << 20;

type Result<T> = std::result::Result<T, String>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("server") => server(&args[1..]),
        Some("client") => client(&args[1..]),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return;
        }
        _ => {
            eprintln!("{USAGE}");
            exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("pingpong: {e}");
        exit(1);
    }
}

fn ctx(what: &str) -> impl FnOnce(io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn parse_num<T: std::str::FromStr>(flag: &str, v: Option<&String>) -> Result<T> {
    let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
    v.parse()
        .map_err(|_| format!("{flag}: not a valid number: {v:?}"))
}

// ---------------------------------------------------------------------------------------
// server

fn server(args: &[String]) -> Result<()> {
    let mut port: Option<u16> = None;
    let mut bind: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bind" => {
                let v = it.next().ok_or("--bind needs an address")?;
                bind = v
                    .parse()
                    .map_err(|_| format!("--bind: not an IP address: {v:?}"))?;
            }
            _ if port.is_none() => port = Some(parse_num("PORT", Some(a))?),
            _ => return Err(format!("unexpected argument {a:?}\n{USAGE}")),
        }
    }
    let port = port.ok_or_else(|| format!("server needs a PORT\n{USAGE}"))?;

    let listener = TcpListener::bind(SocketAddr::new(bind, port)).map_err(ctx("bind"))?;
    let port = listener.local_addr().map_err(ctx("getsockname"))?.port();
    // The harness blocks on this line instead of sleeping, so flush it now.
    let mut out = io::stdout().lock();
    writeln!(out, "READY {port}")
        .and_then(|_| out.flush())
        .map_err(ctx("stdout"))?;
    drop(out);

    let (mut s, _) = listener.accept().map_err(ctx("accept"))?;
    drop(listener); // one connection only
    s.set_nodelay(true).map_err(ctx("TCP_NODELAY"))?;

    let mut hdr = [0u8; 8];
    s.read_exact(&mut hdr).map_err(ctx("read header"))?;
    if hdr[..4] != MAGIC {
        return Err("bad header: the peer is not a pingpong client".into());
    }
    let size = u32::from_le_bytes(hdr[4..].try_into().unwrap()) as usize;
    if size == 0 || size > MAX_SIZE {
        return Err(format!("bad message size {size}"));
    }

    let mut buf = vec![0u8; size];
    while read_message(&mut s, &mut buf).map_err(ctx("read"))? {
        s.write_all(&buf).map_err(ctx("write"))?;
    }
    Ok(())
}

/// `read_exact` that also reports a clean end of stream: Ok(false) when the peer closed
/// before the first byte of a message, an error when it closed in the middle of one.
fn read_message(s: &mut TcpStream, buf: &mut [u8]) -> io::Result<bool> {
    let first = loop {
        match s.read(buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    if first == 0 {
        return Ok(false);
    }
    s.read_exact(&mut buf[first..])?;
    Ok(true)
}

// ---------------------------------------------------------------------------------------
// client

fn client(args: &[String]) -> Result<()> {
    let (mut size, mut iters, mut warmup) = (16usize, 200_000usize, 20_000usize);
    let mut pos: Vec<&String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--size" => size = parse_num("--size", it.next())?,
            "--iters" => iters = parse_num("--iters", it.next())?,
            "--warmup" => warmup = parse_num("--warmup", it.next())?,
            _ if a.starts_with("--") => return Err(format!("unknown option {a:?}\n{USAGE}")),
            _ => pos.push(a),
        }
    }
    let [host, port] = pos[..] else {
        return Err(format!("client needs HOST PORT\n{USAGE}"));
    };
    let port: u16 = parse_num("PORT", Some(port))?;
    if size == 0 || size > MAX_SIZE {
        return Err(format!("--size must be 1..={MAX_SIZE}"));
    }
    if iters == 0 {
        return Err("--iters must be at least 1".into());
    }

    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(ctx("resolve"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let mut s = TcpStream::connect(addr).map_err(ctx("connect"))?;
    s.set_nodelay(true).map_err(ctx("TCP_NODELAY"))?;

    let mut hdr = [0u8; 8];
    hdr[..4].copy_from_slice(&MAGIC);
    hdr[4..].copy_from_slice(&(size as u32).to_le_bytes());
    s.write_all(&hdr).map_err(ctx("write header"))?;

    let mut msg: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut echo = vec![0u8; size];
    let mut samples: Vec<u64> = Vec::with_capacity(iters); // nanoseconds, preallocated
    let start = Instant::now();
    for i in 0..warmup + iters {
        // Stamp both ends of the message so a stale or torn echo is caught below.
        let tag = (i as u8) ^ 0x5a;
        msg[0] = tag;
        msg[size - 1] = tag;

        let t0 = Instant::now();
        s.write_all(&msg).map_err(ctx("write"))?;
        s.read_exact(&mut echo).map_err(ctx("read"))?;
        let dt = t0.elapsed();

        // Checked outside the timed region.
        if echo != msg {
            return Err(format!(
                "round trip {i}: the echo differs from the message sent"
            ));
        }
        if i >= warmup {
            samples.push(dt.as_nanos() as u64);
        }
    }
    let wall = start.elapsed();
    // Orderly close: the server sees EOF at a message boundary and exits 0.
    let _ = s.shutdown(Shutdown::Write);
    drop(s);

    let st = Stats::new(samples);
    println!(
        "{{\"bench\":\"pingpong\",\"size\":{size},\"iters\":{iters},\"warmup\":{warmup},\
         \"p50_us\":{:.3},\"p90_us\":{:.3},\"p99_us\":{:.3},\"p999_us\":{:.3},\
         \"min_us\":{:.3},\"mean_us\":{:.3},\"max_us\":{:.3},\"wall_s\":{:.3}}}",
        st.pct_us(50.0),
        st.pct_us(90.0),
        st.pct_us(99.0),
        st.pct_us(99.9),
        us(st.min()),
        st.mean_ns() / 1e3,
        us(st.max()),
        wall.as_secs_f64(),
    );
    println!(
        "pingpong {size} B x {iters} round trips (+{warmup} warmup): p50 {:.2} us  p90 {:.2}  \
         p99 {:.2}  p99.9 {:.2}  min {:.2}  mean {:.2}  max {:.2}  ({:.2} s)",
        st.pct_us(50.0),
        st.pct_us(90.0),
        st.pct_us(99.0),
        st.pct_us(99.9),
        us(st.min()),
        st.mean_ns() / 1e3,
        us(st.max()),
        wall.as_secs_f64(),
    );
    Ok(())
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

/// Exact percentiles from every sample (a sorted Vec; 8 bytes per round trip).
struct Stats {
    sorted: Vec<u64>,
}

impl Stats {
    fn new(mut samples: Vec<u64>) -> Self {
        assert!(!samples.is_empty());
        samples.sort_unstable();
        Stats { sorted: samples }
    }

    /// Nearest-rank percentile: the smallest sample with at least p% of samples <= it.
    fn pct_us(&self, p: f64) -> f64 {
        let n = self.sorted.len();
        // rank = ceil(p/100 * n) in integer parts-per-million: in f64, 0.999 * 1000 is
        // 999.0000000000001 and would round p99.9 of 1000 samples up to the maximum.
        let ppm = (p * 1e4).round() as u128;
        let rank = ((ppm * n as u128).div_ceil(1_000_000)) as usize;
        us(self.sorted[rank.clamp(1, n) - 1])
    }

    fn min(&self) -> u64 {
        self.sorted[0]
    }

    fn max(&self) -> u64 {
        self.sorted[self.sorted.len() - 1]
    }

    fn mean_ns(&self) -> f64 {
        self.sorted.iter().map(|&x| x as f64).sum::<f64>() / self.sorted.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::Stats;

    #[test]
    fn nearest_rank_percentiles() {
        let st = Stats::new((1..=1000).rev().map(|x| x * 1000).collect());
        assert_eq!(st.pct_us(50.0), 500.0);
        assert_eq!(st.pct_us(99.0), 990.0);
        assert_eq!(st.pct_us(99.9), 999.0);
        assert_eq!(st.pct_us(100.0), 1000.0);
        assert_eq!(st.pct_us(0.0), 1.0);
        assert_eq!(st.min(), 1000);
        assert_eq!(st.mean_ns(), 500_500.0);
    }
}
