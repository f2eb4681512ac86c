"""A real gRPC server and client (grpcio) for the gateway's gRPC tests (gateway/tests/edge/grpc.rs).

    echo.py server PORT              serves test.Echo and grpc.health.v1.Health on 127.0.0.1:PORT (h2c);
                                     prints "ready" once listening
    echo.py call TARGET METHOD ARG   one call through TARGET (host:port) with :authority AUTHORITY (env)
                                     and the bearer token TOKEN (env, optional); prints one JSON line:
                                     {"code", "details", "responses", "trailers", "initial"}

Messages are raw bytes (no generated code): requests and answers are UTF-8 text. test.Echo's methods:
Unary (answers "echo:ARG", trailing metadata x-trailer: kept), ServerStream (ARG answers), ClientStream
(ARG requests, answers how many arrived), Bidi (echoes each of ARG messages as it comes), Slow (sleeps ARG
seconds; counts the calls cancelled before their end), Count (calls and cancellations so far),
SetHealth (ARG = SERVING | NOT_SERVING: what Health/Check answers from now on).
"""

import json
import os
import sys
import threading
import time
from concurrent import futures

import grpc

STATE = {"calls": 0, "cancelled": 0, "health": 1}
LOCK = threading.Lock()


def counted(fn):
    def run(request, context):
        with LOCK:
            STATE["calls"] += 1
        return fn(request, context)

    return run


def counted_stream(fn):
    def run(request, context):
        with LOCK:
            STATE["calls"] += 1
        yield from fn(request, context)

    return run


def unary(request, context):
    context.set_trailing_metadata((("x-trailer", "kept"),))
    return b"echo:" + request


def server_stream(request, context):
    for i in range(int(request)):
        yield f"item-{i}".encode()


def client_stream(requests, context):
    return str(sum(1 for _ in requests)).encode()


def bidi(requests, context):
    for r in requests:
        yield b"re:" + r


def slow(request, context):
    end = time.time() + float(request)
    while time.time() < end:
        if not context.is_active():
            with LOCK:
                STATE["cancelled"] += 1
            return b"cancelled"
        time.sleep(0.02)
    return b"slept"


def count(request, context):
    with LOCK:
        return json.dumps({"calls": STATE["calls"], "cancelled": STATE["cancelled"]}).encode()


def set_health(request, context):
    with LOCK:
        STATE["health"] = 1 if request == b"SERVING" else 2
    return b"ok"


def health_check(request, context):
    # HealthCheckResponse { status = 1 (SERVING) | 2 (NOT_SERVING) }
    with LOCK:
        return bytes([0x08, STATE["health"]])


def server(port):
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    echo = {
        "Unary": grpc.unary_unary_rpc_method_handler(counted(unary)),
        "ServerStream": grpc.unary_stream_rpc_method_handler(counted_stream(server_stream)),
        "ClientStream": grpc.stream_unary_rpc_method_handler(counted(client_stream)),
        "Bidi": grpc.stream_stream_rpc_method_handler(counted_stream(bidi)),
        "Slow": grpc.unary_unary_rpc_method_handler(counted(slow)),
        "Count": grpc.unary_unary_rpc_method_handler(count),
        "SetHealth": grpc.unary_unary_rpc_method_handler(set_health),
    }
    s.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("test.Echo", echo),
        grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health",
            {"Check": grpc.unary_unary_rpc_method_handler(health_check)},
        ),
    ))
    s.add_insecure_port(f"127.0.0.1:{port}")
    s.start()
    print("ready", flush=True)
    s.wait_for_termination()


def call(target, method, arg):
    options = []
    if os.environ.get("AUTHORITY"):
        options.append(("grpc.default_authority", os.environ["AUTHORITY"]))
    metadata = []
    if os.environ.get("TOKEN"):
        metadata.append(("authorization", "Bearer " + os.environ["TOKEN"]))
    timeout = float(os.environ.get("TIMEOUT", "20"))
    out = {"code": "OK", "details": "", "responses": [], "trailers": {}, "initial": {}}
    with grpc.insecure_channel(target, options=options) as ch:
        path = f"/test.Echo/{method}"
        try:
            if method in ("Unary", "Slow", "Count", "SetHealth"):
                fn = ch.unary_unary(path)
                resp, c = fn.with_call(arg.encode(), metadata=metadata, timeout=timeout)
                out["responses"] = [resp.decode()]
            elif method == "ServerStream":
                c = ch.unary_stream(path)(arg.encode(), metadata=metadata, timeout=timeout)
                out["responses"] = [r.decode() for r in c]
            elif method == "ClientStream":
                fn = ch.stream_unary(path)
                msgs = (f"m{i}".encode() for i in range(int(arg)))
                resp, c = fn.with_call(msgs, metadata=metadata, timeout=timeout)
                out["responses"] = [resp.decode()]
            elif method == "Bidi":
                msgs = (f"m{i}".encode() for i in range(int(arg)))
                c = ch.stream_stream(path)(msgs, metadata=metadata, timeout=timeout)
                out["responses"] = [r.decode() for r in c]
            else:
                raise SystemExit(f"unknown method {method}")
            out["trailers"] = dict(c.trailing_metadata() or ())
            out["initial"] = dict(c.initial_metadata() or ())
        except grpc.RpcError as e:
            out["code"] = e.code().name
            out["details"] = e.details()
            out["trailers"] = dict(e.trailing_metadata() or ())
            out["initial"] = dict(e.initial_metadata() or ())
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(int(sys.argv[2]))
    elif sys.argv[1] == "call":
        call(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "")
    else:
        raise SystemExit(__doc__)
