# A FIFO (not a regular file) named like a listener record in the registry, as any
# process of the user could make one (issue 21.4): clients must connect at once, as
# without the shim, not block opening it. Run plain and under the shim; stdout must be
# the same (the test's timeout catches a hang).
import os, socket
d = os.environ["RDMASOCK_DIR"]
netns = os.stat("/proc/self/ns/net").st_ino
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen(8)
port = l.getsockname()[1]
for name in ("l-%d-%d-1-bad" % (netns, port), "p-1-bad"):
    os.mkfifo(os.path.join(d, name))
ok = 0
for i in range(3):
    c = socket.create_connection(("127.0.0.1", port))
    a, _ = l.accept()
    c.sendall(b"x%d" % i)
    ok += a.recv(8) == b"x%d" % i
    a.close()
    c.close()
print("connections next to FIFO records:", ok, "of 3")
