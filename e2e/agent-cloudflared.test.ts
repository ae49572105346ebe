import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runAgent, type AgentHandle, type SessionInfo } from "@runit/agent";
import { agentBase, agentIdentity, requireDocker, startControlPlane, tearDownAgent, waitFor, type TestControlPlane } from "./agent-harness.js";

// `--tunnel cloudflared` with the stand-in program (cloudflared cannot be installed here): the
// agent registers the quick-tunnel URL; when cloudflared dies and comes back with another URL the
// session is replaced and registered with the new URL.
const FAKE = fileURLToPath(new URL("../packages/agent/test/fixtures/fake-cloudflared.mjs", import.meta.url));
const id = agentIdentity("e2e-cf");
let cp: TestControlPlane;
let agent: AgentHandle;
let dockerReady = false;
const out: string[] = [];
const ready: SessionInfo[] = [];
const ended: Array<{ sessionId: string; reason: string }> = [];

beforeAll(async () => {
  await requireDocker();
  dockerReady = true;
  cp = await startControlPlane();
  process.env.FAKE_CF_EXIT_AFTER_MS = "5000";
  agent = await runAgent({
    ...agentBase(cp, id),
    tunnel: "cloudflared",
    cloudflaredBin: FAKE,
    heartbeatIntervalMs: 500,
    idleTimeoutMs: 600_000,
    stdout: { write: (s: string) => void out.push(s) },
  });
  delete process.env.FAKE_CF_EXIT_AFTER_MS; // later starts of the stand-in stay up
  ready.push(agent.current()!);
  agent.on("ready", (s) => ready.push(s));
  agent.on("ended", (e) => ended.push(e));
});

afterAll(async () => {
  delete process.env.FAKE_CF_EXIT_AFTER_MS;
  await tearDownAgent(agent, cp, id, dockerReady);
});

describe("runit-agent --tunnel cloudflared", () => {
  it("starts cloudflared, registers its quick-tunnel URL, runs Jupyter at base_url /", async () => {
    const s = ready[0]!;
    expect(s.tunnel).toBe("cloudflared");
    expect(s.basePath).toBe("/");
    const text = out.join("");
    expect(text).toContain("[agent] starting cloudflared...");
    expect(text).toMatch(/\[agent\] detected public URL: https:\/\/four-dashed-word-[0-9a-f]{6}\.trycloudflare\.com\n=== SESSION READY ===\n/);
    expect((await cp.sessions()).map((x) => [x.sessionId, x.tunnel])).toEqual([[s.sessionId, "cloudflared"]]);
  });

  it("when cloudflared dies it is restarted, and the new URL is registered with a fresh session", async () => {
    const first = ready[0]!;
    const next = await waitFor("a session registered with the new URL", () => ready[1], 40_000);
    const text = out.join("");
    expect(text).toContain("[agent] cloudflared exited (code 1); restarting it");
    expect(text).toContain(`[agent] tunnel URL changed: replacing session ${first.sessionId}`);
    const urls = [...text.matchAll(/detected public URL: (\S+)/g)].map((m) => m[1]);
    expect(new Set(urls).size).toBeGreaterThanOrEqual(2);
    expect(ended[0]).toMatchObject({ sessionId: first.sessionId, reason: "TUNNEL" });
    expect(next.sessionId).not.toBe(first.sessionId);
    expect((await cp.sessions()).filter((x) => x.status !== "ENDED").map((x) => x.sessionId)).toEqual([next.sessionId]);
  });
});
