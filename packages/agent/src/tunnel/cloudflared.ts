import { spawn, type ChildProcess } from "node:child_process";
import { createServer } from "node:net";
import type { TunnelSpec } from "@runit/protocol";
import type { AgentLogger } from "../logger.js";
import { parseQuickTunnelUrl, quickTunnelUrlFromMetrics } from "./quickTunnelUrl.js";
import type { SessionTunnel, TunnelEvent } from "./types.js";

/** Options of the cloudflared quick tunnel. */
export interface CloudflaredOptions {
  logger: AgentLogger;
  /** Host port of Jupyter on 127.0.0.1. */
  jupyterPort: number;
  /** cloudflared binary (a stand-in in tests). */
  bin?: string;
  fetch?: typeof fetch;
  /** How long to wait for the URL after each start. */
  urlTimeoutMs?: number;
  /** Restarts allowed after unexpected exits before the tunnel is declared dead. */
  maxRestarts?: number;
}

/** Picks a free loopback port for cloudflared's metrics server. */
async function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === "object" && addr ? resolve(addr.port) : reject(new Error("no port"))));
    });
  });
}

/**
 * Runs `cloudflared tunnel --url http://127.0.0.1:PORT --metrics 127.0.0.1:M` and learns the
 * public URL from GET /quicktunnel or from the box in its log, whichever comes first. When the
 * process dies it is restarted (bounded); a new URL is reported as a `url-changed` event.
 */
export function createCloudflaredTunnel(opts: CloudflaredOptions): SessionTunnel {
  const fetchFn = opts.fetch ?? fetch;
  const listeners = new Set<(e: TunnelEvent) => void>();
  const emit = (e: TunnelEvent): void => listeners.forEach((l) => l(e));
  let child: ChildProcess | undefined;
  let closed = false;
  let restarts = 0;
  let currentUrl: string | undefined;

  async function startOnce(): Promise<string> {
    const metricsPort = await freeLoopbackPort();
    const args = ["tunnel", "--url", `http://127.0.0.1:${opts.jupyterPort}`, "--metrics", `127.0.0.1:${metricsPort}`];
    const proc = spawn(opts.bin ?? "cloudflared", args, { stdio: ["ignore", "pipe", "pipe"] });
    child = proc;
    let log = "";
    const onOutput = (chunk: Buffer): void => {
      if (log.length < 64_000) log += chunk.toString("utf8");
    };
    proc.stdout?.on("data", onOutput);
    proc.stderr?.on("data", onOutput);
    const exited = new Promise<string>((_, reject) => {
      proc.once("error", (err) => reject(new Error(`cannot run cloudflared (${opts.bin ?? "cloudflared"}): ${err.message}`)));
      proc.once("exit", (code) => reject(new Error(`cloudflared exited (code ${code}) before it printed a tunnel URL`)));
    });
    const found = (async (): Promise<string> => {
      const deadline = Date.now() + (opts.urlTimeoutMs ?? 30_000);
      for (let i = 0; i < 10_000 && Date.now() < deadline; i++) {
        const fromLog = parseQuickTunnelUrl(log);
        if (fromLog) return fromLog;
        try {
          const res = await fetchFn(`http://127.0.0.1:${metricsPort}/quicktunnel`, { signal: AbortSignal.timeout(1000) });
          const fromMetrics = res.ok ? quickTunnelUrlFromMetrics(await res.json()) : undefined;
          if (fromMetrics) return fromMetrics;
        } catch {
          // metrics server not up yet
        }
        await new Promise((r) => setTimeout(r, 200));
      }
      throw new Error("cloudflared printed no quick-tunnel URL in time");
    })();
    exited.catch(() => undefined);
    try {
      const url = await Promise.race([found, exited]);
      proc.once("exit", (code) => void onUnexpectedExit(proc, code));
      return url;
    } catch (err) {
      proc.kill("SIGTERM");
      throw err;
    }
  }

  async function onUnexpectedExit(proc: ChildProcess, code: number | null): Promise<void> {
    if (closed || proc !== child) return;
    opts.logger.info(`[agent] cloudflared exited (code ${code}); restarting it`);
    for (; restarts < (opts.maxRestarts ?? 5) && !closed; ) {
      restarts++;
      await new Promise((r) => setTimeout(r, Math.min(5000, 250 * 2 ** restarts)));
      if (closed) return;
      try {
        const url = await startOnce();
        opts.logger.info(`[agent] detected public URL: ${url}`);
        if (url !== currentUrl) {
          currentUrl = url;
          emit({ type: "url-changed", spec: { kind: "cloudflared", publicUrl: url } });
        }
        return;
      } catch (err) {
        opts.logger.error(`[agent] cloudflared restart failed: ${(err as Error).message}`);
      }
    }
    if (!closed) emit({ type: "died", reason: "cloudflared keeps exiting" });
  }

  return {
    async describe(): Promise<TunnelSpec> {
      if (!currentUrl) {
        opts.logger.info("[agent] starting cloudflared...");
        currentUrl = await startOnce();
        opts.logger.info(`[agent] detected public URL: ${currentUrl}`);
      }
      return { kind: "cloudflared", publicUrl: currentUrl };
    },
    attach: async () => undefined,
    async close() {
      closed = true;
      const proc = child;
      if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
      const gone = new Promise<void>((r) => proc.once("exit", () => r()));
      proc.kill("SIGTERM");
      const timer = setTimeout(() => proc.kill("SIGKILL"), 3000);
      await gone;
      clearTimeout(timer);
    },
    onEvent(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  };
}
