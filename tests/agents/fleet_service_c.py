"""Host C: the records service. Each request opens the record file it names."""
import http.server
import json
import os
import sys
import time

from fleet_common import me

records_dir = sys.argv[1]
time.sleep(0.5)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        name = os.path.basename(self.path)
        path = os.path.join(records_dir, name)
        with open(path) as f:
            data = f.read()
        body = json.dumps({"c": me(), "path": path, "data": data}).encode()
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
