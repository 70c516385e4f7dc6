"""A loopback TLS server for tests that counts the TCP payload bytes it moves.

Usage: tls_counting_server.py CERT KEY. Prints its port, then for every connection,
once the client has closed it, a line "RX TX ALPN": raw bytes received and sent on the
TCP connection (TLS records included) and the protocol ALPN settled on. It answers one
request (read up to the blank line) with a 20000-byte body and `Connection: close`.
The TLS runs over memory BIOs so every byte on the wire passes through the counts."""
import socket
import ssl
import sys

cert, key = sys.argv[1], sys.argv[2]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(["http/1.1"])
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(16)
print(ls.getsockname()[1], flush=True)


def serve(c):
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(inc, out, server_side=True)
    n = {"rx": 0, "tx": 0}

    def flush():
        d = out.read()
        if d:
            c.sendall(d)
            n["tx"] += len(d)

    def pump():
        d = c.recv(65536)
        if not d:
            return False
        n["rx"] += len(d)
        inc.write(d)
        return True

    open_ = True
    while open_:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            flush()
            open_ = pump()
    flush()
    req = b""
    while open_ and b"\r\n\r\n" not in req:
        try:
            req += tls.read(65536)
        except ssl.SSLWantReadError:
            flush()
            open_ = pump()
        except ssl.SSLError:
            open_ = False
    if open_:
        body = b"x" * 20000
        tls.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                  % len(body) + body)
        flush()
    # Count everything until the client closes (its close_notify included).
    while open_:
        open_ = pump()
    c.close()
    print(n["rx"], n["tx"], tls.selected_alpn_protocol() or "-", flush=True)


while True:
    conn, _ = ls.accept()
    try:
        serve(conn)
    except OSError:
        conn.close()
