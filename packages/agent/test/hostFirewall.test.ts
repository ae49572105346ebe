import { randomBytes, randomUUID } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import type Docker from "dockerode";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { asSecret } from "@runit/protocol";
import { hardenedContainerSpec } from "../src/docker/hardenedSpec.js";
import { execFileRunner, isolateSessionNetwork, releaseSessionNetwork, type CommandRunner } from "../src/docker/sessionFirewall.js";
import { startSessionContainer, type RunningContainer } from "../src/docker/sessionContainer.js";
import { ensureSessionNetwork } from "../src/docker/sessionNetwork.js";
import { waitForJupyter } from "../src/jupyter/jupyterProbe.js";
import { silentLogger } from "../src/logger.js";
import { createSessionWorkspace } from "../src/workspace.js";
import { cleanupDocker, dockerExec, requireDocker, testIdentity } from "./dockerHarness.js";

// A session container must not open connections to the provider host: without the rules, a
// service the host exposes on its bridge address answers the notebook; with them, it cannot,
// while the host still reaches Jupyter through the published loopback port. Forwarded traffic to
// private and link-local destinations (cloud metadata, the provider's LAN) is checked by listing
// the real rules: these tests never send a packet to a non-loopback address.
const id = testIdentity("fw");
const sessionId = randomUUID();
const token = asSecret(randomBytes(32).toString("base64url"));
let docker: Docker;
let running: RunningContainer;
let hostService: Server;
let gateway = "";
let firewalled = false;
let bridge = "";

/** `iptables -S <chain>`'s rule lines (`-A ...`), or null when the chain does not exist. */
const listRules = async (tool: string, chain: string): Promise<string[] | null> => {
  const listed = await execFileRunner(tool, ["-w", "-S", chain]);
  return listed.code === 0 ? listed.stdout.split("\n").filter((line) => line.startsWith("-A ")) : null;
};
const hasRule = async (tool: string, chain: string, rule: string[]): Promise<boolean> =>
  (await execFileRunner(tool, ["-w", "-C", chain, ...rule])).code === 0;

// The exact egress chain: replies pass, DNS passes (Docker's resolver dials from the container's
// namespace), everything else to these destinations is dropped.
const egressHead = ["-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN", "-p udp -m udp --dport 53 -j RETURN", "-p tcp -m tcp --dport 53 -j RETURN"];
const blockedV4 = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "168.63.129.16/32", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4"];
const blockedV6 = ["fc00::/7", "fe80::/10", "ff00::/8"];
const egressChain = (blocked: string[]): string[] =>
  [...egressHead, ...blocked.map((cidr) => `-d ${cidr} -j DROP`)].map((rule) => `-A RUNIT-SESSIONS-EGRESS ${rule}`);

beforeAll(async () => {
  docker = await requireDocker();
  await ensureSessionNetwork(docker, id.network);
  const net = await docker.getNetwork(id.network).inspect();
  gateway = (net.IPAM?.Config?.[0] as { Gateway?: string } | undefined)?.Gateway ?? "";
  const workspaceDir = await createSessionWorkspace(id.dir, sessionId);
  const spec = hardenedContainerSpec({ sessionId, agentName: id.agentName, workspaceDir, network: id.network, limits: { memoryMb: 512, cpus: 1, pids: 100 } });
  running = await startSessionContainer(docker, spec, { workspaceDir }, { token, baseUrl: "/", allowOrigin: "" }, silentLogger);
  await waitForJupyter({ kind: "tcp", port: running.hostPort! }, "/", token, 60_000);
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
    bridge = result.bridge;
    expect(result.added).toContain(`iptables -I DOCKER-USER 1 -i ${bridge} -j RUNIT-SESSIONS-EGRESS`);
    expect((await probe()).stdout.trim()).toMatch(/^blocked (URLError|ConnectionRefusedError|TimeoutError|socket.timeout)/);
  });

  it("the host still reaches Jupyter through the loopback port", async () => {
    const res = await fetch(`http://127.0.0.1:${running.hostPort}/api/status`, { headers: { Authorization: `token ${token}` } });
    expect(res.status).toBe(200);
  });

  it("drops new forwarded connections from the bridge to metadata and private networks, before Docker's ACCEPT", async () => {
    expect(await listRules("iptables", "RUNIT-SESSIONS-EGRESS")).toEqual(egressChain(blockedV4));
    const dockerUser = (await listRules("iptables", "DOCKER-USER")) ?? [];
    const jump = dockerUser.indexOf(`-A DOCKER-USER -i ${bridge} -j RUNIT-SESSIONS-EGRESS`);
    expect(jump).toBeGreaterThanOrEqual(0);
    expect(dockerUser.indexOf(`-A DOCKER-USER -i ${bridge} -o ${bridge} -j DROP`)).toBeGreaterThanOrEqual(0);
    const docked = dockerUser.indexOf("-A DOCKER-USER -j RETURN");
    if (docked >= 0) expect(jump).toBeLessThan(docked);
    // FORWARD reaches DOCKER-USER before any of Docker's `-i <bridge> ! -o <bridge> -j ACCEPT`.
    expect((await listRules("iptables", "FORWARD"))?.[0]).toBe("-A FORWARD -j DOCKER-USER");
  });

  it("adds the IPv6 egress chain when Docker manages ip6tables, and says so when it does not", async () => {
    const again = await isolateSessionNetwork(docker, id.network);
    if ((await listRules("ip6tables", "DOCKER-USER")) === null) {
      expect(again.ipv6Skipped).toBe(true);
      expect(await hasRule("ip6tables", "DOCKER-USER", ["-i", bridge, "-j", "RUNIT-SESSIONS-EGRESS"])).toBe(false);
      return;
    }
    expect(again.ipv6Skipped).toBe(false);
    expect(await listRules("ip6tables", "RUNIT-SESSIONS-EGRESS")).toEqual(egressChain(blockedV6));
    expect(await hasRule("ip6tables", "DOCKER-USER", ["-i", bridge, "-j", "RUNIT-SESSIONS-EGRESS"])).toBe(true);
  });

  it("is idempotent: a second run adds nothing", async () => {
    const before = await listRules("iptables", "DOCKER-USER");
    const again = await isolateSessionNetwork(docker, id.network);
    expect(again.added).toEqual([]);
    expect(await listRules("iptables", "DOCKER-USER")).toEqual(before);
    expect(await listRules("iptables", "RUNIT-SESSIONS-EGRESS")).toEqual(egressChain(blockedV4));
  });

  it("fails with the failing command when iptables cannot be used", async () => {
    const refuse: CommandRunner = async () => ({ code: 4, stdout: "", stderr: "iptables: Permission denied (you must be root)." });
    await expect(isolateSessionNetwork(docker, id.network, refuse)).rejects.toThrow(/iptables -w -N RUNIT-SESSIONS-INPUT failed \(4\): iptables: Permission denied/);
  });

  it("release removes the bridge's jumps and keeps the shared chains", async () => {
    await releaseSessionNetwork(docker, id.network);
    firewalled = false;
    expect(await hasRule("iptables", "INPUT", ["-i", bridge, "-j", "RUNIT-SESSIONS-INPUT"])).toBe(false);
    expect(await hasRule("iptables", "DOCKER-USER", ["-i", bridge, "-o", bridge, "-j", "DROP"])).toBe(false);
    expect(await hasRule("iptables", "DOCKER-USER", ["-i", bridge, "-j", "RUNIT-SESSIONS-EGRESS"])).toBe(false);
    expect(await hasRule("ip6tables", "DOCKER-USER", ["-i", bridge, "-j", "RUNIT-SESSIONS-EGRESS"])).toBe(false);
    expect(await listRules("iptables", "RUNIT-SESSIONS-EGRESS")).toEqual(egressChain(blockedV4));
  });
});
