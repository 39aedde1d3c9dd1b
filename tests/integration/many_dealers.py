#!/usr/bin/python3
"""N ZeroMQ DEALERs at once, each its own connection through `amtsbote tunnel` (so its own TLS
session at the broker): each says HELLO, then makes one CALL; all must be answered.

    many_dealers.py ENDPOINT N SERVICE/METHOD [TIMEOUT_MS]

Prints "N of N answered" and exits 0, or says what is missing and exits 1. Bounded by TIMEOUT_MS."""
import os
import sys
import time

import zmq

HELLO, CALL, REPLY = 1, 2, 3


def varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(num, wt, v):
    key = varint(num << 3 | wt)
    return key + (varint(v) if wt == 0 else varint(len(v)) + v)


def header(kind, corr=b"", service=""):
    h = field(1, 0, 1) + field(2, 0, kind) + field(3, 2, os.urandom(16))
    if corr:
        h += field(4, 2, corr)
    if service:
        h += field(5, 2, service.encode())
    return h


def kind_and_corr(buf):
    """Fields 2 (kind) and 4 (correlation id) of a header; the rest is skipped."""
    i, kind, corr = 0, None, b""
    while i < len(buf):
        key, shift = 0, 0
        while True:
            b = buf[i]
            i += 1
            key |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        v, shift = 0, 0
        while True:
            b = buf[i]
            i += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        if key & 7 == 2:
            data, i = bytes(buf[i:i + v]), i + v
            if key >> 3 == 4:
                corr = data
        elif key >> 3 == 2:
            kind = v
    return kind, corr


def main():
    endpoint, n, service = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    timeout = int(sys.argv[4]) if len(sys.argv) > 4 else 60000
    deadline = time.monotonic() + timeout / 1000
    ctx = zmq.Context(io_threads=2)
    socks = []
    poller = zmq.Poller()
    for _ in range(n):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        s.send(header(HELLO))
        poller.register(s, zmq.POLLIN)
        socks.append(s)
    state = {s: "hello" for s in socks}
    answered = 0
    while answered < n and time.monotonic() < deadline:
        for s, _ in poller.poll(200):
            frames = s.recv_multipart()
            kind, corr = kind_and_corr(frames[0])
            if state[s] == "hello" and kind == HELLO:
                state[s] = "call"
                s.send_multipart([header(CALL, b"c%d" % id(s), service), b"ping"])
            elif state[s] == "call" and kind == REPLY and len(frames) == 2 and frames[1] == b"ping":
                state[s] = "done"
                answered += 1
    waiting_hello = sum(1 for v in state.values() if v == "hello")
    print("%d of %d answered (%d without HELLO)" % (answered, n, waiting_hello))
    for s in socks:
        s.close()
    ctx.term()
    sys.exit(0 if answered == n else 1)


main()
