"""A point-to-point link with latency, for a test host in its own network namespace.

This kernel has no netem, so the delay is made here: a TUN device on each side of the link
(one in our namespace, one in the host's), and a loop that holds each packet for the one-way
delay before writing it out on the other side. The devices vanish when this process exits.

Usage: delaylink.py NAMESPACE LOCAL_DEV REMOTE_DEV DELAY_MS
Prints "ready" once both devices exist. SIGUSR1 drops every packet (a stalled link: wifi gone,
laptop lid shut; connections stay open and nothing is refused), SIGUSR2 passes them again.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import fcntl
import os
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN_NO_PI = 0x0001 | 0x1000
CLONE_NEWNET = 0x40000000


def tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN_NO_PI))
    return fd


def main() -> None:
    namespace, local_dev, remote_dev, delay_ms = sys.argv[1:5]
    delay = float(delay_ms) / 1000
    stalled = [False]
    signal.signal(signal.SIGUSR1, lambda *_: stalled.__setitem__(0, True))
    signal.signal(signal.SIGUSR2, lambda *_: stalled.__setitem__(0, False))
    here = tun(local_dev)
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{namespace}") as ns:
        if libc.setns(ns.fileno(), CLONE_NEWNET):
            sys.exit(f"setns failed: errno {ctypes.get_errno()}")
    there = tun(remote_dev)
    print("ready", flush=True)
    peer = {here: there, there: here}
    queues: dict[int, collections.deque[tuple[float, bytes]]] = {
        here: collections.deque(),
        there: collections.deque(),
    }
    while True:
        due = [q[0][0] for q in queues.values() if q]
        wait = max(0.0, min(due) - time.monotonic()) if due else None
        try:
            readable = select.select([here, there], [], [], wait)[0]
        except InterruptedError:
            continue
        now = time.monotonic()
        for fd in readable:
            for _ in range(256):
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if not stalled[0]:
                    queues[fd].append((now + delay, packet))
        now = time.monotonic()
        for fd, queue in queues.items():
            while queue and queue[0][0] <= now:
                # A full device queue drops the packet, as a real link would.
                with contextlib.suppress(OSError):
                    os.write(peer[fd], queue.popleft()[1])


if __name__ == "__main__":
    main()
