// MCP through Sluice with the official TypeScript SDK (@modelcontextprotocol/sdk) as client:
// a real `sluice run` (binary from $SLUICE_BIN, else target/debug/sluice) in front of a real
// MCP server (the Python SDK's MCPServer, tests/python/mcp_server.py), with tool RBAC and DLP
// on. Covers the filtered list, a call, a denied call, DLP block and redact both ways.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, writeFileSync, readFileSync, existsSync } from "node:fs";
import { createServer, connect } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const KEY = "sk-sluice-NODEmcpNODEmcpNODEmcpNODEmcpNODEmcpNODE1";
const repo = resolve(import.meta.dirname, "..", "..");
const bin = process.env.SLUICE_BIN || join(repo, "target", "debug", "sluice");

let gateway;
let server;
let dir;
let listen;

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

function accepts(port) {
  return new Promise((ok) => {
    const c = connect(port, "127.0.0.1");
    c.once("connect", () => {
      c.destroy();
      ok(true);
    });
    c.once("error", () => ok(false));
  });
}

async function until(what, check, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what} not ready within ${ms} ms`);
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "sluice-node-mcp-"));
  const mcpPort = await freePort();
  server = spawn("python3", [join(repo, "tests", "python", "mcp_server.py"), String(mcpPort)], {
    stdio: "ignore",
  });
  await until("MCP server", () => accepts(mcpPort), 60000);
  listen = `127.0.0.1:${await freePort()}`;
  const admin = `127.0.0.1:${await freePort()}`;
  const sha = createHash("sha256").update(KEY).digest("hex");
  writeFileSync(
    join(dir, "sluice.toml"),
    `
[server]
listen = "${listen}"
admin_listen = "${admin}"
shutdown_grace_seconds = 2
[[mcp_servers]]
name = "tools"
url = "http://127.0.0.1:${mcpPort}/mcp"
[[orgs]]
name = "acme"
[[roles]]
name = "agent"
permissions = ["mcp"]
mcp = ["tools:echo", "tools:secret_row", "tools:codename"]
[[users]]
name = "nod"
org = "acme"
role = "agent"
[[keys]]
id = "nod-key"
user = "nod"
sha256 = "${sha}"
[dlp]
packs = ["secrets", "pii"]
request_action = "block"
response_action = "redact"
[[dlp.rules]]
name = "employee_id"
regex = 'EMP-[0-9]{6}'
action = "redact"
[[dlp.rules]]
name = "codename"
keywords = ["BLUEBIRD"]
action = "block"
[audit]
path = "${join(dir, "audit.jsonl")}"
[[filters]]
type = "auth"
[[filters]]
type = "rate_limit"
[[filters]]
type = "dlp"
[[filters]]
type = "audit"
`,
  );
  gateway = spawn(bin, ["run", "-c", join(dir, "sluice.toml")], { stdio: "ignore" });
  await until(
    "gateway",
    async () => {
      try {
        return (await fetch(`http://${admin}/readyz`)).status === 200;
      } catch {
        return false;
      }
    },
    30000,
  );
});

after(() => {
  gateway?.kill("SIGTERM");
  server?.kill("SIGTERM");
});

async function session(fn) {
  const transport = new StreamableHTTPClientTransport(new URL(`http://${listen}/mcp/tools`), {
    requestInit: { headers: { Authorization: `Bearer ${KEY}` } },
  });
  const client = new Client({ name: "sluice-node-test", version: "1.0.0" });
  await client.connect(transport);
  try {
    return await fn(client);
  } finally {
    await transport.terminateSession();
    await client.close();
  }
}

const text = (r) => r.content.map((c) => c.text ?? "").join("");

test("tools are listed per role and called; a denied call never reaches the server", async () => {
  await session(async (c) => {
    const { tools } = await c.listTools();
    assert.deepEqual(tools.map((t) => t.name).sort(), ["codename", "echo", "secret_row"]);
    assert.equal(text(await c.callTool({ name: "echo", arguments: { text: "hi from node" } })), "hi from node");
    await assert.rejects(c.callTool({ name: "admin_delete", arguments: {} }), (e) => {
      assert.equal(e.code, -32001);
      assert.equal(e.data?.type, "permission_denied");
      return true;
    });
  });
});

test("DLP blocks and redacts tool arguments and results", async () => {
  await session(async (c) => {
    await assert.rejects(c.callTool({ name: "echo", arguments: { text: "AKIAIOSFODNN7EXAMPLE" } }), (e) => {
      assert.equal(e.data?.type, "dlp_blocked");
      return true;
    });
    const echoed = await c.callTool({ name: "echo", arguments: { text: "badge EMP-123456" } });
    assert.equal(text(echoed), "badge [REDACTED:employee_id]");
    const row = await c.callTool({ name: "secret_row", arguments: {} });
    assert.equal(row.structuredContent.owner, "[REDACTED:email]");
    assert.ok(!JSON.stringify(row).includes("erin@example.com"));
    const blocked = await c.callTool({ name: "codename", arguments: {} });
    assert.equal(blocked.isError, true);
    assert.ok(!JSON.stringify(blocked).includes("BLUEBIRD"));
  });
  const audit = join(dir, "audit.jsonl");
  await until("audit records", () => existsSync(audit) && readFileSync(audit, "utf8").includes("codename"), 10000);
  const trail = readFileSync(audit, "utf8");
  for (const secret of ["AKIA", "EMP-123456", "erin@example.com", "BLUEBIRD"]) {
    assert.ok(!trail.includes(secret), `${secret} in the audit trail`);
  }
});
