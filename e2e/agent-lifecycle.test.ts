import { existsSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jupyterGetJson, runAgent, type AgentHandle, type SessionInfo } from "@runit/agent";
import { agentBase, agentContainers, agentIdentity, containerExists, requireDocker, startControlPlane, tearDownAgent, waitFor, type TestControlPlane } from "./agent-harness.js";

// The agent in-process against a real control plane (port 0, SQLite, the relay) and a real
// Docker engine: registration, heartbeats, Jupyter activity, idle replacement, release.
const id = agentIdentity("e2e-life");
const IDLE_MS = 4000;
let dockerReady = false;
let cp: TestControlPlane;
let agent: AgentHandle;
const out: string[] = [];
const ready: SessionInfo[] = [];
const ended: Array<{ sessionId: string; reason: string; endedAt: number }> = [];
let heartbeats = 0;
let startToReadyMs = 0;

beforeAll(async () => {
  await requireDocker();
  dockerReady = true;
  cp = await startControlPlane();
  const t0 = Date.now();
  agent = await runAgent({
    ...agentBase(cp, id),
    heartbeatIntervalMs: 500,
    idleTimeoutMs: IDLE_MS,
    activityIntervalMs: 250,
    stdout: { write: (s: string) => void out.push(s) },
  });
  startToReadyMs = Date.now() - t0;
  const first = agent.current();
  if (first) ready.push(first);
  agent.on("ready", (s) => ready.push(s));
  agent.on("ended", (e) => ended.push(e));
  agent.on("heartbeat", () => heartbeats++);
});

afterAll(async () => {
  await tearDownAgent(agent, cp, id, dockerReady);
});

const log = (): string => out.join("");

describe("runit-agent against a real control plane", () => {
  it("prints the checklist's lines and registers a READY session", async () => {
    const s = ready[0]!;
    const lines = log().split("\n");
    const expected = [
      "[agent] checking docker image: runit-jupyter",
      "[agent] docker image exists",
      `[agent] host firewall: containers on ${id.network} (br-`,
      `[agent] workspace directory: ${id.workspaceRoot}`,
      "[agent] starting dockerized jupyter...",
      "[docker] Running as: jupyteruser",
      "=== SESSION READY ===",
      `[agent] session registered: ${s.sessionId}`,
    ];
    let at = -1;
    for (const e of expected) {
      const next = lines.findIndex((l, i) => i > at && (l === e || (e.endsWith("(br-") && l.startsWith(e))));
      expect(next, `line "${e}" after line ${at}`).toBeGreaterThan(at);
      at = next;
    }
    expect(lines.some((l) => /^\[agent\] token detected: [A-Za-z0-9_-]{8}…$/.test(l))).toBe(true);
    const listed = await cp.sessions();
    expect(listed.map((x) => [x.sessionId, x.status, x.tunnel])).toEqual([[s.sessionId, "READY", "relay"]]);
    expect(listed[0]!.hardware).toEqual({ cpus: 2, memoryMb: 4096, gpus: [] });
    console.log(`[measure] start → READY (registered): ${startToReadyMs} ms`);
  });

  it("heartbeats the control plane", async () => {
    const s = ready[0]!;
    await waitFor("two heartbeats", () => heartbeats >= 2, 10_000);
    expect(log()).toContain(`[agent] heartbeat updated for: ${s.sessionId}`);
    const status = await fetch(`${cp.url}/renter/sessions`).then((r) => r.json() as Promise<Array<{ available?: boolean }>>);
    expect(status[0]?.available).toBe(true);
    // The stats the control plane stored from the last heartbeat: the container's network bytes and Jupyter's last activity.
    const row = cp.server.store.db.prepare("SELECT stats FROM sessions WHERE id = ?").get(s.sessionId) as { stats: string };
    const stats = JSON.parse(row.stats) as { rxBytes: number; txBytes: number; lastActivity: string };
    expect(stats.rxBytes).toBeGreaterThan(0);
    expect(stats.txBytes).toBeGreaterThanOrEqual(0);
    expect(Date.parse(stats.lastActivity)).toBeGreaterThan(Date.now() - 60_000);
  });

  it("keeps a session with Jupyter activity past the idle timeout, and says so", async () => {
    const s = ready[0]!;
    const token = await jupyterToken(s);
    const until = Date.now() + IDLE_MS + 2000;
    for (let i = 0; i < 100 && Date.now() < until; i++) {
      // Listing contents is renter-like use: it moves Jupyter's last_activity.
      // Through the agent's own link to Jupyter's socket: relay mode publishes no port.
      expect(s.jupyter.kind).toBe("socket");
      const listing = (await jupyterGetJson(s.jupyter, `${s.basePath}api/contents`, token, 5000)) as { type?: string };
      expect(listing.type).toBe("directory");
      await new Promise((r) => setTimeout(r, 700));
    }
    expect(ended).toEqual([]);
    expect(agent.current()?.sessionId).toBe(s.sessionId);
    expect(log()).toContain("[agent] container activity detected");
  });

  it("ends an idle READY session and replaces it with a fresh one (new id, new container, new workspace)", async () => {
    const first = ready[0]!;
    await waitFor("the idle session to end", () => ended.find((e) => e.sessionId === first.sessionId), IDLE_MS + 15_000);
    const second = await waitFor("a replacement session", () => ready[1], 30_000);
    const end = ended[0]!;
    expect(end.reason).toBe("IDLE_TIMEOUT");
    console.log(`[measure] session end → replacement READY: ${second.registeredAt - end.endedAt} ms (from the end of the old one)`);
    expect(second.sessionId).not.toBe(first.sessionId);
    expect(second.containerId).not.toBe(first.containerId);
    expect(second.workspaceDir).not.toBe(first.workspaceDir);
    expect(existsSync(first.workspaceDir)).toBe(true); // kept under retention, never mounted again
    expect(await containerExists(first.containerId)).toBe(false);
    const containers = await agentContainers(id.agentName);
    expect(containers.map((c) => c.session)).toEqual([second.sessionId]);
    const listed = await cp.sessions();
    expect(listed.map((x) => [x.sessionId, x.status])).toEqual([[second.sessionId, "READY"]]);
  });

  it("when a renter connects and releases, the session ENDS and a fresh one is offered; workspaces never shared", async () => {
    const current = ready[ready.length - 1]!;
    const connect = await fetch(`${cp.url}/renter/sessions/${current.sessionId}/connect`, { method: "POST" });
    expect(connect.status).toBe(201);
    const { accessToken } = (await connect.json()) as { accessToken: string };
    await waitFor("a LOCKED heartbeat", async () => (await cp.sessions()).find((x) => x.sessionId === current.sessionId && x.status === "LOCKED"), 5000);
    const release = await fetch(`${cp.url}/renter/release/${accessToken}`, { method: "POST" });
    expect(release.status).toBe(200);
    const end = await waitFor("the released session to end", () => ended.find((e) => e.sessionId === current.sessionId), 15_000);
    expect(end.reason).toBe("RELEASED");
    const next = await waitFor("a replacement", () => ready.find((r) => r.startedAt >= end.endedAt), 30_000);
    console.log(`[measure] release → replacement READY: ${next.registeredAt - end.endedAt} ms`);
    const dirs = ready.map((r) => r.workspaceDir);
    expect(new Set(dirs).size).toBe(dirs.length);
    expect((await agentContainers(id.agentName)).map((c) => c.session)).toEqual([next.sessionId]);
  });
});

/** The test reads the token the agent persisted (0600, state dir) — as a renter's relay would use it. */
async function jupyterToken(s: SessionInfo): Promise<string> {
  const { readFile, stat } = await import("node:fs/promises");
  const path = `${id.stateDir}/${id.agentName}.session.json`;
  expect((await stat(path)).mode & 0o777).toBe(0o600);
  const state = JSON.parse(await readFile(path, "utf8")) as { sessionId: string; jupyterToken: string };
  expect(state.sessionId).toBe(s.sessionId);
  return state.jupyterToken;
}
