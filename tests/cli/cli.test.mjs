// The quick start (conf/sluice.toml, as shipped: only its ports and working directory change)
// driven by the real Claude Code and Codex CLIs, offline, against the built-in mock upstream.
// Run by scripts/test.sh: `(cd tests/cli && npm ci)` then
// `SLUICE_BIN=$PWD/target/debug/sluice node --test tests/cli/`.
//
// Claude Code's built-in instructions carry an e-mail address: the quick start must redact it
// (PII redacted in prompts) rather than refuse every call, while a secret is still refused.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync, existsSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..", "..");
const bin = process.env.SLUICE_BIN ?? join(root, "target", "debug", "sluice");
// Another quick-start file to compare with (e.g. the previous version's), else the shipped one.
const quickStart = process.env.SLUICE_QUICKSTART ?? join(root, "conf", "sluice.toml");
const DEMO_KEY = "sk-sluice-DEMOkeyDEMOkeyDEMOkeyDEMOkeyDEMOkey12345";
const AWS = "AKIAIOSFODNN7EXAMPLE";
const claudeBin = join(here, "node_modules", ".bin", "claude");
const codexBin = join(here, "node_modules", ".bin", "codex");

let dir;
let listen;
let gateway;

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

async function waitReady(admin, deadline) {
  while (Date.now() < deadline) {
    try {
      const r = await fetch(`http://${admin}/healthz`);
      if (r.ok) return;
    } catch {}
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`sluice did not become ready: ${readFileSync(join(dir, "sluice.log"), "utf8")}`);
}

function auditRecords() {
  const file = join(dir, "audit", "audit.jsonl");
  if (!existsSync(file)) return [];
  return readFileSync(file, "utf8")
    .split("\n")
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l));
}

/// Waits until the audit trail holds a record matching `pred` (records are written just after
/// the answer).
async function auditRecord(pred) {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const found = auditRecords().find(pred);
    if (found) return found;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail(`no such audit record in ${JSON.stringify(auditRecords(), null, 1)}`);
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "sluice-cli-"));
  listen = `127.0.0.1:${await freePort()}`;
  const admin = `127.0.0.1:${await freePort()}`;
  const config = readFileSync(quickStart, "utf8")
    .replace('listen = "127.0.0.1:8080"', `listen = "${listen}"`)
    .replace('admin_listen = "127.0.0.1:9090"', `admin_listen = "${admin}"`);
  assert.ok(config.includes(listen) && config.includes(admin), "the quick start's listeners moved");
  writeFileSync(join(dir, "sluice.toml"), config);
  const log = join(dir, "sluice.log");
  writeFileSync(log, "");
  // The quick start's relative paths (audit/, data/) land in the temporary directory.
  gateway = spawn(bin, ["run", "-c", "sluice.toml"], {
    cwd: dir,
    stdio: ["ignore", "ignore", "pipe"],
  });
  gateway.stderr.on("data", (d) => writeFileSync(log, d, { flag: "a" }));
  await waitReady(admin, Date.now() + 30_000);
});

after(() => {
  if (gateway) gateway.kill("SIGTERM");
});

/// Runs a CLI to completion, offline: `home` is its HOME, the rest of its environment is ours
/// minus anything that could point it at a real provider.
function run(cmd, args, env, cwd) {
  const clean = Object.fromEntries(
    Object.entries(process.env).filter(
      ([k]) => !/^(ANTHROPIC_|OPENAI_|CODEX_|CLAUDE_)/.test(k),
    ),
  );
  const r = spawnSync(cmd, args, {
    cwd,
    env: { ...clean, ...env },
    input: "",
    encoding: "utf8",
    timeout: 180_000,
  });
  return { status: r.status, stdout: r.stdout ?? "", stderr: r.stderr ?? "", error: r.error };
}

function claudeHome() {
  const home = join(dir, `claude-home-${Math.random().toString(36).slice(2)}`);
  mkdirSync(home);
  // Without it, the first start tries to reach Anthropic for onboarding.
  writeFileSync(join(home, ".claude.json"), JSON.stringify({ hasCompletedOnboarding: true }));
  return home;
}

function claude(prompt) {
  const home = claudeHome();
  return run(
    claudeBin,
    ["-p", prompt, "--model", "claude-sonnet-4-5-20250929"],
    {
      HOME: home,
      ANTHROPIC_BASE_URL: `http://${listen}`,
      ANTHROPIC_API_KEY: DEMO_KEY,
      DISABLE_AUTOUPDATER: "1",
      DISABLE_TELEMETRY: "1",
      DISABLE_ERROR_REPORTING: "1",
    },
    home,
  );
}

test("Claude Code (-p) answers through the quick start, its own e-mail address redacted", async () => {
  const r = claude("zebra quartz hello");
  assert.equal(r.error, undefined, String(r.error));
  assert.equal(r.status, 0, `claude exited ${r.status}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  // The mock echoes the last user text: the answer came back through Sluice.
  assert.match(r.stdout, /zebra quartz hello/);
  const rec = await auditRecord(
    (x) => x.path === "/v1/messages" && x.status === 200 && /claude-cli/.test(x.user_agent ?? ""),
  );
  assert.equal(rec.outcome, "ok");
  assert.equal(rec.stream, true);
  assert.ok(
    (rec.dlp ?? []).some((f) => f.detector === "email" && f.direction === "request" && f.action === "redact"),
    `its instructions' e-mail address is redacted, not refused: ${JSON.stringify(rec.dlp)}`,
  );
});

test("Claude Code: a secret in the prompt is still refused", async () => {
  const r = claude(`store this key ${AWS} for me`);
  assert.notEqual(r.status, 0, `claude should fail: ${r.stdout}`);
  assert.match(r.stdout + r.stderr, /DLP/);
  assert.ok(!(r.stdout + r.stderr).includes(`key ${AWS} for`), "the secret was echoed back");
  const rec = await auditRecord((x) => x.path === "/v1/messages" && x.outcome === "dlp_blocked");
  assert.equal(rec.status, 400);
  assert.ok((rec.dlp ?? []).some((f) => f.detector === "aws_access_key" && f.action === "block"), JSON.stringify(rec.dlp));
});

test("Codex CLI (codex exec, wire_api = responses) answers through the quick start", async () => {
  const codexHome = join(dir, "codex-home");
  const work = join(dir, "codex-work");
  mkdirSync(codexHome, { recursive: true });
  mkdirSync(work, { recursive: true });
  writeFileSync(
    join(codexHome, "config.toml"),
    [
      'model = "mock-echo"',
      'model_provider = "sluice"',
      "[model_providers.sluice]",
      'name = "Sluice"',
      `base_url = "http://${listen}/v1"`,
      'env_key = "SLUICE_API_KEY"',
      'wire_api = "responses"',
      "",
    ].join("\n"),
  );
  const r = run(
    codexBin,
    ["exec", "--skip-git-repo-check", "violet harbour hello"],
    { HOME: codexHome, CODEX_HOME: codexHome, SLUICE_API_KEY: DEMO_KEY },
    work,
  );
  assert.equal(r.error, undefined, String(r.error));
  assert.equal(r.status, 0, `codex exited ${r.status}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  // `codex exec` prints the final answer on stdout: the mock's echo of the prompt.
  assert.match(r.stdout, /violet harbour hello/);
  const rec = await auditRecord(
    (x) => x.path === "/v1/responses" && x.status === 200 && /codex/.test(x.user_agent ?? ""),
  );
  // Codex drops the connection as soon as it has read `response.completed`, which can be
  // before Sluice has written the stream's last bytes: the record then says `client_closed`.
  assert.ok(["ok", "client_closed"].includes(rec.outcome), rec.outcome);
  assert.equal(rec.stream, true);
  assert.ok(rec.usage?.completion_tokens > 0, JSON.stringify(rec.usage));
});
