// A real MCP client (the official TypeScript SDK) that Callgate's tests drive through /mcp.
//
// Usage: node client.mjs URL TOKEN STEPS_JSON
// STEPS_JSON is an array of steps: {"op": "list"}, {"op": "call", "name": ..., "arguments": {...}}
// (and "meta": {...} for the request's _meta),
// {"op": "resources"}, {"op": "templates"}, {"op": "read", "uri": ...}, {"op": "prompts"},
// {"op": "prompt", "name": ..., "arguments": {...}}.
// Prints one JSON line per step: {"ok": true, "result": ...} or {"ok": false, "error": ..., "code": ...},
// then {"session": ..., "protocol": ..., "elicitations": [elicitation requests received],
// "sampled": [sampling requests received], "roots": number of roots/list requests}.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import {
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  ListRootsRequestSchema,
} from "@modelcontextprotocol/sdk/types.js";

const [url, token, stepsJson] = process.argv.slice(2);
const steps = JSON.parse(stepsJson || "[]");
const headers = token ? { Authorization: `Bearer ${token}` } : {};
const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } });
// The client supports elicitation (URL and form mode), sampling and roots. Each request is
// recorded and answered (a URL accepted; a form accepted with values holding PII; a sampled
// message holding PII; one root), and listed in the last line, so tests see what Callgate
// relayed to the agent and what it passed back.
const client = new Client(
  { name: "callgate-test-client", version: "1.0.0" },
  { capabilities: { elicitation: { url: {}, form: {} }, sampling: {}, roots: {} } },
);
const elicitations = [];
const sampled = [];
let roots = 0;
client.setRequestHandler(ElicitRequestSchema, async (request) => {
  elicitations.push(request.params);
  if (request.params.mode === "url") return { action: "accept" };
  return { action: "accept", content: { confirm: true, note: "call me at ada@example.com" } };
});
client.setRequestHandler(CreateMessageRequestSchema, async (request) => {
  sampled.push(request.params);
  return {
    role: "assistant",
    model: "test-model",
    content: { type: "text", text: "Dear Ada (ada@example.com, SSN 078-05-1120), your refund is on its way." },
  };
});
client.setRequestHandler(ListRootsRequestSchema, async () => {
  roots += 1;
  return { roots: [{ uri: "file:///home/agent/project", name: "project" }] };
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
    else if (step.op === "call") result = await client.callTool({ name: step.name, arguments: step.arguments || {}, ...(step.meta ? { _meta: step.meta } : {}) });
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
console.log(JSON.stringify({ session: transport.sessionId ?? null, protocol: transport.protocolVersion ?? null, elicitations, sampled, roots }));
await client.close();
