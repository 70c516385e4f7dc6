"""The reporting agent (host C): an HTTPS service that drafts the close report for
whoever the delegation token says it acts for, with the `openai` SDK, and files the
draft in the finance reports directory.

    finance_reporter.py PORT

Credentials from its credential file (STORY_ENV_FILE): OPENAI_API_KEY,
FINANCE_DELEGATION_KEY.
"""
import http.server
import json
import ssl
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from common import MONTH, llm, load_env_file, say, server_tls, verify_delegation  # noqa: E402


class Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # A client killed mid-request (a chain kill does that) is not news.
        if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError)):
            super().handle_error(request, client_address)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        secrets = load_env_file()
        try:
            claims = verify_delegation(self.headers.get("Authorization"),
                                       secrets["FINANCE_DELEGATION_KEY"], "finance-reporter")
        except Exception as e:  # noqa: BLE001 - any token problem is a 401
            return self.reply(401, {"error": f"delegation refused: {e}"})
        month = body.get("month", MONTH)
        say("reporter", "draft", human=claims["sub"], month=month)
        out = llm(secrets["OPENAI_API_KEY"]).chat.completions.create(
            model="gpt-4o",
            messages=[
                {"role": "system", "content": "You are the reporting agent. Draft concise "
                 "financial reports in Markdown."},
                {"role": "user", "content": f"Draft the {month} close report from these "
                 f"totals:\n{body.get('totals', '')}"},
            ])
        draft = out.choices[0].message.content
        reports = os.path.join(os.environ["STORY_DATA"], "finance", "reports")
        os.makedirs(reports, exist_ok=True)
        with open(os.path.join(reports, f"close-{month}.md"), "w") as f:
            f.write(draft)
        self.reply(200, {"draft": draft})

    def log_message(self, *args):
        pass


def main():
    srv = Server(("0.0.0.0", int(sys.argv[1])), Handler)
    srv.socket = server_tls().wrap_socket(srv.socket, server_side=True)
    say("reporter", "listening", port=srv.server_address[1])
    srv.serve_forever()


if __name__ == "__main__":
    main()
