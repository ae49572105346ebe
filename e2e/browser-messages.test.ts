// The renter page's plain-words messages, in Chromium against the real control plane (relay on,
// no agent: sessions are registered over HTTP and have no tunnel). Covers what the full flow
// cannot provoke: a provider that is away or goes away, a lock used from another IP, and 429.
import { mkdtempSync, rmSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Browser } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startServer, type RunningServer } from "../packages/control-plane/src/index.js";
import { createRelay } from "../packages/control-plane/src/relay/index.js";
import { ProviderKeyStore } from "../packages/control-plane/src/store/providerKeys.js";
import { ARTIFACTS, launchChromium, requirePrerequisites } from "./browser-harness.js";

interface Cp {
  server: RunningServer;
  key: string;
  close(): Promise<void>;
}

async function startCp(renterMax: number): Promise<Cp> {
  const dir = mkdtempSync(join(tmpdir(), "runit-browser-msg-"));
  const sink = { write: () => undefined };
  const server = await startServer({
    env: {},
    stdout: sink,
    stderr: sink,
    config: {
      port: 0,
      host: "127.0.0.1",
      dbPath: join(dir, "runit.db"),
      sweepIntervalMs: 250,
      rateLimits: {
        registration: { max: 1000, windowMs: 60_000 },
        provider: { max: 1000, windowMs: 60_000 },
        renter: { max: renterMax, windowMs: 60_000 },
      },
    },
    relay: (ctx) => createRelay(ctx),
  });
  const { key } = new ProviderKeyStore(server.store).create("e2e-messages", Date.now());
  return { server, key, close: async () => (await server.close(), rmSync(dir, { recursive: true, force: true })) };
}

/** A JSON request from a chosen loopback source address. */
function call(
  cp: Cp,
  method: string,
  path: string,
  opts: { bearer?: string; body?: unknown; from?: string } = {},
): Promise<{ status: number; json: Record<string, unknown> }> {
  const payload = opts.body === undefined ? undefined : JSON.stringify(opts.body);
  const headers: Record<string, string> = {};
  if (payload !== undefined) headers["Content-Type"] = "application/json";
  if (opts.bearer) headers.Authorization = `Bearer ${opts.bearer}`;
  return new Promise((resolve, reject) => {
    const req = request(
      { host: "127.0.0.1", port: cp.server.port, path, method, headers, localAddress: opts.from ?? "127.0.0.1" },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          resolve({ status: res.statusCode ?? 0, json: text ? (JSON.parse(text) as Record<string, unknown>) : {} });
        });
      },
    );
    req.setTimeout(10_000, () => req.destroy(new Error(`${method} ${path} timed out`)));
    req.on("error", reject);
    req.end(payload);
  });
}

async function register(cp: Cp): Promise<{ sessionId: string; sessionSecret: string }> {
  const res = await call(cp, "POST", "/provider/session", {
    bearer: cp.key,
    body: { tunnel: { kind: "relay" }, hardware: { cpus: 4, memoryMb: 8192, gpus: [{ name: "Test GPU", vramMb: 16384 }] }, pricing: { hourlyUsd: 1.5 } },
  });
  expect(res.status).toBe(201);
  return res.json as { sessionId: string; sessionSecret: string };
}

describe("the renter page's messages", () => {
  let browser: Browser;
  let cp: Cp;

  beforeAll(async () => {
    await requirePrerequisites();
    browser = await launchChromium();
    cp = await startCp(100_000);
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await cp?.close();
  });

  it("serves /renter and its assets with their types under the CSP, nothing inline, no CSP violation", async () => {
    const html = await fetch(`${cp.server.url}/renter`);
    expect(html.status).toBe(200);
    expect(html.headers.get("content-type")).toBe("text/html; charset=utf-8");
    const csp = html.headers.get("content-security-policy") ?? "";
    expect(csp).toContain("script-src 'self'");
    expect(csp).not.toContain("unsafe-inline");
    const text = await html.text();
    expect(text).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/i);
    expect(text).not.toMatch(/\s(style|on[a-z]+)=/i);
    const types: Record<string, string> = {
      "renter.js": "text/javascript; charset=utf-8",
      "timerWorker.js": "text/javascript; charset=utf-8",
      "renter.css": "text/css; charset=utf-8",
    };
    for (const [file, type] of Object.entries(types)) {
      const res = await fetch(`${cp.server.url}/renter/assets/${file}`);
      expect([file, res.status, res.headers.get("content-type")]).toEqual([file, 200, type]);
    }
    expect((await fetch(`${cp.server.url}/renter/assets/renterApi.ts`)).status).toBe(404);

    const page = await browser.newPage();
    const problems: string[] = [];
    page.on("console", (m) => {
      if (m.type() === "error" && /Content Security Policy|Refused/i.test(m.text())) problems.push(m.text());
    });
    page.on("pageerror", (e) => problems.push(e.message));
    await page.goto(`${cp.server.url}/renter`);
    await page.locator("#refresh-state", { hasText: "Updated" }).waitFor();
    expect(problems).toEqual([]);
    await page.close();
  });

  it("shows a session without its provider's tunnel as 'Provider away', with its hardware", async () => {
    const { sessionId } = await register(cp);
    const page = await browser.newPage();
    await page.goto(`${cp.server.url}/renter`);
    const item = page.locator(`li.session[data-session-id="${sessionId}"]`);
    await item.waitFor();
    expect(await item.getAttribute("data-status")).toBe("away");
    expect((await item.locator(".status").innerText()).trim()).toBe("Provider away");
    expect((await item.locator(".specs").innerText()).replace(/\s+/g, " ")).toBe(
      "CPUS 4 MEMORY 8 GB GPUS Test GPU (16 GB) PRICE $1.50 / hour",
    );
    await page.close();
  });

  it("connects with the keyboard, and says so when the provider goes away", async () => {
    const { sessionId, sessionSecret } = await register(cp);
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${cp.server.url}/renter`);
    const button = page.locator(`li.session[data-session-id="${sessionId}"] button`);
    await button.waitFor();
    let focused = false;
    for (let i = 0; i < 20 && !focused; i++) {
      await page.keyboard.press("Tab");
      focused = await button.evaluate((el) => el === document.activeElement);
    }
    expect(focused).toBe(true);
    const [tab] = await Promise.all([context.waitForEvent("page"), page.keyboard.press("Enter")]);
    await page.locator("#lock-panel").waitFor();
    await tab.close();
    expect((await call(cp, "GET", `/provider/session/${sessionId}`, { bearer: sessionSecret })).json.status).toBe("LOCKED");

    expect((await call(cp, "DELETE", `/provider/session/${sessionId}`, { bearer: sessionSecret })).status).toBe(204);
    await page.locator("#alert").getByText("The provider went away").waitFor({ timeout: 15_000 });
    expect(await page.locator("#lock-panel").isHidden()).toBe(true);
    await page.screenshot({ path: join(ARTIFACTS, "renter-provider-gone.png"), fullPage: true });
    await context.close();
  });

  it("explains 'IP mismatch - access denied' for a lock taken from another address", async () => {
    const { sessionId } = await register(cp);
    const taken = await call(cp, "POST", `/renter/sessions/${sessionId}/connect`, { from: "127.0.0.2" });
    expect(taken.status).toBe(201);
    const page = await browser.newPage();
    // The page keeps its lock in sessionStorage across a reload; hand it the 127.0.0.2 lock.
    await page.goto(`${cp.server.url}/renter`);
    await page.evaluate((lock) => sessionStorage.setItem("runit.renter.lock", JSON.stringify(lock)), {
      sessionId,
      accessToken: String(taken.json.accessToken),
      accessUrl: String(taken.json.accessUrl),
    });
    await page.reload();
    await page.locator("#alert").getByText("IP mismatch - access denied").waitFor({ timeout: 15_000 });
    expect(page.url()).toBe(`${cp.server.url}/renter`);
    // An address may change back (VPN, another network): the page keeps the lock it cannot renew
    // from here, and keeps trying, until the server says the lock is gone.
    expect(await page.locator("#lock-panel").isVisible()).toBe(true);
    expect(await page.evaluate(() => sessionStorage.getItem("runit.renter.lock"))).toContain(String(taken.json.accessToken));
    const released = await call(cp, "POST", `/renter/release/${String(taken.json.accessToken)}`, { from: "127.0.0.2" });
    expect(released.status).toBe(200);
    await page.locator("#alert").getByText("Invalid or expired token").waitFor({ timeout: 15_000 });
    expect(await page.locator("#lock-panel").isHidden()).toBe(true);
    await page.close();
  });

  it("tells how long to wait after 429", async () => {
    const limited = await startCp(3);
    try {
      const page = await browser.newPage();
      await page.goto(`${limited.server.url}/renter`);
      const alert = page.locator("#alert");
      await alert.getByText("Too many requests").waitFor({ timeout: 20_000 });
      const seconds = Number(/try again in (\d+) seconds? \(at [^)]+\)\./.exec(await alert.innerText())?.[1]);
      expect(seconds).toBeGreaterThan(0);
      expect(seconds).toBeLessThanOrEqual(60);
      await page.setViewportSize({ width: 375, height: 700 });
      await page.screenshot({ path: join(ARTIFACTS, "renter-429-375px.png"), fullPage: true });
      await page.close();
    } finally {
      await limited.close();
    }
  }, 40_000);
});
