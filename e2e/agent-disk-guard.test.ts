import { existsSync, mkdirSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freeDiskMb, runAgent, type AgentHandle, type SessionInfo } from "@runit/agent";
import { agentBase, agentContainers, agentIdentity, containerExists, docker, requireDocker, startControlPlane, tearDownAgent, waitFor, type TestControlPlane } from "./agent-harness.js";

// The disk under the workspace root never fills: a renter's /workspace is a bind mount with no
// quota, so the agent ends a session as soon as free space there drops below its floor, deletes
// that session's workspace, and offers no session while the floor is not met. Real control
// plane, real agent, real container; the renter's writes are `dd` run in the container.
const id = agentIdentity("e2e-disk");
let dockerReady = false;
let cp: TestControlPlane;
let agent: AgentHandle | undefined;
const out: string[] = [];
const ready: SessionInfo[] = [];
const ended: Array<{ sessionId: string; reason: string }> = [];

beforeAll(async () => {
  await requireDocker();
  dockerReady = true;
  cp = await startControlPlane();
  mkdirSync(id.workspaceRoot, { recursive: true, mode: 0o700 });
});

afterAll(async () => {
  await tearDownAgent(agent, cp, id, dockerReady);
}, 60_000);

describe("the agent's disk floor", () => {
  it("offers no session while the disk under the workspace root is below the floor", async () => {
    const floor = (await freeDiskMb(id.workspaceRoot)) + 1024 * 1024; // a floor no disk here meets
    const started = runAgent({
      ...agentBase(cp, id),
      agentName: `${id.agentName}-full`,
      minFreeDiskMb: floor,
      stdout: { write: (s: string) => void out.push(s) },
    });
    await expect(started).rejects.toThrow(/^only \d+ MiB free under .* \(the floor is \d+ MiB, --min-free-disk-mb\): no session is offered until there is room$/);
    expect(await cp.sessions()).toEqual([]);
    expect(await agentContainers(`${id.agentName}-full`)).toEqual([]);
  }, 60_000);

  it("ends a session whose renter fills the disk past the floor, deletes its workspace, and offers a fresh one once there is room", async () => {
    // 768 MiB below what is free now; the renter then writes 1 GiB.
    const floor = (await freeDiskMb(id.workspaceRoot)) - 768;
    agent = await runAgent({
      ...agentBase(cp, id),
      heartbeatIntervalMs: 500,
      activityIntervalMs: 250,
      minFreeDiskMb: floor,
      stdout: { write: (s: string) => void out.push(s) },
      stderr: { write: (s: string) => void out.push(s) },
    });
    agent.on("ready", (s) => ready.push(s));
    agent.on("ended", (e) => ended.push(e));
    const first = agent.current()!;
    expect(existsSync(first.workspaceDir)).toBe(true);
    // The agent may end the session (and remove the container) before dd is done: dd fails then.
    await docker("exec", first.containerId, "dd", "if=/dev/zero", "of=/workspace/fill", "bs=1M", "count=1024", "conv=fsync").catch(() => undefined);
    await waitFor("the session to end", () => ended.find((e) => e.sessionId === first.sessionId), 20_000);
    expect(ended[0]).toMatchObject({ sessionId: first.sessionId, reason: "DISK_LOW" });
    expect(out.join("")).toMatch(new RegExp(`\\[agent\\] only \\d+ MiB free under ${id.workspaceRoot} \\(the floor is ${floor} MiB, --min-free-disk-mb\\): ending session ${first.sessionId} and deleting its workspace`));
    expect(existsSync(first.workspaceDir)).toBe(false);
    expect(await containerExists(first.containerId)).toBe(false);
    // The space is back: a fresh session, with a fresh workspace.
    const next = await waitFor("a fresh session", () => ready.find((s) => s.sessionId !== first.sessionId), 60_000);
    expect(existsSync(next.workspaceDir)).toBe(true);
    expect((await cp.sessions()).map((s) => s.sessionId)).toEqual([next.sessionId]);
  }, 120_000);
});
