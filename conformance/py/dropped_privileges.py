# A server whose worker drops privileges (as nginx's and apache's do) after the listener
# was registered: the worker cannot take its clients over the fabric (nor refuse them:
# that needs their segments). Only the first client may wait out the claim deadline;
# the worker marks the listener, and every later client stays on TCP at once (reason
# peer-other-uid). Run as root (plain and under the shim; stdout must be the same).
import os, socket, sys
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen(16)
port = l.getsockname()[1]
N = 10
worker = os.fork()
if worker == 0:
    os.setgid(65534)
    os.setuid(65534)
    for i in range(N):
        c, _ = l.accept()
        c.sendall(c.recv(16))
        c.close()
    os._exit(0)
# The master keeps its listener open (as nginx's does): its record names its mailbox.
ok = 0
for i in range(N):
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"req %d" % i)
    ok += c.recv(16) == b"req %d" % i
    c.close()
os.waitpid(worker, 0)
print("exchanges with a worker running as nobody:", ok, "of", N)
