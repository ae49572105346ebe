// runAgent's start and stop around a re-adopted session, with fakes for Docker, the control plane
// (fetch) and the tunnel, and a real HTTP server on a Unix socket standing in for Jupyter: the adopted session's workspace and any other mounted one survive the
// retention purge, the workspace root is made private, a container whose removal failed is gone
// before a fresh session is offered, and a tunnel's fatal condition stops the agent the way a
// revoked provider key does.
import { randomUUID } from "node:crypto";
import { chownSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, utimesSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type Docker from "dockerode";
import { afterEach, describe, expect, it } from "vitest";
import { runAgent, type AgentHandle } from "../src/agent.js";
import { LABELS } from "../src/docker/hardenedSpec.js";
import { sessionSocketPaths } from "../src/jupyter/jupyterEndpoint.js";
import { readLiveSession, writeLiveSession } from "../src/stateFile.js";
import type { SessionTunnel, TunnelEvent } from "../src/tunnel/types.js";

const SERVER = "http://control-plane.test:10000";
const AGENT = "fake-agent";
const dirs: string[] = [];
const handles: AgentHandle[] = [];
const servers: Server[] = [];

afterEach(async () => {
  for (const h of handles.splice(0)) await h.stop();
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A container as the fake engine lists it. */
interface FakeContainer {
  Id: string;
  State: string;
  Labels: Record<string, string>;
  Ports: Array<{ PrivatePort: number; IP: string; PublicPort: number }>;
  Mounts: Array<{ Type: string; Source: string; Destination: string }>;
}

interface World {
  root: string;
  stateDir: string;
  sessionId: string;
  workspaceDir: string;
  requests: string[];
  /** Containers the fake engine holds; `remove` deletes from it. */
  containers: FakeContainer[];
  removed: string[];
  /** How many of the next `remove` calls fail (a Docker hiccup). */
  failRemovals: number;
  /** What the control plane answers for the session. */
  status: "LOCKED" | "ENDED";
  lines: string[];
  docker: Docker;
  fetch: typeof fetch;
}

/** An agent's leftovers after a SIGKILL: a persisted LOCKED session whose container still runs. */
async function world(opts: { socketElsewhere?: boolean } = {}): Promise<World> {
  const base = mkdtempSync(join(tmpdir(), "runit-run-agent-"));
  dirs.push(base);
  const root = join(base, "workspace");
  const stateDir = join(base, "state");
  const sessionId = randomUUID();
  const workspaceDir = join(root, sessionId);
  mkdirSync(workspaceDir, { recursive: true });
  const basePath = `/s/${sessionId}/`;
  // The adopted session's Jupyter, on the socket link the state file names.
  const socketPath = opts.socketElsewhere ? join(base, "elsewhere.sock") : sessionSocketPaths(root, sessionId).link;
  mkdirSync(dirname(socketPath), { recursive: true, mode: 0o700 });
  const jupyter = createServer((req, res) => {
    res.setHeader("Content-Type", "application/json");
    if (req.url === `${basePath}api/status`) return res.end(JSON.stringify({ last_activity: new Date().toISOString(), connections: 1, kernels: 1 }));
    if (req.url === `${basePath}api/kernels?no_track_activity=1`) return res.end(JSON.stringify([{ execution_state: "idle" }]));
    res.statusCode = 404;
    res.end("{}");
  });
  servers.push(jupyter);
  await new Promise<void>((r) => jupyter.listen(socketPath, r));
  await writeLiveSession(stateDir, AGENT, {
    sessionId,
    sessionSecret: "s".repeat(43),
    jupyterToken: "j".repeat(43),
    containerId: "c0ffee",
    jupyter: { kind: "socket", path: socketPath },
    basePath,
    tunnel: "relay",
    workspaceDir,
  });
  const adopted: FakeContainer = {
    Id: "c0ffee",
    State: "running",
    Labels: { [LABELS.managed]: "true", [LABELS.agent]: AGENT, [LABELS.session]: sessionId },
    Ports: [],
    Mounts: [{ Type: "bind", Source: workspaceDir, Destination: "/workspace" }],
  };
  const w: World = {
    ...{ root, stateDir, sessionId, workspaceDir, requests: [], containers: [adopted], removed: [], failRemovals: 0, status: "LOCKED", lines: [] },
    ...{ docker: undefined as unknown as Docker, fetch },
  };
  const labelled = (c: FakeContainer, filters?: { label?: string[] }): boolean =>
    (filters?.label ?? []).every((l) => c.Labels[l.split("=")[0] ?? ""] === l.split("=")[1]);
  w.docker = {
    ping: async () => "OK",
    getImage: () => ({ inspect: async () => ({}) }),
    listNetworks: async () => [{ Name: "runit-sessions", Driver: "bridge", Options: { "com.docker.network.bridge.enable_icc": "false" } }],
    listContainers: async (opts?: { filters?: { label?: string[] } }) => w.containers.filter((c) => labelled(c, opts?.filters)),
    getContainer: (id: string) => ({
      inspect: async () => ({ State: { Running: true } }),
      stats: async () => ({ networks: {} }),
      remove: async () => {
        if (w.failRemovals-- > 0) throw Object.assign(new Error("(HTTP code 500) server error - i/o timeout"), { statusCode: 500 });
        w.containers = w.containers.filter((c) => c.Id !== id);
        w.removed.push(id);
      },
    }),
  } as unknown as Docker;
  const json = (body: unknown): Response => new Response(JSON.stringify(body), { status: 200, headers: { "Content-Type": "application/json" } });
  w.fetch = (async (input: string | URL | Request, init?: RequestInit) => {
    const url = String(input);
    const method = init?.method ?? "GET";
    w.requests.push(`${method} ${url}`);
    if (url === `${SERVER}/provider/session/${sessionId}`) return method === "DELETE" ? new Response(null, { status: 204 }) : json({ status: w.status, locked: true });
    if (url === `${SERVER}/provider/heartbeat`) return json({ status: w.status, locked: w.status === "LOCKED" });
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

async function start(w: World, tunnel: SessionTunnel, workspaceRetentionMs?: number): Promise<AgentHandle> {
  const handle = await runAgent({
    workspaceRetentionMs,
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
  it("keeps the workspaces of the session it re-adopts and of other agents' containers, however old, and purges other old ones by ctime", async () => {
    const w = await world();
    const retention = 1500; // ctime cannot be backdated: let the old ones age for real
    const ended = join(w.root, randomUUID());
    mkdirSync(ended);
    utimesSync(ended, new Date("2100-01-01"), new Date("2100-01-01")); // a renter's future mtime
    const otherAgents = join(w.root, randomUUID()); // shared root: another agent's live session
    mkdirSync(otherAgents);
    w.containers.push({
      Id: "beef00",
      State: "running",
      Labels: { [LABELS.managed]: "true", [LABELS.agent]: "other-agent", [LABELS.session]: otherAgents.slice(-36) },
      Ports: [],
      Mounts: [{ Type: "bind", Source: otherAgents, Destination: "/workspace" }],
    });
    await sleep(retention + 100);
    const recent = join(w.root, randomUUID());
    mkdirSync(recent);
    utimesSync(recent, new Date("2001-01-01"), new Date("2001-01-01")); // a renter's backdated mtime
    const handle = await start(w, fakeTunnel(), retention);
    expect(handle.current()).toMatchObject({ sessionId: w.sessionId, adopted: true, workspaceDir: w.workspaceDir });
    expect([w.workspaceDir, otherAgents, recent].map(existsSync)).toEqual([true, true, true]);
    expect(existsSync(ended)).toBe(false);
    expect(w.lines).toContain("[agent] removed 1 workspace(s) older than the retention");
    expect(w.removed).toEqual([]);
  });

  it("sets an existing workspace root to mode 0700 and refuses to start with one owned by another user", async () => {
    const w = await world();
    expect(statSync(w.root).mode & 0o777).toBe(0o755); // as `mkdir workspace` makes it
    await start(w, fakeTunnel());
    expect(statSync(w.root).mode & 0o7777).toBe(0o700);
    expect(w.lines).toContain(`[agent] workspace directory ${w.root} had mode 0755: set to 0700, so no other local user can reach a renter's files (a setuid program, say)`);
    expect(w.lines).toContain(`[agent] workspace directory: ${w.root}`);
    for (const h of handles.splice(0)) await h.stop();

    const v = await world();
    chownSync(v.root, 1001, 1001);
    await expect(start(v, fakeTunnel())).rejects.toThrow(`workspace root ${v.root} is owned by uid 1001, not by this agent's user (uid ${process.getuid?.()})`);
    expect(v.requests).toEqual([]);
  });

  it("removes a container whose removal failed at session end before it offers a fresh session", async () => {
    const w = await world();
    const handle = await start(w, fakeTunnel());
    const ended: string[] = [];
    handle.on("ended", (e) => ended.push(`${e.sessionId} ${e.reason}`));
    w.failRemovals = 1;
    w.status = "ENDED";
    for (let i = 0; i < 100 && !w.lines.some((l) => l.startsWith("[agent] could not start a session")); i++) await sleep(50);
    expect(ended).toEqual([`${w.sessionId} ENDED`]);
    const from = w.lines.indexOf("[agent] could not remove container: (HTTP code 500) server error - i/o timeout");
    expect(from).toBeGreaterThan(-1);
    const offered = w.lines.indexOf("[agent] offering a fresh session");
    expect(offered).toBeGreaterThan(from);
    expect(w.lines[offered + 1]).toBe(`[agent] removed stray container c0ffee (session ${w.sessionId}) before offering a fresh session`);
    expect(w.removed).toEqual(["c0ffee"]);
    expect(w.containers).toEqual([]);
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

  it("does not re-adopt a session whose socket link is not under this workspace root; it deregisters it", async () => {
    const w = await world({ socketElsewhere: true });
    // The fake engine creates no containers, so the fresh session offered instead fails to start.
    await expect(start(w, fakeTunnel())).rejects.toThrow("createContainer");
    expect(w.requests).toContain(`DELETE ${SERVER}/provider/session/${w.sessionId}`);
    expect(w.removed).toEqual(["c0ffee"]);
  });
});
