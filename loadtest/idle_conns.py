"""Idle connections for the heap attribution of #31 (`loadtest/heap.sh`).

    idle_conns.py upstream PORT
        An upstream that answers every request `200 ok` (keep-alive) and accepts WebSocket upgrades
        (101, then holds the connection without a frame).
    idle_conns.py clients --port PORT --kind h1|h2|ws --n N --ready FILE --hold FILE
        N connections to the gateway, each made idle the way a real client leaves it: HTTP/1.1 kept
        alive after one GET; HTTP/2 (h2c, prior knowledge) after one request on stream 1; a WebSocket
        upgraded (101) and silent. Writes FILE (--ready) once all are idle, then holds them until
        --hold exists.
"""

import argparse
import asyncio
import base64
import hashlib
import os
import struct
import sys

import hpack

HOST = "idle.aggios.test"


async def upstream(port):
    async def serve(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lower = head.lower()
                if b"upgrade: websocket" in lower:
                    key = next(
                        line.split(b":", 1)[1].strip()
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"sec-websocket-key:")
                    )
                    accept = base64.b64encode(
                        hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
                    )
                    writer.write(
                        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                    )
                    await writer.drain()
                    await reader.read()  # hold until the gateway closes it
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return head


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


async def h2_idle(reader, writer):
    block = hpack.Encoder().encode(
        [(":method", "GET"), (":scheme", "http"), (":authority", HOST), (":path", "/idle")]
    )
    writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0) + frame(1, 0x5, 1, block))
    await writer.drain()
    while True:
        head = await reader.readexactly(9)
        length = int.from_bytes(head[:3], "big")
        payload = await reader.readexactly(length)
        ftype, flags = head[3], head[4]
        stream = struct.unpack(">I", head[5:9])[0] & 0x7FFFFFFF
        if ftype == 4 and not flags & 1:
            writer.write(frame(4, 1, 0))  # SETTINGS ACK
            await writer.drain()
        if stream == 1 and ftype in (0, 1) and flags & 1:
            return


async def one(args):
    reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
    if args.kind == "h1":
        writer.write(f"GET /idle HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        await writer.drain()
        head = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200"), head
    elif args.kind == "h2":
        await h2_idle(reader, writer)
    else:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (f"GET /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def clients(args):
    conns = []
    sem = asyncio.Semaphore(64)

    async def bounded():
        async with sem:
            return await one(args)

    conns = await asyncio.gather(*[bounded() for _ in range(args.n)])
    with open(args.ready, "w") as f:
        f.write(str(len(conns)))
    while not os.path.exists(args.hold):
        await asyncio.sleep(0.2)
    for _, w in conns:
        w.close()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("upstream")
    u.add_argument("port", type=int)
    c = sub.add_parser("clients")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--kind", choices=["h1", "h2", "ws"], required=True)
    c.add_argument("--n", type=int, required=True)
    c.add_argument("--ready", required=True)
    c.add_argument("--hold", required=True)
    args = p.parse_args()
    if args.cmd == "upstream":
        asyncio.run(upstream(args.port))
    else:
        asyncio.run(clients(args))


if __name__ == "__main__":
    sys.exit(main())
