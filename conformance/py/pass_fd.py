# A fabric socket passed to another process with SCM_RIGHTS keeps working there (and in
# the sender, which keeps its copy): every byte arrives, in order, both ways.
import socket, os, sys
keep = sys.argv[1] == 'keep'
a, b = socket.socketpair()
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
port = l.getsockname()[1]
worker = os.fork()
if worker == 0:
    # receives the accepted connection and echoes until EOF
    a.close(); l.close()
    msg, fds, _, _ = socket.recv_fds(b, 16, 1)
    s = socket.socket(fileno=fds[0])
    while True:
        d = s.recv(65536)
        if not d: break
        s.sendall(d)
    s.close(); os._exit(0)
b.close()
server = os.fork()
if server == 0:
    s, _ = l.accept(); l.close()
    s.sendall(b'hello from the acceptor|')  # written before the fd is passed
    socket.send_fds(a, [b'x'], [s.fileno()])
    if keep:
        s.sendall(b'and after|')
    s.close(); os._exit(0)
l.close(); a.close()
c = socket.create_connection(('127.0.0.1', port))
got = b''
while not got.endswith(b'|' if not keep else b'after|'):
    got += c.recv(100)
print("from the acceptor:", got.decode())
data = os.urandom(1 << 20)
import threading
t = threading.Thread(target=lambda: (c.sendall(data), c.shutdown(socket.SHUT_WR))); t.start()
echo = bytearray()
while True:
    d = c.recv(65536)
    if not d: break
    echo += d
t.join(); os.waitpid(worker, 0); os.waitpid(server, 0)
print("echo from the worker:", "OK" if bytes(echo) == data else "MISMATCH %d" % len(echo))
