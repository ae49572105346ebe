import { spawn, type ChildProcess } from "node:child_process";
import { readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { agentContainers, agentIdentity, cleanupDocker, docker, requireDocker, startControlPlane, waitFor, type TestControlPlane } from "./agent-harness.js";

// The agent CLI as a child process (the built dist/): SIGKILL and restart, SIGTERM, one-line
// failures, doctor. The control plane runs in this process. Every test sets up what it needs and
// afterEach leaves no agent, container, session or state file behind, even when the test failed,
// so one failure cannot cascade. Tests that wait for agents carry timeouts matching their waits
// (the agent's start is slow on a loaded two-core machine).
const BIN = fileURLToPath(new URL("../packages/agent/bin/runit-agent.js", import.meta.url));
const id = agentIdentity("e2e-restart");
let cp: TestControlPlane;
let dockerReady = false;
const children: Agent[] = [];

interface Agent {
  child: ChildProcess;
  out: string[];
  err: string[];
  exited: Promise<number | null>;
}

function startAgent(extra: string[] = [], env: Record<string, string> = {}): Agent {
  const args = ["start", "--server", cp.url, "--name", id.agentName, "--network", id.network, "--workspace-root", id.workspaceRoot, "--state-dir", id.stateDir, "--heartbeat-interval-ms", "500", ...extra];
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, RUNIT_PROVIDER_KEY: cp.key, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  const out: string[] = [];
  const err: string[] = [];
  child.stdout!.on("data", (d: Buffer) => out.push(d.toString()));
  child.stderr!.on("data", (d: Buffer) => err.push(d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const agent = { child, out, err, exited };
  children.push(agent);
  return agent;
}

/** SIGTERM (graceful: deregisters, removes its container), then SIGKILL after `graceMs`. */
async function stopAgent(a: Agent, graceMs: number): Promise<void> {
  if (a.child.exitCode !== null || a.child.signalCode !== null) return;
  a.child.kill("SIGTERM");
  const timer = setTimeout(() => a.child.kill("SIGKILL"), graceMs);
  await a.exited;
  clearTimeout(timer);
}

afterEach(async () => {
  await Promise.all(children.splice(0).map((c) => stopAgent(c, 30_000)));
  if (!dockerReady) return;
  // What a killed agent left: its persisted session (ended through the provider API with the
  // session's own secret), its containers, its state and pid files.
  const stateFile = join(id.stateDir, `${id.agentName}.session.json`);
  const state = await readFile(stateFile, "utf8").then((t) => JSON.parse(t) as { sessionId: string; sessionSecret: string }, () => undefined);
  if (state) await fetch(`${cp.url}/provider/session/${state.sessionId}`, { method: "DELETE", headers: { Authorization: `Bearer ${state.sessionSecret}` } });
  await rm(stateFile, { force: true });
  await rm(join(id.stateDir, `${id.agentName}.pid`), { force: true });
  for (const c of await agentContainers(id.agentName)) await docker("rm", "-f", c.id);
  // A session registered by an agent killed before it persisted it.
  for (const sessionId of await live()) cp.server.sessions.endSession(sessionId, "PROVIDER_STALE");
}, 120_000);

/** Starts an agent, waits for its session, SIGKILLs it: a registered session and its running container stay behind. */
async function killedAgentWithSession(): Promise<string> {
  const a = startAgent();
  const sessionId = await waitFor("registration", () => registered(a), 60_000);
  a.child.kill("SIGKILL");
  await a.exited;
  expect((await agentContainers(id.agentName)).map((c) => c.session)).toEqual([sessionId]);
  return sessionId;
}

const registered = (a: Agent): string | undefined => /\[agent\] session registered: ([0-9a-f-]{36})/.exec(a.out.join(""))?.[1];
const live = async (): Promise<string[]> => (await cp.sessions()).filter((s) => s.status !== "ENDED").map((s) => s.sessionId);

beforeAll(async () => {
  await requireDocker();
  dockerReady = true;
  cp = await startControlPlane();
});

afterAll(async () => {
  for (const c of children) if (c.child.exitCode === null && c.child.signalCode === null) c.child.kill("SIGKILL");
  if (dockerReady) await cleanupDocker(id.agentName, id.network);
  await cp?.close();
});

describe("restart safety of runit-agent", () => {
  it("after a SIGKILL, the next start re-adopts the live session: no orphan, no duplicate", async () => {
    const t0 = Date.now();
    const a = startAgent();
    const firstSession = await waitFor("registration", () => registered(a), 60_000);
    console.log(`[measure] CLI start → session registered: ${Date.now() - t0} ms`);
    a.child.kill("SIGKILL");
    await a.exited;
    expect((await agentContainers(id.agentName)).map((c) => c.session)).toEqual([firstSession]);

    const b = startAgent();
    await waitFor("re-adoption", () => b.out.join("").includes(`[agent] re-adopted session ${firstSession}`) || undefined, 60_000);
    await waitFor("a heartbeat of the adopted session", () => b.out.join("").includes(`[agent] heartbeat updated for: ${firstSession}`) || undefined, 10_000);
    expect((await agentContainers(id.agentName)).map((c) => c.session)).toEqual([firstSession]);
    expect(await live()).toEqual([firstSession]);
  }, 150_000);

  it("after a SIGKILL and a lost container, the next start DELETEs the old session and offers exactly one new one", async () => {
    const firstSession = await killedAgentWithSession();
    const [c0] = await agentContainers(id.agentName);
    await docker("rm", "-f", c0!.id);
    const c = startAgent();
    const newSession = await waitFor("a new registration", () => registered(c), 60_000);
    expect(newSession).not.toBe(firstSession);
    expect(c.out.join("")).toContain(`[agent] leftover session ${firstSession} ended`);
    expect((await agentContainers(id.agentName)).map((x) => x.session)).toEqual([newSession]);
    expect(await live()).toEqual([newSession]);

    // A stray container of this agent that the state file does not know (created, never started)
    // is removed on the next start, while the live session is re-adopted.
    c.child.kill("SIGKILL");
    await c.exited;
    const strayId = (
      await docker("create", "--label", "runit.managed=true", "--label", `runit.agent=${id.agentName}`, "--label", "runit.session=00000000-0000-4000-8000-000000000000", "--network", "none", "runit-jupyter:latest")
    ).trim();
    const d = startAgent();
    await waitFor("re-adoption", () => d.out.join("").includes(`[agent] re-adopted session ${newSession}`) || undefined, 60_000);
    expect(d.out.join("")).toContain(`[agent] removed leftover container ${strayId.slice(0, 12)} (session 00000000-0000-4000-8000-000000000000)`);
    expect((await agentContainers(id.agentName)).map((x) => x.session)).toEqual([newSession]);
    expect(await live()).toEqual([newSession]);

    // SIGTERM: deregisters, removes its container, exits 0.
    d.child.kill("SIGTERM");
    expect(await d.exited).toBe(0);
    expect(d.out.join("")).toContain("[agent] stopped");
    expect(await agentContainers(id.agentName)).toEqual([]);
    expect(await live()).toEqual([]);
  }, 240_000);

  it("`runit-agent stop` stops a running agent through its pid file", async () => {
    const e = startAgent();
    await waitFor("registration", () => registered(e), 60_000);
    const stop = spawn(process.execPath, [BIN, "stop", "--name", id.agentName, "--state-dir", id.stateDir], { stdio: ["ignore", "pipe", "pipe"] });
    const stopOut: string[] = [];
    stop.stdout!.on("data", (d: Buffer) => stopOut.push(d.toString()));
    const stopCode = await new Promise<number | null>((r) => stop.once("exit", r));
    expect(stopCode).toBe(0);
    expect(stopOut.join("")).toMatch(/\[agent\] agent e2e-restart-[0-9a-f]+ \(pid \d+\) stopped/);
    expect(await e.exited).toBe(0);
    expect(await agentContainers(id.agentName)).toEqual([]);
    expect(await live()).toEqual([]);
  }, 120_000);

  it("a second start under the same name while the first runs: one line, exit 1, the first keeps its session", async () => {
    const first = startAgent();
    const sessionId = await waitFor("registration", () => registered(first), 60_000);
    const second = startAgent();
    expect(await second.exited).toBe(1);
    expect(second.err.join("").trim().split("\n")).toEqual([
      `[agent] error: agent ${id.agentName} is already running (pid ${first.child.pid}); stop it first: runit-agent stop --name ${id.agentName}`,
    ]);
    expect((await agentContainers(id.agentName)).map((c) => c.session)).toEqual([sessionId]);
    expect(await live()).toEqual([sessionId]);
  }, 120_000);
});

describe("every failure of start is one clear line", () => {
  it("a refused key: one line, exit 1, no stack trace, no container left", async () => {
    const a = startAgent([], { RUNIT_PROVIDER_KEY: "rk_not-a-valid-key-0000000000000000" });
    expect(await a.exited).toBe(1);
    const errLines = a.err.join("").trim().split("\n");
    expect(errLines).toEqual(["[agent] error: registration refused: 401 Invalid provider key (INVALID_PROVIDER_KEY)"]);
    expect(a.out.join("") + a.err.join("")).not.toMatch(/\n\s+at /);
    expect(await agentContainers(id.agentName)).toEqual([]);
  }, 90_000);

  it("no Docker engine at DOCKER_HOST: one line naming it", async () => {
    const a = startAgent([], { DOCKER_HOST: "tcp://127.0.0.1:1" });
    expect(await a.exited).toBe(1);
    expect(a.err.join("").trim().split("\n")).toEqual([
      "[agent] error: no Docker engine answers at tcp://127.0.0.1:1 (ECONNREFUSED); start Docker or set DOCKER_HOST",
    ]);
  });

  it("a missing server flag: one line", async () => {
    const child = spawn(process.execPath, [BIN, "start", "--key", "x"], { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUNIT_SERVER: "" } });
    const err: string[] = [];
    child.stderr!.on("data", (d: Buffer) => err.push(d.toString()));
    expect(await new Promise((r) => child.once("exit", r))).toBe(1);
    expect(err.join("").trim()).toBe("[agent] error: --server is required (or set RUNIT_SERVER)");
  });
});

describe("runit-agent doctor", () => {
  async function doctor(key: string): Promise<{ code: number | null; out: string }> {
    const child = spawn(process.execPath, [BIN, "doctor", "--server", cp.url, "--workspace-root", id.workspaceRoot], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, RUNIT_PROVIDER_KEY: key },
    });
    const out: string[] = [];
    child.stdout!.on("data", (d: Buffer) => out.push(d.toString()));
    const code = await new Promise<number | null>((r) => child.once("exit", r));
    return { code, out: out.join("") };
  }

  it("says everything is fine in plain words", async () => {
    const r = await doctor(cp.key);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/\[doctor\] ok {3}docker engine: Docker .* answers at/);
    expect(r.out).toContain("[doctor] ok   session image: runit-jupyter:latest is present");
    expect(r.out).toContain("[doctor] ok   provider key: the control plane accepted the key");
    expect(await live()).toEqual([]);
  });

  it("says when the key is refused", async () => {
    const r = await doctor("rk_wrong-key-000000000000000000000");
    expect(r.code).toBe(1);
    expect(r.out).toContain("[doctor] FAIL provider key: the control plane refused the key");
  });
});
