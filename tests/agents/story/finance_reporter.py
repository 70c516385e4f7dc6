"""The reporting agent (host C): an HTTPS service that drafts the close report for
whoever the delegation token says it acts for, with the `openai` SDK, and files the
draft in the finance reports directory.

    finance_reporter.py PORT

Credentials from its credential file (STORY_ENV_FILE): OPENAI_API_KEY,
FINANCE_DELEGATION_KEY.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from common import (MONTH, JsonHandler, llm, load_env_file, say, serve_https,  # noqa: E402
                    verify_delegation)


class Handler(JsonHandler):
    def do_POST(self):
        body = json.loads(self.body())
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



def main():
    serve_https("reporter", "0.0.0.0", int(sys.argv[1]), Handler)


if __name__ == "__main__":
    main()
