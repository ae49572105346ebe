// Shared by e2e/agent-*.test.ts: a real control plane in-process on 127.0.0.1:0 (SQLite in a temp
// dir, the built-in relay), a provider key, and Docker helpers. Imports both packages' builds:
// run `pnpm exec tsc -b packages/control-plane packages/agent` first.
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { expect } from "vitest";
import { ProviderKeyStore, createRelay, loadConfig, startServer, type RunningServer } from "@runit/control-plane";
import { RenterSessionListSchema, type RenterSession } from "@runit/protocol";

const run = promisify(execFile);

/** A control plane for one test file. */
export interface TestControlPlane {
  server: RunningServer;
  url: string;
  key: string;
  out: string[];
  dir: string;
  /** GET /renter/sessions, validated. */
  sessions(): Promise<RenterSession[]>;
  close(): Promise<void>;
}

/** Starts the control plane with short timers and a registration limit that tests do not hit. */
export async function startControlPlane(): Promise<TestControlPlane> {
  const dir = mkdtempSync(join(tmpdir(), "runit-e2e-agent-"));
  const out: string[] = [];
  const defaults = loadConfig({});
  const server = await startServer({
    env: {},
    stdout: { write: (s: string) => void out.push(s) },
    stderr: { write: (s: string) => void out.push(s) },
    relay: (ctx) => createRelay(ctx),
    config: {
      port: 0,
      host: "127.0.0.1",
      dbPath: join(dir, "runit.db"),
      rateLimits: { ...defaults.rateLimits, registration: { max: 1000, windowMs: 60_000 } },
    },
  });
  const { key } = new ProviderKeyStore(server.store).create("e2e-agent", Date.now());
  return {
    server,
    url: server.url,
    key,
    out,
    dir,
    async sessions() {
      const res = await fetch(`${server.url}/renter/sessions`);
      return RenterSessionListSchema.parse(await res.json());
    },
    close: () => server.close(),
  };
}

/** The runAgent options every agent of a test file shares: this control plane, this identity. */
export function agentBase(
  cp: TestControlPlane,
  id: ReturnType<typeof agentIdentity>,
): { serverUrl: string; providerKey: string; agentName: string; network: string; workspaceRoot: string; stateDir: string } {
  return { serverUrl: cp.url, providerKey: cp.key, agentName: id.agentName, network: id.network, workspaceRoot: id.workspaceRoot, stateDir: id.stateDir };
}

/** Runs the docker CLI; rejects with its stderr. */
export async function docker(...args: string[]): Promise<string> {
  const { stdout } = await run("docker", args, { timeout: 60_000 });
  return stdout;
}

/** Fails loudly when no Docker engine answers or the image is missing (never a skip). */
export async function requireDocker(): Promise<void> {
  await docker("info").catch((err: Error) => {
    throw new Error(`These tests need a real Docker engine and none answers (${err.message}). Run ./scripts/ensure-docker.sh.`);
  });
  await docker("image", "inspect", "runit-jupyter:latest").catch(() => {
    throw new Error("The session image runit-jupyter is missing. Run ./scripts/build-image.sh.");
  });
}

/** A unique agent name, network and dirs for one test file. */
export function agentIdentity(prefix: string): { agentName: string; network: string; workspaceRoot: string; stateDir: string } {
  const tag = randomBytes(4).toString("hex");
  const dir = mkdtempSync(join(tmpdir(), `runit-${prefix}-`));
  return { agentName: `${prefix}-${tag}`, network: `runit-e2e-${tag}`, workspaceRoot: join(dir, "workspace"), stateDir: join(dir, "state") };
}

/** The containers labelled runit.agent=<name> (all states), from `docker ps -a`. */
export async function agentContainers(agentName: string): Promise<Array<{ id: string; session: string; state: string }>> {
  const outText = await docker("ps", "-a", "--no-trunc", "--filter", `label=runit.agent=${agentName}`, "--format", '{{.ID}} {{.Label "runit.session"}} {{.State}}');
  return outText
    .split("\n")
    .filter((l) => l.trim())
    .map((l) => {
      const [cid = "", session = "", state = ""] = l.trim().split(" ");
      return { id: cid, session, state };
    });
}

/** True when a container with this id exists. */
export async function containerExists(id: string): Promise<boolean> {
  return docker("inspect", id).then(
    () => true,
    () => false,
  );
}

/** Removes every container of the agent, the host-firewall rules of its network, then the network. */
export async function cleanupDocker(agentName: string, network: string): Promise<void> {
  for (const c of await agentContainers(agentName)) await docker("rm", "-f", c.id).catch(() => undefined);
  const netId = (await docker("network", "inspect", "--format", "{{.Id}}", network).catch(() => "")).trim();
  if (netId) {
    const bridge = `br-${netId.slice(0, 12)}`;
    const rules = [
      ["INPUT", "-i", bridge, "-j", "RUNIT-SESSIONS-INPUT"],
      ["DOCKER-USER", "-i", bridge, "-o", bridge, "-j", "DROP"],
      ["DOCKER-USER", "-i", bridge, "-j", "RUNIT-SESSIONS-EGRESS"],
    ];
    for (const [chain, ...rule] of rules) await run("iptables", ["-w", "-D", chain!, ...rule]).catch(() => undefined);
    await run("ip6tables", ["-w", "-D", "INPUT", "-i", bridge, "-j", "RUNIT-SESSIONS-INPUT"]).catch(() => undefined);
  }
  await docker("network", "rm", network).catch(() => undefined);
}

/**
 * The end of an agent test file: the agent stopped, none of its containers left (asserted), its
 * network and host-firewall rules removed, the control plane closed. Each part may be missing
 * when `beforeAll` failed early.
 */
export async function tearDownAgent(
  agent: { stop(): Promise<void> } | undefined,
  cp: TestControlPlane | undefined,
  id: ReturnType<typeof agentIdentity>,
  dockerReady: boolean,
): Promise<void> {
  await agent?.stop();
  if (dockerReady) {
    expect(await agentContainers(id.agentName)).toEqual([]);
    await cleanupDocker(id.agentName, id.network);
  }
  await cp?.close();
}

/** Polls `check` every 100 ms until it returns a value or `timeoutMs` passes. */
export async function waitFor<T>(what: string, check: () => T | undefined | Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (let i = 0; i < 100_000; i++) {
    const v = await check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}
