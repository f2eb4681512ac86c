"""A real HTTP/3 client (aioquic) for the gateway's QUIC entrypoint tests.

    client.py PORT SERVER_NAME CA_FILE [--connections N]  < requests.json

`requests.json` is a list of requests, each {"method", "authority", "path", "headers": [[k, v]...],
"body"}; every connection (N at once, default 1) sends them in order on one QUIC connection, each on
its own stream. A request {"wait_file": PATH} sends nothing: the connection waits (up to 30 s) until
PATH exists, so that a test can act between two requests of one connection; {"sleep": SECONDS} waits;
{"parallel": [requests]} sends those at once, each on its own stream (their results in order). A
request's "timeout" (seconds, default 30) bounds its wait; past it the result is {"timeout": true}. Prints one JSON object:
{"connections": [{"results": [...], "serial": HEX, "early_data": N} or {"error": "..."}]}, a result
being {"status", "headers": {name: [values]}, "body"} or {"reset": code}; `serial` is the server
certificate's serial number, `early_data` the largest 0-RTT allowance of the session tickets received
(0 when none allows early data).
"""

import argparse
import asyncio
import json
import os
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, StreamReset

TIMEOUT = 30


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.pending = {}
        self.partial = {}

    def quic_event_received(self, event):
        if isinstance(event, StreamReset):
            fut = self.pending.pop(event.stream_id, None)
            if fut and not fut.done():
                fut.set_result({"reset": event.error_code})
            return
        if isinstance(event, ConnectionTerminated):
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_result({"closed": event.error_code, "reason": event.reason_phrase})
            self.pending.clear()
        for ev in self.h3.handle_event(event):
            if isinstance(ev, HeadersReceived):
                r = self.partial.setdefault(ev.stream_id, {"headers": {}, "body": b""})
                if "status" in r:
                    # trailers
                    r["trailers"] = {k.decode(): v.decode() for k, v in ev.headers}
                else:
                    for k, v in ev.headers:
                        if k == b":status":
                            r["status"] = int(v)
                        else:
                            r["headers"].setdefault(k.decode(), []).append(v.decode())
            elif isinstance(ev, DataReceived):
                r = self.partial.setdefault(ev.stream_id, {"headers": {}, "body": b""})
                r["body"] += ev.data
            else:
                continue
            if ev.stream_ended:
                r = self.partial.pop(ev.stream_id)
                r["body"] = r["body"].decode("utf-8", "replace")
                fut = self.pending.pop(ev.stream_id, None)
                if fut and not fut.done():
                    fut.set_result(r)

    async def request(self, req):
        sid = self._quic.get_next_available_stream_id()
        headers = [
            (b":method", req.get("method", "GET").encode()),
            (b":scheme", b"https"),
            (b":authority", req["authority"].encode()),
            (b":path", req.get("path", "/").encode()),
        ] + [(k.encode(), v.encode()) for k, v in req.get("headers", [])]
        body = req.get("body")
        self.h3.send_headers(sid, headers, end_stream=body is None)
        if body is not None:
            self.h3.send_data(sid, body.encode(), end_stream=True)
        fut = asyncio.get_running_loop().create_future()
        self.pending[sid] = fut
        self.transmit()
        try:
            return await asyncio.wait_for(fut, req.get("timeout", TIMEOUT))
        except asyncio.TimeoutError:
            return {"timeout": True}


async def wait_file(path):
    for _ in range(TIMEOUT * 10):
        if os.path.exists(path):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{path} never appeared")


async def one_connection(args, requests):
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=args.server_name)
    config.load_verify_locations(args.ca)
    config.idle_timeout = 15.0
    tickets = []
    try:
        async with connect(
            args.addr,
            args.port,
            configuration=config,
            create_protocol=Client,
            wait_connected=True,
            session_ticket_handler=tickets.append,
        ) as client:
            results = []
            for r in requests:
                if "wait_file" in r:
                    await wait_file(r["wait_file"])
                    continue
                if "sleep" in r:
                    await asyncio.sleep(r["sleep"])
                    continue
                if "parallel" in r:
                    results.extend(await asyncio.gather(*[client.request(p) for p in r["parallel"]]))
                    continue
                results.append(await client.request(r))
            cert = client._quic.tls._peer_certificate
            # Tickets come after the handshake; give them a round trip to arrive.
            try:
                await asyncio.wait_for(client.ping(), 2)
            except (asyncio.TimeoutError, ConnectionError):
                pass
            early = max([t.max_early_data_size or 0 for t in tickets], default=0)
            return {
                "results": results,
                "serial": format(cert.serial_number, "X") if cert is not None else None,
                "tickets": len(tickets),
                "early_data": early,
            }
    except Exception as e:  # a refused or failed connection is a result the test checks
        return {"error": f"{type(e).__name__}: {e}"}


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("server_name")
    p.add_argument("ca")
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--addr", default="127.0.0.1")
    args = p.parse_args()
    requests = json.load(sys.stdin)

    async def bounded():
        return await asyncio.wait_for(one_connection(args, requests), 2 * TIMEOUT)

    async def guarded():
        try:
            return await bounded()
        except asyncio.TimeoutError:
            return {"error": "TimeoutError: no answer"}

    out = await asyncio.gather(*[guarded() for _ in range(args.connections)])
    print(json.dumps({"connections": out}))


asyncio.run(main())
