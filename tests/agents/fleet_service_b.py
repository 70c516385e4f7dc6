"""Host B: an agent service. For each task it spawns an MCP server as a stdio child,
calls its `lookup_record` tool (the child fetches the record from host C), and
answers with who did what."""
import http.server
import json
import subprocess
import sys
import time

from fleet_common import me

c_url, child_script = sys.argv[1:3]
time.sleep(0.5)


def rpc(child, msg):
    child.stdin.write(json.dumps(msg) + "\n")
    child.stdin.flush()
    if "id" not in msg:
        return None
    return json.loads(child.stdout.readline())


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        task = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        child = subprocess.Popen(
            [sys.executable, child_script, c_url],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        rpc(child, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "fleet-service-b", "version": "1"}}})
        rpc(child, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        res = rpc(child, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "lookup_record", "arguments": {"record": task["record"]}}})
        child.stdin.close()
        child.wait()
        result = json.loads(res["result"]["content"][0]["text"])
        body = json.dumps({"b": me(), **result}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


srv = http.server.HTTPServer(("0.0.0.0", 0), Handler)
print(srv.server_address[1], flush=True)
srv.serve_forever()
