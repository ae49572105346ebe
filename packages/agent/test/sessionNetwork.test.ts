// The session network on a real engine: the agent creates it with inter-container traffic off,
// reuses such a network, and refuses to start on an existing network of that name that would let
// sessions talk to each other (made by hand with Docker's default ICC on), with one line.
import type Docker from "dockerode";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentStartError, runAgent } from "../src/agent.js";
import { SessionNetworkError, ensureSessionNetwork } from "../src/docker/sessionNetwork.js";
import { silentLogger } from "../src/logger.js";
import { requireDocker, testIdentity } from "./dockerHarness.js";

const made = testIdentity("net");
const byHand = testIdentity("net-icc");
let docker: Docker;

beforeAll(async () => {
  docker = await requireDocker();
  await docker.createNetwork({ Name: byHand.network, Driver: "bridge", CheckDuplicate: true });
});

afterAll(async () => {
  for (const n of [made.network, byHand.network]) await docker?.getNetwork(n).remove().catch(() => undefined);
});

describe("ensureSessionNetwork", () => {
  it("creates the network as a bridge with ICC off, and accepts it the second time", async () => {
    await ensureSessionNetwork(docker, made.network);
    const info = await docker.getNetwork(made.network).inspect();
    expect([info.Driver, info.Options["com.docker.network.bridge.enable_icc"]]).toEqual(["bridge", "false"]);
    await expect(ensureSessionNetwork(docker, made.network)).resolves.toBeUndefined();
  });

  it("refuses an existing network with ICC on, saying how to fix it", async () => {
    await expect(ensureSessionNetwork(docker, byHand.network)).rejects.toThrow(SessionNetworkError);
    await expect(ensureSessionNetwork(docker, byHand.network)).rejects.toThrow(
      `network ${byHand.network} lets its containers talk to each other (com.docker.network.bridge.enable_icc=unset, i.e. true); sessions on it could reach each other: remove it (docker network rm ${byHand.network})`,
    );
  });

  it("runAgent stops with one line before it contacts the control plane", async () => {
    const failed = await runAgent({
      serverUrl: "http://127.0.0.1:9", // never dialled: the network check comes first
      providerKey: "rk_unused-provider-key-00000000000",
      agentName: byHand.agentName,
      network: byHand.network,
      workspaceRoot: `${byHand.dir}/workspace`,
      stateDir: `${byHand.dir}/state`,
      hostFirewall: false,
      writePidFile: false,
      logger: silentLogger,
    }).then(
      () => undefined,
      (err: Error) => err,
    );
    expect(failed).toBeInstanceOf(AgentStartError);
    expect(failed?.message).toMatch(new RegExp(`^network ${byHand.network} lets its containers talk to each other`));
  });
});
