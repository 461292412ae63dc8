# Another process of the user truncates (and scribbles on) every file in the registry,
# the shim's connection-table records among them (issue 21.3): the shimmed process must
# not die of its own bookkeeping (it used to take SIGBUS writing its table). Run plain
# and under the shim; stdout must be the same.
import os, socket
d = os.environ["RDMASOCK_DIR"]
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen(8)
port = l.getsockname()[1]


def exchange(i):
    c = socket.create_connection(("127.0.0.1", port))
    a, _ = l.accept()
    c.sendall(b"x%d" % i)
    ok = a.recv(8) == b"x%d" % i
    a.sendall(b"y%d" % i)
    ok = ok and c.recv(8) == b"y%d" % i
    a.close()
    c.close()
    return ok


ok = exchange(0)
if os.fork() == 0:
    # The attacker: truncate every regular file, then write a little garbage.
    for name in os.listdir(d):
        p = os.path.join(d, name)
        if os.path.isfile(p):
            with open(p, "r+b") as f:
                f.truncate(0)
                f.write(b"\xff" * 7)
    os._exit(0)
os.wait()
# Enough connections for the slots to reach past the first page of the table.
ok = sum(exchange(i) for i in range(1, 41)) + ok
print("exchanges after the registry files were truncated:", ok, "of 41")
