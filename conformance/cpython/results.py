#!/usr/bin/python3
"""Helpers for conformance/cpython/run.sh (Python stdlib only).

    results.py hung STDOUT                 id of the test that was running when a run stopped
    results.py collect RUNDIR SUITE MODE   write RUNDIR/SUITE.MODE.json (per-test results)
    results.py report OUTDIR               print the tables and differences; exit 1 on any

Per-test results come from regrtest's --junit-xml file, completed with the -v output
(unittest's "FAIL:/ERROR:" summary headers catch subtest failures and tearDown errors,
which the XML does not record, and the per-test lines are the fallback when a run was
killed before it wrote its XML). Results: pass, fail, error, skip, xfail, xpass, hang
(the test that was running when the per-suite timeout fired; it is then excluded with -i
and the suite run again), missing (not run: setUpClass failed, or the run died).
"""
import json
import os
import re
import sys
import xml.etree.ElementTree as ET

ID = r"([A-Za-z_]\w*(?:\.\w+)+)"
# "test_x (test.mod.Class.test_x) ... ok", possibly with a docstring line in between.
LINE = re.compile(r"^(\w+) \(" + ID + r"\)(?:\n[^\n]*?)? \.\.\. ?(.*)$", re.M)
HEADER = re.compile(r"^(FAIL|ERROR|UNEXPECTED SUCCESS): (\w+) \(" + ID + r"\)(.*)$", re.M)
STARTED = re.compile(r"\(" + ID + r"\)")

RANK = {"pass": 0, "skip": 0, "xfail": 0, "xpass": 1, "fail": 2, "error": 3, "hang": 4}


def hung(stdout_path):
    """Last test id mentioned by the -v output (the one running when the run stopped)."""
    text = open(stdout_path, errors="replace").read()
    # The summary ("=====\nFAIL: ...") only comes after the run finished.
    ids = STARTED.findall(text)
    return ids[-1] if ids else ""


def verdict_of_line(rest):
    rest = rest.strip()
    if rest.startswith("ok"):
        return "pass"
    if rest.startswith("skipped"):
        return "skip"
    if rest.startswith("expected failure"):
        return "xfail"
    if rest.startswith("unexpected success"):
        return "xpass"
    if rest.startswith("FAIL"):
        return "fail"
    if rest.startswith("ERROR"):
        return "error"
    return None


def short_tb(text, limit=1600):
    # Drop unittest's own frames ("File .../unittest/..." and the lines under it).
    out, skipping = [], False
    for l in (text or "").strip().splitlines():
        if l.startswith('  File "'):
            skipping = "/unittest/" in l
        elif not l.startswith("    "):
            skipping = False
        if not skipping:
            out.append(l)
    text = "\n".join(out)
    if len(text) > limit:
        text = text[:300] + "\n  [...]\n" + text[-(limit - 300):]
    return text


def read_meta(base):
    """SUITE.MODE.runs, written by run.sh: 'attempt N RC HUNG-ID|-' and 'seconds S'."""
    meta = {"attempts": [], "seconds": 0.0, "hangs": [], "rc": None, "completed": False}
    for line in open(base + ".runs"):
        f = line.split()
        if f and f[0] == "attempt":
            n, rc, h = f[1], int(f[2]), (f[3] if f[3] != "-" else "")
            a = {"n": n, "rc": rc, "hung": h, "xml": f"{base}.{n}.xml",
                 "stdout": f"{base}.{n}.out", "stderr": f"{base}.{n}.err"}
            if h:
                meta["hangs"].append(h)
                a["hang_trace"] = hang_trace(a["stderr"])
            meta["attempts"].append(a)
            meta["rc"] = rc
            meta["completed"] = not h and rc not in (124, 137) and os.path.exists(a["xml"])
        elif f and f[0] == "seconds":
            meta["seconds"] = float(f[1])
    shm = tcp = 0
    reasons = {}
    for a in meta["attempts"]:
        for line in open(a["stderr"], errors="replace"):
            if "rdmasock[" not in line:
                continue
            if "path=shm" in line:
                shm += 1
            elif "path=tcp" in line:
                tcp += 1
                m = re.search(r"reason=(\S+)", line)
                r = m.group(1) if m else "?"
                reasons[r] = reasons.get(r, 0) + 1
    left = 0
    for a in meta["attempts"]:
        lf = a["stdout"][:-len(".out")] + ".leftover"
        if os.path.exists(lf):
            left += sum(1 for l in open(lf) if l.strip())
    meta.update(shm=shm, tcp=tcp, tcp_reasons=reasons, leftover=left)
    return meta


def hang_trace(stderr_path, limit=40):
    """faulthandler's dump of the thread stacks after 'Timeout (H:MM:SS)!'."""
    text = open(stderr_path, errors="replace").read()
    i = text.rfind("Timeout (")
    if i < 0:
        return "(killed by the outer timeout; no faulthandler dump)"
    lines = [l for l in text[i:].splitlines() if "rdmasock[" not in l]
    # Keep the frames above the unittest/regrtest machinery of each thread.
    out = []
    for l in lines:
        if "/unittest/" in l or "/libregrtest/" in l or "<frozen runpy>" in l \
                or "/test/support/__init__.py" in l or "/test/__main__.py" in l:
            continue
        out.append(l)
    return "\n".join(out[:limit])


def parse_attempt(a):
    out = open(a["stdout"], errors="replace").read()
    res, det = {}, {}
    root = None
    if os.path.exists(a["xml"]) and os.path.getsize(a["xml"]) > 0:
        try:
            root = ET.parse(a["xml"]).getroot()
        except ET.ParseError:
            root = None
    if root is not None:
        for tc in root.iter("testcase"):
            name = tc.get("name")
            if not name:
                continue  # only subtests failed: the -v summary below has it
            m = re.match(r"^(\w+) \(" + ID + r"\)$", name)
            if m:  # setUpClass/tearDownClass errors (_ErrorHolder)
                name = m.group(2) + "." + m.group(1)
            verdict, text = "pass", ""
            for ch in tc:
                if ch.tag in ("failure", "error"):
                    verdict = "fail" if ch.tag == "failure" else "error"
                    text = ch.text or ch.get("message", "")
                elif ch.tag == "skipped":
                    verdict = "skip"
                elif ch.tag == "output":
                    verdict = "xfail"
            if tc.get("outcome") == "UNEXPECTED_SUCCESS":
                verdict = "xpass"
            res[name] = verdict
            if text:
                det[name] = text
    else:
        # Killed before regrtest wrote its XML: use the -v lines.
        for m in LINE.finditer(out):
            v = verdict_of_line(m.group(3))
            if v:
                res[m.group(2)] = v
    # Subtest failures and tearDown errors are only in unittest's summary blocks.
    for b in re.split(r"^={50,}\n", out, flags=re.M):
        m = HEADER.match(b)
        if not m:
            continue
        v = {"FAIL": "fail", "ERROR": "error", "UNEXPECTED SUCCESS": "xpass"}[m.group(1)]
        tid = m.group(3)
        if m.group(2) in ("setUpClass", "tearDownClass", "setUpModule", "tearDownModule"):
            tid = m.group(3) + "." + m.group(2)
        dash = b.find("-" * 40)
        tb = b[b.find("\n", dash) + 1:] if dash >= 0 else b
        tb = re.split(r"^-{50,}\nRan ", tb, flags=re.M)[0].strip()
        if RANK.get(v, 0) >= RANK.get(res.get(tid), 0):
            res[tid] = v
        sub = m.group(4).strip()
        piece = (f"[{sub}]\n" if sub else "") + tb
        if sub or tid not in det:
            det[tid] = (det[tid] + "\n" + piece) if (sub and tid in det) else piece
    if a["hung"]:
        res[a["hung"]] = "hang"
        det[a["hung"]] = "HANG; stacks at the timeout:\n" + a.get("hang_trace", "")
    return res, det


def collect(rundir, suite, mode):
    base = os.path.join(rundir, f"{suite}.{mode}")
    meta = read_meta(base)
    results, details = {}, {}
    # A later attempt (run again with the hung tests excluded) replaces the earlier ones,
    # except for the hang verdicts themselves.
    for a in meta["attempts"]:
        res, det = parse_attempt(a)
        for k, v in res.items():
            if results.get(k) != "hang":
                results[k] = v
                if k in det:
                    details[k] = det[k]
                else:
                    details.pop(k, None)
    json.dump({"suite": suite, "mode": mode, "meta": meta, "results": results,
               "details": {k: short_tb(v) for k, v in details.items()}},
              open(base + ".json", "w"), indent=1, sort_keys=True)


def report(outdir):
    suites = [l.strip() for l in open(os.path.join(outdir, "suites.txt")) if l.strip()]
    rows, diffs, shm_total = [], [], 0
    for s in suites:
        try:
            p = json.load(open(os.path.join(outdir, f"{s}.plain.json")))
            q = json.load(open(os.path.join(outdir, f"{s}.shim.json")))
        except FileNotFoundError:
            rows.append((s, None, None, 0, 0, "not run"))
            diffs.append((s, "(whole suite)", "?", "not run", ""))
            continue

        def counts(r):
            c = {}
            for v in r["results"].values():
                c[v] = c.get(v, 0) + 1
            return c

        cp, cq = counts(p), counts(q)
        shm = q["meta"].get("shm", 0)
        shm_total += shm
        nd = 0
        for t in sorted(set(p["results"]) | set(q["results"])):
            a = p["results"].get(t, "missing")
            b = q["results"].get(t, "missing")
            if a != b:
                nd += 1
                diffs.append((s, t, a, b, q["details"].get(t) or p["details"].get(t, "")))
        note = []
        for m, r in (("plain", p), ("shim", q)):
            meta = r["meta"]
            if meta.get("hangs"):
                note.append(f"{m} hung: {', '.join(meta['hangs'])}")
            if meta.get("leftover"):
                note.append(f"{m}: {meta['leftover']} registry entries left after `rdmasock stat`")
            if not meta.get("completed"):
                note.append(f"{m} run did not complete (rc {meta.get('rc')})")
        reasons = q["meta"].get("tcp_reasons", {})
        tcp = q["meta"].get("tcp", 0)
        if reasons:
            tcp = f"{tcp} (" + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) + ")"
        rows.append((s, cp, cq, shm, tcp, "; ".join(note), nd,
                     p["meta"].get("seconds", 0), q["meta"].get("seconds", 0)))

    def fmt(c):
        if c is None:
            return "-"
        s = f"{c.get('pass', 0)}/{c.get('fail', 0) + c.get('error', 0)}/{c.get('skip', 0)}"
        extra = [f"{k} {c[k]}" for k in ("hang", "xfail", "xpass", "missing") if c.get(k)]
        return s + (" (" + ", ".join(extra) + ")" if extra else "")

    print("| suite | plain pass/fail+err/skip | shim pass/fail+err/skip | differing | "
          "shim path=shm | shim path=tcp | plain s | shim s | notes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r[1] is None:
            print(f"| {r[0]} | - | - | - | - | - | - | - | {r[5]} |")
            continue
        s, cp, cq, shm, tcp, note, nd, tp, tq = r
        print(f"| {s} | {fmt(cp)} | {fmt(cq)} | {nd} | {shm} | {tcp} | {tp:.0f} | {tq:.0f} | {note} |")
    print(f"\npath=shm decisions logged by the shim runs: {shm_total}")
    if diffs:
        print(f"\n{len(diffs)} test(s) with a different result (plain -> shim):")
        for s, t, a, b, _ in diffs:
            print(f"  {t}: {a} -> {b}")
        print("\nDetails (shim run unless only the plain run failed):")
        for s, t, a, b, d in diffs:
            if d:
                print(f"\n--- {t}: {a} -> {b}\n{d}")
    else:
        print("\nNo test result differs.")
    with open(os.path.join(outdir, "diffs.tsv"), "w") as f:
        for s_, t, a, b, _ in diffs:
            f.write(f"{s_}\t{t}\t{a}\t{b}\n")
    bad = bool(diffs) or shm_total == 0
    if shm_total == 0:
        print("\nFAIL: the shim runs made no fabric (path=shm) connection")
    return 1 if bad else 0


def verdict(xml, stdout, test):
    """The result of one test in a single-test re-run."""
    res, _ = parse_attempt({"xml": xml, "stdout": stdout, "hung": None})
    return res.get(test, "missing")


def recheck(outdir):
    """Re-runs of each differing test (run.sh, CPY_RECHECK times per mode): a test is
    flaky, not a difference, when every result the shim gave it (first run included)
    was also a result plain runs gave it. Prints the verdicts; 1 if a difference
    stands."""
    path = os.path.join(outdir, "diffs.tsv")
    lines = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
    stands = 0
    print("\nRe-runs of the differing tests (each alone, both modes):")
    for i, (suite, test, a, b) in enumerate(lines):
        seen = {"plain": [a], "shim": [b]}
        for mode in ("plain", "shim"):
            k = 1
            while os.path.exists(os.path.join(outdir, f"recheck.{i}.{mode}.{k}.xml")) or \
                    os.path.exists(os.path.join(outdir, f"recheck.{i}.{mode}.{k}.out")):
                base = os.path.join(outdir, f"recheck.{i}.{mode}.{k}")
                seen[mode].append(verdict(base + ".xml", base + ".out", test))
                k += 1
        real = not set(seen["shim"]) <= set(seen["plain"])
        stands += real
        print(f"  {test}: plain {' '.join(seen['plain'])}; shim {' '.join(seen['shim'])} -> "
              f"{'DIFFERS' if real else 'flaky without the shim too, not counted'}")
    print(f"\n{stands} test(s) differ after the re-runs." if stands else "\nNo difference stands after the re-runs.")
    return 1 if stands else 0


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "hung":
        print(hung(sys.argv[2]))
    elif cmd == "collect":
        collect(*sys.argv[2:5])
    elif cmd == "report":
        sys.exit(report(sys.argv[2]))
    elif cmd == "recheck":
        sys.exit(recheck(sys.argv[2]))
    else:
        sys.exit(f"unknown command {cmd}")
