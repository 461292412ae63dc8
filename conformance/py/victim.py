# The victim of the attack scripts (attack_*.py): a forked server with one thread, a
# select loop echoing every connection (what fits: a peer that does not read loses the
# rest), and the honest clients whose service is what the attacks must not disturb.
import os, select, signal, socket, time


def start(fork_after_first=False, seconds=50):
    """Listen on a free loopback port and fork the server; returns (port, pid). With
    fork_after_first, the server forks a child that keeps everything open once it has
    accepted its first connection (as redis' BGSAVE does): its side of that connection
    is then shared by two processes."""
    l = socket.socket()
    l.bind(("127.0.0.1", 0))
    l.listen(64)
    port = l.getsockname()[1]
    pid = os.fork()
    if pid == 0:
        serve(l, fork_after_first, seconds)
        os._exit(0)
    l.close()
    return port, pid


def serve(l, fork_after_first, seconds):
    conns = []
    forked = False
    deadline = time.time() + seconds
    while time.time() < deadline:
        r, _, _ = select.select([l] + conns, [], [], 0.5)
        for s in r:
            if s is l:
                c, _ = l.accept()
                c.setblocking(False)
                conns.append(c)
                if fork_after_first and not forked:
                    forked = True
                    if os.fork() == 0:
                        import ctypes
                        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
                        time.sleep(seconds)
                        os._exit(0)
                continue
            try:
                d = s.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionError:
                d = b""
            if not d:
                conns.remove(s)
                s.close()
                continue
            try:
                s.send(d)
            except (BlockingIOError, ConnectionError):
                pass


def honest(port, n=20):
    """n honest clients one after another: how many were echoed within a second."""
    served = 0
    for i in range(n):
        c = socket.create_connection(("127.0.0.1", port))
        c.settimeout(1)
        c.sendall(b"honest %d" % i)
        try:
            ok = c.recv(64) == b"honest %d" % i
        except (socket.timeout, ConnectionError):
            ok = False
        served += ok
        c.close()
    return served


def stop(pid):
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def shim_segments():
    """(name, start, end) of this process's mappings of the shim's shared memfds: its
    segments ("/memfd:rdmasock"), listeners' mailboxes ("/memfd:rdmasock-mailbox")."""
    out = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            name = line.rstrip().split(" ", 5)[-1].strip().removesuffix(" (deleted)")
            if name.startswith("/memfd:rdmasock"):
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                out.append((name, lo, hi))
    return out
