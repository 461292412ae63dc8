#!/usr/bin/python3
"""Holds one connection open, so that `rdmasock stat` can be read while it lives.

    hold.py HOST PORT SEND EXPECT

Connects, sends SEND (backslash escapes such as \\r\\n decoded; empty: nothing), reads
until the reply starts with EXPECT (empty: does not wait for a reply), prints
"HELD <local port>", then reads until EOF, which it reports as "EOF" before exiting 0.
A reply that does not start with EXPECT prints "UNEXPECTED <reply>" and exits 1.
"""

import codecs
import socket
import sys


def main():
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    host, port = sys.argv[1], int(sys.argv[2])
    send = codecs.escape_decode(sys.argv[3].encode())[0]
    expect = codecs.escape_decode(sys.argv[4].encode())[0]
    s = socket.create_connection((host, port))
    if send:
        s.sendall(send)
    reply = b""
    while len(reply) < len(expect) and expect.startswith(reply):
        data = s.recv(4096)
        if not data:
            break
        reply += data
    if not reply.startswith(expect):
        print("UNEXPECTED", repr(reply), flush=True)
        return 1
    print("HELD", s.getsockname()[1], flush=True)
    while s.recv(4096):
        pass
    print("EOF", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
