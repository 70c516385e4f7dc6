"""Scenario processes for the response tests (tests/tests/response.rs).

  hop NEXT LOG [EVERY [BURST]]
                             listen (prints its port); for each connection, connect
                             on to NEXT ("-" for none) and pass the task along; after
                             the first task, start BURST `sleep` children at once and
                             then one every EVERY seconds (0 = never), logging
                             "child PID TIME_NS" to LOG
  root HOP LOG [EVERY [BURST]]
                             connect to HOP with a task, then the same children
  refused TARGET             connect to TARGET every millisecond until a connect
                             fails with EPERM; print that moment (ns) and exit
  probe TARGET LOG           every 100 ms: send a byte on a connection opened at start,
                             open a new TCP connection, send a UDP datagram; log
                             each outcome as a JSON line
  sink LOG                   listen on TCP and UDP (prints the port); log every
                             connection, payload and datagram as a JSON line
  connect TARGET             one TCP connection to TARGET sending this pid; exit 0
  idle                       print this process's identity and sleep

Every process prints its own pid/start ticks so the test can name it without the
sensor's help. Children inherit the environment, so the test finds every process
of a scenario by a marker variable.
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time


def me():
    with open("/proc/self/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return {"pid": os.getpid(), "start_ticks": int(fields[19])}


def addr(s):
    host, port = s.rsplit(":", 1)
    return host, int(port)


def log_line(path, text):
    with open(path, "a") as f:
        f.write(text + "\n")


def fork_loop(log, every, burst=0):
    for _ in range(burst):
        p = subprocess.Popen(["sleep", "600"])
        log_line(log, f"child {p.pid} {time.time_ns()}")
    if every <= 0:
        return

    # CUSTODY_TEST_READ: a file read on every round (the policy tests' denied read).
    read = os.environ.get("CUSTODY_TEST_READ")

    def run():
        while True:
            if read:
                with open(read) as f:
                    f.read()
            p = subprocess.Popen(["sleep", "600"])
            log_line(log, f"child {p.pid} {time.time_ns()}")
            time.sleep(every)

    threading.Thread(target=run, daemon=True).start()


def hop(nxt, log, every, burst):
    srv = socket.socket()
    srv.bind(("0.0.0.0", 0))
    srv.listen(16)
    print(json.dumps({"port": srv.getsockname()[1], **me()}), flush=True)
    held = []
    started = False
    while True:
        conn, _ = srv.accept()
        task = conn.recv(1024)
        held.append(conn)
        if nxt != "-":
            out = socket.create_connection(addr(nxt), timeout=10)
            out.sendall(task)
            held.append(out)
        conn.sendall(b"ok\n")
        if not started:
            started = True
            fork_loop(log, every, burst)


def root(hop_addr, log, every, burst):
    s = socket.create_connection(addr(hop_addr), timeout=10)
    s.sendall(b"task\n")
    s.recv(16)
    fork_loop(log, every, burst)
    print(json.dumps(me()), flush=True)
    while True:
        time.sleep(1)


def probe(target, log):
    print(json.dumps(me()), flush=True)
    t = addr(target)
    persist = socket.create_connection(t, timeout=5)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    n = 0
    while True:
        n += 1
        rec = {"n": n, "t": time.time_ns()}
        try:
            persist.send(b"p")
            rec["persist"] = "ok"
        except OSError as e:
            rec["persist"] = e.errno or -1
        try:
            c = socket.create_connection(t, timeout=1)
            c.sendall(b"c")
            c.close()
            rec["connect"] = "ok"
        except OSError as e:
            rec["connect"] = e.errno or -1
        try:
            udp.sendto(b"u", t)
            rec["udp"] = "ok"
        except OSError as e:
            rec["udp"] = e.errno or -1
        log_line(log, json.dumps(rec))
        time.sleep(0.1)


def sink(log):
    tcp = socket.socket()
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", 0))
    port = tcp.getsockname()[1]
    tcp.listen(64)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", port))
    print(port, flush=True)

    def serve(conn, peer):
        log_line(log, json.dumps({"t": time.time_ns(), "conn": peer[0]}))
        while True:
            try:
                b = conn.recv(4096)
            except OSError:
                break
            if not b:
                break
            log_line(log, json.dumps({"t": time.time_ns(), "tcp": b.decode(errors="replace")}))

    def udp_loop():
        while True:
            b, peer = udp.recvfrom(4096)
            log_line(log, json.dumps({"t": time.time_ns(), "udp": b.decode(errors="replace")}))

    threading.Thread(target=udp_loop, daemon=True).start()
    while True:
        conn, peer = tcp.accept()
        threading.Thread(target=serve, args=(conn, peer), daemon=True).start()


def refused(target):
    print(json.dumps(me()), flush=True)
    t = addr(target)
    while True:
        try:
            c = socket.create_connection(t, timeout=1)
            c.close()
        except OSError as e:
            if e.errno == 1:
                print(time.time_ns(), flush=True)
                return
        time.sleep(0.001)


def connect(target):
    s = socket.create_connection(addr(target), timeout=5)
    s.sendall(f"pid {os.getpid()}\n".encode())
    s.close()


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    every = float(args[2]) if len(args) > 2 else 0
    burst = int(args[3]) if len(args) > 3 else 0
    if mode == "hop":
        hop(args[0], args[1], every, burst)
    elif mode == "root":
        root(args[0], args[1], every, burst)
    elif mode == "refused":
        refused(args[0])
    elif mode == "probe":
        probe(args[0], args[1])
    elif mode == "sink":
        sink(args[0])
    elif mode == "connect":
        connect(args[0])
    elif mode == "idle":
        print(json.dumps(me()), flush=True)
        while True:
            time.sleep(1)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
