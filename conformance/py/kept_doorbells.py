# Short connections between the same two processes, one after another (under the shim
# the doorbells of a connection that ended in order carry the next one, so no hang-up
# marks its end), closed every way a program closes: the server closes while the client
# sleeps in recv (A), the client closes while the server sleeps in recv (B), and at the
# end the server is killed while the client sleeps in recv (K), after it forked a child
# that outlives it (F: the child must not hold what the server kept for the next
# connection). Between them, plain exchanges (P) closed by both without reading the end,
# as most clients do.
import os, signal, socket, subprocess, sys, time

if len(sys.argv) > 1 and sys.argv[1] == 'server':
    l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
    print(l.getsockname()[1], flush=True)
    while True:
        s, _ = l.accept()
        what = s.recv(1)
        if what == b'P':
            s.sendall(b'p')
        elif what == b'A':
            s.sendall(b'a'); time.sleep(0.05)
        elif what == b'B':
            got = s.recv(10)
            print('server B got %r' % got, flush=True)
        elif what == b'F':
            # Closed after the client's close, neither having seen the other's: both
            # ends are kept (under the shim), then inherited by the child.
            s.sendall(b'f'); time.sleep(0.05); s.close()
            if os.fork() == 0:
                # Outlives the server by far (and lets go of the output, which the
                # test waits on), holding whatever the shim left it of the server's.
                os.close(0); os.close(1); os.close(2)
                time.sleep(20)
                os._exit(0)
            print('server forked', flush=True)
            continue
        elif what == b'K':
            s.sendall(b'k'); time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)
        s.close()

srv = subprocess.Popen([sys.executable, __file__, 'server'], stdout=subprocess.PIPE, text=True)
port = int(srv.stdout.readline())
for i, what in enumerate('PPAPPBPPAPPBPPFK'):
    c = socket.create_connection(('127.0.0.1', port))
    c.settimeout(10)
    c.sendall(what.encode())
    if what in 'PF':
        print(i, what, c.recv(1))
    elif what in 'AK':
        print(i, what, c.recv(1), c.recv(1))
    elif what == 'B':
        time.sleep(0.05)
        c.close()
        print(i, what, srv.stdout.readline().strip())
    c.close()
    if what == 'F':
        print(srv.stdout.readline().strip())
    sys.stdout.flush()
print('server exit', srv.wait())
