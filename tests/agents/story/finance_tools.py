"""The finance tool server: an MCP server over stdio (the `mcp` SDK's MCPServer),
started by the worker for each task. It is given the worker's database credential
in its environment (DATABASE_URL) and serves:

  read_ledger(month)   the month's ledger, from the finance data directory
  read_file(path)      any file it can open: the tool the worker's model misuses
"""
import os
import sys

from mcp.server.mcpserver import MCPServer

DATA = os.environ["STORY_DATA"]
server = MCPServer("finance-tools", instructions="Finance ledger and file tools")


def database():
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres://"):
        raise RuntimeError("no database credential (DATABASE_URL) in the environment")
    return url


@server.tool()
def read_ledger(month: str) -> str:
    """The general ledger of a month (CSV)."""
    database()
    if not month.replace("-", "").isdigit():
        raise ValueError(f"bad month {month!r}")
    with open(os.path.join(DATA, "finance", f"ledger-{month}.csv")) as f:
        return f.read()


@server.tool()
def read_file(path: str) -> str:
    """Read a text file the finance service account can open."""
    database()
    with open(path) as f:
        return f.read()


if __name__ == "__main__":
    print("finance-tools: serving MCP on stdio", file=sys.stderr, flush=True)
    server.run()
