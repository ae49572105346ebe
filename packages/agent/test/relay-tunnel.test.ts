// The agent's relay tunnel against a hand-driven control plane (the `ws` package's server speaking
// the tunnel protocol, so this also checks the agent's own WebSocket framing against an
// independent implementation) and a local TCP server standing in for Jupyter.
import { createServer, type Server } from "node:http";
import { createServer as createTcpServer, type AddressInfo, type Server as TcpServer, type Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { WebSocketServer, type RawData, type WebSocket } from "ws";
import { asSecret, decodeControlFrame, decodeDataFrame, encodeControlFrame, encodeDataFrame, type TunnelControlFrame } from "@runit/protocol";
import { ControlPlaneError } from "../src/controlPlaneClient.js";
import { createRelayTunnel, type RelayTunnel } from "../src/tunnel/relay.js";
import type { TunnelEvent } from "../src/tunnel/types.js";

const SESSION_ID = "1e2d3c4b-5a69-4788-96a5-b4c3d2e1f0a9";
const BASE = `/s/${SESSION_ID}/`;
const SECRET = "k".repeat(43);
const TOKEN = "jupyter-token-0123456789";

interface FakeControlPlane {
  url: string;
  dials: number[];
  authHeaders: string[];
  frames: TunnelControlFrame[];
  bytes: Map<number, Buffer>;
  sockets: WebSocket[];
  refuse: boolean;
  close(): Promise<void>;
}

/** `onAccept` runs on each accepted tunnel, e.g. to send a welcome and close it at once. */
async function startFakeControlPlane(options: { autoPong?: boolean; onAccept?: (ws: WebSocket) => void } = {}): Promise<FakeControlPlane> {
  const server: Server = createServer((_req, res) => res.writeHead(404).end());
  const wss = new WebSocketServer({ noServer: true, autoPong: options.autoPong ?? true, perMessageDeflate: false });
  const cp: FakeControlPlane = { url: "", dials: [], authHeaders: [], frames: [], bytes: new Map(), sockets: [], refuse: false, close: async () => undefined };
  server.on("upgrade", (req, socket, head) => {
    cp.dials.push(Date.now());
    cp.authHeaders.push(req.headers.authorization ?? "");
    if (cp.refuse || req.url !== "/agent/tunnel") return void socket.end("HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n");
    wss.handleUpgrade(req, socket, head, (ws) => {
      cp.sockets.push(ws);
      ws.on("message", (data: RawData, isBinary: boolean) => {
        const buf = Buffer.from(data as Buffer);
        if (!isBinary) {
          const decoded = decodeControlFrame(buf.toString());
          if (decoded.ok) cp.frames.push(decoded.frame);
          return;
        }
        const frame = decodeDataFrame(buf);
        if (frame.ok) cp.bytes.set(frame.streamId, Buffer.concat([cp.bytes.get(frame.streamId) ?? Buffer.alloc(0), frame.payload]));
      });
      options.onAccept?.(ws);
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

async function until<T>(get: () => T | undefined | false, what: string, timeoutMs = 3000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = get();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function nextFrame<T extends TunnelControlFrame["type"]>(cp: FakeControlPlane, type: T) {
  return until(() => {
    const index = cp.frames.findIndex((f) => f.type === type);
    return index >= 0 ? (cp.frames.splice(index, 1)[0] as Extract<TunnelControlFrame, { type: T }>) : undefined;
  }, `a ${type} frame`);
}

/** A TCP server standing in for Jupyter: records what each connection received, answers as told. */
interface JupyterStandIn {
  port: number;
  received: Buffer[];
  ended: boolean[];
  connections: Socket[];
  close(): Promise<void>;
}

async function startJupyterStandIn(onConnection?: (socket: Socket) => void): Promise<JupyterStandIn> {
  const standIn: JupyterStandIn = { port: 0, received: [], ended: [], connections: [], close: async () => undefined };
  const server: TcpServer = createTcpServer({ allowHalfOpen: true }, (socket) => {
    const index = standIn.connections.push(socket) - 1;
    standIn.received[index] = Buffer.alloc(0);
    standIn.ended[index] = false;
    socket.on("data", (d: Buffer) => (standIn.received[index] = Buffer.concat([standIn.received[index] as Buffer, d])));
    socket.on("end", () => (standIn.ended[index] = true));
    socket.on("error", () => undefined);
    onConnection?.(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  standIn.port = (server.address() as AddressInfo).port;
  standIn.close = async () => {
    for (const socket of standIn.connections) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return standIn;
}

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function attach(cp: FakeControlPlane, jupyterPort: number, opts: Partial<Parameters<typeof createRelayTunnel>[0]> = {}, lines: string[] = []): Promise<RelayTunnel> {
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
  await tunnel.attach({ serverUrl: cp.url, sessionId: SESSION_ID, sessionSecret: asSecret(SECRET), jupyter: { kind: "tcp", port: jupyterPort }, jupyterToken: asSecret(TOKEN), basePath: BASE });
  return tunnel;
}

/** Waits (up to `timeoutMs`) for `count` dials and returns the gaps between them, in ms. */
async function dialGaps(cp: FakeControlPlane, count: number, timeoutMs: number): Promise<number[]> {
  const deadline = Date.now() + timeoutMs;
  while (cp.dials.length < count && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  expect(cp.dials.length).toBe(count);
  return cp.dials.slice(1).map((t, i) => t - (cp.dials[i] as number));
}

function send(cp: FakeControlPlane, frame: TunnelControlFrame): void {
  cp.sockets.at(-1)?.send(encodeControlFrame(frame));
}

function sendData(cp: FakeControlPlane, streamId: number, payload: string | Buffer): void {
  cp.sockets.at(-1)?.send(encodeDataFrame(streamId, Buffer.from(payload)));
}

describe("relay tunnel (agent side)", () => {
  it("dials out with the session secret, says hello with Jupyter's port and token, and pipes a stream to Jupyter byte for byte", async () => {
    const cp = await startFakeControlPlane();
    const jupyter = await startJupyterStandIn((socket) => socket.once("data", () => socket.end("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")));
    cleanups.push(cp.close, jupyter.close);
    const tunnel = await attach(cp, jupyter.port);
    await tunnel.waitConnected(3000);
    expect(cp.authHeaders).toEqual([`Bearer ${SECRET}`]);
    expect(await nextFrame(cp, "hello")).toEqual({ type: "hello", protocolVersion: 2, jupyterPort: jupyter.port, jupyterToken: TOKEN });
    send(cp, { type: "open", streamId: 1, window: 512 * 1024 });
    const request = `GET ${BASE}api/status HTTP/1.1\r\nHost: 127.0.0.1:${jupyter.port}\r\nAuthorization: token ${TOKEN}\r\n\r\n`;
    sendData(cp, 1, request);
    send(cp, { type: "end", streamId: 1 });
    await until(() => cp.bytes.get(1)?.toString() === "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", "Jupyter's answer");
    expect(jupyter.received[0]?.toString()).toBe(request); // the agent adds and removes nothing
    expect(await nextFrame(cp, "end")).toEqual({ type: "end", streamId: 1 });
    await until(() => jupyter.ended[0], "the half close to reach Jupyter");
    expect(tunnel.counters()).toMatchObject({ rxBytes: Buffer.byteLength(request), txBytes: 40 });
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
    ws.send(JSON.stringify({ type: "open", streamId: 0, window: 65536 }));
    expect(await nextFrame(cp, "error")).toMatchObject({ code: "BAD_FRAME", message: expect.stringMatching(/^streamId: /) });
    send(cp, { type: "open", streamId: 3, window: 16 * 1024 * 1024 });
    expect(await nextFrame(cp, "abort")).toEqual({ type: "abort", streamId: 3, code: "FLOW_CONTROL", message: "window too large" });
    send(cp, { type: "open", streamId: 4, window: 65536 });
    send(cp, { type: "open", streamId: 4, window: 65536 });
    expect(await nextFrame(cp, "abort")).toEqual({ type: "abort", streamId: 4, code: "DUPLICATE_STREAM", message: "stream id in use" });
    send(cp, { type: "hello", protocolVersion: 2, jupyterPort: 1, jupyterToken: "x".repeat(16) });
    expect(await nextFrame(cp, "error")).toEqual({ type: "error", code: "BAD_FRAME", message: "hello not accepted here" });
    expect(tunnel.connected).toBe(true);
  });

  it("aborts a stream with UPSTREAM_UNREACHABLE when Jupyter is down", async () => {
    const cp = await startFakeControlPlane();
    cleanups.push(cp.close);
    const gone = await startJupyterStandIn();
    await gone.close();
    const tunnel = await attach(cp, gone.port);
    await tunnel.waitConnected(3000);
    send(cp, { type: "open", streamId: 7, window: 65536 });
    expect(await nextFrame(cp, "abort")).toMatchObject({ streamId: 7, code: "UPSTREAM_UNREACHABLE", message: expect.stringMatching(/^Jupyter unreachable: /) });
  });

  it("never sends Jupyter's bytes beyond the credit granted, and resumes when credit comes", async () => {
    const cp = await startFakeControlPlane();
    const big = Buffer.alloc(4 * 1024 * 1024, 5);
    const jupyter = await startJupyterStandIn((socket) => socket.end(big));
    cleanups.push(cp.close, jupyter.close);
    const tunnel = await attach(cp, jupyter.port);
    await tunnel.waitConnected(3000);
    send(cp, { type: "open", streamId: 9, window: 65536 });
    await until(() => (cp.bytes.get(9)?.length ?? 0) >= 65536, "the first window");
    await new Promise((r) => setTimeout(r, 200));
    expect(cp.bytes.get(9)?.length).toBe(65536);
    // As an honest receiver does: credit back what arrived, never more than a window in all.
    for (let granted = 65536; granted < big.length; granted += 65536) {
      await until(() => (cp.bytes.get(9)?.length ?? 0) >= granted, `${granted} bytes`);
      expect(cp.bytes.get(9)?.length).toBe(granted);
      send(cp, { type: "credit", streamId: 9, bytes: 65536 });
    }
    await until(() => cp.bytes.get(9)?.length === big.length, "the rest");
    expect(cp.bytes.get(9)?.equals(big)).toBe(true);
  });

  it("redials with growing backoff while the control plane refuses, and stops when closed", async () => {
    const cp = await startFakeControlPlane();
    cleanups.push(cp.close);
    cp.refuse = true;
    const tunnel = await attach(cp, 1);
    const gaps = await dialGaps(cp, 6, 5000);
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

  it.each([
    [4000, "replaced by a newer tunnel"],
    [4001, "SESSION_ENDED"],
    [4002, "no hello"],
  ])("backs off to the cap when the control plane accepts the tunnel and closes it at once (%i %s)", async (code, reason) => {
    const cp = await startFakeControlPlane({ onAccept: (ws) => ws.close(code, reason) });
    cleanups.push(cp.close);
    const events: TunnelEvent[] = [];
    const tunnel = await attach(cp, 1);
    tunnel.onEvent((e) => events.push(e));
    const gaps = await dialGaps(cp, 6, 5000);
    // A handshake alone no longer resets the backoff: base 40, 80, 160, 320, 320 ms as for refusals.
    expect(gaps[3]).toBeGreaterThanOrEqual(150);
    expect(gaps[4]).toBeGreaterThanOrEqual(150);
    expect(events).toEqual([]);
  });

  it("resets the backoff once a tunnel has stayed up for stableAfterMs", async () => {
    const cp = await startFakeControlPlane();
    cleanups.push(cp.close);
    cp.refuse = true;
    const tunnel = await attach(cp, 1, { stableAfterMs: 200 });
    await until(() => cp.dials.length >= 5, "five refused dials"); // the delay is at its 320 ms cap now
    cp.refuse = false;
    await tunnel.waitConnected(3000);
    await new Promise((r) => setTimeout(r, 300));
    const dialsBefore = cp.dials.length;
    const closedAt = Date.now();
    (cp.sockets.at(-1) as WebSocket).close(4000, "replaced by a newer tunnel");
    await until(() => cp.dials.length > dialsBefore, "the redial");
    expect(cp.dials.at(-1)! - closedAt).toBeLessThan(150); // 20-40 ms again, not 160-320
  });

  it.each([
    ["its welcome", { type: "welcome", sessionId: SESSION_ID, protocolVersion: 3 }],
    ["the close reason (a welcome this agent cannot read)", { type: "welcome", sessionId: SESSION_ID, protocolVersion: 3, extra: true }],
  ])("stops for good with one fatal event when the control plane speaks another protocol version, told by %s", async (_how, welcome) => {
    const cp = await startFakeControlPlane({
      onAccept: (ws) => {
        ws.send(JSON.stringify(welcome));
        // What the real control plane does once the hello names another version.
        setTimeout(() => ws.close(4002, "protocol version 3 required"), 20);
      },
    });
    cleanups.push(cp.close);
    const events: TunnelEvent[] = [];
    const lines: string[] = [];
    const tunnel = await attach(cp, 1, {}, lines);
    tunnel.onEvent((e) => events.push(e));
    await until(() => events.length > 0, "the fatal event");
    await new Promise((r) => setTimeout(r, 1000));
    expect(cp.dials.length).toBe(1);
    expect(tunnel.connected).toBe(false);
    const message = "the control plane speaks tunnel protocol 3 and this agent 2: upgrade runit-agent";
    expect(events).toEqual([{ type: "fatal", error: expect.objectContaining({ message, code: "PROTOCOL_VERSION_MISMATCH", fatal: true }) }]);
    expect((events[0] as { error: Error }).error).toBeInstanceOf(ControlPlaneError);
    expect(lines.filter((l) => !l.startsWith("[agent] relay tunnel dialling ") && !l.startsWith("[agent] relay tunnel connected for: "))).toEqual([
      `[agent] relay tunnel stopped: ${message}`,
    ]);
    const late: TunnelEvent[] = [];
    tunnel.onEvent((e) => late.push(e)); // a listener that subscribes afterwards still hears of it
    await until(() => late.length > 0, "the fatal event for a late listener");
    expect(late).toEqual(events);
  });

  it("drops a tunnel whose pongs stop and dials a fresh one", async () => {
    const cp = await startFakeControlPlane({ autoPong: false });
    cleanups.push(cp.close);
    const tunnel = await attach(cp, 1);
    await tunnel.waitConnected(3000);
    const [gap] = await dialGaps(cp, 2, 3000);
    expect(gap).toBeGreaterThanOrEqual(150); // two ping periods of 100 ms
  });
});
