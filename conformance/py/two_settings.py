# Two processes started with different RDMASOCK_TRANSPORT settings (argv: the server's,
# the client's): they agree on a fabric both allow, or the client stays on TCP at once
# (its reason recorded). The server echoes a SHA-256 of 1 MiB the client sends; the
# program prints what it saw, the same plain and under the shim.
import hashlib, os, socket, subprocess, sys

N = 1 << 20
if sys.argv[1] == "serve":
    l = socket.socket()
    l.bind(("127.0.0.1", 0))
    l.listen(4)
    print(l.getsockname()[1], flush=True)
    c, _ = l.accept()
    h, got = hashlib.sha256(), 0
    while got < N:
        b = c.recv(65536)
        if not b:
            break
        h.update(b)
        got += len(b)
    c.sendall(h.digest())
    c.close()
    sys.exit(0)
if sys.argv[1] == "connect":
    data = bytes(range(256)) * (N // 256)
    c = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
    c.sendall(data)
    d = b""
    while len(d) < 32:
        b = c.recv(32 - len(d))
        if not b:
            break
        d += b
    print("digest matches:", d == hashlib.sha256(data).digest())
    sys.exit(0)
server_setting, client_setting = sys.argv[1], sys.argv[2]
env = lambda v: dict(os.environ, RDMASOCK_TRANSPORT=v)
srv = subprocess.Popen([sys.executable, __file__, "serve"], env=env(server_setting), stdout=subprocess.PIPE, text=True)
port = srv.stdout.readline().strip()
cli = subprocess.run([sys.executable, __file__, "connect", port], env=env(client_setting), stdout=subprocess.PIPE, text=True, timeout=30)
print(cli.stdout.strip(), "; server exit:", srv.wait(timeout=30), "; client exit:", cli.returncode)
