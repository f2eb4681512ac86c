"""Parses HTTP/1 request heads with h11 (PyPI), an HTTP/1.1 parser written independently of ours and of
httparse, for the differential test `gateway/tests/head_differential.rs`.

Reads a JSON list of hex-encoded inputs on stdin; prints a JSON list with one entry per input: {"ok":
true, "method", "target", "version", "host": [values], "content_length": [values], "chunked": bool,
"transfer_encoding": [values]} when h11 reads a complete request head from it, else {"ok": false,
"why": "..."} (a protocol error, or an incomplete head).
"""

import json
import sys

import h11


def parse(data):
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
    try:
        conn.receive_data(data)
        event = conn.next_event()
    except h11.RemoteProtocolError as e:
        return {"ok": False, "why": f"protocol error: {e}"}
    if event is h11.NEED_DATA:
        return {"ok": False, "why": "incomplete head"}
    if not isinstance(event, h11.Request):
        return {"ok": False, "why": f"not a request: {type(event).__name__}"}
    values = lambda name: [v.decode("latin-1") for k, v in event.headers if k == name]  # noqa: E731
    te = values(b"transfer-encoding")
    return {
        "ok": True,
        "method": event.method.decode("latin-1"),
        "target": event.target.decode("latin-1"),
        "version": event.http_version.decode(),
        "host": values(b"host"),
        "content_length": values(b"content-length"),
        "transfer_encoding": te,
        "chunked": bool(te) and te[-1].lower() == "chunked",
    }


print(json.dumps([parse(bytes.fromhex(h)) for h in json.load(sys.stdin)]))
