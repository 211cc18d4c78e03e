// A real MCP server (the official TypeScript SDK) over streamable HTTP, for Callgate's tests.
//
// Usage: node server.mjs PORT LOG_FILE [stateless|stateful|sse]
// Tools: lookup (returns a record with PII), echo, draft (asks the agent's model: sampling);
// resource ledger://statements/2026-10. Every request's Authorization header, session id
// and JSON-RPC method, and every tool call, are appended to LOG_FILE as JSON lines, so tests see what reached it
// (LOG_FILE "-" logs nothing: the benchmark's upstream, benches/mcp-load.sh).
import http from "node:http";
import fs from "node:fs";
import { randomUUID } from "node:crypto";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { CreateMessageResultSchema } from "@modelcontextprotocol/sdk/types.js";
import { z } from "zod";

const [port, logFile] = process.argv.slice(2);
const log = logFile === "-" ? () => {} : (entry) => fs.appendFileSync(logFile, JSON.stringify(entry) + "\n");

function build() {
  const server = new McpServer({ name: "callgate-test-ts-upstream", version: "1.0.0" });
  server.registerTool(
    "lookup",
    { description: "Look up an account by id.", inputSchema: { account: z.string() } },
    async ({ account }) => {
      log({ tool: "lookup", arguments: { account } });
      const record = { account, owner: "grace@example.com", iban: "GB82 WEST 1234 5698 7654 32", note: "vip" };
      return { content: [{ type: "text", text: JSON.stringify(record) }], structuredContent: record };
    },
  );
  server.registerTool(
    "echo",
    { description: "Echo the text back.", inputSchema: { text: z.string() } },
    async ({ text }) => {
      log({ tool: "echo", arguments: { text } });
      return { content: [{ type: "text", text }] };
    },
  );
  server.registerTool(
    "draft",
    { description: "Draft a note on an account with the agent's model.", inputSchema: { account: z.string() } },
    async ({ account }, extra) => {
      try {
        const r = await extra.sendRequest(
          {
            method: "sampling/createMessage",
            params: { messages: [{ role: "user", content: { type: "text", text: `Note on account ${account}.` } }], maxTokens: 50 },
          },
          CreateMessageResultSchema,
        );
        log({ sampled: r.content.text });
        return { content: [{ type: "text", text: `draft: ${r.content.text}` }] };
      } catch (e) {
        log({ sampled_error: String(e && e.message || e) });
        return { content: [{ type: "text", text: `sampling failed: ${e && e.message || e}` }], isError: true };
      }
    },
  );
  server.registerResource(
    "statement",
    "ledger://statements/2026-10",
    { description: "October's statement.", mimeType: "text/plain" },
    async (uri) => {
      log({ resource: uri.href });
      return { contents: [{ uri: uri.href, mimeType: "text/plain", text: "Statement for grace@example.com: 3 payments." }] };
    },
  );
  return server;
}

// MODE (the third argument) "stateful": one SDK server per MCP session, kept across requests,
// as a long-running server is usually deployed, answering with JSON; "sse": the same, answering
// on an SSE stream (so a tool can ask the client something before its result); otherwise
// stateless (a fresh server per request).
const mode = process.argv[4] || "stateless";
const stateful = mode === "stateful" || mode === "sse";
const sessions = new Map();

http
  .createServer(async (req, res) => {
    let body = "";
    for await (const chunk of req) body += chunk;
    const parsed = body ? JSON.parse(body) : undefined;
    log({
      method: req.method,
      authorization: req.headers["authorization"] ?? null,
      session: req.headers["mcp-session-id"] ?? null,
      rpc: (parsed && parsed.method) ?? null,
    });
    if (stateful) {
      const sid = req.headers["mcp-session-id"];
      let transport = sid && sessions.get(sid);
      if (!transport) {
        if (sid) { res.writeHead(404).end(); return; }
        transport = new StreamableHTTPServerTransport({
          sessionIdGenerator: () => randomUUID(),
          enableJsonResponse: mode !== "sse",
          onsessioninitialized: (id) => sessions.set(id, transport),
        });
        await build().connect(transport);
      }
      await transport.handleRequest(req, res, parsed);
      return;
    }
    // Stateless: a fresh server and transport per request.
    const server = build();
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: true });
    res.on("close", () => { transport.close(); server.close(); });
    await server.connect(transport);
    await transport.handleRequest(req, res, parsed);
  })
  .listen(Number(port), "127.0.0.1", () => console.log(`listening on ${port}`));
