"""Declared-agent scenario for the sensor end-to-end test.

Run with CUSTODY_AGENT set so custodyd tracks it. Every step prints a line
"STEP name value" the test reads back, so assertions compare against what really
happened (pids, ports), not against guesses.
"""
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

work, tls_port, dns_ip, marker, bearer = sys.argv[1:6]


def step(name, value):
    print(f"STEP {name} {value}", flush=True)


# The daemon learns of this agent from its exec event; give it a moment to put us in
# the kernel's tracked map before acting (see docs/sensor.md, "Known limits": declared-agent start window).
time.sleep(0.5)
step("agent_pid", os.getpid())

# 1. A child that lives well under 5 ms, with distinctive argv.
child = subprocess.run(["/bin/true", marker, "second-arg", "third arg with spaces"])
step("true_rc", child.returncode)

# 2. Files: one open that works, one that fails.
ok_path = os.path.join(work, "agent-notes.txt")
with open(ok_path, "w") as f:
    f.write("monthly close\n")
step("opened", ok_path)
renamed = os.path.join(work, "agent-notes.old")
os.rename(ok_path, renamed)
step("renamed", renamed)
os.unlink(renamed)
step("unlinked", renamed)
with open(ok_path, "w") as f:
    f.write("monthly close\n")
missing = os.path.join(work, "does-not-exist", "nope.txt")
try:
    open(missing)
except FileNotFoundError:
    step("failed_open", missing)

# 3. TCP to a local listener run by a child of this agent (so both sides are traced).
srv = subprocess.Popen(
    [sys.executable, "-c", (
        "import socket,sys\n"
        "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(1)\n"
        "print(s.getsockname()[1], flush=True)\n"
        "c,a=s.accept(); c.sendall(b'hi'); c.close()\n")],
    stdout=subprocess.PIPE, text=True)
port = int(srv.stdout.readline())
step("listener_pid", srv.pid)
c = socket.create_connection(("127.0.0.1", port))
step("tcp_local_port", c.getsockname()[1])
step("tcp_remote_port", port)
c.recv(2)
c.close()
srv.wait()

# 4. DNS over UDP/53 to the local stub: once with sendto, once on a connected socket.
def query(name, qid):
    q = qid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00\x00\x01\x00\x01"

u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(2)
u.sendto(query("custody-e2e.example", 0x1234), (dns_ip, 53))
u.recvfrom(512)
u2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u2.settimeout(2)
u2.connect((dns_ip, 53))
u2.send(query("second.custody-e2e.example", 0x1235))
u2.recv(512)
step("dns", "done")

# 5. HTTPS with a bearer token through Python's ssl (libssl SSL_write_ex/SSL_read_ex).
ctx = ssl.create_default_context(cafile=os.path.join(work, "ca.pem"))
# A fresh W3C trace per run: a fixed one would tie unrelated runs together.
traceparent = f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"
step("traceparent", traceparent)
req = urllib.request.Request(
    f"https://localhost:{tls_port}/v1/reports/close?month=2026-10",
    headers={"Authorization": f"Bearer {bearer}", "traceparent": traceparent},
)
with urllib.request.urlopen(req, context=ctx) as r:
    step("https_status", r.status)

# 6. node (OpenSSL linked statically) makes an HTTPS request too.
node = subprocess.run(
    ["node", os.path.join(os.path.dirname(__file__), "https_get.js"), f"https://localhost:{tls_port}/node/ping"],
    env={**os.environ, "NODE_EXTRA_CA_CERTS": os.path.join(work, "ca.pem")},
    capture_output=True, text=True)
step("node_rc", node.returncode)
step("node_out", node.stdout.strip().replace(" ", "_"))

# 7. MCP over stdio: a child answering `initialize` on its stdout pipe.
server_code = (
    "import sys, json\n"
    "req = json.loads(sys.stdin.readline())\n"
    "sys.stdout.write(json.dumps({'jsonrpc': '2.0', 'id': req['id'], 'result': {"
    "'protocolVersion': '2025-06-18', 'capabilities': {'tools': {}},"
    "'serverInfo': {'name': 'e2e-ledger-tools', 'version': '1.0'}}}) + '\\n')\n"
    "sys.stdout.flush()\n")
mcp = subprocess.Popen([sys.executable, "-c", server_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
step("mcp_server_pid", mcp.pid)
mcp.stdin.write(json.dumps({"method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                            "clientInfo": {"name": "e2e-agent", "version": "1"}}, "jsonrpc": "2.0", "id": 0}) + "\n")
mcp.stdin.flush()
step("mcp_reply", json.loads(mcp.stdout.readline())["result"]["serverInfo"]["name"])
mcp.wait()
