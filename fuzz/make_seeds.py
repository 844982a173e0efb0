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

# ---- kernel_event, packet, flows (layouts: spy-ebpf/bpf/tlsspy.h, capture/packet.rs) ----
import socket


def data_event(direction, data, seq, start, call_offset=0, call_len=None, conn_ptr=0x1000, fd=5):
    tuple_ = struct.pack("<HHHH16s16s", 2, 40000, 443, 0, socket.inet_aton("127.0.0.1"),
                         socket.inet_aton("127.0.0.1"))
    header = struct.pack("<IIIiQQQQIBBH", 1, 10, 10, fd, 1, conn_ptr, call_len or len(data), call_offset,
                         len(data), 0 if direction == "send" else 1, 1, 1)
    event = header + tuple_ + b"curl".ljust(16, b"\0") + struct.pack("<QQ", seq, start) + data
    return struct.pack(">H", len(event)) + event


def close_event(conn_ptr, fd, why):
    event = struct.pack("<IIQiB3sQ", 5, 10, conn_ptr, fd, why, b"\0\0\0", 2)
    return struct.pack(">H", len(event)) + event


get = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
head = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"
write("kernel_event", "in-order", [data_event("send", get, 0, 0), data_event("recv", head, 0, 0),
                                   data_event("recv", b"body", 1, len(head)), close_event(0x1000, -1, 1)])
write("kernel_event", "lost-call", [data_event("send", get, 0, 0), data_event("recv", b"body", 1, len(head)),
                                    data_event("send", get, 3, 3 * len(get)), close_event(0, 5, 2)])


def ipv4_tcp(src_port, dst_port, seq, flags, payload):
    tcp = struct.pack(">HHIIBBHHH", src_port, dst_port, seq, 0, 5 << 4, flags, 65535, 0, 0)
    total = 20 + len(tcp) + len(payload)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 6, 0, socket.inet_aton("10.0.0.1"),
                     socket.inet_aton("10.0.0.2"))
    return ip + tcp + payload


hello = open(os.path.join(HERE, "seeds", "tls_handshake", "client_hello_python"), "rb").read()[1:]
syn = ipv4_tcp(40000, 443, 1000, 0x02, b"")
write("packet", "syn", [struct.pack(">H", len(syn)), syn])
data = ipv4_tcp(40000, 443, 1001, 0x18, hello[:200])
write("packet", "client-hello", [struct.pack(">H", len(data) + 40), data])


def flow_packet(control, packet):
    return struct.pack(">BH", control, len(packet)) + packet


write("flows", "client-hello-in-pieces", [
    flow_packet(1, syn),
    flow_packet(1, ipv4_tcp(40000, 443, 1001 + 100, 0x18, hello[100:])),  # out of order first
    flow_packet(1, ipv4_tcp(40000, 443, 1001, 0x18, hello[:100])),
    flow_packet(0x81, ipv4_tcp(40000, 443, 1001 + len(hello), 0x11, b"")),
])

# Go binary analysis. Real Go executables are megabytes, past -max_len: the
# seeds are small shapes that get past each stage's first checks.
def write_raw(target, name, data):
    os.makedirs(os.path.join(HERE, "seeds", target), exist_ok=True)
    with open(os.path.join(HERE, "seeds", target, name), "wb") as f:
        f.write(data)


def varint_string(s):
    out, n = b"", len(s)
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out + s


# Go 1.18+ build info: magic, pointer size 8, inline-strings flag, padding.
buildinfo = b"\xff Go buildinf:" + bytes([8, 2]) + bytes(16)
buildinfo += varint_string(b"go1.22.1")
buildinfo += varint_string(b"0w\xaf\x0c\x92t\x08\x02A\xe1\xc1\x07\xe6\xd6\x18\xe6path\texample.com/app\nmod\texample.com/app\t(devel)\t\n\xf92C1\x86\x18 r\x00\x82B\x10A\x16\xd8\xf2")
write_raw("go_buildinfo", "go122", buildinfo)
# A Go 1.20 pcHeader (magic 0xfffffff1, minLC 1, ptrSize 8) with two functions.
header = struct.pack("<IBBBB", 0xFFFFFFF1, 0, 0, 1, 8)
words = [2, 1, 0x401000, 0x60, 0x80, 0x90, 0x90, 0xA0]  # nfunc nfiles textStart funcnameOff cuOff filetabOff pctabOff pclnOff
pcln = header + b"".join(struct.pack("<Q", w) for w in words)
pcln = pcln.ljust(0x60, b"\0") + b"crypto/tls.(*Conn).Write\0crypto/tls.(*Conn).Read\0"
pcln = pcln.ljust(0xA0, b"\0") + struct.pack("<IIIIII", 0, 0x10, 0x40, 0x20, 0x80, 0)
write_raw("go_pclntab", "go120", pcln)
# DWARF: .debug_info with a v4 unit header, .debug_abbrev with one entry.
info = struct.pack("<IHIB", 7, 4, 0, 8)
abbrev = bytes([1, 0x13, 1, 0x03, 0x08, 0, 0, 0])
write_raw("go_dwarf", "unit", struct.pack(">H", len(info)) + info + struct.pack(">H", len(abbrev)) + abbrev)
# A minimal ELF64 x86-64 executable of our own: header, one PT_LOAD, and a
# few bytes of code (ret): the ELF stage, then "not Go".
code = b"\xc3" * 16
phoff, ehsize, phentsize = 64, 64, 56
elf = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
elf += struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, 0x401000 + phoff + phentsize, phoff, 0, 0, ehsize, phentsize, 1, 64, 0, 0)
size = phoff + phentsize + len(code)
elf += struct.pack("<IIQQQQQQ", 1, 5, 0, 0x401000, 0x401000, size, size, 0x1000)
write_raw("go_elf", "tiny", elf + code)
