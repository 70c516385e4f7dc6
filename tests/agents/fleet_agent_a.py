"""Host A: the agent a human started. Sends one task over HTTP to the agent service
on host B and prints what came back, with its own pid and start ticks, as one JSON
line."""
import json
import sys
import time
import urllib.request

from fleet_common import me

b_url, record = sys.argv[1:3]

# The sensor learns of this declared agent from its exec event; give it a moment.
time.sleep(0.5)
req = urllib.request.Request(
    b_url + "/task",
    data=json.dumps({"record": record}).encode(),
    headers={"Content-Type": "application/json"},
    method="POST",
)
with urllib.request.urlopen(req, timeout=20) as r:
    reply = json.loads(r.read())
print(json.dumps({"a": me(), **reply}), flush=True)
