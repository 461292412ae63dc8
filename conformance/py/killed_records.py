# Records of a SIGKILLed process go when the next connection looks (issue 14.4): a
# client is killed mid-connection; the server sees the end, makes its next connection,
# and then no file of the killed pid is left in the registry. Run under the shim.
import os, signal, socket, sys, time
d = os.environ["RDMASOCK_DIR"]
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(8)
port = l.getsockname()[1]
kid = os.fork()
if kid == 0:
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"x")
    time.sleep(60)
    os._exit(0)
a, _ = l.accept()
a.recv(1)
theirs = lambda: sorted(n for n in os.listdir(d) if ("-%d-" % kid) in n)
before = theirs()
os.kill(kid, signal.SIGKILL); os.waitpid(kid, 0)
# The server sees the end: EOF (or a reset) on the connection.
try:
    eof = a.recv(1) == b""
except ConnectionResetError:
    eof = True
a.close()
time.sleep(0.3)
# The next connection (to ourselves).
c = socket.create_connection(("127.0.0.1", port)); s, _ = l.accept()
c.sendall(b"y"); s.recv(1)
after = theirs()
print("killed client had records:", bool(before), "end seen:", eof, "left after the next connection:", after)
sys.exit(0 if before and eof and not after else 1)
