import { randomBytes, randomUUID } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import type Docker from "dockerode";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { asSecret } from "@runit/protocol";
import { hardenedContainerSpec } from "../src/docker/hardenedSpec.js";
import { isolateSessionNetwork, releaseSessionNetwork, type CommandRunner } from "../src/docker/sessionFirewall.js";
import { startSessionContainer, type RunningContainer } from "../src/docker/sessionContainer.js";
import { ensureSessionNetwork } from "../src/docker/sessionNetwork.js";
import { waitForJupyter } from "../src/jupyter/jupyterProbe.js";
import { silentLogger } from "../src/logger.js";
import { createSessionWorkspace } from "../src/workspace.js";
import { cleanupDocker, dockerExec, requireDocker, testIdentity } from "./dockerHarness.js";

// A session container must not open connections to the provider host: without the rules, a
// service the host exposes on its bridge address answers the notebook; with them, it cannot,
// while the host still reaches Jupyter through the published loopback port.
const id = testIdentity("fw");
const sessionId = randomUUID();
const token = asSecret(randomBytes(32).toString("base64url"));
let docker: Docker;
let running: RunningContainer;
let hostService: Server;
let gateway = "";
let firewalled = false;

beforeAll(async () => {
  docker = await requireDocker();
  await ensureSessionNetwork(docker, id.network);
  const net = await docker.getNetwork(id.network).inspect();
  gateway = (net.IPAM?.Config?.[0] as { Gateway?: string } | undefined)?.Gateway ?? "";
  const workspaceDir = await createSessionWorkspace(id.dir, sessionId);
  const spec = hardenedContainerSpec({ sessionId, agentName: id.agentName, workspaceDir, network: id.network, limits: { memoryMb: 512, cpus: 1, pids: 100 } });
  running = await startSessionContainer(docker, spec, workspaceDir, { token, baseUrl: "/", allowOrigin: "" }, silentLogger);
  await waitForJupyter(fetch, running.hostPort, "/", token, 60_000);
  // A "host service" bound to the host's own address on the session bridge.
  hostService = createServer((_req, res) => res.end("host service"));
  await new Promise<void>((r) => hostService.listen(0, gateway, r));
});

afterAll(async () => {
  hostService?.close();
  if (docker) {
    if (firewalled) await releaseSessionNetwork(docker, id.network);
    await cleanupDocker(docker, id.agentName, id.network);
  }
});

const probe = (): Promise<{ code: number; stdout: string }> =>
  dockerExec(running.id, [
    "python3",
    "-c",
    `import urllib.request\ntry:\n    print(urllib.request.urlopen('http://${gateway}:${(hostService.address() as AddressInfo).port}/', timeout=3).read().decode())\nexcept Exception as e:\n    print('blocked', type(e).__name__)`,
  ]);

describe("host firewall of the session network", () => {
  it("without the rules a session reaches the host's services (the hole), with them it cannot", async () => {
    expect(gateway).toMatch(/^\d+\.\d+\.\d+\.1$/);
    expect((await probe()).stdout.trim()).toBe("host service");
    const result = await isolateSessionNetwork(docker, id.network);
    firewalled = true;
    expect(result.bridge).toMatch(/^br-[0-9a-f]{12}$/);
    expect((await probe()).stdout.trim()).toMatch(/^blocked (URLError|ConnectionRefusedError|TimeoutError|socket.timeout)/);
  });

  it("the host still reaches Jupyter through the loopback port", async () => {
    const res = await fetch(`http://127.0.0.1:${running.hostPort}/api/status`, { headers: { Authorization: `token ${token}` } });
    expect(res.status).toBe(200);
  });

  it("is idempotent: a second run adds nothing", async () => {
    const again = await isolateSessionNetwork(docker, id.network);
    expect(again.added).toEqual([]);
  });

  it("fails with the failing command when iptables cannot be used", async () => {
    const refuse: CommandRunner = async () => ({ code: 4, stdout: "", stderr: "iptables: Permission denied (you must be root)." });
    await expect(isolateSessionNetwork(docker, id.network, refuse)).rejects.toThrow(/iptables -w -N RUNIT-SESSIONS-INPUT failed \(4\): iptables: Permission denied/);
  });
});
