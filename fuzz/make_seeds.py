#!/usr/bin/env python3
"""Writes seed inputs for the fuzz targets into seeds/TARGET/ (run once;
the seeds are committed). Format: see src/lib.rs."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "spy-image", "tests", "fixtures")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def record(direction, data, gap=False):
    control = (1 if direction == "recv" else 0) | (2 if gap else 0)
    return struct.pack(">BH", control, len(data)) + (b"" if gap else data)


def write(target, name, records):
    os.makedirs(os.path.join(HERE, "seeds", target), exist_ok=True)
    with open(os.path.join(HERE, "seeds", target, name), "wb") as f:
        f.write(b"".join(records))


client = open(os.path.join(FIXTURES, "h2_client.bin"), "rb").read()
server = open(os.path.join(FIXTURES, "h2_server.bin"), "rb").read()

req = (b"/items?id=7 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer x\r\n\r\n"
       b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n0\r\nX-T: 1\r\n\r\n"
       b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
resp = (b"200 OK\r\nContent-Length: 5\r\nContent-Encoding: gzip\r\n\r\nhello"
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x01x")
write("http1", "conversation", [record("send", req[:60]), record("recv", resp[:50]), record("send", req[60:]),
                                record("recv", resp[50:])])
write("http1", "gap", [record("send", b"/ HTTP/1.1\r\n\r\n"), record("recv", b"200 OK\r\nContent-Length: 100\r\n\r\nab"),
                       record("recv", b"x" * 50, gap=True), record("recv", b"y" * 48)])
write("http2", "python-h2", [record("send", client[len(PREFACE):]), record("recv", server)])
write("http2", "python-h2-split", [record("send", client[len(PREFACE):100]), record("recv", server[:90]),
                                   record("send", client[100:]), record("recv", server[90:])])
write("connection", "http1", [record("send", b"GET " + req), record("recv", b"HTTP/1.1 " + resp)])
write("connection", "http2", [record("send", client), record("recv", server)])
write("connection", "http2-server", [record("recv", client), record("send", server)])
