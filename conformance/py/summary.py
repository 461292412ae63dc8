# Three connections to our own listener, each used once; under RDMASOCK_LOG=summary the
# shim prints one line at exit counting them.
import socket
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
for i in range(3):
    c = socket.create_connection(l.getsockname())
    s, _ = l.accept()
    c.sendall(b'ping %d' % i)
    print(s.recv(100).decode(), flush=True)
    c.close(); s.close()
