"""A real MCP client (the official Python SDK) that Callgate's tests drive through /mcp.

Usage: python client.py URL TOKEN MODE STEPS_JSON
MODE is the SDK's connect mode: "auto" (probes server/discover: 2026-07-28) or "legacy"
(the initialize handshake). STEPS_JSON as for client.mjs. Prints one JSON line per step, then
{"protocol": ...}.
"""

import asyncio
import json
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


def dump(obj):
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json", by_alias=True, exclude_none=True)
    return obj


async def main() -> None:
    url, token, mode, steps_json = sys.argv[1:5]
    steps = json.loads(steps_json)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        try:
            client = Client(streamable_http_client(url, http_client=http), mode=mode, cache=None)
            async with client:
                for step in steps:
                    try:
                        if step["op"] == "list":
                            result = await client.list_tools()
                        elif step["op"] == "call":
                            result = await client.call_tool(step["name"], step.get("arguments", {}))
                        elif step["op"] == "resources":
                            result = await client.list_resources()
                        elif step["op"] == "templates":
                            result = await client.list_resource_templates()
                        elif step["op"] == "read":
                            result = await client.read_resource(step["uri"])
                        elif step["op"] == "prompts":
                            result = await client.list_prompts()
                        elif step["op"] == "prompt":
                            result = await client.get_prompt(step["name"], step.get("arguments", {}))
                        else:
                            raise ValueError(f"unknown step {step['op']}")
                        print(json.dumps({"ok": True, "result": dump(result)}), flush=True)
                    except MCPError as e:
                        print(json.dumps({"ok": False, "error": str(e), "code": e.error.code}), flush=True)
                version = None
                session = client.session
                for attr in ("protocol_version", "negotiated_protocol_version"):
                    version = version or getattr(session, attr, None)
                if version is None and getattr(session, "discover_result", None) is not None:
                    version = "2026-07-28"
                if version is None and getattr(session, "initialize_result", None) is not None:
                    version = session.initialize_result.protocol_version
                print(json.dumps({"protocol": version}), flush=True)
        except BaseException as e:  # noqa: BLE001 - the test reads whatever went wrong
            print(json.dumps({"ok": False, "connect": True, "error": repr(e)}), flush=True)


asyncio.run(main())
