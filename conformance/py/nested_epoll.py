# An epoll set holding a fabric socket, inside another epoll set and under select.
import socket, select, os, time
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
c = socket.create_connection(l.getsockname()); s, _ = l.accept()
inner = select.epoll(); inner.register(s.fileno(), select.EPOLLIN)
outer = select.epoll(); outer.register(inner.fileno(), select.EPOLLIN)
print("outer before:", outer.poll(0.1))
print("poll before:", select.select([inner.fileno()], [], [], 0.1)[0])
import threading
threading.Thread(target=lambda: (time.sleep(0.2), c.send(b'x'))).start()
t = time.time(); ev = outer.poll(5); print("outer after:", len(ev), "prompt" if time.time() - t < 2 else "SLOW")
print("inner:", len(inner.poll(0))); print("poll after:", select.select([inner.fileno()], [], [], 0)[0] == [inner.fileno()])
print("recv", s.recv(10))
