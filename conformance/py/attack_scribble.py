# A peer that scribbles on every shared page it can reach (issue 14.5). Run plain and
# under the shim; stdout must be the same.
#
# The victim: one thread, a select loop echoing every connection. Attackers, one after
# another: each connects, exchanges a little, then (under the shim) writes random bytes
# at random places of every shared mapping of the shim's it has (its segment: header,
# indices, flags, wait words, ring data; the listener's mailbox), between sends and
# receives whose outcome it ignores, and finally closes or exits. Then, while another
# peer sits stopped (SIGSTOP) in the middle of a flood, honest clients connect one after
# another: each must be echoed, and the victim must still be alive.
# Says "scribbled N" on stderr when it found shared mappings to write.
import os, random, signal, socket, sys, time

import victim

port, server = victim.start(seconds=50)


def attacker(seed):
    rnd = random.Random(seed)
    a = socket.create_connection(("127.0.0.1", port))
    a.settimeout(0.2)
    a.sendall(b"hello %d" % seed)
    try:
        a.recv(64)
    except (socket.timeout, ConnectionError):
        pass
    writes = 0
    with open("/proc/self/mem", "r+b", buffering=0) as mem:
        for round in range(40):
            for _, lo, hi in victim.shim_segments():
                for _ in range(8):
                    # Mostly the first page (header, indices, flags, mailbox slots).
                    span = min(hi - lo, 4096 if rnd.random() < 0.8 else hi - lo)
                    at = lo + rnd.randrange(0, span - 8)
                    try:
                        mem.seek(at)
                        mem.write(rnd.randbytes(rnd.choice((1, 4, 8))))
                        writes += 1
                    except OSError:
                        pass
            try:
                a.send(rnd.randbytes(rnd.randrange(1, 5000)))
                a.recv(65536)
            except (socket.timeout, BlockingIOError, ConnectionError, OSError):
                pass
    if rnd.random() < 0.5:
        a.close()
    return writes


total = 0
for seed in range(8):
    k = os.fork()
    if k == 0:
        w = attacker(seed)
        if w:
            print("scribbled", w, file=sys.stderr)
        # Half exit with the connection open (the kernel closes it), half closed it.
        os._exit(0)
    os.waitpid(k, 0)

# A peer stopped (SIGSTOP) in the middle of a flood, its ring full both ways, while
# the honest clients come; killed at the end.
stopped = os.fork()
if stopped == 0:
    a = socket.create_connection(("127.0.0.1", port))
    a.setblocking(False)
    junk = b"z" * 65536
    while True:
        try:
            a.send(junk)
        except BlockingIOError:
            time.sleep(0.001)
time.sleep(0.3)
os.kill(stopped, signal.SIGSTOP)

served = victim.honest(port)
alive = os.waitpid(server, os.WNOHANG) == (0, 0)
os.kill(stopped, signal.SIGKILL)
os.waitpid(stopped, 0)
print("honest clients served within 1 s: %d of 20; victim alive: %s" % (served, alive))
victim.stop(server)
