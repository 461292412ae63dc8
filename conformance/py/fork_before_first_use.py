# A connection forked before its first byte (while the shim's offer may still be open)
# and then used by the child and the parent in turn stays whole and ordered.
import socket, os
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
port = l.getsockname()[1]
pid = os.fork()
if pid == 0:
    s, _ = l.accept(); got = b''
    while True:
        d = s.recv(65536)
        if not d: break
        got += d
    ok = got == b'A'*200000 + b'B'*200000
    s.sendall(b'ordered' if ok else b'WRONG')
    s.close()
    os._exit(0)
l.close()
c = socket.create_connection(('127.0.0.1', port))
k = os.fork()
if k == 0:
    c.sendall(b'A'*200000); os._exit(0)
os.waitpid(k, 0)
c.sendall(b'B'*200000)
c.shutdown(socket.SHUT_WR)
reply = b''
while True:
    d = c.recv(100)
    if not d: break
    reply += d
print("server says", reply.decode(), flush=True)
c.close(); os.waitpid(pid, 0)
