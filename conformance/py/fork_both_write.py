# A connection used by a parent and its forked child in turn stays whole and ordered.
import socket, os, sys, time
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
port = l.getsockname()[1]
pid = os.fork()
if pid == 0:
    # server process
    s, _ = l.accept(); got = b''
    while True:
        d = s.recv(65536)
        if not d: break
        got += d
    ok = got == b'A'*100000 + b'B'*100000 + b'C'*100000
    print("server got", len(got), "ordered" if ok else "WRONG", flush=True)
    # reply in two parts, read by parent and child alternately
    os._exit(0)
l.close()
c = socket.create_connection(('127.0.0.1', port))
c.sendall(b'A'*100000)
k = os.fork()
if k == 0:
    c.sendall(b'B'*100000); os._exit(0)
os.waitpid(k, 0)
c.sendall(b'C'*100000)
c.shutdown(socket.SHUT_WR)
c.recv(1)
c.close(); os.waitpid(pid, 0)
