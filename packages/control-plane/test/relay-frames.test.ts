// The control plane's relay against a hand-driven agent: a raw WebSocket speaking (and breaking)
// the tunnel protocol. Bad frames get typed error replies or stream aborts, never a crash.
import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import {
  DEFAULT_STREAM_WINDOW_BYTES,
  MAX_DATA_FRAME_PAYLOAD,
  decodeTunnelFrame,
  encodeControlFrame,
  encodeDataFrame,
  type TunnelFrame,
} from "@runit/protocol";
import { createRelay } from "../src/relay/index.js";
import { call, rememberSecret, startTestServer, stopAll, type TestServer } from "./harness.js";

const SESSION_ID = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b";

/** A raw tunnel client that records every frame it receives. */
class FakeAgent {
  frames: TunnelFrame[] = [];
  constructor(readonly ws: WebSocket) {
    ws.on("message", (data: Buffer, isBinary: boolean) => {
      const decoded = decodeTunnelFrame(isBinary ? new Uint8Array(data) : data.toString());
      if (decoded.ok) this.frames.push(decoded.frame);
    });
  }
  async next<T extends TunnelFrame["type"]>(type: T, timeoutMs = 3000): Promise<Extract<TunnelFrame, { type: T }>> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const index = this.frames.findIndex((f) => f.type === type);
      if (index >= 0) return this.frames.splice(index, 1)[0] as Extract<TunnelFrame, { type: T }>;
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error(`no ${type} frame within ${timeoutMs} ms`);
  }
}

function dialTunnel(server: TestServer, secret: string): Promise<{ agent?: FakeAgent; status: number }> {
  const ws = new WebSocket(`ws://127.0.0.1:${server.port}/agent/tunnel`, { headers: { Authorization: `Bearer ${secret}` } });
  const agent = new FakeAgent(ws);
  return new Promise((resolve) => {
    ws.once("open", () => resolve({ agent, status: 101 }));
    ws.once("unexpected-response", (_req, res) => resolve({ status: res.statusCode ?? 0 }));
    ws.once("error", () => resolve({ status: -1 }));
  });
}

describe("relay: the control plane's tunnel endpoint", () => {
  let server: TestServer;
  let secret: string;
  let agent: FakeAgent;
  let cookie: string;

  beforeAll(async () => {
    server = await startTestServer({}, { relay: (ctx) => createRelay(ctx, { pingIntervalMs: 60_000 }) });
    const key = server.createKey();
    const reg = await call(server.url, "POST", "/provider/session", {
      headers: { Authorization: `Bearer ${key}` },
      body: { sessionId: SESSION_ID, tunnel: { kind: "relay" }, hardware: { cpus: 1, memoryMb: 512, gpus: [] }, pricing: { hourlyUsd: 0 } },
    });
    expect(reg.status).toBe(201);
    secret = (reg.json as { sessionSecret: string }).sessionSecret;
    rememberSecret(secret);
    const dialled = await dialTunnel(server, secret);
    expect(dialled.status).toBe(101);
    agent = dialled.agent as FakeAgent;
    const connect = await call(server.url, "POST", `/renter/sessions/${SESSION_ID}/connect`);
    expect(connect.status).toBe(201);
    const token = (connect.json as { accessToken: string }).accessToken;
    rememberSecret(token);
    cookie = `runit_access=${token}`;
  });
  afterAll(async () => {
    agent?.ws.terminate();
    await stopAll();
  });

  it("welcomes an agent with its session and refuses a bad secret with 401", async () => {
    expect(await agent.next("welcome")).toEqual({ type: "welcome", sessionId: SESSION_ID, protocolVersion: 1 });
    expect((await dialTunnel(server, "x".repeat(43))).status).toBe(401);
    expect(server.events("INVALID_SESSION_SECRET").at(-1)).toMatchObject({ via: "tunnel" });
  });

  it("answers malformed frames with typed error frames and keeps the tunnel", async () => {
    agent.ws.send("not json");
    expect(await agent.next("error")).toEqual({ type: "error", code: "BAD_FRAME", message: "control frame is not JSON" });
    agent.ws.send(JSON.stringify({ type: "credit", streamId: 99, bytes: -5 }));
    expect(await agent.next("abort")).toMatchObject({ streamId: 99, code: "BAD_FRAME", message: expect.stringMatching(/^bytes: /) });
    agent.ws.send(JSON.stringify({ type: "teleport" }));
    expect(await agent.next("error")).toMatchObject({ code: "BAD_FRAME" });
    agent.ws.send(Buffer.from([7, 0, 0, 0, 1, 42]));
    expect(await agent.next("error")).toEqual({ type: "error", code: "BAD_FRAME", message: "unknown binary frame kind 7" });
    agent.ws.send(encodeControlFrame({ type: "open", streamId: 5, method: "GET", path: "/", headers: [], upgrade: false, window: DEFAULT_STREAM_WINDOW_BYTES }));
    expect(await agent.next("error")).toEqual({ type: "error", code: "BAD_FRAME", message: "open not accepted here" });
    agent.ws.send(encodeDataFrame(12345, new Uint8Array([1, 2, 3]))); // unknown stream: dropped quietly
    expect(agent.ws.readyState).toBe(WebSocket.OPEN);
  });

  it("opens a stream per renter request, without the renter's credentials, and relays the answer", async () => {
    const pending = call(server.url, "GET", `/s/${SESSION_ID}/api/contents?x=1`, {
      headers: { Cookie: `${cookie}; theme=dark`, Authorization: "Bearer renter" },
    });
    const open = await agent.next("open");
    expect(open).toMatchObject({ method: "GET", path: `/s/${SESSION_ID}/api/contents?x=1`, upgrade: false, window: DEFAULT_STREAM_WINDOW_BYTES });
    const names = open.headers.map(([n]) => n.toLowerCase());
    expect(names).not.toContain("cookie");
    expect(names).not.toContain("authorization");
    expect(await agent.next("end")).toEqual({ type: "end", streamId: open.streamId });
    agent.ws.send(encodeControlFrame({ type: "response", streamId: open.streamId, status: 200, headers: [["Content-Type", "application/json"], ["Connection", "keep-alive"]] }));
    agent.ws.send(encodeDataFrame(open.streamId, new TextEncoder().encode('{"content":[]}')));
    agent.ws.send(encodeControlFrame({ type: "end", streamId: open.streamId }));
    const reply = await pending;
    expect(reply.status).toBe(200);
    expect(reply.json).toEqual({ content: [] });
    expect(reply.headers["content-type"]).toBe("application/json");
  });

  it("aborts a stream whose sender ignores its credit (FLOW_CONTROL) instead of buffering", async () => {
    // A renter that reads nothing and an agent that keeps sending: the control plane must stop
    // the stream once the agent passes its credit, not buffer what the renter does not take.
    const renter = connect(server.port, "127.0.0.1");
    await new Promise<void>((resolve) => renter.once("connect", resolve));
    renter.write(`GET /s/${SESSION_ID}/big HTTP/1.1\r\nHost: x\r\nCookie: ${cookie}\r\n\r\n`);
    renter.pause();
    const open = await agent.next("open");
    agent.ws.send(encodeControlFrame({ type: "response", streamId: open.streamId, status: 200, headers: [] }));
    const chunk = new Uint8Array(MAX_DATA_FRAME_PAYLOAD);
    let sent = 0;
    while (sent < 64 * 1024 * 1024 && !agent.frames.some((f) => f.type === "abort")) {
      for (let i = 0; i < 64; i++, sent += chunk.length) agent.ws.send(encodeDataFrame(open.streamId, chunk));
      await new Promise((r) => setTimeout(r, 5));
    }
    expect(await agent.next("abort")).toEqual({ type: "abort", streamId: open.streamId, code: "FLOW_CONTROL", message: "peer sent beyond its credit" });
    expect(sent).toBeLessThan(64 * 1024 * 1024);
    renter.destroy();
  });

  it("refuses a response head Node cannot write (control character in a header) without crashing", async () => {
    const pending = call(server.url, "GET", `/s/${SESSION_ID}/x`, { headers: { Cookie: cookie } });
    const open = await agent.next("open");
    agent.ws.send(JSON.stringify({ type: "response", streamId: open.streamId, status: 200, headers: [["X-Evil", "a\u0001b"]] }));
    expect(await agent.next("abort")).toMatchObject({ streamId: open.streamId, code: "BAD_FRAME", message: expect.stringMatching(/^headers\.0\.1: /) });
    const reply = await pending;
    expect(reply.status).toBe(502);
    expect(reply.headers["x-evil"]).toBeUndefined();
  });

  it("refuses a malformed escape in the session path (/s/%zz/...) without crashing, for HTTP and upgrades", async () => {
    const http = await call(server.url, "GET", "/s/%zz/api/status", { headers: { Cookie: cookie } });
    expect(http.status).toBe(400); // Express refuses the bad escape before the relay sees it
    const ws = new WebSocket(`ws://127.0.0.1:${server.port}/s/%zz/api/kernels/k/channels`, { headers: { Cookie: cookie } });
    const status = await new Promise<number>((resolve) => {
      ws.once("unexpected-response", (_req, res) => resolve(res.statusCode ?? 0));
      ws.once("open", () => resolve(101));
      ws.once("error", () => resolve(-1));
    });
    expect(status).toBe(403);
  });

  it("answers 502 TUNNEL_UNAVAILABLE when the agent aborts before answering", async () => {
    const pending = call(server.url, "GET", `/s/${SESSION_ID}/x`, { headers: { Cookie: cookie } });
    const open = await agent.next("open");
    agent.ws.send(encodeControlFrame({ type: "abort", streamId: open.streamId, code: "UPSTREAM_UNREACHABLE", message: "Jupyter unreachable" }));
    const reply = await pending;
    expect(reply.status).toBe(502);
    expect(reply.json).toEqual({ error: "The provider is not reachable right now (Jupyter unreachable)", code: "TUNNEL_UNAVAILABLE" });
  });
});
