"""Host B's stdio child: a minimal MCP server whose `lookup_record` tool fetches the
record from the service on host C over HTTP."""
import json
import sys
import urllib.request

from fleet_common import me

c_url = sys.argv[1]


def reply(id_, result):
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": id_, "result": result}) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    req = json.loads(line)
    method = req.get("method")
    if method == "initialize":
        reply(req["id"], {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                          "serverInfo": {"name": "fleet-records", "version": "1.0"}})
    elif method == "tools/call":
        record = req["params"]["arguments"]["record"]
        with urllib.request.urlopen(f"{c_url}/records/{record}", timeout=20) as r:
            c = json.loads(r.read())
        text = json.dumps({"child": me(), **c})
        reply(req["id"], {"content": [{"type": "text", "text": text}]})
