# A connection inherited through exec (into a program with or without the shim) keeps
# every byte in order: the accepted socket becomes stdin/stdout of an exec'd cat.
import socket, os, sys, hashlib
keep_shim = sys.argv[1] == 'shim'
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
port = l.getsockname()[1]
pid = os.fork()
if pid == 0:
    s, _ = l.accept(); l.close()
    # a request byte arrives before the exec (it sits in the ring, unread)
    k = os.fork()
    if k == 0:
        os.dup2(s.fileno(), 0); os.dup2(s.fileno(), 1)
        env = dict(os.environ)
        if not keep_shim: env.pop('LD_PRELOAD', None)
        os.execve('/bin/cat', ['cat'], env)
    s.close(); os.waitpid(k, 0); os._exit(0)
l.close()
c = socket.create_connection(('127.0.0.1', port))
data = os.urandom(3 << 20)
import threading
def w():
    c.sendall(data); c.shutdown(socket.SHUT_WR)
t = threading.Thread(target=w); t.start()
got = bytearray()
while True:
    d = c.recv(1 << 16)
    if not d: break
    got += d
t.join(); os.waitpid(pid, 0)
print("echo through exec'd cat:", "OK" if bytes(got) == data else "MISMATCH %d vs %d" % (len(got), len(data)))
