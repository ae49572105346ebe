import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { networkInterfaces } from "node:os";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runAgent, type AgentHandle } from "@runit/agent";
import { RELAY_COOKIE_NAME, relayBasePath } from "@runit/protocol";
import { agentContainers, agentIdentity, cleanupDocker, docker, requireDocker, startControlPlane, waitFor, type TestControlPlane } from "./agent-harness.js";

// Two real agents put their sessions on one session network, as two providers' agents on one
// host would (or one agent's successive sessions). From inside a session container, the test
// tries to open TCP connections to a server it runs on the provider host — on the bridge's
// gateway address and on every other address of this machine — and to a service the other
// session's renter runs on its container's address (Jupyter itself has no TCP port in relay mode:
// it listens on a Unix socket only the agent reaches). All must fail, while the host still reaches
// both renters' services directly and the renter still reaches Jupyter through the agent's relay.
// Only addresses of this machine are targeted.

const a = agentIdentity("e2e-iso-a");
const b = { ...agentIdentity("e2e-iso-b"), network: a.network };
let dockerReady = false;
let cp: TestControlPlane;
const agents: AgentHandle[] = [];
let hostServer: Server;
let hostPort = 0;
/** The port of the service each renter runs in its own container. */
const RENTER_PORT = 8000;
let gateway = "";
const containers: Record<"a" | "b", { id: string; ip: string; session: string }> = {
  a: { id: "", ip: "", session: "" },
  b: { id: "", ip: "", session: "" },
};

async function startAgent(identity: typeof a): Promise<AgentHandle> {
  return runAgent({
    serverUrl: cp.url,
    providerKey: cp.key,
    agentName: identity.agentName,
    network: identity.network,
    workspaceRoot: identity.workspaceRoot,
    stateDir: identity.stateDir,
    limits: { memoryMb: 512, cpus: 1 },
    stdout: { write: () => undefined },
  });
}

async function containerOf(identity: typeof a): Promise<{ id: string; ip: string; session: string }> {
  const [c] = await waitFor("a running session container", async () => {
    const list = (await agentContainers(identity.agentName)).filter((x) => x.state === "running");
    return list.length > 0 ? list : undefined;
  });
  const ip = (await docker("inspect", "--format", `{{(index .NetworkSettings.Networks "${identity.network}").IPAddress}}`, c!.id)).trim();
  return { id: c!.id, ip, session: c!.session };
}

/** Tries a TCP connection from inside a container; "connected" or "blocked <reason>". */
async function connectFrom(containerId: string, host: string, port: number): Promise<string> {
  const script = [
    "import socket",
    "s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)",
    "s.settimeout(3)",
    "try:",
    `    s.connect((${JSON.stringify(host)}, ${port}))`,
    "    print('connected')",
    "except Exception as e:",
    "    print('blocked', type(e).__name__)",
  ].join("\n");
  const result = (await docker("exec", containerId, "python3", "-c", script)).trim();
  console.log(`[isolation] ${containerId.slice(0, 12)} → ${host}:${port}: ${result}`);
  return result;
}

/** Every IPv4 address of this machine outside 127/8 (the container's loopback is its own). */
function hostAddresses(): string[] {
  return Object.values(networkInterfaces())
    .flat()
    .filter((i) => i !== undefined && i.family === "IPv4" && !i.address.startsWith("127."))
    .map((i) => i!.address);
}

beforeAll(async () => {
  await requireDocker();
  dockerReady = true;
  cp = await startControlPlane();
  agents.push(await startAgent(a));
  agents.push(await startAgent(b));
  containers.a = await containerOf(a);
  containers.b = await containerOf(b);
  // What any renter may run in its container: a TCP service on the container's address.
  for (const c of [containers.a, containers.b]) await docker("exec", "-d", c.id, "python3", "-m", "http.server", String(RENTER_PORT), "--bind", "0.0.0.0", "--directory", "/tmp");
  gateway = (await docker("network", "inspect", "--format", "{{(index .IPAM.Config 0).Gateway}}", a.network)).trim();
  // The "provider host service": every address of this machine, so the gateway included.
  hostServer = createServer((_req, res) => res.end("host service"));
  await new Promise<void>((resolve) => hostServer.listen(0, "0.0.0.0", resolve));
  hostPort = (hostServer.address() as AddressInfo).port;
}, 240_000);

afterAll(async () => {
  hostServer?.close();
  for (const agent of agents) await agent.stop().catch(() => undefined);
  if (dockerReady) {
    await cleanupDocker(a.agentName, a.network);
    await cleanupDocker(b.agentName, b.network);
  }
  await cp?.close();
}, 120_000);

describe("network isolation of session containers", () => {
  it("both sessions sit on the same session network, with addresses and a gateway", () => {
    expect(gateway).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
    expect(containers.a.ip).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
    expect(containers.b.ip).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
    expect(containers.a.ip).not.toBe(containers.b.ip);
  });

  it("the host itself reaches the test server and both renters' services (the probes below are meaningful)", async () => {
    expect(await (await fetch(`http://${gateway}:${hostPort}/`)).text()).toBe("host service");
    for (const c of [containers.a, containers.b]) {
      const res = await waitFor(`the renter's service in ${c.id.slice(0, 12)}`, () => fetch(`http://${c.ip}:${RENTER_PORT}/`).catch(() => undefined));
      expect(res.status).toBe(200);
    }
  });

  it("Jupyter has no TCP port: not even the host reaches it on the container's address", async () => {
    for (const c of [containers.a, containers.b]) {
      const error = await fetch(`http://${c.ip}:8888${relayBasePath(c.session)}api/status`).then(
        (r) => `answered ${r.status}`,
        (err: Error) => String((err.cause as { code?: string } | undefined)?.code ?? err.message),
      );
      expect(error).toBe("ECONNREFUSED");
    }
  });

  it("a session container cannot open a connection to the provider host on the bridge gateway", async () => {
    expect(await connectFrom(containers.a.id, gateway, hostPort)).toMatch(/^blocked /);
    expect(await connectFrom(containers.b.id, gateway, hostPort)).toMatch(/^blocked /);
  });

  it("nor on any other address of this machine", async () => {
    const addresses = hostAddresses();
    expect(addresses).toContain(gateway);
    for (const address of addresses) {
      expect(`${address}: ${await connectFrom(containers.a.id, address, hostPort)}`).toMatch(/: blocked /);
    }
  });

  it("a session container cannot open a connection to another session's container", async () => {
    expect(await connectFrom(containers.a.id, containers.b.ip, RENTER_PORT)).toMatch(/^blocked /);
    expect(await connectFrom(containers.b.id, containers.a.ip, RENTER_PORT)).toMatch(/^blocked /);
  });

  it("the renter still reaches Jupyter through the agent", async () => {
    const sessionId = containers.a.session;
    await waitFor("the session listed as available", async () =>
      (await cp.sessions()).some((s) => s.sessionId === sessionId && s.status === "READY" && s.available !== false) || undefined,
    );
    const connect = await fetch(`${cp.url}/renter/sessions/${sessionId}/connect`, { method: "POST" });
    expect(connect.status).toBe(201);
    const { accessToken } = (await connect.json()) as { accessToken: string };
    const access = await fetch(`${cp.url}/access/${accessToken}`, { redirect: "manual" });
    expect(access.status).toBe(302);
    const cookie = access.headers.getSetCookie().map((c) => c.split(";")[0] ?? "").find((c) => c.startsWith(`${RELAY_COOKIE_NAME}=`));
    expect(cookie).toBeDefined();
    const status = await fetch(`${cp.url}${relayBasePath(sessionId)}api/status`, { headers: { cookie: cookie! } });
    expect(status.status).toBe(200);
    expect(await status.json()).toHaveProperty("started");
  });
});
