# A peer that fills its ring from the server, then leaves the ring (writes LEFT into its
# segment) and never reads its kernel socket: the server's move back to TCP must not
# block on re-sending those bytes, stalling everyone else (issue 21.2). Run plain and
# under the shim; stdout must be the same. Says "left" on stderr when it set the flag.
import os, select, signal, socket, sys, time

CLIENT_SIDE_FLAGS = 144  # sides[0].flags (docs/protocol.md §1.1); LEFT = 1

l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen(64)
port = l.getsockname()[1]

server = os.fork()
if server == 0:
    conns = []
    deadline = time.time() + 30
    while time.time() < deadline:
        r, _, _ = select.select([l] + conns, [], [], 0.5)
        for s in r:
            if s is l:
                c, _ = l.accept()
                c.setblocking(False)
                conns.append(c)
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
                s.send(d)  # what fits: an echo server that drops what a peer does not read
            except (BlockingIOError, ConnectionError):
                pass
    os._exit(0)
l.close()

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
with open("/proc/self/maps") as maps, open("/proc/self/mem", "r+b", buffering=0) as mem:
    for line in maps:
        if line.rstrip().endswith("/memfd:rdmasock (deleted)"):
            base = int(line.split("-")[0], 16)
            mem.seek(base + CLIENT_SIDE_FLAGS)
            mem.write((1).to_bytes(4, "little"))
            n += 1
if n:
    print("left", n, file=sys.stderr)
try:
    a.send(b"!")  # wakes the server, which finds us gone from the ring
except BlockingIOError:
    pass

served = 0
for i in range(20):
    c = socket.create_connection(("127.0.0.1", port))
    c.settimeout(1)
    c.sendall(b"honest %d" % i)
    try:
        ok = c.recv(64) == b"honest %d" % i
    except (socket.timeout, ConnectionError):
        ok = False
    served += ok
    c.close()
print("honest clients served within 1 s: %d of 20" % served)
os.kill(server, signal.SIGKILL)
os.waitpid(server, 0)
