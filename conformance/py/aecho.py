#!/usr/bin/python3
"""An asyncio echo server and a client that checks the echo.

    aecho.py server HOST PORT      prints "READY <port>" (PORT 0: any free port), then
                                   echoes every connection until EOF, forever
    aecho.py client HOST PORT SIZE sends SIZE random bytes (a half-close after them) while
                                   reading the echo; prints "OK bytes=N sha256=HEX" when the
                                   echo is exactly what it sent, else "MISMATCH ..." and
                                   exits 1

Only the standard library (asyncio.start_server, asyncio.open_connection).
"""

import asyncio
import hashlib
import os
import sys

CHUNK = 64 * 1024


async def echo(reader, writer):
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
        await writer.wait_closed()


async def server(host, port):
    srv = await asyncio.start_server(echo, host, port)
    print("READY", srv.sockets[0].getsockname()[1], flush=True)
    async with srv:
        await srv.serve_forever()


async def client(host, port, size):
    payload = os.urandom(size)
    reader, writer = await asyncio.open_connection(host, port)

    async def send():
        # Uneven pieces, so that the stream's boundaries move around.
        off, step = 0, 1
        while off < size:
            n = min(size - off, 1 + (step * 7919) % (3 * CHUNK))
            writer.write(payload[off:off + n])
            await writer.drain()
            off, step = off + n, step + 1
        writer.write_eof()

    async def receive():
        got = bytearray()
        while True:
            data = await reader.read(CHUNK)
            if not data:
                return bytes(got)
            got += data

    _, got = await asyncio.gather(send(), receive())
    writer.close()
    await writer.wait_closed()
    if got != payload:
        first = next((i for i in range(min(len(got), size)) if got[i] != payload[i]), min(len(got), size))
        print(f"MISMATCH sent={size} received={len(got)} first_difference={first}", flush=True)
        return 1
    print(f"OK bytes={size} sha256={hashlib.sha256(got).hexdigest()}", flush=True)
    return 0


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "server":
        asyncio.run(server(sys.argv[2], int(sys.argv[3])))
        return 0
    if len(sys.argv) == 5 and sys.argv[1] == "client":
        return asyncio.run(client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
