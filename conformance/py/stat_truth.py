# `rdmasock stat` tells the truth (issue 14.3), run under the shim:
#   stat_truth.py RDMASOCK_BIN
# 1. A server that forks a child per connection and closes its own copy: every
#    connection is listed once, held by the child (pid and fd).
# 2. A connection shared by a parent and its forked child: one row, both holders.
# 3. A connection whose server exec'd a program without the shim, which then sent 2 MiB
#    over kernel TCP: path tcp, reason moved-to-tcp, and the bytes counted.
# Prints "ok" and exits 0, or the rows and what was wrong, exiting 1.
import json, os, socket, subprocess, sys, time

stat_bin = sys.argv[1]
errors = []


def stat():
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    out = subprocess.run([stat_bin, "stat", "--json"], capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out)["connections"]


def rows_of(rows, port):
    return [r for r in rows if r["local"].endswith(":%d" % port) or r["peer"].endswith(":%d" % port)]


def listener():
    l = socket.socket()
    l.bind(("127.0.0.1", 0))
    l.listen(16)
    return l, l.getsockname()[1]


def ready_pipe():
    r, w = os.pipe()
    return r, w

# ---- 1. fork per connection
l, port = listener()
go_r, go_w = os.pipe()
server = os.fork()
if server == 0:
    os.close(go_w)
    kids = []
    for i in range(4):
        c, _ = l.accept()
        k = os.fork()
        if k == 0:
            l.close()
            c.sendall(c.recv(10))
            os.read(go_r, 1)  # until the parent has looked
            os._exit(0)
        c.close()
        kids.append(k)
    for k in kids:
        os.waitpid(k, 0)
    os._exit(0)
l.close()
os.close(go_r)
clients = []
for i in range(4):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"hi")
    s.recv(10)
    clients.append(s)
time.sleep(0.2)  # the server's parent closes its copies after each fork
rows = rows_of(stat(), port)
servers = [r for r in rows if r["role"] == "server"]
if len([r for r in rows if r["role"] == "client"]) != 4 or len(servers) != 4:
    errors.append("fork per connection: want 4 client and 4 server rows")
for r in servers:
    if len(r["holders"]) != 1 or r["holders"][0]["pid"] == server or r["path"] != "shm":
        errors.append("fork per connection: server row not held by one child on shm: %s" % r)
if len({r["holders"][0]["pid"] for r in servers}) != 4:
    errors.append("fork per connection: the four server rows are not four children")
os.write(go_w, b"xxxx")
os.close(go_w)
for s in clients:
    s.close()
os.waitpid(server, 0)

# ---- 2. one connection shared by a parent and its child
l, port = listener()
c = socket.create_connection(("127.0.0.1", port))
a, _ = l.accept()
c.sendall(b"x")
a.recv(1)
a.sendall(b"y")
c.recv(1)
go_r, go_w = os.pipe()
kid = os.fork()
if kid == 0:
    os.read(go_r, 1)
    os._exit(0)
os.close(go_r)
rows = rows_of(stat(), port)
client_rows = [r for r in rows if r["role"] == "client"]
if len(client_rows) != 1 or sorted(h["pid"] for h in client_rows[0]["holders"]) != sorted([os.getpid(), kid]):
    errors.append("shared across fork: want one client row held by %d and %d: %s" % (os.getpid(), kid, client_rows))
os.write(go_w, b"x")
os.waitpid(kid, 0)
c.close()
a.close()
l.close()

# ---- 3. moved back to TCP: the server exec's a program without the shim
l, port = listener()
N = 2 << 20
server = os.fork()
if server == 0:
    s, _ = l.accept()
    l.close()
    s.recv(1)
    os.dup2(s.fileno(), 0)
    os.dup2(s.fileno(), 1)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    os.execve("/usr/bin/python3", ["python3", "-c", "import os,sys; sys.stdout.buffer.write(b'z' * %d); sys.stdout.flush(); os.read(0, 1)" % N], env)
l.close()
c = socket.create_connection(("127.0.0.1", port))
c.sendall(b"g")  # read before the exec; the exec'd program waits for one more byte
got = 0
while got < N:
    d = c.recv(1 << 16)
    if not d:
        break
    got += len(d)
if got != N:
    errors.append("moved: got %d of %d bytes" % (got, N))
rows = [r for r in rows_of(stat(), port) if r["role"] == "client"]
if len(rows) != 1 or rows[0]["path"] != "tcp" or rows[0]["reason"] != "moved-to-tcp" or rows[0]["bytes_in"] < N:
    errors.append("moved: want one client row, tcp, moved-to-tcp, bytes_in >= %d: %s" % (N, rows))
c.sendall(b"x")
c.close()
os.waitpid(server, 0)

if errors:
    print("\n".join(errors))
    sys.exit(1)
print("ok")
