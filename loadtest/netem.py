"""A lossy, slow link between two network namespaces, in user space (this kernel has no `tc netem`).

    netem.py NS_A DEV_A NS_B DEV_B --delay-ms 25 --loss 0.02 [--seed 1]

Creates a TUN device DEV_A in namespace NS_A and DEV_B in NS_B, prints "ready" (the caller then gives
them addresses and brings them up), and forwards every IP packet from one to the other after
`delay-ms` (each direction: 25 ms gives a 50 ms round trip), dropping each packet with probability
`loss` independently (each direction). TCP and QUIC see the same link. Runs until killed.
"""

import argparse
import asyncio
import ctypes
import fcntl
import os
import random
import struct
import sys

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000

libc = ctypes.CDLL("libc.so.6", use_errno=True)


def tun_in(ns, name):
    """A TUN device named `name`, created inside network namespace `ns` (and its fd)."""
    ns_fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    if libc.setns(ns_fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), f"setns {ns}")
    os.close(ns_fd)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main():
    p = argparse.ArgumentParser()
    p.add_argument("ns_a")
    p.add_argument("dev_a")
    p.add_argument("ns_b")
    p.add_argument("dev_b")
    p.add_argument("--delay-ms", type=float, default=25.0)
    p.add_argument("--loss", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rng = random.Random(args.seed)
    a = tun_in(args.ns_a, args.dev_a)
    b = tun_in(args.ns_b, args.dev_b)
    counts = {"forwarded": 0, "dropped": 0}
    loop = asyncio.new_event_loop()
    delay = args.delay_ms / 1000.0

    def write(fd, packet):
        try:
            os.write(fd, packet)
        except OSError:
            pass  # the device is down or full: a lost packet, as on a real link

    last = {a: 0.0, b: 0.0}

    def pump(src, dst):
        while True:
            try:
                packet = os.read(src, 65536)
            except BlockingIOError:
                return
            if rng.random() < args.loss:
                counts["dropped"] += 1
                continue
            counts["forwarded"] += 1
            # In order, as a link delivers: never before the packet ahead of it.
            at = max(loop.time() + delay, last[src] + 1e-6)
            last[src] = at
            loop.call_at(at, write, dst, packet)

    loop.add_reader(a, pump, a, b)
    loop.add_reader(b, pump, b, a)
    print("ready", flush=True)
    try:
        loop.run_forever()
    finally:
        print(f"forwarded {counts['forwarded']} dropped {counts['dropped']}", file=sys.stderr)


main()
