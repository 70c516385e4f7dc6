"""The finance example for the policy tests (tests/tests/policy.rs).

  worker                    host B: an agent service (HTTP); its MCP tool server is a
                            stdio child started at the first task and kept; each POST
                            {"path": ...} calls the tool's `read_file` and answers
                            with the content (or the error)
  tool                      the MCP stdio server: `read_file` opens a path
  supervisor URL PATH...    host A: hands each path to the worker over HTTP, one
                            request per path, prints each answer as a JSON line, then
                            prints "done" and stays alive (so a chain kill is visible)

Every process prints its identity (pid, start ticks) so the test names it without
the sensor's help.
"""
import http.server
import json
import os
import subprocess
import sys
import time
import urllib.request


def me():
    with open("/proc/self/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return {"pid": os.getpid(), "start_ticks": int(fields[19])}


def tool():
    for line in sys.stdin:
        req = json.loads(line)
        method = req.get("method")
        if "id" not in req:
            continue
        if method == "initialize":
            result = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                      "serverInfo": {"name": "finance-files", "version": "1.0"}}
        elif method == "tools/call":
            path = req["params"]["arguments"]["path"]
            try:
                with open(path) as f:
                    text = f.read()
            except OSError as e:
                text = f"error: {e}"
            result = {"content": [{"type": "text", "text": json.dumps({"tool": me(), "data": text})}]}
        else:
            result = {}
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": req["id"], "result": result}) + "\n")
        sys.stdout.flush()


class Worker(http.server.BaseHTTPRequestHandler):
    child = None
    next_id = 1

    def rpc(self, method, params, notify=False):
        msg = {"jsonrpc": "2.0", "method": method, "params": params}
        if not notify:
            msg["id"] = Worker.next_id
            Worker.next_id += 1
        Worker.child.stdin.write(json.dumps(msg) + "\n")
        Worker.child.stdin.flush()
        return None if notify else json.loads(Worker.child.stdout.readline())

    def do_POST(self):
        task = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if Worker.child is None:
            Worker.child = subprocess.Popen([sys.executable, __file__, "tool"],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self.rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                    "clientInfo": {"name": "finance-worker", "version": "1"}})
            self.rpc("notifications/initialized", {}, notify=True)
        res = self.rpc("tools/call", {"name": "read_file", "arguments": {"path": task["path"]}})
        out = json.loads(res["result"]["content"][0]["text"])
        body = json.dumps({"worker": me(), **out}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def worker():
    srv = http.server.HTTPServer(("0.0.0.0", 0), Worker)
    print(json.dumps({"port": srv.server_address[1], **me()}), flush=True)
    srv.serve_forever()


def supervisor(url, paths):
    print(json.dumps(me()), flush=True)
    for p in paths:
        req = urllib.request.Request(url, data=json.dumps({"path": p}).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=20) as r:
                print(r.read().decode(), flush=True)
        except Exception as e:  # the chain may be killed under us
            print(json.dumps({"error": str(e)}), flush=True)
        time.sleep(1.0)
    print("done", flush=True)
    while True:
        time.sleep(1)


def main():
    mode = sys.argv[1]
    if mode == "tool":
        tool()
    elif mode == "worker":
        worker()
    elif mode == "supervisor":
        supervisor(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
