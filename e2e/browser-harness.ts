// Harness of the browser tests: Debian's Chromium driven by playwright-core, and the real
// system — the control plane (from source, relay on, short timers) and the agent with a real
// runit-jupyter container — all in this process, on 127.0.0.1.
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { chromium, type Browser, type Page } from "playwright-core";
import { startServer, type RunningServer } from "../packages/control-plane/src/index.js";
import type { ServerConfig } from "../packages/control-plane/src/config.js";
import { createRelay } from "../packages/control-plane/src/relay/index.js";
import { ProviderKeyStore } from "../packages/control-plane/src/store/providerKeys.js";
import { runAgent, type AgentHandle } from "../packages/agent/src/index.js";

const run = promisify(execFile);

/** Debian's Chromium: no browser download works here, so playwright-core drives this one. */
export const CHROMIUM = "/usr/bin/chromium";
/** Screenshots for people to look at (gitignored). */
export const ARTIFACTS = fileURLToPath(new URL("../test-artifacts/", import.meta.url));
const PAGE_BUILD = fileURLToPath(new URL("../packages/control-plane/dist/public/renter.js", import.meta.url));

/** Launches headless Chromium with the project's flags; fails loudly when it is missing. */
export async function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: the browser tests need Debian's chromium (./scripts/ensure-chromium.sh)`);
  }
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** Fails loudly when Docker, the session image or the built renter page is missing: never skips. */
export async function requirePrerequisites(): Promise<void> {
  try {
    await run("docker", ["info", "--format", "{{.ServerVersion}}"], { timeout: 20_000 });
  } catch (err) {
    throw new Error(`the browser tests need a Docker engine (./scripts/ensure-docker.sh): ${String(err)}`);
  }
  if (!existsSync(PAGE_BUILD)) {
    throw new Error(`the renter page is not built (${PAGE_BUILD}): run \`pnpm run build\``);
  }
  mkdirSync(ARTIFACTS, { recursive: true });
}

/** Timers of the stack: seconds, so lock timeouts and fresh sessions happen within a test. */
export const TIMERS = {
  lockTimeoutMs: 8_000,
  sweepIntervalMs: 250,
  providerHeartbeatIntervalMs: 2_000,
  agentHeartbeatIntervalMs: 1_000,
} as const;

/** The control plane, one agent, and what they printed. */
export interface Stack {
  cp: RunningServer;
  agent: AgentHandle;
  agentName: string;
  /** Everything the control plane and the agent printed (security log included). */
  out: string[];
  close(): Promise<void>;
}

/** Starts the control plane (relay on) and one agent offering sessions through the relay. */
export async function startStack(overrides: Partial<ServerConfig> = {}): Promise<Stack> {
  const dir = mkdtempSync(join(tmpdir(), "runit-browser-"));
  const out: string[] = [];
  const sink = { write: (s: string) => void out.push(s) };
  const cp = await startServer({
    env: {},
    stdout: sink,
    stderr: sink,
    config: {
      port: 0,
      host: "127.0.0.1",
      dbPath: join(dir, "runit.db"),
      lockTimeoutMs: TIMERS.lockTimeoutMs,
      sweepIntervalMs: TIMERS.sweepIntervalMs,
      providerHeartbeatIntervalMs: TIMERS.providerHeartbeatIntervalMs,
      rateLimits: {
        registration: { max: 1000, windowMs: 60_000 },
        provider: { max: 100_000, windowMs: 60_000 },
        renter: { max: 100_000, windowMs: 60_000 },
      },
      ...overrides,
    },
    relay: (ctx) => createRelay(ctx, { pingIntervalMs: 1000 }),
  });
  const { key } = new ProviderKeyStore(cp.store).create("e2e-browser", Date.now());
  const agentName = `e2e-browser-${process.pid}`;
  let agent: AgentHandle;
  try {
    agent = await runAgent({
      serverUrl: cp.url,
      providerKey: key,
      agentName,
      workspaceRoot: join(dir, "workspace"),
      stateDir: join(dir, "state"),
      heartbeatIntervalMs: TIMERS.agentHeartbeatIntervalMs,
      limits: { memoryMb: 1024, cpus: 1 },
      hourlyUsd: 0.42,
      stdout: sink,
      stderr: sink,
    });
  } catch (err) {
    await cp.close();
    throw err;
  }
  return {
    cp,
    agent,
    agentName,
    out,
    close: async () => {
      await agent.stop().catch(() => undefined);
      await cp.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The containers this agent left (label runit.agent=<name>), running or not. */
export async function agentContainers(agentName: string): Promise<string[]> {
  const { stdout } = await run("docker", ["ps", "-aq", "--filter", `label=runit.agent=${agentName}`]);
  return stdout.split("\n").filter((line) => line.trim() !== "");
}

/** One row of GET /renter/sessions, as the test reads it. */
export interface ListedSession {
  sessionId: string;
  status: string;
  available?: boolean;
}

/** GET /renter/sessions straight from node. */
export async function listSessions(baseUrl: string): Promise<ListedSession[]> {
  const res = await fetch(`${baseUrl}/renter/sessions`);
  return (await res.json()) as ListedSession[];
}

/** Polls `probe` every 200 ms until it returns a value (not undefined) or `timeoutMs` passes. */
export async function waitUntil<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (let i = 0; Date.now() < deadline && i < 100_000; i++) {
    const value = await probe();
    if (value !== undefined) return value;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

/** A plain HTTP GET from a chosen loopback source address (the IP-binding checks). */
export function getFrom(
  baseUrl: string,
  path: string,
  headers: Record<string, string>,
  localAddress: string,
): Promise<{ status: number; body: string }> {
  const url = new URL(path, baseUrl);
  return new Promise((resolve, reject) => {
    const req = request(
      { host: url.hostname, port: url.port, path: url.pathname + url.search, method: "GET", headers, localAddress },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (chunk: Buffer) => chunks.push(chunk));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") }));
        res.on("error", reject);
      },
    );
    req.setTimeout(15_000, () => req.destroy(new Error(`GET ${path} from ${localAddress} timed out`)));
    req.on("error", reject);
    req.end();
  });
}

/** A one-cell notebook (nbformat 4) whose cell prints 6*7. */
export function printNotebook(): Record<string, unknown> {
  return {
    type: "notebook",
    content: {
      nbformat: 4,
      nbformat_minor: 5,
      metadata: { kernelspec: { name: "python3", display_name: "Python 3", language: "python" } },
      cells: [{ cell_type: "code", id: "e2e-cell", metadata: {}, source: "print(6*7)", outputs: [], execution_count: null }],
    },
  };
}

/**
 * Opens the notebook at `url` in `tab` (one written from `printNotebook`), waits for its kernel,
 * runs the cell and returns what the cell printed: HTTP and the kernel's WebSocket both at work.
 */
export async function runNotebookCell(tab: Page, url: string): Promise<string> {
  await tab.goto(url);
  await tab.locator("#kernel_indicator_icon.kernel_idle_icon").waitFor({ timeout: 60_000 });
  await tab.locator(".code_cell .CodeMirror").first().click();
  await tab.keyboard.press("Shift+Enter");
  const output = tab.locator(".code_cell .output_area pre").first();
  await output.waitFor({ timeout: 60_000 });
  return (await output.innerText()).trim();
}
