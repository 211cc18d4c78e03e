"""A real MCP server (the official Python SDK's MCPServer) that Callgate's tests put behind it.

Usage: python server.py stdio
       python server.py http PORT

Tools: crm_lookup (a customer record with PII, for masking), echo, delete_repo (high risk,
for approvals), crash (exits the process: the supervisor must restart it), and three that ask
the agent for something while they run: draft_reply (sampling), confirm_action (form
elicitation), project_roots (roots). What the agent answered (or the error) is logged. Resources: the
template crm://customers/{customer_id} (a record with PII) and crm://internal/keys; prompt:
summarize(customer_id). The description of
`echo` is read from the file named by $ECHO_DESCRIPTION_FILE when set, so a test can change a
tool's definition (a "rug pull"). Every call is appended to $CALLS_LOG as one JSON line,
with the Authorization header it came with (HTTP), so tests can see what reached the server.
"""

import json
import os
import sys
import warnings

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import SamplingMessage, TextContent
from pydantic import BaseModel

# Sampling and roots are deprecated by 2026-07-28, yet servers on earlier versions use them.
warnings.filterwarnings("ignore", message=".*deprecated as of 2026-07-28.*")

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


@server.tool(description="Draft a reply to a customer with the agent's model.")
async def draft_reply(customer_id: str, max_tokens: int, ctx: Context) -> str:
    log_call("draft_reply", {"customer_id": customer_id, "max_tokens": max_tokens})
    try:
        result = await ctx.session.create_message(
            messages=[SamplingMessage(role="user", content=TextContent(type="text", text=f"Draft a reply to customer {customer_id} (ada@example.com, SSN 078-05-1120)."))],
            max_tokens=max_tokens,
            related_request_id=ctx.request_id,
        )
    except Exception as e:  # noqa: BLE001 - the test reads the refusal
        log_call("sampled", {"error": str(e)})
        return f"sampling failed: {e}"
    log_call("sampled", {"text": result.content.text})
    return f"draft: {result.content.text}"


class Confirmation(BaseModel):
    confirm: bool
    note: str = ""


@server.tool(description="Ask the user to confirm an action.")
async def confirm_action(action: str, ctx: Context) -> str:
    log_call("confirm_action", {"action": action})
    try:
        answer = await ctx.elicit(f"Confirm {action}?", schema=Confirmation)
    except Exception as e:  # noqa: BLE001
        log_call("elicited", {"error": str(e)})
        return f"elicitation failed: {e}"
    data = answer.data.model_dump() if getattr(answer, "data", None) is not None else None
    log_call("elicited", {"action": answer.action, "data": data})
    return f"{answer.action}: {json.dumps(data)}"


@server.tool(description="List the agent's project roots.")
async def project_roots(ctx: Context) -> str:
    log_call("project_roots", {})
    try:
        result = await ctx.session.list_roots()
    except Exception as e:  # noqa: BLE001
        log_call("roots", {"error": str(e)})
        return f"roots failed: {e}"
    return json.dumps([str(r.uri) for r in result.roots])


@server.tool(description="Exit the server process (for supervision tests).")
def crash() -> str:
    log_call("crash", {})
    os._exit(3)


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]), json_response=True)
