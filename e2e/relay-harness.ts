// Test harness of the relay tests: a control plane made of the relay plugin alone (fake session
// store, real Express, real sockets), the agent's relay tunnel, and a local target standing in
// for Jupyter. Imports the relay sources directly so these tests need neither package's build.
import { createHash } from "node:crypto";
import { createServer, request, type IncomingHttpHeaders, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import express from "express";
import { WebSocketServer } from "ws";
import { RunitError, asSecret, type EndReason, type SecurityEvent } from "@runit/protocol";
import { sameHost } from "../packages/control-plane/src/originPolicy.js";
import { createRelay, type RelayOptions, type RelayPlugin, type RelaySessions } from "../packages/control-plane/src/relay/index.js";
import { createRelayTunnel, type RelayTunnel, type RelayTunnelOptions } from "../packages/agent/src/tunnel/relay.js";

export const SESSION_ID = "0b3f6c1e-2d4a-4c6b-8e9f-1a2b3c4d5e6f";
export const SESSION_SECRET = "s".repeat(40);
export const ACCESS_TOKEN = "a".repeat(40);
export const JUPYTER_TOKEN = "jupytertoken0123456789abcdef";
export const BASE = `/s/${SESSION_ID}/`;

/** A deterministic byte pattern: block i of 64 KiB is filled with (i * 7 + 13) & 0xff. */
export function patternBlock(i: number): Buffer {
  return Buffer.alloc(64 * 1024, (i * 7 + 13) & 0xff);
}

/** sha256 of `blocks` pattern blocks, from block `first` on. */
export function patternSha256(blocks: number, first = 0): string {
  const hash = createHash("sha256");
  for (let i = first; i < first + blocks; i++) hash.update(patternBlock(i));
  return hash.digest("hex");
}

/** The fake session store: one session, cookie + IP lock, a byte meter with a settable cap. */
export class FakeSessions implements RelaySessions {
  rx = 0;
  tx = 0;
  cap = Number.POSITIVE_INFINITY;
  ended: EndReason | undefined;
  refuseTunnels = false;
  tunnelStates: boolean[] = [];
  events: Array<{ event: SecurityEvent; details: Record<string, unknown> }> = [];
  private listeners: Array<(sessionId: string, reason: EndReason) => void> = [];

  authenticateTunnel(secret: string): { sessionId: string } | RunitError {
    if (this.refuseTunnels || secret !== SESSION_SECRET || this.ended) return new RunitError("INVALID_SESSION_SECRET");
    return { sessionId: SESSION_ID };
  }
  authorizeRelay(sessionId: string, accessToken: string | undefined, ip: string): { ok: true } | { ok: false; error: RunitError } {
    const deny = (error: RunitError) => ({ ok: false as const, error });
    if (sessionId !== SESSION_ID) return deny(new RunitError("SESSION_NOT_FOUND"));
    if (this.ended) return deny(new RunitError(this.ended === "BANDWIDTH_EXCEEDED" ? "BANDWIDTH_EXCEEDED" : "SESSION_NOT_FOUND"));
    if (accessToken !== ACCESS_TOKEN) {
      this.events.push({ event: "RELAY_ACCESS_DENIED", details: { sessionId, ip } });
      return deny(new RunitError("LOCK_REQUIRED"));
    }
    if (ip !== "127.0.0.1") {
      this.events.push({ event: "SESSION_HIJACK_ATTEMPT", details: { sessionId, ip } });
      return deny(new RunitError("IP_MISMATCH"));
    }
    return { ok: true };
  }
  recordRelayTraffic(_sessionId: string, rxBytes: number, txBytes: number): boolean {
    this.rx += rxBytes;
    this.tx += txBytes;
    if (this.rx + this.tx > this.cap && !this.ended) {
      this.ended = "BANDWIDTH_EXCEEDED";
      for (const listener of this.listeners) listener(SESSION_ID, "BANDWIDTH_EXCEEDED");
      return false;
    }
    return !this.ended;
  }
  setTunnelConnected(_sessionId: string, connected: boolean): void {
    this.tunnelStates.push(connected);
  }
  onSessionEnded(listener: (sessionId: string, reason: EndReason) => void): () => void {
    this.listeners.push(listener);
    return () => void (this.listeners = this.listeners.filter((l) => l !== listener));
  }
}

/** The stand-in for Jupyter: records request headers, streams patterns, hashes uploads, echoes WebSockets. */
export interface Target {
  port: number;
  lastHeaders: IncomingHttpHeaders | undefined;
  /** Bytes the current /big response managed to hand to its socket. */
  bigWritten: number;
  /** Connections of /hang requests (and hanging upgrades) that were closed from the relay's side. */
  hangsClosed: number;
  close(): Promise<void>;
}

export async function startTarget(): Promise<Target> {
  const target: Target = { port: 0, lastHeaders: undefined, bigWritten: 0, hangsClosed: 0, close: async () => undefined };
  const server = createServer((req, res) => {
    target.lastHeaders = req.headers;
    const url = new URL(req.url ?? "/", "http://x");
    const path = url.pathname.slice(BASE.length - 1);
    if (path === "/api/status") return void res.writeHead(200, { "Content-Type": "application/json" }).end('{"ok":true}');
    if (path === "/big") {
      return streamPattern(res, Number(url.searchParams.get("blocks")), Number(url.searchParams.get("first") ?? 0), target);
    }
    if (path === "/upload") {
      const hash = createHash("sha256");
      let length = 0;
      req.on("data", (chunk: Buffer) => ((length += chunk.length), hash.update(chunk)));
      req.on("end", () => res.writeHead(200, { "Content-Type": "application/json" }).end(JSON.stringify({ length, sha256: hash.digest("hex") })));
      return;
    }
    if (path === "/hang") return void req.socket.once("close", () => target.hangsClosed++); // never answers
    if (path === "/slow") return void setTimeout(() => res.writeHead(200).end("slow"), Number(url.searchParams.get("ms")));
    if (path === "/hang-body") return void res.writeHead(200).write("started");
    // Refuses an upload at once, unread, and closes the connection (as a server that will not take it).
    if (path === "/refuse-upload") return void res.writeHead(413, { Connection: "close" }).end("too large");
    res.writeHead(404).end("no such path");
  });
  const wss = new WebSocketServer({ noServer: true });
  const hungUpgrades = new Set<import("node:stream").Duplex>();
  wss.on("connection", (ws) => ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary })));
  server.on("upgrade", (req, socket, head) => {
    // /hang-ws: an upgrade Jupyter never answers.
    if ((req.url ?? "").endsWith("/hang-ws")) {
      hungUpgrades.add(socket);
      socket.once("close", () => (hungUpgrades.delete(socket), target.hangsClosed++));
      socket.once("end", () => socket.destroy()); // the server's sockets allow half-open
      return void socket.resume(); // read, so that the peer's close is seen
    }
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit("connection", ws, req));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  target.port = (server.address() as AddressInfo).port;
  target.close = async () => {
    for (const client of wss.clients) client.terminate();
    for (const socket of hungUpgrades) socket.destroy();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return target;
}

/** Answers `blocks` pattern blocks, from block `first` on (so that parallel downloads differ). */
function streamPattern(res: import("node:http").ServerResponse, blocks: number, first: number, target: Target): void {
  target.bigWritten = 0;
  res.writeHead(200, { "Content-Type": "application/octet-stream", "Content-Length": String(blocks * 64 * 1024) });
  let i = first;
  const pump = (): void => {
    while (i < first + blocks) {
      const block = patternBlock(i++);
      const more = res.write(block, () => (target.bigWritten += block.length));
      if (!more) return void res.once("drain", pump);
    }
    res.end();
  };
  pump();
}

/** The control plane side: Express with the relay mounted as the server wires it. */
export interface ControlPlane {
  url: string;
  port: number;
  relay: RelayPlugin;
  sessions: FakeSessions;
  close(): Promise<void>;
}

export async function startControlPlane(options: RelayOptions = {}): Promise<ControlPlane> {
  const sessions = new FakeSessions();
  const relay = createRelay(
    {
      sessions,
      clientIp: (req) => (req.socket.remoteAddress ?? "").replace(/^::ffff:/, ""),
      logger: { info: () => undefined, warn: () => undefined },
      securityLog: (event, details) => sessions.events.push({ event, details }),
      originAllowed: (origin, host) => sameHost(origin, host),
    },
    { pingIntervalMs: 500, meterFlushMs: 50, ...options },
  );
  const app = express();
  app.use("/s/:sessionId", relay.handleHttp);
  app.use(express.json());
  const server: Server = createServer(app);
  server.on("upgrade", (req, socket, head) => {
    if (!relay.handleUpgrade(req, socket, head)) socket.destroy();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    relay,
    sessions,
    close: async () => {
      await relay.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** The agent side: the relay tunnel attached to the target. */
export async function startAgentTunnel(cp: ControlPlane, target: { port: number }, options: Partial<RelayTunnelOptions> = {}): Promise<RelayTunnel> {
  const tunnel = createRelayTunnel({
    logger: { info: () => undefined, error: () => undefined },
    pingIntervalMs: 500,
    reconnectMinMs: 50,
    reconnectMaxMs: 200,
    ...options,
  });
  await tunnel.attach({
    serverUrl: cp.url,
    sessionId: SESSION_ID,
    sessionSecret: asSecret(SESSION_SECRET),
    jupyter: { kind: "tcp", port: target.port },
    jupyterToken: asSecret(JUPYTER_TOKEN),
    basePath: BASE,
  });
  await tunnel.waitConnected(5000);
  return tunnel;
}

/** A stand-in Jupyter, a control plane with `options` and the agent tunnel between them. */
export interface CoreStack {
  target: Target;
  cp: ControlPlane;
  tunnel: RelayTunnel;
  close(): Promise<void>;
}

export async function startCoreStack(options: RelayOptions = {}): Promise<CoreStack> {
  const target = await startTarget();
  let cp: ControlPlane | undefined;
  try {
    cp = await startControlPlane(options);
    const tunnel = await startAgentTunnel(cp, target);
    const started = cp;
    return {
      target,
      cp,
      tunnel,
      close: async () => {
        await tunnel.close();
        await started.close();
        await target.close();
      },
    };
  } catch (err) {
    await cp?.close();
    await target.close();
    throw err;
  }
}

/** A finished HTTP exchange. */
export interface Fetched {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/** One HTTP request over a fresh connection (optionally from another loopback address). */
export function fetchRaw(
  port: number,
  path: string,
  opts: { method?: string; headers?: Record<string, string>; body?: Buffer; localAddress?: string } = {},
): Promise<Fetched> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: "127.0.0.1", port, path, method: opts.method ?? "GET", headers: opts.headers, localAddress: opts.localAddress, agent: false },
      (res: IncomingMessage) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(opts.body);
  });
}

/** The cookie the lock holder's browser sends. */
export const COOKIE = { Cookie: `runit_access=${ACCESS_TOKEN}; other=1` };

/** Polls `check` every 20 ms until it is true or `timeoutMs` passes. */
export async function waitFor(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
