// The whole flow in a real browser (issue 5): the renter page lists the agent's session, Connect
// opens Jupyter through the relay and a notebook cell prints 42; a second renter is told the
// session is in use; the lock holder's cookie is refused from another IP; Release recycles the
// session into a fresh, empty one; closing the page lets the lock lapse. Real control plane, real
// agent, real container, Debian's Chromium. The steps share one stack and run in order.
import { join } from "node:path";
import { DEFAULT_TIMERS } from "@runit/protocol";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ARTIFACTS,
  TIMERS,
  agentContainers,
  getFrom,
  launchChromium,
  listSessions,
  printNotebook,
  runNotebookCell,
  requirePrerequisites,
  startStack,
  waitUntil,
  type Stack,
} from "./browser-harness.js";
import { RENTER_HEARTBEAT_INTERVAL_MS } from "../packages/control-plane/public/renterApi.js";

const card = (id: string) => `li.session[data-session-id="${id}"]`;
const AVAILABLE = 'li.session[data-status="available"]';

describe("the renter page in a real browser", () => {
  let stack: Stack;
  let browser: Browser;
  let renterA: BrowserContext;
  let pageA: Page;
  let renterB: BrowserContext;
  let pageB: Page;
  let first = "";
  let second = "";
  let accessCookie = "";

  beforeAll(async () => {
    await requirePrerequisites();
    stack = await startStack();
    browser = await launchChromium();
  }, 240_000);

  afterAll(async () => {
    await browser?.close();
    await stack?.close();
  }, 120_000);

  /** The first available session the page shows, other than `not`. */
  async function availableCard(page: Page, not: string[], timeoutMs: number): Promise<string> {
    return waitUntil("an available session on the renter page", timeoutMs, async () => {
      for (const item of await page.locator(AVAILABLE).all()) {
        const id = await item.getAttribute("data-session-id");
        if (id && !not.includes(id)) return id;
      }
      return undefined;
    });
  }

  /** Clicks Connect on `id` and returns the Jupyter tab it opens. */
  async function connectTo(context: BrowserContext, page: Page, id: string): Promise<Page> {
    const [tab] = await Promise.all([context.waitForEvent("page"), page.locator(`${card(id)} button`).click()]);
    await tab.waitForURL(`**/s/${id}/tree**`, { timeout: 60_000 });
    return tab;
  }

  it("keeps the page's heartbeat interval equal to the protocol's", () => {
    expect(RENTER_HEARTBEAT_INTERVAL_MS).toBe(DEFAULT_TIMERS.renterHeartbeatIntervalMs);
  });

  it("1. lists the session; Connect opens Jupyter through the relay and a cell prints 42", async () => {
    renterA = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    pageA = await renterA.newPage();
    await pageA.goto(`${stack.cp.url}/renter`);
    first = await availableCard(pageA, [], 120_000);
    const specs = (await pageA.locator(`${card(first)} .specs`).innerText()).replace(/\s+/g, " ");
    expect(specs).toBe("CPUS 1 MEMORY 1 GB GPUS None PRICE $0.42 / hour");
    await pageA.screenshot({ path: join(ARTIFACTS, "renter-desktop.png"), fullPage: true });

    const jupyter = await connectTo(renterA, pageA, first);
    expect(pageA.url()).toBe(`${stack.cp.url}/renter`);
    await pageA.locator(`${card(first)}[data-status="yours"]`).waitFor();
    await pageA.locator("#lock-panel").waitFor();
    const cookie = (await renterA.cookies()).find((c) => c.name === "runit_access");
    expect(cookie).toMatchObject({ path: `/s/${first}/`, httpOnly: true, sameSite: "Strict" });
    accessCookie = `${cookie?.name}=${cookie?.value}`;

    // The notebook goes in through the relay with the page's cookie; the cell runs in the browser.
    const put = await renterA.request.put(`${stack.cp.url}/s/${first}/api/contents/e2e.ipynb`, { data: printNotebook() });
    expect(put.status()).toBe(201);
    expect(await runNotebookCell(jupyter, `${stack.cp.url}/s/${first}/notebooks/e2e.ipynb`)).toBe("42");
    await jupyter.screenshot({ path: join(ARTIFACTS, "jupyter-through-relay.png") });
    // Jupyter's own cookies (login, `_xsrf` at Path=/) never land on the control plane's origin.
    expect((await renterA.cookies()).map((c) => c.name)).toEqual(["runit_access"]);

    await pageA.bringToFront();
    await pageA.screenshot({ path: join(ARTIFACTS, "renter-desktop-connected.png"), fullPage: true });
    await pageA.setViewportSize({ width: 375, height: 812 });
    await pageA.screenshot({ path: join(ARTIFACTS, "renter-375px.png"), fullPage: true });
    const overflow = await pageA.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    expect(overflow).toBeLessThanOrEqual(0);
    await pageA.setViewportSize({ width: 1280, height: 800 });
  }, 240_000);

  it("2. a second renter sees the session in use and is told so on Connect", async () => {
    renterB = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    pageB = await renterB.newPage();
    await pageB.goto(`${stack.cp.url}/renter`);
    const inUse = pageB.locator(`${card(first)}[data-status="in-use"]`);
    await inUse.waitFor({ timeout: 15_000 });
    expect((await inUse.locator(".status").innerText()).trim()).toBe("In use");
    await inUse.locator("button").click();
    const alert = pageB.locator("#alert");
    await alert.getByText("Session already in use", { exact: false }).waitFor({ timeout: 15_000 });
    expect(await alert.getAttribute("role")).toBe("alert");
    // The tab opened for the click is closed again; no token reached this renter.
    await waitUntil("the blank tab to close", 5_000, async () => (renterB.pages().length === 1 ? true : undefined));
    expect((await renterB.cookies()).some((c) => c.name === "runit_access")).toBe(false);
    await pageB.screenshot({ path: join(ARTIFACTS, "renter-in-use.png"), fullPage: true });
  }, 60_000);

  it("3. the lock holder's cookie is refused from 127.0.0.2", async () => {
    const path = `/s/${first}/api/status`;
    const mine = await getFrom(stack.cp.url, path, { Cookie: accessCookie }, "127.0.0.1");
    expect(mine.status).toBe(200);
    const stolen = await getFrom(stack.cp.url, path, { Cookie: accessCookie }, "127.0.0.2");
    expect(stolen.status).toBe(403);
    expect(JSON.parse(stolen.body)).toEqual({ error: "IP mismatch - access denied", code: "IP_MISMATCH" });
    expect(stack.out.join("")).toMatch(/SESSION_HIJACK_ATTEMPT: \{"sessionId":"[0-9a-f-]+","ip":"127\.0\.0\.2"/);
  }, 30_000);

  it("4. Release ends the session; a fresh one appears within seconds with an empty workspace", async () => {
    for (const tab of renterA.pages()) if (tab !== pageA) await tab.close();
    const released = Date.now();
    await pageA.getByRole("button", { name: "Release" }).click();
    await pageA.locator(card(first)).waitFor({ state: "detached", timeout: 15_000 });
    await pageA.locator("#notice").getByText("Session released").waitFor();
    await pageB.locator(card(first)).waitFor({ state: "detached", timeout: 15_000 });
    second = await availableCard(pageA, [first], 60_000);
    const recycleMs = Date.now() - released;
    process.stdout.write(`[browser-e2e] release → fresh session listed in ${recycleMs} ms\n`);
    expect(recycleMs).toBeLessThan(60_000);

    const jupyter = await connectTo(renterA, pageA, second);
    const listing = await renterA.request.get(`${stack.cp.url}/s/${second}/api/contents`);
    expect(listing.status()).toBe(200);
    expect((await listing.json()) as { content: unknown[] }).toMatchObject({ type: "directory", content: [] });
    await jupyter.close();
  }, 120_000);

  it("5. the open page keeps the lock; closed, the lock lapses and a fresh session is offered", async () => {
    // Only the renter page is open (no Jupyter traffic): its heartbeats alone hold the lock.
    await pageA.waitForTimeout(TIMERS.lockTimeoutMs + 2_000);
    expect((await listSessions(stack.cp.url)).find((s) => s.sessionId === second)?.status).toBe("LOCKED");
    // Time is kept in a worker, which Chrome does not throttle like a hidden tab's timers.
    expect(pageA.workers().map((w) => w.url())).toContain(`${stack.cp.url}/renter/assets/timerWorker.js`);

    await renterA.close();
    const closed = Date.now();
    await waitUntil("the lock to lapse", TIMERS.lockTimeoutMs + 10_000, async () =>
      (await listSessions(stack.cp.url)).some((s) => s.sessionId === second) ? undefined : true,
    );
    const lapsedMs = Date.now() - closed;
    process.stdout.write(`[browser-e2e] page closed → lock released after ${lapsedMs} ms\n`);
    // Closing the page does not release: the lock lapses (about 2/3 of the timeout after the
    // close, as the last heartbeat was at most a third of it before; the bound leaves room for load).
    expect(lapsedMs).toBeGreaterThanOrEqual(2_000);
    expect(stack.out.join("")).toContain(`SESSION_UNLOCKED: {"sessionId":"${second}","reason":"LOCK_TIMEOUT"`);

    const third = await availableCard(pageB, [first, second], 60_000);
    expect(third).not.toBe(second);
    await pageB.screenshot({ path: join(ARTIFACTS, "renter-after-lapse.png"), fullPage: true });
    expect(await agentContainers(stack.agentName)).toHaveLength(1);
  }, 120_000);

  it("6. stopping the agent leaves no container behind", async () => {
    await stack.agent.stop();
    expect(await agentContainers(stack.agentName)).toEqual([]);
    await pageB.locator("li.session").first().waitFor({ state: "detached", timeout: 15_000 });
    await pageB.locator("#empty").waitFor();
  }, 90_000);
});
