# A peer that fills its ring from the server, then leaves the ring (writes LEFT into its
# segment) and never reads its kernel socket: the server's move back to TCP must not
# block on re-sending those bytes, stalling everyone else (issue 21.2). Run plain and
# under the shim; stdout must be the same. Says "left" on stderr when it set the flag.
import os, signal, socket, sys, time

CLIENT_SIDE_FLAGS = 144  # sides[0].flags (docs/protocol.md §1.1); LEFT = 1

import victim

port, server = victim.start(seconds=30)

a = socket.create_connection(("127.0.0.1", port))
a.setblocking(False)
junk = b"j" * 65536
sent = 0
t0 = time.time()
while sent < (12 << 20) and time.time() - t0 < 5:
    try:
        sent += a.send(junk)
    except BlockingIOError:
        time.sleep(0.001)
time.sleep(0.2)  # the server echoes into our ring until it is full
n = 0
with open("/proc/self/mem", "r+b", buffering=0) as mem:
    for name, base, _ in victim.shim_segments():
        if name == "/memfd:rdmasock":
            mem.seek(base + CLIENT_SIDE_FLAGS)
            mem.write((1).to_bytes(4, "little"))
            n += 1
if n:
    print("left", n, file=sys.stderr)
try:
    a.send(b"!")  # wakes the server, which finds us gone from the ring
except BlockingIOError:
    pass

served = victim.honest(port)
print("honest clients served within 1 s: %d of 20" % served)
victim.stop(server)
