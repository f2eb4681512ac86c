#!/usr/bin/env python3
"""Mixed traffic through the gateway for a soak run (driven by scripts/soak.sh); standard library only."""
import argparse
import http.client
import json
import os
import threading
import time
from collections import Counter, defaultdict

GW = ("127.0.0.1", 8080)
TENANT = "demo.aggios.localhost"
EXPECTED = {
    "plain": {200},
    "jwt": {200, 429},
    "burst": {200, 429},
    "upload": {201, 429},
    "download": {200, 429},
    "delete": {200, 429},
    "login": {200, 429},
}

stats = defaultdict(Counter)
lock = threading.Lock()
stop = threading.Event()
token = {"access": None}


def record(kind, status):
    with lock:
        stats[kind][status] += 1


class Client:
    def __init__(self):
        self.conn = None

    def request(self, method, path, host, headers=None, body=None):
        for attempt in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(*GW, timeout=30)
                h = {"Host": host}
                h.update(headers or {})
                self.conn.request(method, path, body=body, headers=h)
                r = self.conn.getresponse()
                data = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return r.status, data
            except (OSError, http.client.HTTPException):
                if self.conn:
                    self.conn.close()
                self.conn = None
                if attempt == 1:
                    return 0, b""
        return 0, b""


def login(c, password):
    s, body = c.request("POST", "/api/auth/login", TENANT, {"content-type": "application/json"},
                        json.dumps({"email": "admin@demo.test", "password": password}))
    record("login", s)
    if s == 200:
        token["access"] = json.loads(body)["access_token"]


def paced(kind, per_second, fn):
    c = Client()
    gap = 1.0 / per_second
    nxt = time.monotonic()
    while not stop.is_set():
        fn(c)
        nxt += gap
        time.sleep(max(0.0, nxt - time.monotonic()))


def auth():
    return {"authorization": f"Bearer {token['access']}"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--gateway-pid", type=int, required=True)
    ap.add_argument("--backend-pid", type=int, required=True)
    ap.add_argument("--password", required=True)
    a = ap.parse_args()

    login(Client(), a.password)
    assert token["access"], "login failed at the start"
    n = {"i": 0}

    def upload(c):
        n["i"] += 1
        path = f"/api/files/soak/{n['i'] % 50}.bin"
        body = os.urandom(64 * 1024)
        s, _ = c.request("PUT", path, TENANT, {**auth(), "content-type": "application/octet-stream"}, body)
        record("upload", s)
        if s != 201:
            return
        s, got = c.request("GET", path, TENANT, auth())
        record("download", s if s != 200 or got == body else 599)
        # Every tenth stored file is deleted right away: it exists, so only 200 (or 429) is expected.
        if n["i"] % 10 == 0:
            s, _ = c.request("DELETE", path, TENANT, auth())
            record("delete", s)

    workers = [
        ("plain", 20, lambda c: record("plain", c.request("GET", "/healthz", "127.0.0.1")[0])),
        ("jwt", 40, lambda c: record("jwt", c.request("GET", "/api/users/me", TENANT, auth())[0])),
        ("burst", 150, lambda c: record("burst", c.request("GET", "/api/users/me", TENANT, auth())[0])),
        ("upload", 4, upload),
        ("login", 0.2, lambda c: login(c, a.password)),
    ]
    threads = [threading.Thread(target=paced, args=w, daemon=True) for w in workers]
    for t in threads:
        t.start()

    def sample(pid):
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        return rss, len(os.listdir(f"/proc/{pid}/fd"))

    samples = []
    start = time.monotonic()
    end = start + a.minutes * 60
    warmup = min(300.0, a.minutes * 60 / 6)
    while time.monotonic() < end:
        time.sleep(10)
        t = time.monotonic() - start
        g, b = sample(a.gateway_pid), sample(a.backend_pid)
        samples.append((t, g, b))
        with lock:
            done = sum(sum(c.values()) for c in stats.values())
        print(f"{t:7.0f}s  gateway rss {g[0]/1024:7.1f} MiB fds {g[1]:4d}  "
              f"backend rss {b[0]/1024:7.1f} MiB fds {b[1]:4d}  requests {done}", flush=True)
    stop.set()
    for t in threads:
        t.join(timeout=35)

    after = [s for s in samples if s[0] >= warmup]
    print(f"\nsoak: {a.minutes:g} min, warm-up {warmup:.0f} s, {len(samples)} samples")
    for name, i in (("gateway", 1), ("backend", 2)):
        base, last = after[0][i][0], after[-1][i][0]
        peak = max(s[i][0] for s in after)
        fds = [s[i][1] for s in after]
        print(f"{name}: RSS after warm-up {base/1024:.1f} MiB, at the end {last/1024:.1f} MiB "
              f"({(last - base) / base * 100:+.1f} %), peak {peak/1024:.1f} MiB; "
              f"open descriptors {min(fds)}..{max(fds)}")
    unexpected = 0
    total = 0
    for kind in EXPECTED:
        c = stats[kind]
        bad = sum(v for s, v in c.items() if s not in EXPECTED[kind])
        unexpected += bad
        total += sum(c.values())
        print(f"  {kind:9s} {dict(sorted(c.items()))}  unexpected {bad}")
    print(f"requests {total}, unexpected statuses {unexpected}")


if __name__ == "__main__":
    main()
