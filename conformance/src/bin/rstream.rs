//! rstream: the `stream` protocol of `conformance/c/stream.c` written with
//! `std::net`, so that Rust programs run under the shim too and the C and
//! Rust peers check each other.
//!
//!     rstream server BIND PORT MODE CONNS          (MODE: iter | threads)
//!     rstream client HOST PORT BYTES_OUT BYTES_IN SEED [CONNS] [THREADS]
//!
//! Output lines, exit status and the protocol are those of `stream`.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::exit;
use std::thread;

use rdmasock_conformance::proto::{
    parse_size, rand_size, splitmix64, Gen, Hash, Header, Plan, Spec, HEADER_LEN, MAX_CHUNK,
    SERVER_READ_SALT, SERVER_WRITE_SALT,
};

type Result<T> = std::result::Result<T, String>;

/// Writes all of `buf` with write or writev (two pieces), chosen by `rng`.
fn write_chunk(s: &mut TcpStream, buf: &[u8], rng: &mut u64) -> io::Result<()> {
    let mut p = buf;
    while !p.is_empty() {
        let n = if splitmix64(rng) & 1 == 0 || p.len() < 2 {
            s.write(p)
        } else {
            let cut = 1 + (splitmix64(rng) % (p.len() as u64 - 1)) as usize;
            s.write_vectored(&[IoSlice::new(&p[..cut]), IoSlice::new(&p[cut..])])
        };
        match n {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => p = &p[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One read of up to `buf.len()` bytes with read or readv, chosen by `rng`.
fn read_chunk(s: &mut TcpStream, buf: &mut [u8], rng: &mut u64) -> io::Result<usize> {
    loop {
        let r = if splitmix64(rng) & 1 == 0 || buf.len() < 2 {
            s.read(buf)
        } else {
            let cut = 1 + (splitmix64(rng) % (buf.len() as u64 - 1)) as usize;
            let (a, b) = buf.split_at_mut(cut);
            s.read_vectored(&mut [IoSliceMut::new(a), IoSliceMut::new(b)])
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// Serves one connection; returns (payload bytes read, bytes sent back).
fn serve(mut s: TcpStream) -> Result<(u64, u64)> {
    let mut hdr = [0u8; HEADER_LEN];
    s.read_exact(&mut hdr)
        .map_err(|e| format!("server: reading the header: {e}"))?;
    let hdr = Header::parse(&hdr)?;
    let mut buf = vec![0u8; MAX_CHUNK];

    let mut rng = hdr.seed_back ^ SERVER_READ_SALT;
    let mut h = Hash::default();
    loop {
        let want = rand_size(&mut rng);
        let n = read_chunk(&mut s, &mut buf[..want], &mut rng)
            .map_err(|e| format!("server: read after {} payload bytes: {e}", h.len()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    s.write_all(&h.finish().to_le_bytes())
        .map_err(|e| format!("server: writing the hash: {e}"))?;

    let mut rng = hdr.seed_back ^ SERVER_WRITE_SALT;
    let mut g = Gen::new(hdr.seed_back);
    let mut sent = 0u64;
    while sent < hdr.bytes_back {
        let n = rand_size(&mut rng).min((hdr.bytes_back - sent) as usize);
        g.fill(&mut buf[..n]);
        write_chunk(&mut s, &buf[..n], &mut rng)
            .map_err(|e| format!("server: write after {sent} bytes: {e}"))?;
        sent += n as u64;
    }
    Ok((h.len(), sent))
}

fn run_server(args: &[String]) -> Result<()> {
    let [bind, port, mode, conns] = args else {
        return Err("usage: rstream server BIND PORT MODE CONNS".into());
    };
    let conns: u64 = conns.parse().map_err(|_| format!("bad CONNS '{conns}'"))?;
    let addr = if bind.contains(':') {
        format!("[{bind}]:{port}")
    } else {
        format!("{bind}:{port}")
    };
    let listener = TcpListener::bind(&addr).map_err(|e| format!("bind {addr}: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    println!("READY {port}");

    let accept = || {
        listener
            .accept()
            .map(|(s, _)| s)
            .map_err(|e| format!("accept: {e}"))
    };
    let results: Vec<Result<(u64, u64)>> = match mode.as_str() {
        "iter" => (0..conns).map(|_| serve(accept()?)).collect(),
        "threads" => thread::scope(|scope| {
            let mut handles = Vec::new();
            for _ in 0..conns {
                let s = accept()?;
                handles.push(scope.spawn(move || serve(s)));
            }
            Ok::<_, String>(
                handles
                    .into_iter()
                    .map(|h| h.join().expect("server thread panicked"))
                    .collect(),
            )
        })?,
        _ => return Err(format!("unknown server mode '{mode}'")),
    };
    let (mut bytes_in, mut bytes_out) = (0, 0);
    for r in results {
        let (i, o) = r?;
        bytes_in += i;
        bytes_out += o;
    }
    println!("DONE conns={conns} bytes_in={bytes_in} bytes_out={bytes_out}");
    Ok(())
}

struct ClientArgs {
    addr: String,
    out: Spec,
    back: Spec,
    seed: u64,
    conns: u64,
}

fn client_conn(
    a: &ClientArgs,
    thread: u64,
    conn: u64,
    buf: &mut [u8],
    want: &mut [u8],
) -> Result<(u64, u64)> {
    let p = Plan::new(a.seed, thread, conn, a.out, a.back);
    let who = format!("client {thread}/{conn}");
    let mut rng = p.io_seed;
    let mut s =
        TcpStream::connect(&a.addr).map_err(|e| format!("{who}: connect {}: {e}", a.addr))?;
    s.write_all(&p.header())
        .map_err(|e| format!("{who}: writing the header: {e}"))?;

    let mut g = Gen::new(p.up_seed);
    let mut h = Hash::default();
    while h.len() < p.bytes_out {
        let n = rand_size(&mut rng).min((p.bytes_out - h.len()) as usize);
        g.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        write_chunk(&mut s, &buf[..n], &mut rng)
            .map_err(|e| format!("{who}: write after {} bytes: {e}", h.len() - n as u64))?;
    }
    // Half-close: the server reads until this EOF, then answers.
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("{who}: shutdown: {e}"))?;

    let mut digest = [0u8; 8];
    s.read_exact(&mut digest)
        .map_err(|e| format!("{who}: reading the hash: {e}"))?;
    if u64::from_le_bytes(digest) != h.finish() {
        return Err(format!(
            "{who}: server hashed {:016x} over what it read, sent {} bytes hashing to {:016x}",
            u64::from_le_bytes(digest),
            p.bytes_out,
            h.finish()
        ));
    }

    let mut g = Gen::new(p.back_seed);
    let mut seen = 0u64;
    loop {
        let cap = rand_size(&mut rng);
        let n = read_chunk(&mut s, &mut buf[..cap], &mut rng)
            .map_err(|e| format!("{who}: read after {seen} of {} bytes: {e}", p.bytes_in))?;
        if n == 0 {
            break;
        }
        if seen + n as u64 > p.bytes_in {
            return Err(format!(
                "{who}: server sent more than the {} bytes asked for",
                p.bytes_in
            ));
        }
        g.fill(&mut want[..n]);
        if let Some(i) = (0..n).find(|&i| buf[i] != want[i]) {
            return Err(format!(
                "{who}: returned stream differs at byte {}",
                seen + i as u64
            ));
        }
        seen += n as u64;
    }
    if seen != p.bytes_in {
        return Err(format!("{who}: EOF after {seen} of {} bytes", p.bytes_in));
    }
    Ok((p.bytes_out, p.bytes_in))
}

fn run_client(args: &[String]) -> Result<()> {
    if args.len() < 5 || args.len() > 7 {
        return Err(
            "usage: rstream client HOST PORT BYTES_OUT BYTES_IN SEED [CONNS] [THREADS]".into(),
        );
    }
    let host = &args[0];
    let port = &args[1];
    let count = |i: usize, what: &str| -> Result<u64> {
        args.get(i).map_or(Ok(1), |v| {
            v.parse().map_err(|_| format!("bad {what} '{v}'"))
        })
    };
    let a = ClientArgs {
        addr: if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        },
        out: Spec::parse(&args[2])?,
        back: Spec::parse(&args[3])?,
        seed: parse_size(&args[4])?,
        conns: count(5, "CONNS")?,
    };
    let threads = count(6, "THREADS")?;
    let results: Vec<Result<(u64, u64)>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let a = &a;
                scope.spawn(move || {
                    let (mut buf, mut want) = (vec![0u8; MAX_CHUNK], vec![0u8; MAX_CHUNK]);
                    let mut total = (0, 0);
                    for c in 0..a.conns {
                        let (o, i) = client_conn(a, t, c, &mut buf, &mut want)?;
                        total = (total.0 + o, total.1 + i);
                    }
                    Ok(total)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread panicked"))
            .collect()
    });
    let (mut out, mut inb) = (0, 0);
    for r in results {
        let (o, i) = r?;
        out += o;
        inb += i;
    }
    println!(
        "OK conns={} bytes_out={out} bytes_in={inb}",
        a.conns * threads
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("server") => run_server(&args[2..]),
        Some("client") => run_client(&args[2..]),
        _ => Err("usage: rstream server|client ...".into()),
    };
    if let Err(e) = result {
        eprintln!("rstream[{}]: {e}", std::process::id());
        exit(1);
    }
}
