// The agent's relay tunnel against a hand-driven control plane (a raw WebSocket server speaking
// the tunnel protocol) and a local HTTP server standing in for Jupyter.
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { WebSocketServer, type WebSocket } from "ws";
import { asSecret, decodeTunnelFrame, encodeControlFrame, type TunnelFrame } from "@runit/protocol";
import { createRelayTunnel, type RelayTunnel } from "../src/tunnel/relay.js";

const SESSION_ID = "1e2d3c4b-5a69-4788-96a5-b4c3d2e1f0a9";
const BASE = `/s/${SESSION_ID}/`;
const SECRET = "k".repeat(43);
const TOKEN = "jupyter-token-0123456789";

interface FakeControlPlane {
  url: string;
  wss: WebSocketServer;
  dials: number[];
  authHeaders: string[];
  frames: TunnelFrame[];
  sockets: WebSocket[];
  refuse: boolean;
  close(): Promise<void>;
}

async function startFakeControlPlane(options: { autoPong?: boolean } = {}): Promise<FakeControlPlane> {
  const server: Server = createServer((_req, res) => res.writeHead(404).end());
  const wss = new WebSocketServer({ noServer: true, autoPong: options.autoPong ?? true });
  const cp: FakeControlPlane = {
    url: "",
    wss,
    dials: [],
    authHeaders: [],
    frames: [],
    sockets: [],
    refuse: false,
    close: async () => undefined,
  };
  server.on("upgrade", (req, socket, head) => {
    cp.dials.push(Date.now());
    cp.authHeaders.push(req.headers.authorization ?? "");
    if (cp.refuse || req.url !== "/agent/tunnel") return void socket.end("HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n");
    wss.handleUpgrade(req, socket, head, (ws) => {
      cp.sockets.push(ws);
      ws.on("message", (data: Buffer, isBinary: boolean) => {
        const decoded = decodeTunnelFrame(isBinary ? new Uint8Array(data) : data.toString());
        if (decoded.ok) cp.frames.push(decoded.frame);
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  cp.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  cp.close = async () => {
    for (const ws of wss.clients) ws.terminate();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return cp;
}

async function nextFrame<T extends TunnelFrame["type"]>(cp: FakeControlPlane, type: T, timeoutMs = 3000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const index = cp.frames.findIndex((f) => f.type === type);
    if (index >= 0) return cp.frames.splice(index, 1)[0] as Extract<TunnelFrame, { type: T }>;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`no ${type} frame within ${timeoutMs} ms`);
}

async function startJupyterStandIn(): Promise<{ port: number; headers: IncomingHttpHeaders[]; close(): Promise<void> }> {
  const headers: IncomingHttpHeaders[] = [];
  const server = createServer((req, res) => {
    headers.push(req.headers);
    res.writeHead(200, { "Content-Type": "text/plain", Connection: "keep-alive" }).end(`you asked for ${req.url}`);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as AddressInfo).port,
    headers,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function attach(cp: FakeControlPlane, jupyterPort: number, opts: Partial<Parameters<typeof createRelayTunnel>[0]> = {}): Promise<RelayTunnel> {
  const lines: string[] = [];
  const tunnel = createRelayTunnel({
    logger: { info: (l) => lines.push(l), error: (l) => lines.push(l) },
    pingIntervalMs: 100,
    reconnectMinMs: 40,
    reconnectMaxMs: 320,
    ...opts,
  });
  cleanups.push(async () => {
    await tunnel.close();
    expect(lines.join("\n")).not.toContain(SECRET);
    expect(lines.join("\n")).not.toContain(TOKEN);
  });
  await tunnel.attach({ serverUrl: cp.url, sessionId: SESSION_ID, sessionSecret: asSecret(SECRET), jupyterPort, jupyterToken: asSecret(TOKEN), basePath: BASE });
  return tunnel;
}

function open(streamId: number, path: string, window = 512 * 1024) {
  return encodeControlFrame({ type: "open", streamId, method: "GET", path, headers: [["Cookie", "runit_access=x"], ["Authorization", "Bearer renter"], ["Accept", "*/*"]], upgrade: false, window });
}

describe("relay tunnel (agent side)", () => {
  it("dials out with the session secret and forwards a stream to Jupyter with Jupyter's token", async () => {
    const cp = await startFakeControlPlane();
    const jupyter = await startJupyterStandIn();
    cleanups.push(cp.close, jupyter.close);
    const tunnel = await attach(cp, jupyter.port);
    await tunnel.waitConnected(3000);
    expect(cp.authHeaders).toEqual([`Bearer ${SECRET}`]);
    cp.sockets[0]?.send(open(1, `${BASE}api/status?x=1`));
    cp.sockets[0]?.send(encodeControlFrame({ type: "end", streamId: 1 })); // no request body
    const response = await nextFrame(cp, "response");
    expect(response).toMatchObject({ streamId: 1, status: 200 });
    expect(response.headers.map(([n]) => n.toLowerCase())).not.toContain("connection");
    const data = await nextFrame(cp, "data");
    expect(Buffer.from(data.payload).toString()).toBe(`you asked for ${BASE}api/status?x=1`);
    expect(await nextFrame(cp, "end")).toEqual({ type: "end", streamId: 1 });
    expect(jupyter.headers[0]).toMatchObject({ authorization: `token ${TOKEN}`, host: `127.0.0.1:${jupyter.port}`, accept: "*/*" });
    expect(jupyter.headers[0]?.cookie).toBeUndefined();
    expect(tunnel.counters().txBytes).toBe(data.payload.byteLength);
  });

  it("answers bad frames with typed errors and refuses streams it must not serve", async () => {
    const cp = await startFakeControlPlane();
    const jupyter = await startJupyterStandIn();
    cleanups.push(cp.close, jupyter.close);
    const tunnel = await attach(cp, jupyter.port);
    await tunnel.waitConnected(3000);
    const ws = cp.sockets[0] as WebSocket;
    ws.send("{");
    expect(await nextFrame(cp, "error")).toEqual({ type: "error", code: "BAD_FRAME", message: "control frame is not JSON" });
    ws.send(JSON.stringify({ type: "open", streamId: 0 }));
    expect(await nextFrame(cp, "error")).toMatchObject({ code: "BAD_FRAME", message: expect.stringMatching(/^streamId: /) });
    ws.send(open(2, "/s/another-session/api/status"));
    expect(await nextFrame(cp, "abort")).toEqual({ type: "abort", streamId: 2, code: "FORBIDDEN_PATH", message: "path outside the session" });
    ws.send(open(3, `${BASE}x`, 16 * 1024 * 1024));
    expect(await nextFrame(cp, "abort")).toEqual({ type: "abort", streamId: 3, code: "FLOW_CONTROL", message: "window too large" });
    // A path http.request would throw on is refused by the schema, not by a crash.
    ws.send(encodeControlFrame({ type: "open", streamId: 4, method: "GET", path: `${BASE}a b`, headers: [], upgrade: false, window: 512 * 1024 }));
    expect(await nextFrame(cp, "abort")).toMatchObject({ streamId: 4, code: "BAD_FRAME", message: expect.stringMatching(/^path: /) });
    expect(jupyter.headers).toHaveLength(0);
    expect(tunnel.connected).toBe(true);
  });

  it("aborts a stream with UPSTREAM_UNREACHABLE when Jupyter is down", async () => {
    const cp = await startFakeControlPlane();
    cleanups.push(cp.close);
    const gone = await startJupyterStandIn();
    await gone.close();
    const tunnel = await attach(cp, gone.port);
    await tunnel.waitConnected(3000);
    cp.sockets[0]?.send(open(7, `${BASE}api/status`));
    cp.sockets[0]?.send(encodeControlFrame({ type: "end", streamId: 7 }));
    expect(await nextFrame(cp, "abort")).toMatchObject({ streamId: 7, code: "UPSTREAM_UNREACHABLE" });
  });

  it("redials with growing backoff while the control plane refuses, and stops when closed", async () => {
    const cp = await startFakeControlPlane();
    cleanups.push(cp.close);
    cp.refuse = true;
    const tunnel = await attach(cp, 1);
    const deadline = Date.now() + 5000;
    while (cp.dials.length < 6 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(cp.dials.length).toBe(6);
    const gaps = cp.dials.slice(1).map((t, i) => t - (cp.dials[i] as number));
    // Delays drawn from [base/2, base] with base 40, 80, 160, 320, 320 ms.
    expect(gaps[0]).toBeLessThan(150);
    expect(gaps[3]).toBeGreaterThanOrEqual(150);
    expect(gaps[4]).toBeGreaterThanOrEqual(150);
    cp.refuse = false;
    await tunnel.waitConnected(3000);
    await tunnel.close();
    const dialsAtClose = cp.dials.length;
    await new Promise((r) => setTimeout(r, 500));
    expect(cp.dials.length).toBe(dialsAtClose);
  });

  it("drops a tunnel whose pongs stop and dials a fresh one", async () => {
    const cp = await startFakeControlPlane({ autoPong: false });
    cleanups.push(cp.close);
    const tunnel = await attach(cp, 1);
    await tunnel.waitConnected(3000);
    const deadline = Date.now() + 3000;
    while (cp.dials.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(cp.dials.length).toBe(2);
    expect(cp.dials[1]! - cp.dials[0]!).toBeGreaterThanOrEqual(150); // two ping periods of 100 ms
  });
});
