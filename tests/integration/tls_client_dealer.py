#!/usr/bin/python3
"""A ZeroMQ DEALER that speaks the Amtsbote protocol by hand, as any binding would: HELLO, then
one CALL, through `amtsbote tunnel`. The amtsbote.v1.Header frames are encoded and decoded with
a few lines of protobuf wire format (varints and length-delimited fields).

    tls_client_dealer.py [--sender ADDRESS] ENDPOINT SERVICE/METHOD PAYLOAD [TIMEOUT_MS]

--sender writes ADDRESS into the `sender` field (15) of the HELLO and the CALL, as a client
pretending to be someone else would; the broker must ignore it. Prints the sender found in the
CALL header as sent ("forged sender: ADDRESS"), then the broker's HELLO sender, then the reply
payload; exits 0, or 1 with the reason."""
import os
import sys
import time

import zmq

KIND_HELLO, KIND_CALL, KIND_REPLY, KIND_ERROR = 1, 2, 3, 4


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(num, value):
    return varint(num << 3) + varint(value)


def field_bytes(num, data):
    return varint(num << 3 | 2) + varint(len(data)) + data


def uuid7():
    ms = int(time.time() * 1000)
    b = bytearray(ms.to_bytes(6, "big") + os.urandom(10))
    b[6] = 0x70 | (b[6] & 0x0F)
    b[8] = 0x80 | (b[8] & 0x3F)
    return bytes(b)


def header(kind, corr=b"", service="", deadline_ms=0, sender=""):
    h = field_varint(1, 1) + field_varint(2, kind) + field_bytes(3, uuid7())
    if corr:
        h += field_bytes(4, corr)
    if service:
        h += field_bytes(5, service.encode())
    if deadline_ms:
        h += field_varint(11, deadline_ms)
    if sender:
        h += field_bytes(15, sender.encode())
    return h


def decode(buf):
    """Fields of one message: {number: value} (the last one wins; bytes for length-delimited)."""
    out, i = {}, 0
    while i < len(buf):
        key, shift = 0, 0
        while True:
            b = buf[i]
            i += 1
            key |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, shift = 0, 0
            while True:
                b = buf[i]
                i += 1
                v |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
        elif wt == 2:
            n, shift = 0, 0
            while True:
                b = buf[i]
                i += 1
                n |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            v = bytes(buf[i:i + n])
            i += n
        else:
            raise ValueError("wire type %d" % wt)
        out[num] = v
    return out


def main():
    args, sender = sys.argv[1:], ""
    if len(args) >= 2 and args[0] == "--sender":
        sender, args = args[1], args[2:]
    if len(args) not in (3, 4):
        print(__doc__)
        sys.exit(2)
    endpoint, service, payload = args[0], args[1], args[2].encode()
    timeout = int(args[3]) if len(args) > 3 else 5000
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    poller = zmq.Poller()
    poller.register(s, zmq.POLLIN)

    def recv():
        if not poller.poll(timeout):
            print("no answer within %d ms" % timeout)
            sys.exit(1)
        return s.recv_multipart()

    call = header(KIND_CALL, b"py-1", service, timeout, sender)
    if sender:
        # decoded back from the very bytes that go out: the forgery is really on the wire
        print("forged sender: %s" % decode(call).get(15, b"").decode())
    s.send(header(KIND_HELLO, sender=sender))
    hello = decode(recv()[0])
    if hello.get(2) != KIND_HELLO:
        print("expected HELLO, got kind %s" % hello.get(2))
        sys.exit(1)
    print("hello: %s" % hello.get(15, b"").decode())
    s.send_multipart([call, payload])
    frames = recv()
    h = decode(frames[0])
    if h.get(2) != KIND_REPLY or h.get(4) != b"py-1" or len(frames) != 2:
        err = decode(h.get(14, b"")) if h.get(14) else {}
        print("expected REPLY, got kind %s: %s" % (h.get(2), err.get(2, b"").decode(errors="replace")))
        sys.exit(1)
    print("reply: %s" % frames[1].decode().strip())
    s.close()
    ctx.term()


main()
