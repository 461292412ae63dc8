# A hostile client must not stop a server serving others (issue 21.1). Run plain and
# under the shim; stdout must be the same.
#
# The server: one thread, a select loop, echoing every connection; after its first
# connection it forks a child that keeps everything open (as redis' BGSAVE does), so
# that its side of that connection is shared by two processes and taken under the
# side's cross-process locks. The attacker: connects, then (under the shim) writes a
# live thread id into every lock word its segment mapping has for the server's side,
# and sends a byte. Honest clients then connect one after another and each must be
# echoed within a second (100 ms is the goal; the slowest time goes to stderr). Says "scribbled" on stderr when it found a segment to write.
import os, signal, socket, sys, time

SERVER_SIDE_LOCKS = (264, 268)  # sides[1].tx_lock, .rx_lock (docs/protocol.md §1.1)

import victim

port, server = victim.start(fork_after_first=True, seconds=30)


def scribble():
    # The attacker's own mapping of its segment: the shim's memfd named "rdmasock".
    n = 0
    with open("/proc/self/mem", "r+b", buffering=0) as mem:
        for name, base, _ in victim.shim_segments():
            if name == "/memfd:rdmasock":
                for off in SERVER_SIDE_LOCKS:
                    mem.seek(base + off)
                    mem.write(os.getpid().to_bytes(4, "little"))
                n += 1
    if n:
        print("scribbled", n, file=sys.stderr)


a = socket.create_connection(("127.0.0.1", port))
a.sendall(b"a")
a.recv(1)
time.sleep(0.2)  # lets the server fork its child
scribble()
a.sendall(b"b")  # the server must take its side's consumer lock to read this

t0 = time.time()
served = victim.honest(port)
# Within a second each (the printed count is compared with plain Linux); the whole time
# goes to stderr (timing is not asserted: this machine's load varies).
print("honest clients served within 1 s: %d of 20" % served)
print("20 honest exchanges took %.1f ms" % ((time.time() - t0) * 1000), file=sys.stderr)
a.close()
victim.stop(server)
