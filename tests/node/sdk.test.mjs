// Sluice through the official OpenAI Node SDK: a real `sluice run` (its binary from
// $SLUICE_BIN, else target/debug/sluice) on free loopback ports with the built-in mock, the
// whole chain on, and the SDK streaming chat completions and the Responses API.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, writeFileSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import OpenAI from "openai";

const KEY = "sk-sluice-NODEnodeNODEnodeNODEnodeNODEnodeNODEnode";
const EMAIL = "jane.doe@example.com";
const REDACTED = "[REDACTED:email]";
const repo = resolve(import.meta.dirname, "..", "..");
const bin = process.env.SLUICE_BIN || join(repo, "target", "debug", "sluice");

let gateway;
let dir;
let client;

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

async function waitReady(admin, deadline) {
  while (Date.now() < deadline) {
    try {
      const r = await fetch(`http://${admin}/readyz`);
      if (r.status === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`gateway not ready; log:\n${readFileSync(join(dir, "sluice.log"), "utf8")}`);
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "sluice-node-"));
  const [listen, admin] = [`127.0.0.1:${await freePort()}`, `127.0.0.1:${await freePort()}`];
  const sha = createHash("sha256").update(KEY).digest("hex");
  const config = `
[server]
listen = "${listen}"
admin_listen = "${admin}"
shutdown_grace_seconds = 5
[[upstreams]]
name = "mock"
builtin = "mock"
[[models]]
name = "mock-echo"
upstream = "mock"
upstream_model = "echo"
[[orgs]]
name = "acme"
[[roles]]
name = "dev"
permissions = ["chat", "models:list"]
models = ["mock-*"]
[[users]]
name = "nora"
org = "acme"
role = "dev"
[[keys]]
id = "nora-key"
user = "nora"
sha256 = "${sha}"
[dlp]
request_action = "monitor"
response_action = "redact"
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
`;
  writeFileSync(join(dir, "sluice.toml"), config);
  const log = join(dir, "sluice.log");
  writeFileSync(log, "");
  gateway = spawn(bin, ["run", "-c", join(dir, "sluice.toml")], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  gateway.stderr.on("data", (d) => writeFileSync(log, d, { flag: "a" }));
  await waitReady(admin, Date.now() + 30_000);
  client = new OpenAI({ baseURL: `http://${listen}/v1`, apiKey: KEY, maxRetries: 0 });
});

after(() => {
  if (gateway) gateway.kill("SIGTERM");
});

test("chat completions stream, redacted as they flow", async () => {
  const stream = await client.chat.completions.create({
    model: "mock-echo",
    stream: true,
    messages: [{ role: "user", content: `mail ${EMAIL} now please` }],
  });
  let text = "";
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? "";
  }
  assert.equal(text, `mail ${REDACTED} now please`);
});

test("the Responses API streams, and the SDK's final response is redacted", async () => {
  const stream = client.responses.stream({ model: "mock-echo", input: `tell ${EMAIL} hello` });
  let deltas = "";
  for await (const event of stream) {
    if (event.type === "response.output_text.delta") deltas += event.delta;
  }
  const final = await stream.finalResponse();
  assert.equal(deltas, `tell ${REDACTED} hello`);
  assert.equal(final.output_text, `tell ${REDACTED} hello`);
  assert.equal(final.usage.output_tokens, 3);
});

test("the Responses API with stream: true", async () => {
  const events = [];
  for await (const e of await client.responses.create({
    model: "mock-echo",
    input: "one two three",
    stream: true,
  })) {
    events.push(e.type);
  }
  assert.equal(events.at(-1), "response.completed");
  assert.ok(events.includes("response.output_text.delta"));
});

test("a wrong key is the SDK's AuthenticationError", async () => {
  const bad = new OpenAI({ baseURL: client.baseURL, apiKey: "sk-sluice-wrong", maxRetries: 0 });
  await assert.rejects(
    bad.responses.create({ model: "mock-echo", input: "x" }),
    OpenAI.AuthenticationError,
  );
});
