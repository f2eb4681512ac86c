"""An HTTP/3 client (aioquic, driven without its event loop) that controls its own first flight, for
the QUIC entrypoint's 0-RTT, replay, handshake-deadline and amplification tests.

    early.py PORT SERVER_NAME CA_FILE --hold-until FILE [--ticket] [--replays N]
        [--late-replays N --replay-after FILE] [--then resume|exit] < requests.json

1. With --ticket, a first connection (completed normally) collects a session ticket.
2. A new connection's first flight is built: the ClientHello (resuming with the ticket, if any) and
   the requests of requests.json (a list of {"method", "authority", "path", "headers", "body"}),
   which go in 0-RTT packets when the ticket allows early data. It is sent from the "original"
   socket; once the server has answered it, the very same datagrams are sent again from N more
   sockets (a replay by someone who captured the flight), and from --late-replays more once the
   file --replay-after exists (a replay after the original connection is gone), each sent again
   every half second until the server answers it (the server ignores it while it still remembers
   the original connection's IDs).
3. No socket answers anything until FILE exists (the test acts meanwhile: looks at the upstream and
   the metrics). Everything each socket receives is counted.
4. Then, `--then exit` (default) prints the figures; `--then resume` lets the original connection
   finish its handshake and waits (up to 30 s) for the responses.

Prints one JSON object: {"ticket_early_data": N or null, "early_data_accepted": bool or null,
"sockets": {"original"|"replay1"...: {"sent": bytes, "answered_sent": bytes sent from the last send before the first answer on,
"received": bytes, "datagrams": [[size, seconds after that last send]...]}},
"results": [{"status", "headers", "body"} | {"reset": code} | {"timeout": true}]}.
"""

import argparse
import asyncio
import json
import os
import select
import socket
import sys
import time

from aioquic.asyncio.client import connect
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, StreamReset

TIMEOUT = 30


def configuration(args, ticket=None):
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=args.server_name)
    config.load_verify_locations(args.ca)
    config.idle_timeout = 60.0
    config.session_ticket = ticket
    return config


async def fetch_ticket(args):
    tickets = []
    async with connect(
        args.addr,
        args.port,
        configuration=configuration(args),
        wait_connected=True,
        session_ticket_handler=tickets.append,
    ) as client:
        # The ticket follows the handshake: a round trip, then wait for it to be handled.
        await asyncio.wait_for(client.ping(), 10)
        for _ in range(100):
            if tickets:
                break
            await asyncio.sleep(0.1)
    if not tickets:
        raise RuntimeError("the server sent no session ticket")
    return tickets[-1]


def udp_socket():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def main():
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("server_name")
    p.add_argument("ca")
    p.add_argument("--addr", default="127.0.0.1")
    p.add_argument("--ticket", action="store_true")
    p.add_argument("--replays", type=int, default=0)
    p.add_argument("--late-replays", type=int, default=0)
    p.add_argument("--replay-after")
    p.add_argument("--hold-until", required=True)
    p.add_argument("--then", choices=["exit", "resume"], default="exit")
    args = p.parse_args()
    requests = json.load(sys.stdin)
    server = (args.addr, args.port)

    ticket = asyncio.run(fetch_ticket(args)) if args.ticket else None

    quic = QuicConnection(configuration=configuration(args, ticket))
    quic.connect(server, now=time.time())
    h3 = H3Connection(quic)
    streams = []
    for r in requests:
        sid = quic.get_next_available_stream_id()
        headers = [
            (b":method", r.get("method", "GET").encode()),
            (b":scheme", b"https"),
            (b":authority", r["authority"].encode()),
            (b":path", r.get("path", "/").encode()),
        ] + [(k.encode(), v.encode()) for k, v in r.get("headers", [])]
        body = r.get("body")
        h3.send_headers(sid, headers, end_stream=body is None)
        if body is not None:
            h3.send_data(sid, body.encode(), end_stream=True)
        streams.append(sid)
    flight = [data for data, _ in quic.datagrams_to_send(now=time.time())]

    sockets = {"original": udp_socket()}
    for i in range(args.replays):
        sockets[f"replay{i + 1}"] = udp_socket()
    late = [f"late_replay{i + 1}" for i in range(args.late_replays)]
    for name in late:
        sockets[name] = udp_socket()
    figures = {
        name: {"sent": 0, "answered_sent": 0, "received": 0, "datagrams": []} for name in sockets
    }
    # Per socket: when it last sent before its first answer (datagram times count from there).
    anchors = {}
    held = []  # what the original socket received while holding, fed to the connection on resume

    def send(name, datagrams):
        f = figures[name]
        if f["received"] == 0:
            # Only the last sends before the answer were taken in by the server.
            anchors[name] = time.time()
            f["answered_sent"] = 0
        for d in datagrams:
            sockets[name].sendto(d, server)
            f["sent"] += len(d)
            f["answered_sent"] += len(d)

    def receive(wait):
        ready, _, _ = select.select(list(sockets.values()), [], [], wait)
        for s in ready:
            name = next(n for n, v in sockets.items() if v is s)
            while True:
                try:
                    data, _ = s.recvfrom(65536)
                except BlockingIOError:
                    break
                figures[name]["received"] += len(data)
                figures[name]["datagrams"].append([len(data), round(time.time() - anchors[name], 3)])
                if name == "original":
                    held.append(data)

    send("original", flight)
    deadline = time.time() + TIMEOUT
    while figures["original"]["received"] == 0 and time.time() < deadline:
        receive(0.1)
    for name in sockets:
        if name.startswith("replay"):
            send(name, flight)
    next_replay = {}
    deadline = time.time() + 3 * TIMEOUT
    while not os.path.exists(args.hold_until):
        if time.time() > deadline:
            raise TimeoutError(f"{args.hold_until} never appeared")
        if late and os.path.exists(args.replay_after):
            late = [name for name in late if figures[name]["received"] == 0]
            for name in late:
                if time.time() >= next_replay.get(name, 0):
                    send(name, flight)
                    next_replay[name] = time.time() + 0.5
        receive(0.1)

    results = {}
    early_accepted = None
    if args.then == "resume":
        partial = {}
        for data in held:
            quic.receive_datagram(data, server, now=time.time())
        deadline = time.time() + TIMEOUT
        while len(results) < len(streams) and time.time() < deadline:
            while True:
                event = quic.next_event()
                if event is None:
                    break
                if isinstance(event, StreamReset):
                    results.setdefault(event.stream_id, {"reset": event.error_code})
                    continue
                if isinstance(event, ConnectionTerminated):
                    for sid in streams:
                        results.setdefault(sid, {"closed": event.error_code})
                    continue
                for ev in h3.handle_event(event):
                    if not isinstance(ev, (HeadersReceived, DataReceived)):
                        continue
                    r = partial.setdefault(ev.stream_id, {"headers": {}, "body": b""})
                    if isinstance(ev, HeadersReceived):
                        for k, v in ev.headers:
                            if k == b":status":
                                r["status"] = int(v)
                            else:
                                r["headers"].setdefault(k.decode(), []).append(v.decode())
                    else:
                        r["body"] += ev.data
                    if ev.stream_ended:
                        r["body"] = r["body"].decode("utf-8", "replace")
                        results.setdefault(ev.stream_id, partial.pop(ev.stream_id))
            send("original", [d for d, _ in quic.datagrams_to_send(now=time.time())])
            timer = quic.get_timer()
            wait = 0.05 if timer is None else max(0.0, min(0.05, timer - time.time()))
            held.clear()
            receive(wait)
            for data in held:
                quic.receive_datagram(data, server, now=time.time())
            timer = quic.get_timer()
            if timer is not None and timer <= time.time():
                quic.handle_timer(now=time.time())
        early_accepted = quic.tls.early_data_accepted

    print(
        json.dumps(
            {
                "ticket_early_data": ticket.max_early_data_size if ticket else None,
                "early_data_accepted": early_accepted,
                "sockets": figures,
                "results": [results.get(sid, {"timeout": True}) for sid in streams],
            }
        )
    )


main()
