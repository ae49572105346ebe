import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { ProviderKeyStore } from "@runit/control-plane";
import { agentContainers, agentIdentity, cleanupDocker, requireDocker, startControlPlane, waitFor, type TestControlPlane } from "./agent-harness.js";

// `runit-control-plane keys revoke` (a child process on the server's database) against a real
// agent CLI: a running agent is cut off and stops with one line; an agent restarted with the
// revoked key does not re-adopt its old session. Control plane in this process, real Docker.
const AGENT_BIN = fileURLToPath(new URL("../packages/agent/bin/runit-agent.js", import.meta.url));
const CP_BIN = fileURLToPath(new URL("../packages/control-plane/bin/runit-control-plane.js", import.meta.url));
const REFUSED = "[agent] error: registration refused: 401 Invalid provider key (INVALID_PROVIDER_KEY)";
const id = agentIdentity("e2e-revoke");
let cp: TestControlPlane;
let dockerReady = false;
const children: ChildProcess[] = [];

interface Agent {
  child: ChildProcess;
  out: string[];
  err: string[];
  exited: Promise<number | null>;
}

function startAgent(key: string): Agent {
  const args = ["start", "--server", cp.url, "--name", id.agentName, "--network", id.network, "--workspace-root", id.workspaceRoot, "--state-dir", id.stateDir, "--heartbeat-interval-ms", "500"];
  const child = spawn(process.execPath, [AGENT_BIN, ...args], { env: { ...process.env, RUNIT_PROVIDER_KEY: key }, stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  const out: string[] = [];
  const err: string[] = [];
  child.stdout!.on("data", (d: Buffer) => out.push(d.toString()));
  child.stderr!.on("data", (d: Buffer) => err.push(d.toString()));
  return { child, out, err, exited: new Promise((resolve) => child.once("exit", (code) => resolve(code))) };
}

function newKey(name: string): { keyId: string; key: string } {
  const { record, key } = new ProviderKeyStore(cp.server.store).create(name, Date.now());
  return { keyId: record.id, key };
}

/** `keys revoke` as the operator runs it: another process on the same SQLite file. */
function revoke(keyId: string): string {
  return execFileSync(process.execPath, [CP_BIN, "keys", "revoke", keyId, "--db", join(cp.dir, "runit.db")], { encoding: "utf8", timeout: 15_000 });
}

const registered = (a: Agent): string | undefined => /\[agent\] session registered: ([0-9a-f-]{36})/.exec(a.out.join(""))?.[1];
const count = (text: string, needle: string): number => text.split(needle).length - 1;

beforeAll(async () => {
  await requireDocker();
  dockerReady = true;
  cp = await startControlPlane();
});

afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  if (dockerReady) await cleanupDocker(id.agentName, id.network);
});

afterAll(async () => {
  await cp?.close();
});

describe("keys revoke against a real agent", () => {
  it("a running agent gets ENDED/OPERATOR, removes its container, and stops with one line on the 401", async () => {
    const { keyId, key } = newKey("revoke-running");
    const a = startAgent(key);
    const sessionId = await waitFor("registration", () => registered(a), 90_000);
    await waitFor("a heartbeat", () => a.out.join("").includes(`[agent] heartbeat updated for: ${sessionId}`) || undefined, 15_000);
    expect(revoke(keyId).trimEnd().split("\n").at(-1)).toBe(`revoked provider key ${keyId}; ended 1 live session`);
    expect(await Promise.race([a.exited, new Promise((r) => setTimeout(() => r("still running"), 90_000))])).toBe(1);
    const out = a.out.join("");
    expect(out).toContain(`[agent] session ended: ${sessionId} (OPERATOR); container removed`);
    expect(count(out, "[agent] offering a fresh session")).toBe(1);
    expect(a.err.join("").trim().split("\n").at(-1)).toBe(REFUSED);
    expect(count(a.err.join(""), REFUSED)).toBe(1);
    expect(out + a.err.join("")).not.toMatch(/\n\s+at /);
    expect(await agentContainers(id.agentName)).toEqual([]);
    expect((await cp.sessions()).map((s) => s.sessionId)).not.toContain(sessionId);
  }, 240_000);

  it("an agent killed, then restarted with the revoked key, does not re-adopt its session: one line, exit 1", async () => {
    const { keyId, key } = newKey("revoke-restart");
    const a = startAgent(key);
    const sessionId = await waitFor("registration", () => registered(a), 90_000);
    a.child.kill("SIGKILL");
    await a.exited;
    expect(revoke(keyId).trimEnd().split("\n").at(-1)).toBe(`revoked provider key ${keyId}; ended 1 live session`);
    const b = startAgent(key);
    expect(await Promise.race([b.exited, new Promise((r) => setTimeout(() => r("still running"), 90_000))])).toBe(1);
    expect(b.out.join("")).not.toContain("re-adopted");
    expect(b.err.join("").trim().split("\n")).toEqual([REFUSED]);
    expect(await agentContainers(id.agentName)).toEqual([]);
    expect((await cp.sessions()).map((s) => s.sessionId)).not.toContain(sessionId);
  }, 240_000);
});
