// runAgent's start and stop around a re-adopted session, with fakes for Docker, the control plane
// (fetch) and the tunnel: the adopted session's workspace survives the retention purge, and a
// tunnel's fatal condition stops the agent the way a revoked provider key does.
import { randomUUID } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, rmSync, utimesSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type Docker from "dockerode";
import { afterEach, describe, expect, it } from "vitest";
import { runAgent, type AgentHandle } from "../src/agent.js";
import { LABELS } from "../src/docker/hardenedSpec.js";
import { readLiveSession, writeLiveSession } from "../src/stateFile.js";
import type { SessionTunnel, TunnelEvent } from "../src/tunnel/types.js";

const SERVER = "http://control-plane.test:10000";
const AGENT = "fake-agent";
const DAY = 24 * 3600_000;
const dirs: string[] = [];
const handles: AgentHandle[] = [];

afterEach(async () => {
  for (const h of handles.splice(0)) await h.stop();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

interface World {
  root: string;
  stateDir: string;
  sessionId: string;
  workspaceDir: string;
  requests: string[];
  removed: string[];
  lines: string[];
  docker: Docker;
  fetch: typeof fetch;
}

/** An agent's leftovers after a SIGKILL: a persisted LOCKED session whose container still runs. */
async function world(): Promise<World> {
  const base = mkdtempSync(join(tmpdir(), "runit-run-agent-"));
  dirs.push(base);
  const root = join(base, "workspace");
  const stateDir = join(base, "state");
  const sessionId = randomUUID();
  const workspaceDir = join(root, sessionId);
  mkdirSync(workspaceDir, { recursive: true });
  const hostPort = 49200;
  const basePath = `/s/${sessionId}/`;
  await writeLiveSession(stateDir, AGENT, {
    sessionId,
    sessionSecret: "s".repeat(43),
    jupyterToken: "j".repeat(43),
    containerId: "c0ffee",
    hostPort,
    basePath,
    tunnel: "relay",
    workspaceDir,
  });
  const w: World = { root, stateDir, sessionId, workspaceDir, requests: [], removed: [], lines: [], docker: undefined as unknown as Docker, fetch };
  w.docker = {
    ping: async () => "OK",
    getImage: () => ({ inspect: async () => ({}) }),
    listNetworks: async () => [{ Name: "runit-sessions" }],
    listContainers: async () => [
      { Id: "c0ffee", State: "running", Labels: { [LABELS.session]: sessionId }, Ports: [{ PrivatePort: 8888, IP: "127.0.0.1", PublicPort: hostPort }] },
    ],
    getContainer: (id: string) => ({
      inspect: async () => ({ State: { Running: true } }),
      stats: async () => ({ networks: {} }),
      remove: async () => void w.removed.push(id),
    }),
  } as unknown as Docker;
  const json = (body: unknown): Response => new Response(JSON.stringify(body), { status: 200, headers: { "Content-Type": "application/json" } });
  w.fetch = (async (input: string | URL | Request, init?: RequestInit) => {
    const url = String(input);
    const method = init?.method ?? "GET";
    w.requests.push(`${method} ${url}`);
    if (url === `${SERVER}/provider/session/${sessionId}`) return method === "DELETE" ? new Response(null, { status: 204 }) : json({ status: "LOCKED", locked: true });
    if (url === `${SERVER}/provider/heartbeat`) return json({ status: "LOCKED", locked: true });
    if (url === `http://127.0.0.1:${hostPort}${basePath}api/status`) return json({ last_activity: new Date().toISOString(), connections: 1, kernels: 1 });
    if (url === `http://127.0.0.1:${hostPort}${basePath}api/kernels?no_track_activity=1`) return json([{ execution_state: "idle" }]);
    return new Response("{}", { status: 404 });
  }) as typeof fetch;
  return w;
}

/** A tunnel that fires `event` once attached (or never). */
function fakeTunnel(event?: TunnelEvent): SessionTunnel {
  const listeners = new Set<(e: TunnelEvent) => void>();
  return {
    describe: async () => ({ kind: "relay" }),
    attach: async () => {
      if (event) setTimeout(() => listeners.forEach((l) => l(event)), 50);
    },
    close: async () => undefined,
    onEvent: (listener) => {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  };
}

async function start(w: World, tunnel: SessionTunnel): Promise<AgentHandle> {
  const handle = await runAgent({
    serverUrl: SERVER,
    providerKey: "rk_fake-provider-key-000000000000",
    agentName: AGENT,
    workspaceRoot: w.root,
    stateDir: w.stateDir,
    heartbeatIntervalMs: 100,
    activityIntervalMs: 100,
    hostFirewall: false,
    docker: w.docker,
    fetch: w.fetch,
    logger: { info: (l) => w.lines.push(l), error: (l) => w.lines.push(l) },
    tunnelFactory: () => tunnel,
  });
  handles.push(handle);
  return handle;
}

describe("runAgent after a restart", () => {
  it("keeps the workspace of the session it re-adopts, however old, and purges other old ones", async () => {
    const w = await world();
    const old = (Date.now() - 3 * DAY) / 1000;
    utimesSync(w.workspaceDir, old, old); // LOCKED for days, writing only into subfolders
    const ended = join(w.root, randomUUID());
    mkdirSync(ended);
    utimesSync(ended, old, old);
    const recent = join(w.root, randomUUID());
    mkdirSync(recent);
    const handle = await start(w, fakeTunnel());
    expect(handle.current()).toMatchObject({ sessionId: w.sessionId, adopted: true, workspaceDir: w.workspaceDir });
    expect(existsSync(w.workspaceDir)).toBe(true);
    expect(existsSync(ended)).toBe(false);
    expect(existsSync(recent)).toBe(true);
    expect(w.lines).toContain("[agent] removed 1 workspace(s) older than the retention");
  });

  it("a tunnel's fatal event ends the session and stops the agent with that error", async () => {
    const w = await world();
    const error = new Error("the control plane speaks tunnel protocol 3 and this agent 2: upgrade runit-agent");
    const handle = await start(w, fakeTunnel({ type: "fatal", error }));
    const fatal: Error[] = [];
    const ended: string[] = [];
    handle.on("fatal", (e) => fatal.push(e));
    handle.on("ended", (e) => ended.push(`${e.sessionId} ${e.reason}`));
    const outcome = await Promise.race([handle.done.then(() => "resolved", (e: Error) => e), new Promise((r) => setTimeout(() => r("still running"), 5000))]);
    expect(outcome).toBe(error);
    expect(fatal).toEqual([error]);
    expect(ended).toEqual([`${w.sessionId} FATAL`]);
    expect(w.requests).toContain(`DELETE ${SERVER}/provider/session/${w.sessionId}`);
    expect(w.removed).toEqual(["c0ffee"]);
    expect(await readLiveSession(w.stateDir, AGENT)).toBeUndefined();
    expect(w.lines).not.toContain("[agent] offering a fresh session");
  });
});
