// A real MCP client (the official TypeScript SDK) that Callgate's tests drive through /mcp.
//
// Usage: node client.mjs URL TOKEN STEPS_JSON
// STEPS_JSON is an array of steps: {"op": "list"}, {"op": "call", "name": ..., "arguments": {...}},
// {"op": "resources"}, {"op": "templates"}, {"op": "read", "uri": ...}, {"op": "prompts"},
// {"op": "prompt", "name": ..., "arguments": {...}}.
// Prints one JSON line per step: {"ok": true, "result": ...} or {"ok": false, "error": ..., "code": ...},
// then {"session": ..., "protocol": ..., "elicitations": [URL-mode elicitation requests received]}.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ElicitRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const [url, token, stepsJson] = process.argv.slice(2);
const steps = JSON.parse(stepsJson || "[]");
const headers = token ? { Authorization: `Bearer ${token}` } : {};
const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } });
// The client supports URL-mode elicitation: each request is recorded (and accepted), and listed
// in the last line, so tests see what Callgate offered the user.
const client = new Client(
  { name: "callgate-test-client", version: "1.0.0" },
  { capabilities: { elicitation: { url: {} } } },
);
const elicitations = [];
client.setRequestHandler(ElicitRequestSchema, async (request) => {
  elicitations.push(request.params);
  return { action: "accept" };
});
try {
  await client.connect(transport);
} catch (e) {
  console.log(JSON.stringify({ ok: false, connect: true, error: String(e && e.message || e), code: e && e.code }));
  process.exit(0);
}
for (const step of steps) {
  try {
    let result;
    if (step.op === "list") result = await client.listTools();
    else if (step.op === "call") result = await client.callTool({ name: step.name, arguments: step.arguments || {} });
    else if (step.op === "resources") result = await client.listResources();
    else if (step.op === "templates") result = await client.listResourceTemplates();
    else if (step.op === "read") result = await client.readResource({ uri: step.uri });
    else if (step.op === "prompts") result = await client.listPrompts();
    else if (step.op === "prompt") result = await client.getPrompt({ name: step.name, arguments: step.arguments || {} });
    else throw new Error(`unknown step ${step.op}`);
    console.log(JSON.stringify({ ok: true, result }));
  } catch (e) {
    console.log(JSON.stringify({ ok: false, error: String(e && e.message || e), code: e && e.code }));
  }
}
console.log(JSON.stringify({ session: transport.sessionId ?? null, protocol: transport.protocolVersion ?? null, elicitations }));
await client.close();
