"""HTTP/2 frame-level conformance (RFC 9113) of the gateway's HTTP/2 entrypoints, on raw sockets: what
h2spec checks, written with Python's hpack (PyPI) since h2spec cannot be installed here.

    conformance.py --port PORT [--tls SERVER_NAME CA_FILE] [--only NAME]

Each case opens its own connection (h2c with prior knowledge, or TLS with ALPN h2), sends frames
crafted byte by byte, and classifies what the server does first that settles the case:
["goaway", ERROR] (a connection error), ["rst", ERROR] (a stream error), ["response", STATUS],
["ping_ack"], ["close"] (EOF without GOAWAY), ["http1", STATUS] (the bytes were read as HTTP/1), or
["timeout"]. The RFC's expected outcomes are listed per case. Requests use the path /c/<case>, so that
a test can tell which reached the upstream. Prints one JSON object:
{"cases": [{"name", "rfc", "expected": [...], "outcome": [...], "verdict": "pass" | "deviation" |
"fail", "detail": {...}, "deviation": {"outcome", "why"}}]} — a deviation is a known outcome other than
the RFC's, recorded with why it is harmless.
"""

import argparse
import json
import select
import socket
import ssl
import struct
import sys
import time

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
ERRORS = [
    "NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
    "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR",
    "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED",
]
WAIT = 10  # seconds for the server to settle a case (a loaded 2-core machine)


def error_name(code):
    return ERRORS[code] if code < len(ERRORS) else f"0x{code:x}"


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def settings(*pairs, flags=0, stream=0):
    return frame(SETTINGS, flags, stream, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def window_update(stream, increment):
    return frame(WINDOW_UPDATE, 0, stream, struct.pack(">I", increment))


class Conn:
    def __init__(self, args):
        self.args = args
        raw = socket.create_connection(("127.0.0.1", args.port), timeout=WAIT)
        if args.tls:
            ctx = ssl.create_default_context(cafile=args.tls[1])
            ctx.set_alpn_protocols(["h2"])
            raw = ctx.wrap_socket(raw, server_hostname=args.tls[0])
            if raw.selected_alpn_protocol() != "h2":
                raise RuntimeError(f"ALPN: {raw.selected_alpn_protocol()}")
        self.sock = raw
        self.buf = b""
        self.eof = False
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.server_settings = {}
        self.authority = args.tls[0] if args.tls else "h2.aggios.test"

    def send(self, *chunks):
        self.sock.sendall(b"".join(chunks))

    def start(self, first=None):
        self.send(PREFACE, settings() if first is None else first)

    def block(self, path, method="GET", extra=(), pseudo=None):
        """An HPACK header block of a request (pseudo: the exact pseudo-header list, when given)."""
        if pseudo is None:
            pseudo = [(":method", method), (":scheme", "https" if self.args.tls else "http"),
                      (":authority", self.authority), (":path", path)]
        return self.encoder.encode(list(pseudo) + list(extra), huffman=False)

    def request(self, stream, path, method="GET", extra=(), end_stream=True, pseudo=None):
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        return frame(HEADERS, flags, stream, self.block(path, method, extra, pseudo))

    def poll_in(self):
        """Takes in what the server has sent so far, without waiting."""
        while not self.eof:
            pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()
            if not pending and not select.select([self.sock], [], [], 0)[0]:
                return
            try:
                self.sock.settimeout(0.0)
                chunk = self.sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):
                return
            except OSError:
                chunk = b""
            finally:
                self.sock.settimeout(WAIT)
            if not chunk:
                self.eof = True
                return
            self.buf += chunk

    def goaway_seen(self):
        i = 0
        while len(self.buf) - i >= 9:
            if self.buf[i + 3] == GOAWAY:
                return True
            i += 9 + int.from_bytes(self.buf[i:i + 3], "big")
        return False

    def flood(self, batches):
        """Sends batches of frames until the server answers with GOAWAY or closes (what it sent is
        kept: writing on to a closed connection would have the kernel drop it); batches sent."""
        sent = 0
        for batch in batches:
            self.poll_in()
            if self.eof or self.goaway_seen():
                break
            try:
                self.send(*batch)
            except OSError:
                break
            sent += 1
        return sent

    def read_frame(self, deadline):
        while True:
            if len(self.buf) >= 9:
                length = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) >= 9 + length:
                    head, payload = self.buf[:9], self.buf[9:9 + length]
                    self.buf = self.buf[9 + length:]
                    stream = struct.unpack(">I", head[5:9])[0] & 0x7FFFFFFF
                    return head[3], head[4], stream, payload
            if self.eof:
                return None
            remaining = deadline - time.time()
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                chunk = b""
            if not chunk:
                return None
            self.buf += chunk

    def outcome(self, wait=WAIT, skip_responses=(), ping=None):
        """The first settling event, answering the server's SETTINGS on the way."""
        deadline = time.time() + wait
        try:
            while True:
                f = self.read_frame(deadline)
                if f is None:
                    if self.buf.startswith(b"HTTP/1.1 "):
                        return ["http1", int(self.buf[9:12])]
                    return ["close"]
                ftype, flags, stream, payload = f
                if ftype == SETTINGS and not flags & ACK:
                    for i in range(0, len(payload) - 5, 6):
                        k, v = struct.unpack(">HI", payload[i:i + 6])
                        self.server_settings[k] = v
                    try:
                        self.send(settings(flags=ACK))
                    except OSError:
                        pass
                elif ftype == GOAWAY:
                    return ["goaway", error_name(struct.unpack(">I", payload[4:8])[0])]
                elif ftype == RST_STREAM:
                    return ["rst", error_name(struct.unpack(">I", payload[:4])[0])]
                elif ftype == HEADERS:
                    fields = dict(self.decoder.decode(strip_header_payload(flags, payload)))
                    if stream not in skip_responses:
                        return ["response", int(fields.get(":status", fields.get(b":status", 0)))]
                elif ftype == PING and flags & ACK:
                    if ping is None or payload == ping:
                        return ["ping_ack"]
        except TimeoutError:
            if self.buf.startswith(b"HTTP/1.1 "):
                return ["http1", int(self.buf[9:12])]
            return ["timeout"]
        except OSError:
            return ["close"]

    def ping_outcome(self):
        """Whether the connection still works: a PING answered."""
        payload = b"alive!!!"
        try:
            self.send(frame(PING, 0, 0, payload))
        except OSError:
            return ["close"]
        return self.outcome(ping=payload)


def strip_header_payload(flags, payload):
    if flags & PADDED:
        pad = payload[0]
        payload = payload[1:len(payload) - pad]
    if flags & PRIORITY_FLAG:
        payload = payload[5:]
    return payload


CASES = []


def case(rfc, *expected, deviation=None, why=None):
    """A case: the RFC's outcomes; `deviation`: what the server is known to do instead, and `why` it
    is harmless (reported apart, so that a change either way is seen)."""
    def register(fn):
        known = (list(deviation), why) if deviation else None
        CASES.append((fn.__name__, rfc, [list(e) for e in expected], known, fn))
        return fn
    return register


CODE_ONLY = ("the h2 crate closes the connection with PROTOCOL_ERROR for this malformed frame: the "
             "same outcome with a less specific code")
CONN = lambda code: ("goaway", code)  # noqa: E731
STREAM = lambda code: ("rst", code)  # noqa: E731
MALFORMED = [STREAM("PROTOCOL_ERROR"), ("response", 400)]

# --- the connection preface and SETTINGS ---


@case("§3.4: an invalid preface is a connection error (PROTOCOL_ERROR)",
      CONN("PROTOCOL_ERROR"), ("close",), ("http1", 400))
def bad_preface(c, name):
    c.send(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", settings())
    return c.outcome()


@case("§3.4: the client preface's first frame must be SETTINGS", CONN("PROTOCOL_ERROR"), ("close",),
      deviation=("ping_ack",),
      why="the h2 crate accepts any frame before the client's SETTINGS (and applies the defaults): "
          "nothing is served that a conforming client could not have asked for")
def first_frame_not_settings(c, name):
    c.send(PREFACE, frame(PING, 0, 0, b"\0" * 8))
    return c.outcome()


@case("§6.5: SETTINGS with ACK and a payload is FRAME_SIZE_ERROR", CONN("FRAME_SIZE_ERROR"),
      deviation=CONN("PROTOCOL_ERROR"), why=CODE_ONLY)
def settings_ack_with_payload(c, name):
    c.start()
    c.send(settings((4, 65535), flags=ACK))
    return c.outcome()


@case("§6.5: a SETTINGS length not a multiple of 6 is FRAME_SIZE_ERROR", CONN("FRAME_SIZE_ERROR"),
      deviation=CONN("PROTOCOL_ERROR"), why=CODE_ONLY)
def settings_bad_length(c, name):
    c.start()
    c.send(frame(SETTINGS, 0, 0, b"\0\x04\0\0\xff"))
    return c.outcome()


@case("§6.5: SETTINGS on a stream is PROTOCOL_ERROR", CONN("PROTOCOL_ERROR"))
def settings_on_a_stream(c, name):
    c.start()
    c.send(settings((4, 65535), stream=1))
    return c.outcome()


@case("§6.5.2: SETTINGS_ENABLE_PUSH other than 0 or 1 is PROTOCOL_ERROR", CONN("PROTOCOL_ERROR"))
def settings_enable_push_2(c, name):
    c.start(settings((2, 2)))
    return c.outcome()


@case("§6.5.2: SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1 is FLOW_CONTROL_ERROR",
      CONN("FLOW_CONTROL_ERROR"), deviation=CONN("PROTOCOL_ERROR"), why=CODE_ONLY)
def settings_initial_window_too_large(c, name):
    c.start(settings((4, 1 << 31)))
    return c.outcome()


@case("§6.5.2: SETTINGS_MAX_FRAME_SIZE below 16384 is PROTOCOL_ERROR", CONN("PROTOCOL_ERROR"))
def settings_max_frame_size_too_small(c, name):
    c.start(settings((5, 16383)))
    return c.outcome()


@case("§6.5.2: SETTINGS_MAX_FRAME_SIZE above 2^24-1 is PROTOCOL_ERROR", CONN("PROTOCOL_ERROR"))
def settings_max_frame_size_too_large(c, name):
    c.start(settings((5, 1 << 24)))
    return c.outcome()


@case("§6.5.2: an unknown setting is ignored", ("ping_ack",))
def settings_unknown_identifier(c, name):
    c.start(settings((0x99, 1)))
    return c.ping_outcome()


# --- frames on the wrong stream, with the wrong length ---


@case("§6.1: DATA on stream 0 is PROTOCOL_ERROR", CONN("PROTOCOL_ERROR"))
def data_on_stream_0(c, name):
    c.start()
    c.send(frame(DATA, 0, 0, b"x"))
    return c.outcome()


@case("§6.2: HEADERS on stream 0 is PROTOCOL_ERROR", CONN("PROTOCOL_ERROR"))
def headers_on_stream_0(c, name):
    c.start()
    c.send(frame(HEADERS, END_HEADERS | END_STREAM, 0, c.block(f"/c/{name}")))
    return c.outcome()


@case("§6.4: RST_STREAM on stream 0 is PROTOCOL_ERROR", CONN("PROTOCOL_ERROR"))
def rst_stream_on_stream_0(c, name):
    c.start()
    c.send(frame(RST_STREAM, 0, 0, struct.pack(">I", 8)))
    return c.outcome()


@case("§6.4: an RST_STREAM length other than 4 is FRAME_SIZE_ERROR", CONN("FRAME_SIZE_ERROR"),
      deviation=CONN("PROTOCOL_ERROR"), why=CODE_ONLY)
def rst_stream_bad_length(c, name):
    c.start()
    c.send(c.request(1, f"/c/{name}", "POST", end_stream=False), frame(RST_STREAM, 0, 1, b"\0\0\0\x08\0"))
    return c.outcome(skip_responses=(1,))


@case("§6.4: RST_STREAM on an idle stream is PROTOCOL_ERROR", CONN("PROTOCOL_ERROR"))
def rst_stream_on_an_idle_stream(c, name):
    c.start()
    c.send(frame(RST_STREAM, 0, 7, struct.pack(">I", 8)))
    return c.outcome()


@case("§6.7: PING on a stream is PROTOCOL_ERROR", CONN("PROTOCOL_ERROR"))
def ping_on_a_stream(c, name):
    c.start()
    c.send(frame(PING, 0, 1, b"\0" * 8))
    return c.outcome()


@case("§6.7: a PING length other than 8 is FRAME_SIZE_ERROR", CONN("FRAME_SIZE_ERROR"),
      deviation=CONN("PROTOCOL_ERROR"), why=CODE_ONLY)
def ping_bad_length(c, name):
    c.start()
    c.send(frame(PING, 0, 0, b"\0" * 7))
    return c.outcome()


@case("§6.7: a PING is answered with an ACK carrying the same payload", ("ping_ack",))
def ping_echoed(c, name):
    c.start()
    return c.ping_outcome()


@case("§6.8: GOAWAY on a stream is PROTOCOL_ERROR", CONN("PROTOCOL_ERROR"))
def goaway_on_a_stream(c, name):
    c.start()
    c.send(frame(GOAWAY, 0, 1, struct.pack(">II", 0, 0)))
    return c.outcome()


@case("§6.9: a WINDOW_UPDATE increment of 0 on the connection is PROTOCOL_ERROR",
      CONN("PROTOCOL_ERROR"))
def window_update_zero_on_the_connection(c, name):
    c.start()
    c.send(window_update(0, 0))
    return c.outcome()


@case("§6.9: a WINDOW_UPDATE increment of 0 on a stream is a stream error (PROTOCOL_ERROR)",
      STREAM("PROTOCOL_ERROR"), deviation=CONN("PROTOCOL_ERROR"),
      why="the h2 crate ends the whole connection, not only the stream: stricter")
def window_update_zero_on_a_stream(c, name):
    c.start()
    c.send(c.request(1, f"/c/{name}", "POST", end_stream=False), window_update(1, 0))
    return c.outcome(skip_responses=(1,))


@case("§6.9.1: a connection window above 2^31-1 is FLOW_CONTROL_ERROR", CONN("FLOW_CONTROL_ERROR"))
def window_update_overflows_the_connection(c, name):
    c.start()
    c.send(window_update(0, 0x7FFFFFFF), window_update(0, 0x7FFFFFFF))
    return c.outcome()


@case("§6.9: a WINDOW_UPDATE length other than 4 is FRAME_SIZE_ERROR", CONN("FRAME_SIZE_ERROR"),
      deviation=CONN("PROTOCOL_ERROR"), why=CODE_ONLY)
def window_update_bad_length(c, name):
    c.start()
    c.send(frame(WINDOW_UPDATE, 0, 0, b"\0\0\0\x01\0"))
    return c.outcome()


@case("§6.3: a PRIORITY length other than 5 is FRAME_SIZE_ERROR (a stream error)",
      STREAM("FRAME_SIZE_ERROR"), CONN("FRAME_SIZE_ERROR"), deviation=CONN("PROTOCOL_ERROR"),
      why=CODE_ONLY + " (and for the whole connection rather than the stream: stricter)")
def priority_bad_length(c, name):
    c.start()
    c.send(frame(PRIORITY, 0, 1, b"\0\0\0\0"))
    return c.outcome()


@case("§5.3.1 (RFC 7540): a stream depending on itself is PROTOCOL_ERROR",
      STREAM("PROTOCOL_ERROR"), CONN("PROTOCOL_ERROR"))
def priority_self_dependency(c, name):
    c.start()
    c.send(frame(PRIORITY, 0, 1, struct.pack(">IB", 1, 16)))
    return c.outcome()


@case("§5.5: a frame of an unknown type is ignored", ("ping_ack",))
def unknown_frame_type(c, name):
    c.start()
    c.send(frame(0x42, 0xFF, 0, b"whatever"), frame(0x42, 0, 3, b"x"))
    return c.ping_outcome()


@case("§4.2: a frame above SETTINGS_MAX_FRAME_SIZE is FRAME_SIZE_ERROR", CONN("FRAME_SIZE_ERROR"))
def frame_above_max_frame_size(c, name):
    c.start()
    size = 16384
    c.send(c.request(1, f"/c/{name}", "POST", end_stream=False), frame(DATA, 0, 1, b"x" * (size + 1)))
    return c.outcome(skip_responses=(1,))


# --- stream identifiers and states ---


@case("§5.1.1: an even stream id from a client is PROTOCOL_ERROR", CONN("PROTOCOL_ERROR"))
def even_stream_id(c, name):
    c.start()
    c.send(c.request(2, f"/c/{name}"))
    return c.outcome()


@case("§5.1.1: a stream id lower than one already used is PROTOCOL_ERROR", CONN("PROTOCOL_ERROR"))
def decreasing_stream_id(c, name):
    c.start()
    c.send(c.request(5, f"/c/{name}-ok"), c.request(3, f"/c/{name}"))
    return c.outcome(skip_responses=(5,))


@case("§6.1: DATA on an idle stream is PROTOCOL_ERROR", CONN("PROTOCOL_ERROR"))
def data_on_an_idle_stream(c, name):
    c.start()
    c.send(frame(DATA, END_STREAM, 1, b"x"))
    return c.outcome()


@case("§5.1: DATA after END_STREAM is STREAM_CLOSED", STREAM("STREAM_CLOSED"), CONN("STREAM_CLOSED"),
      deviation=CONN("PROTOCOL_ERROR"), why=CODE_ONLY)
def data_after_end_stream(c, name):
    c.start()
    c.send(c.request(1, f"/c/{name}"), frame(DATA, END_STREAM, 1, b"late"))
    return c.outcome(skip_responses=(1,))


@case("§8.1: a second HEADERS without END_STREAM (not trailers) is malformed",
      STREAM("PROTOCOL_ERROR"), CONN("PROTOCOL_ERROR"))
def second_headers_without_end_stream(c, name):
    c.start()
    c.send(c.request(1, f"/c/{name}", "POST", end_stream=False),
           frame(HEADERS, END_HEADERS, 1, c.encoder.encode([("x-more", "1")], huffman=False)))
    return c.outcome(skip_responses=(1,))


# --- header blocks and CONTINUATION ---


@case("§6.10: CONTINUATION without a preceding HEADERS is PROTOCOL_ERROR", CONN("PROTOCOL_ERROR"))
def continuation_without_headers(c, name):
    c.start()
    c.send(frame(CONTINUATION, END_HEADERS, 1, c.block(f"/c/{name}")))
    return c.outcome()


@case("§6.10: another frame inside a header block is PROTOCOL_ERROR", CONN("PROTOCOL_ERROR"))
def frame_inside_a_header_block(c, name):
    c.start()
    block = c.block(f"/c/{name}")
    c.send(frame(HEADERS, END_STREAM, 1, block[:5]), frame(PING, 0, 0, b"\0" * 8),
           frame(CONTINUATION, END_HEADERS, 1, block[5:]))
    return c.outcome()


@case("§4.3: a header block that does not decode is COMPRESSION_ERROR", CONN("COMPRESSION_ERROR"),
      deviation=CONN("PROTOCOL_ERROR"), why=CODE_ONLY)
def undecodable_header_block(c, name):
    c.start()
    # An indexed field beyond the static and (empty) dynamic tables.
    c.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\xff\xff\x7f"))
    return c.outcome()


@case("CVE-2024-27316 (CONTINUATION flood): endless CONTINUATION frames are cut off",
      CONN("ENHANCE_YOUR_CALM"), CONN("PROTOCOL_ERROR"), CONN("COMPRESSION_ERROR"),
      STREAM("PROTOCOL_ERROR"), ("response", 431), ("close",))
def continuation_flood(c, name):
    c.start()
    c.send(frame(HEADERS, END_STREAM, 1, c.block(f"/c/{name}")))
    piece = c.encoder.encode([("x-flood", "a" * 4000)], huffman=False)
    # 16 MB in all, far above any header list limit.
    batches = c.flood([frame(CONTINUATION, 0, 1, piece)] * 40 for _ in range(100))
    return c.outcome(), {"continuation_bytes_sent": batches * 40 * len(piece)}


# --- request headers (RFC 9113 §8.2, §8.3): malformed requests are stream errors ---


def malformed(c, name, pseudo=None, extra=()):
    c.start()
    c.send(c.request(1, f"/c/{name}", extra=extra, pseudo=pseudo))
    return c.outcome()


def base(c, name):
    return [(":method", "GET"), (":scheme", "https" if c.args.tls else "http"),
            (":authority", c.authority), (":path", f"/c/{name}")]


@case("§8.3.1: a request without :method is malformed", *MALFORMED)
def missing_method(c, name):
    return malformed(c, name, pseudo=[p for p in base(c, name) if p[0] != ":method"])


@case("§8.3.1: a request without :path is malformed", *MALFORMED)
def missing_path(c, name):
    return malformed(c, name, pseudo=[p for p in base(c, name) if p[0] != ":path"])


@case("§8.3.1: an empty :path is malformed", *MALFORMED)
def empty_path(c, name):
    return malformed(c, name, pseudo=[(k, "" if k == ":path" else v) for k, v in base(c, name)])


@case("§8.3: an unknown pseudo-header is malformed", *MALFORMED, deviation=CONN("PROTOCOL_ERROR"),
      why="the h2 crate ends the whole connection, not only the stream: stricter, nothing served")
def unknown_pseudo_header(c, name):
    return malformed(c, name, pseudo=base(c, name) + [(":foo", "bar")])


@case("§8.3: a pseudo-header in a request must not be :status", *MALFORMED)
def status_pseudo_header_in_a_request(c, name):
    return malformed(c, name, pseudo=base(c, name) + [(":status", "200")])


@case("§8.3: a pseudo-header after a regular field is malformed", *MALFORMED)
def pseudo_header_after_a_field(c, name):
    pseudo = base(c, name)
    return malformed(c, name, pseudo=pseudo[:3] + [("x-a", "1"), pseudo[3]])


@case("§8.3.1: a duplicated pseudo-header is malformed", *MALFORMED)
def duplicated_pseudo_header(c, name):
    return malformed(c, name, pseudo=base(c, name) + [(":path", "/other")])


@case("§8.2.1: an uppercase field name is malformed", *MALFORMED, deviation=CONN("PROTOCOL_ERROR"),
      why="the h2 crate ends the whole connection, not only the stream: stricter, nothing served")
def uppercase_field_name(c, name):
    return malformed(c, name, extra=[("X-Upper", "1")])


@case("§8.2.2: a connection-specific field is malformed", *MALFORMED)
def connection_specific_field(c, name):
    return malformed(c, name, extra=[("connection", "keep-alive")])


@case("§8.2.2: TE other than \"trailers\" is malformed", *MALFORMED)
def te_not_trailers(c, name):
    return malformed(c, name, extra=[("te", "gzip")])


@case("§8.1.1: a body shorter than content-length is malformed", *MALFORMED)
def content_length_mismatch(c, name):
    c.start()
    c.send(c.request(1, f"/c/{name}", "POST", extra=[("content-length", "10")], end_stream=False),
           frame(DATA, END_STREAM, 1, b"12345"))
    return c.outcome()


@case("§8.1: trailers carrying a pseudo-header are malformed", STREAM("PROTOCOL_ERROR"),
      deviation=("response", 200),
      why="the h2 crate drops the pseudo-header fields of trailers and ends the request normally: "
          "they reach no upstream")
def pseudo_header_in_trailers(c, name):
    c.start()
    c.send(c.request(1, f"/c/{name}", "POST", end_stream=False), frame(DATA, 0, 1, b"body"),
           frame(HEADERS, END_HEADERS | END_STREAM, 1,
                 c.encoder.encode([(":path", "/x")], huffman=False)))
    return c.outcome()


@case("§6.5.2: a header list above SETTINGS_MAX_HEADER_LIST_SIZE is refused",
      ("response", 431), STREAM("PROTOCOL_ERROR"), STREAM("REFUSED_STREAM"), CONN("ENHANCE_YOUR_CALM"),
      CONN("PROTOCOL_ERROR"))
def header_list_above_the_limit(c, name):
    c.start()
    block = c.block(f"/c/{name}", extra=[("x-big", "a" * 200_000)])
    chunks = [block[i:i + 16384] for i in range(0, len(block), 16384)]
    frames = [frame(HEADERS, END_STREAM | (END_HEADERS if len(chunks) == 1 else 0), 1, chunks[0])]
    for i, chunk in enumerate(chunks[1:], 1):
        frames.append(frame(CONTINUATION, END_HEADERS if i == len(chunks) - 1 else 0, 1, chunk))
    try:
        c.send(*frames)
    except OSError:
        pass
    return c.outcome()


# --- flow control ---


@case("§6.9.1: DATA beyond the stream's flow-control window is FLOW_CONTROL_ERROR",
      STREAM("FLOW_CONTROL_ERROR"), CONN("FLOW_CONTROL_ERROR"))
def data_beyond_the_window(c, name):
    c.start()
    # Learn the server's SETTINGS first (its initial stream window), then overrun it. The test routes
    # this path to an upstream whose connection never completes: the proxy reads no body meanwhile,
    # so no window can have been given back.
    c.send(frame(PING, 0, 0, b"settings"))
    c.outcome(ping=b"settings")
    window = c.server_settings.get(4, 65535)
    max_frame = c.server_settings.get(5, 16384)
    frames = [c.request(1, f"/c/{name}", "POST", end_stream=False)]
    left = window + 1
    while left > 0:
        n = min(left, max_frame)
        frames.append(frame(DATA, 0, 1, b"x" * n))
        left -= n
    try:
        c.send(*frames)
    except OSError:
        pass
    return c.outcome(skip_responses=(1,)), {"stream_window": window}


# --- floods ---


# A flooded connection may end in a reset rather than a readable GOAWAY: the server closes it with the
# flood unread, and the kernel then drops what was not yet read (the GOAWAY with it). Either way the
# connection was cut off; a server that tolerated the flood would have kept it ("timeout").
CUT_OFF = [CONN("ENHANCE_YOUR_CALM"), ("close",)]


@case("CVE-2023-44487 (Rapid Reset): streams opened and reset at once are cut off", *CUT_OFF)
def rapid_reset(c, name):
    c.start()
    frames = []
    for i in range(1000):
        sid = 1 + 2 * i
        frames.append(c.request(sid, f"/c/{name}"))
        frames.append(frame(RST_STREAM, 0, sid, struct.pack(">I", 8)))
    batches = c.flood(frames[i:i + 50] for i in range(0, len(frames), 50))
    streams = set(range(1, 2001, 2))
    return c.outcome(skip_responses=streams), {"streams_sent": min(1000, batches * 25)}


def reset_flood(c, name, per_stream, n=2000):
    """Opens `n` streams, each with `per_stream(sid)`'s frames, which the server must reset itself
    (a stream error): the connection's fate once they are all sent (stream resets skipped)."""
    c.start()
    batches = c.flood([f for i in range(first, min(first + 25, n)) for f in per_stream(1 + 2 * i)]
                      for first in range(0, n, 25))
    sent = min(n, batches * 25)
    deadline = time.time() + WAIT
    while time.time() < deadline:
        result = c.outcome(wait=max(0.1, deadline - time.time()), skip_responses=set(range(1, 2 * n, 2)))
        if result[0] != "rst":
            return result, {"streams_sent": sent}
    return ["timeout"], {"streams_sent": sent}


@case("CVE-2025-8671 (MadeYouReset): requests the server must reset itself are cut off", *CUT_OFF)
def made_you_reset(c, name):
    # Each request is malformed (TE other than trailers): a stream error the server answers with
    # RST_STREAM — work the client makes the server do without ever sending a reset itself.
    return reset_flood(c, name, lambda sid: [c.request(sid, f"/c/{name}", extra=[("te", "gzip")])])


@case("CVE-2025-8671 (MadeYouReset), by PRIORITY: self-dependent streams reset by the server are cut off",
      *CUT_OFF)
def made_you_reset_by_priority(c, name):
    return reset_flood(c, name, lambda sid: [frame(PRIORITY, 0, sid, struct.pack(">IB", sid, 16))])


# --- controls ---


@case("a valid request is served", ("response", 200))
def valid_request(c, name):
    c.start()
    c.send(c.request(1, f"/c/{name}"))
    return c.outcome()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tls", nargs=2, metavar=("SERVER_NAME", "CA_FILE"))
    p.add_argument("--only")
    args = p.parse_args()
    out = []
    for name, rfc, expected, known, fn in CASES:
        if args.only and name != args.only:
            continue
        detail = {}
        try:
            c = Conn(args)
            result = fn(c, name)
            if isinstance(result, tuple):
                result, detail = result
            c.sock.close()
        except Exception as e:  # a case that could not run is a failure the test reports
            result = ["error", f"{type(e).__name__}: {e}"]
        verdict = "pass" if result in expected else "fail"
        if verdict == "fail" and known and result == known[0]:
            verdict = "deviation"
        entry = {"name": name, "rfc": rfc, "expected": expected, "outcome": result,
                 "verdict": verdict, "detail": detail}
        if known:
            entry["deviation"] = {"outcome": known[0], "why": known[1]}
        out.append(entry)
    print(json.dumps({"cases": out}))


main()
