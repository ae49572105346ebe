import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { createCloudflaredTunnel } from "../src/tunnel/cloudflared.js";
import { isQuickTunnelHost, parseQuickTunnelUrl, quickTunnelUrlFromMetrics } from "../src/tunnel/quickTunnelUrl.js";
import type { SessionTunnel, TunnelEvent } from "../src/tunnel/types.js";
import { createLogger } from "../src/logger.js";

// Copies of ../shared/fixtures/ (recorded cloudflared output), kept in the repo for fresh clones.
const FIXTURES = fileURLToPath(new URL("./fixtures/", import.meta.url));
const FAKE = fileURLToPath(new URL("./fixtures/fake-cloudflared.mjs", import.meta.url));

describe("quick-tunnel URL parsing", () => {
  it("takes the URL from the box of the recorded log", () => {
    const log = readFileSync(join(FIXTURES, "cloudflared-quick-tunnel.log"), "utf8");
    expect(parseQuickTunnelUrl(log)).toBe("https://four-dashed-word-sample.trycloudflare.com");
  });
  it("never takes api.trycloudflare.com from the failure log", () => {
    const log = readFileSync(join(FIXTURES, "cloudflared-quick-tunnel-failure.log"), "utf8");
    expect(parseQuickTunnelUrl(log)).toBeUndefined();
    expect(parseQuickTunnelUrl("|  https://api.trycloudflare.com  |")).toBeUndefined();
  });
  it("accepts /quicktunnel JSON only for a quick-tunnel host", () => {
    expect(quickTunnelUrlFromMetrics({ hostname: "four-dashed-word-sample.trycloudflare.com" })).toBe("https://four-dashed-word-sample.trycloudflare.com");
    expect(quickTunnelUrlFromMetrics({ hostname: "api.trycloudflare.com" })).toBeUndefined();
    expect(quickTunnelUrlFromMetrics({ hostname: "evil.com/x.trycloudflare.com" })).toBeUndefined();
    expect(quickTunnelUrlFromMetrics({ hostname: "a.trycloudflare.com.evil.com" })).toBeUndefined();
    expect(quickTunnelUrlFromMetrics({})).toBeUndefined();
    expect(isQuickTunnelHost("x.b.trycloudflare.com")).toBe(false);
  });
});

describe("cloudflared tunnel (stand-in program)", () => {
  const lines: string[] = [];
  const logger = createLogger({ write: (s: string) => lines.push(s) });
  let tunnel: SessionTunnel | undefined;
  const env = { ...process.env };

  afterEach(async () => {
    await tunnel?.close();
    tunnel = undefined;
    process.env = { ...env };
    lines.length = 0;
  });

  it("runs cloudflared with --url and --metrics on loopback and reads the URL from /quicktunnel", async () => {
    const argsFile = join(mkdtempSync(join(tmpdir(), "runit-cf-")), "args");
    process.env.FAKE_CF_ARGS_FILE = argsFile;
    tunnel = createCloudflaredTunnel({ logger, jupyterPort: 45678, bin: FAKE });
    const spec = await tunnel.describe();
    expect(spec.kind).toBe("cloudflared");
    expect(spec.kind === "cloudflared" && spec.publicUrl).toMatch(/^https:\/\/four-dashed-word-[0-9a-f]{6}\.trycloudflare\.com$/);
    const args = JSON.parse(readFileSync(argsFile, "utf8").trim()) as string[];
    expect(args.slice(0, 4)).toEqual(["tunnel", "--url", "http://127.0.0.1:45678", "--metrics"]);
    expect(args[4]).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(lines.join("")).toContain("[agent] starting cloudflared...");
    expect(lines.join("")).toContain(`[agent] detected public URL: ${spec.kind === "cloudflared" ? spec.publicUrl : ""}`);
  });

  it("falls back to the log box when /quicktunnel does not answer", async () => {
    process.env.FAKE_CF_MODE = "log-only";
    tunnel = createCloudflaredTunnel({ logger, jupyterPort: 45678, bin: FAKE });
    const spec = await tunnel.describe();
    expect(spec.kind === "cloudflared" && spec.publicUrl).toMatch(/^https:\/\/four-dashed-word-[0-9a-f]{6}\.trycloudflare\.com$/);
  });

  it("fails with a clear error (not api.trycloudflare.com) when cloudflared cannot get a tunnel", async () => {
    process.env.FAKE_CF_MODE = "failure";
    tunnel = createCloudflaredTunnel({ logger, jupyterPort: 45678, bin: FAKE });
    await expect(tunnel.describe()).rejects.toThrow("cloudflared exited (code 1) before it printed a tunnel URL");
  });

  it("fails with a clear error when the binary is missing", async () => {
    tunnel = createCloudflaredTunnel({ logger, jupyterPort: 45678, bin: "/nonexistent/cloudflared" });
    await expect(tunnel.describe()).rejects.toThrow(/cannot run cloudflared|exited/);
  });

  it("restarts cloudflared when it dies and reports the new URL", async () => {
    process.env.FAKE_CF_EXIT_AFTER_MS = "1500";
    tunnel = createCloudflaredTunnel({ logger, jupyterPort: 45678, bin: FAKE, maxRestarts: 1 });
    const first = await tunnel.describe();
    const events: TunnelEvent[] = [];
    tunnel.onEvent?.((e) => events.push(e));
    const deadline = Date.now() + 10_000;
    while (events.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    // One restart allowed: a url-changed event, then (the restarted one dies too) "died".
    expect(events[0]?.type).toBe("url-changed");
    const changed = events[0];
    expect(changed?.type === "url-changed" && changed.spec.kind === "cloudflared" && changed.spec.publicUrl).not.toBe(
      first.kind === "cloudflared" && first.publicUrl,
    );
    expect(events[1]).toEqual({ type: "died", reason: "cloudflared keeps exiting" });
    expect(lines.join("")).toContain("[agent] cloudflared exited (code 1); restarting it");
  });
});
