"""A real MCP server (the official Python SDK's MCPServer) that Callgate's tests put behind it.

Usage: python server.py stdio
       python server.py http PORT

Tools: crm_lookup (a customer record with PII, for masking), echo, delete_repo (high risk,
for approvals), crash (exits the process: the supervisor must restart it). Resources: the
template crm://customers/{customer_id} (a record with PII) and crm://internal/keys; prompt:
summarize(customer_id). The description of
`echo` is read from the file named by $ECHO_DESCRIPTION_FILE when set, so a test can change a
tool's definition (a "rug pull"). Every call is appended to $CALLS_LOG as one JSON line,
with the Authorization header it came with (HTTP), so tests can see what reached the server.
"""

import json
import os
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("callgate-test-upstream")


def log_call(name, args):
    path = os.environ.get("CALLS_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"tool": name, "arguments": args, "pid": os.getpid()}) + "\n")


def echo_description():
    path = os.environ.get("ECHO_DESCRIPTION_FILE")
    if path and os.path.exists(path):
        with open(path) as f:
            return f.read().strip()
    return "Echo the text back."


@server.tool(description="Look up a customer record by id.")
def crm_lookup(customer_id: str) -> dict:
    log_call("crm_lookup", {"customer_id": customer_id})
    return {
        "id": customer_id,
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "ssn": "078-05-1120",
        "card": "4111 1111 1111 1111",
        "api_token": "sk_live_51Habcdefghijklmnopqrstuvwx",
    }


@server.tool(description=echo_description())
def echo(text: str) -> str:
    log_call("echo", {"text": text})
    return text


@server.tool(description="Delete a repository. Irreversible.")
def delete_repo(repo: str) -> str:
    log_call("delete_repo", {"repo": repo})
    return f"deleted {repo}"


@server.resource("crm://customers/{customer_id}", description="A customer's record.", mime_type="application/json")
def customer(customer_id: str) -> str:
    log_call("resource", {"uri": f"crm://customers/{customer_id}"})
    return json.dumps({"id": customer_id, "email": "ada@example.com", "ssn": "078-05-1120"})


@server.resource("crm://internal/keys", description="Signing keys (never for agents).")
def keys() -> str:
    log_call("resource", {"uri": "crm://internal/keys"})
    return "sk_live_51Habcdefghijklmnopqrstuvwx"


@server.prompt(description="Summarize a customer's account.")
def summarize(customer_id: str) -> str:
    log_call("prompt", {"name": "summarize", "customer_id": customer_id})
    return f"Summarize customer {customer_id}; their SSN is 078-05-1120."


@server.tool(description="Exit the server process (for supervision tests).")
def crash() -> str:
    log_call("crash", {})
    os._exit(3)


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]), json_response=True)
