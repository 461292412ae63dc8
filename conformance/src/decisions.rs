//! The shim's decision lines on stderr (docs/contract.md, "Log lines"):
//!
//! ```text
//! rdmasock[PID]: connect fd=N local=IP:PORT peer=IP:PORT path=shm
//! rdmasock[PID]: accept fd=N local=IP:PORT peer=IP:PORT path=tcp reason=REASON
//! ```

use std::collections::HashMap;

#[derive(Debug)]
pub struct Decision {
    /// "connect" or "accept".
    pub op: String,
    pub local: String,
    pub peer: String,
    /// A fabric's name ("shm", "kmod", ...) or "tcp".
    pub path: String,
    /// Present exactly when path is tcp.
    pub reason: Option<String>,
    pub line: String,
}

/// All decision lines in `stderr`. Other lines, the shim's included, are
/// skipped; a connect or accept line that breaks the format panics.
pub fn parse(stderr: &str) -> Vec<Decision> {
    stderr.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Decision> {
    let rest = line.strip_prefix("rdmasock[")?;
    let (pid, rest) = rest.split_once("]: ")?;
    let mut words = rest.split_whitespace();
    let op = words.next()?;
    if op != "connect" && op != "accept" {
        return None;
    }
    let bad = |why: &str| -> ! { panic!("malformed decision line ({why}): {line:?}") };
    pid.parse::<u32>().unwrap_or_else(|_| bad("pid"));
    let fields: HashMap<&str, &str> = words
        .map(|w| {
            w.split_once('=')
                .unwrap_or_else(|| bad("a word that is not key=value"))
        })
        .collect();
    let field = |k: &str| {
        fields
            .get(k)
            .map(|v| v.to_string())
            .unwrap_or_else(|| bad(&format!("no {k}=")))
    };
    field("fd").parse::<i32>().unwrap_or_else(|_| bad("fd"));
    let path = field("path");
    let reason = fields.get("reason").map(|r| r.to_string());
    let fabric_name = !path.is_empty() && path != "tcp" && path.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    match (path.as_str(), &reason) {
        ("tcp", Some(_)) => {}
        (_, None) if fabric_name => {}
        _ => bad("path must be a fabric's name without a reason, or tcp with one"),
    }
    Some(Decision {
        op: op.to_string(),
        local: field("local"),
        peer: field("peer"),
        path,
        reason,
        line: line.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_examples() {
        let log = "noise\n\
            rdmasock[12]: connect fd=5 local=127.0.0.1:40000 peer=127.0.0.1:5000 path=shm\n\
            rdmasock[13]: accept fd=7 local=[::1]:5000 peer=[::1]:40000 path=tcp reason=peer-not-shim\n\
            rdmasock[13]: some other message\n";
        let d = parse(log);
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[0].op.as_str(), d[0].peer.as_str(), d[0].path.as_str()),
            ("connect", "127.0.0.1:5000", "shm")
        );
        assert_eq!(d[1].local, "[::1]:5000");
        assert_eq!(d[1].reason.as_deref(), Some("peer-not-shim"));
    }

    #[test]
    #[should_panic(expected = "malformed decision line")]
    fn rejects_tcp_without_reason() {
        parse("rdmasock[1]: connect fd=3 local=127.0.0.1:1 peer=127.0.0.1:2 path=tcp\n");
    }
}
