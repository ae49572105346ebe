// `keys revoke` cuts a provider off: the operator CLI (a child process on the server's database)
// ends the key's live sessions, and the running server honours it without a restart.
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { TUNNEL_CLOSE_SESSION_ENDED } from "@runit/protocol";
import { createRelay } from "../src/relay/index.js";
import { ProviderKeyStore } from "../src/store/providerKeys.js";
import { call, registrationBody, rememberSecret, startTestServer, stopAll, type TestServer } from "./harness.js";

const packageDir = fileURLToPath(new URL("..", import.meta.url));
const repoDir = join(packageDir, "..", "..");
const bin = join(packageDir, "bin", "runit-control-plane.js");

beforeAll(() => {
  if (!existsSync(join(packageDir, "dist", "cli.js"))) {
    execFileSync("pnpm", ["exec", "tsc", "-b", "packages/control-plane"], { cwd: repoDir, stdio: "inherit" });
  }
});
afterEach(stopAll);
afterAll(stopAll);

/** Runs the built CLI on the server's database (a separate process, as an operator would). */
function cli(server: TestServer, args: string[]): { stdout: string; stderr: string; status: number } {
  try {
    const stdout = execFileSync(process.execPath, [bin, ...args, "--db", join(server.dir, "runit.db")], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
      timeout: 15_000,
    });
    return { stdout, stderr: "", status: 0 };
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; status?: number };
    return { stdout: e.stdout ?? "", stderr: e.stderr ?? "", status: e.status ?? -1 };
  }
}

function newKey(server: TestServer, name: string): { id: string; key: string } {
  const { record, key } = new ProviderKeyStore(server.store).create(name, server.clock.now());
  rememberSecret(key);
  return { id: record.id, key };
}

async function register(server: TestServer, key: string): Promise<{ sessionId: string; sessionSecret: string }> {
  const reply = await call(server.url, "POST", "/provider/session", { body: registrationBody(), headers: { authorization: `Bearer ${key}` } });
  expect(reply.status, reply.text).toBe(201);
  const body = reply.json as { sessionId: string; sessionSecret: string };
  rememberSecret(body.sessionSecret);
  return body;
}

function heartbeat(server: TestServer, s: { sessionId: string; sessionSecret: string }) {
  return call(server.url, "POST", "/provider/heartbeat", { body: { sessionId: s.sessionId }, headers: { authorization: `Bearer ${s.sessionSecret}` } });
}

function listed(server: TestServer): Promise<string[]> {
  return call(server.url, "GET", "/renter/sessions").then((r) => (r.json as Array<{ sessionId: string }>).map((s) => s.sessionId));
}

function audit(server: TestServer): Array<{ event: string; details: Record<string, unknown> }> {
  const db = new Database(join(server.dir, "runit.db"), { readonly: true });
  try {
    return (db.prepare("SELECT event, details FROM audit ORDER BY id").all() as Array<{ event: string; details: string }>).map((r) => ({
      event: r.event,
      details: JSON.parse(r.details) as Record<string, unknown>,
    }));
  } finally {
    db.close();
  }
}

/** Opens a relay tunnel as the agent does; resolves with the socket, or the refusal status. */
function dialTunnel(server: TestServer, secret: string): Promise<{ ws?: WebSocket; status: number }> {
  const ws = new WebSocket(`ws://127.0.0.1:${server.port}/agent/tunnel`, { headers: { Authorization: `Bearer ${secret}` } });
  return new Promise((resolve) => {
    ws.once("open", () => resolve({ ws, status: 101 }));
    ws.once("unexpected-response", (_req, res) => resolve({ status: res.statusCode ?? 0 }));
    ws.once("error", () => resolve({ status: -1 }));
  });
}

function closeCode(ws: WebSocket, timeoutMs: number): Promise<number | "timeout"> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve("timeout"), timeoutMs);
    ws.once("close", (code: number) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

describe("keys revoke <id> while the server runs", () => {
  it("ends the key's READY and LOCKED sessions (OPERATOR), durably, and the running server honours it", async () => {
    const server = await startTestServer({}, { relay: (ctx) => createRelay(ctx, { pingIntervalMs: 60_000 }) });
    const revoked = newKey(server, "to-revoke");
    const other = newKey(server, "stays");
    const ready = await register(server, revoked.key);
    const locked = await register(server, revoked.key);
    const kept = await register(server, other.key);
    const conn = await call(server.url, "POST", `/renter/sessions/${locked.sessionId}/connect`);
    expect(conn.status).toBe(201);
    const accessToken = (conn.json as { accessToken: string }).accessToken;
    rememberSecret(accessToken);
    const tunnel = await dialTunnel(server, ready.sessionSecret);
    expect(tunnel.status).toBe(101);
    for (const s of [ready, locked, kept]) expect((await heartbeat(server, s)).status).toBe(200);
    const ended: Array<[string, string]> = [];
    server.sessions.onSessionEnded((id, reason) => ended.push([id, reason]));

    const out = cli(server, ["keys", "revoke", revoked.id]);
    expect(out.status, out.stderr).toBe(0);
    expect(out.stdout.trimEnd().split("\n").at(-1)).toBe(`revoked provider key ${revoked.id}; ended 2 live sessions`);

    // Durable in SQLite, written by the CLI process: the key revocation, then each session's end.
    const records = audit(server).filter((r) => r.details.keyId === revoked.id || r.details.reason === "OPERATOR");
    expect(records).toEqual([
      { event: "PROVIDER_KEY_REVOKED", details: { keyId: revoked.id, sessionsEnded: 2 } },
      { event: "SESSION_REMOVED", details: { sessionId: ready.sessionId, reason: "OPERATOR", providerKeyId: revoked.id } },
      { event: "SESSION_ENDED", details: { sessionId: ready.sessionId, reason: "OPERATOR" } },
      { event: "SESSION_UNLOCKED", details: { sessionId: locked.sessionId, reason: "OPERATOR", ip: "127.0.0.1", providerKeyId: revoked.id } },
      { event: "SESSION_ENDED", details: { sessionId: locked.sessionId, reason: "OPERATOR" } },
    ]);
    expect(out.stdout).toContain(`PROVIDER_KEY_REVOKED: {"keyId":"${revoked.id}","sessionsEnded":2}`);

    // The sweep (every sweepIntervalMs) notices the ends and closes the revoked session's tunnel.
    const closed = closeCode(tunnel.ws as WebSocket, 3000);
    server.sweep();
    expect(await closed).toBe(TUNNEL_CLOSE_SESSION_ENDED);
    expect(ended.sort()).toEqual([[locked.sessionId, "OPERATOR"], [ready.sessionId, "OPERATOR"]].sort());

    for (const s of [ready, locked]) {
      const hb = await heartbeat(server, s);
      expect([hb.status, hb.json]).toEqual([200, { status: "ENDED", endReason: "OPERATOR" }]);
      const status = await call(server.url, "GET", `/provider/session/${s.sessionId}`, { headers: { authorization: `Bearer ${s.sessionSecret}` } });
      expect([status.status, status.json]).toEqual([200, { status: "ENDED", endReason: "OPERATOR" }]);
      expect((await call(server.url, "POST", `/renter/sessions/${s.sessionId}/connect`)).status).toBe(404);
      expect((await dialTunnel(server, s.sessionSecret)).status).toBe(404);
    }
    expect(await listed(server)).toEqual([kept.sessionId]);
    expect((await call(server.url, "POST", `/renter/heartbeat/${accessToken}`)).status).toBe(403);
    expect((await call(server.url, "GET", `/s/${locked.sessionId}/api/status`, { headers: { cookie: `runit_access=${accessToken}` } })).status).toBe(403);
    const again = await call(server.url, "POST", "/provider/session", { body: registrationBody(), headers: { authorization: `Bearer ${revoked.key}` } });
    expect([again.status, (again.json as { code: string }).code]).toEqual([401, "INVALID_PROVIDER_KEY"]);
    // The other key's session is untouched; nothing was ended twice.
    expect((await heartbeat(server, kept)).json).toEqual({ status: "READY", locked: false });
    expect(ended).toHaveLength(2);
    expect(audit(server).filter((r) => r.event === "SESSION_ENDED")).toHaveLength(2);
    expect(cli(server, ["keys", "revoke", revoked.id]).status).toBe(1);
  });

  it("prints 'ended 0 live sessions' for a key with none", async () => {
    const server = await startTestServer();
    const { id } = newKey(server, "idle");
    const out = cli(server, ["keys", "revoke", id]);
    expect([out.status, out.stdout.trimEnd().split("\n").at(-1)]).toEqual([0, `revoked provider key ${id}; ended 0 live sessions`]);
  });
});

describe("a session whose key is revoked but which is still live (revoked by an older CLI)", () => {
  it("ends at the next provider call or sweep with OPERATOR, and its tunnel is refused", async () => {
    const server = await startTestServer({}, { relay: (ctx) => createRelay(ctx, { pingIntervalMs: 60_000 }) });
    const key = newKey(server, "old-revoke");
    const first = await register(server, key.key);
    const second = await register(server, key.key);
    const third = await register(server, key.key);
    expect(new ProviderKeyStore(server.store).revoke(key.id, server.clock.now())).toBe(true);
    // The provider's own call: ENDED at once.
    expect((await heartbeat(server, first)).json).toEqual({ status: "ENDED", endReason: "OPERATOR" });
    expect((await dialTunnel(server, second.sessionSecret)).status).toBe(404);
    expect(server.sweep().ended).toEqual([third.sessionId]);
    expect(await listed(server)).toEqual([]);
    expect(server.events("SESSION_ENDED").map((e) => [e.sessionId, e.reason])).toEqual([
      [first.sessionId, "OPERATOR"],
      [second.sessionId, "OPERATOR"],
      [third.sessionId, "OPERATOR"],
    ]);
  });
});
