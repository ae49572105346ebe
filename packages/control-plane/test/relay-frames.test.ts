// The control plane's relay against a hand-driven agent (the `ws` package speaking, and breaking,
// the tunnel protocol). Bad frames get typed error replies or stream aborts, never a crash; the
// control plane speaks HTTP to "Jupyter" over the agent's streams with Jupyter's token, never the
// renter's credentials.
import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { DEFAULT_STREAM_WINDOW_BYTES, MAX_DATA_FRAME_PAYLOAD, TUNNEL_CLOSE_BAD_HELLO } from "@runit/protocol";
import { createRelay } from "../src/relay/index.js";
import { FAKE_JUPYTER_PORT, FAKE_JUPYTER_TOKEN, FakeAgent, dataFrame, jsonResponse } from "./fakeAgent.js";
import { call, rememberSecret, startTestServer, stopAll, type TestServer } from "./harness.js";

const SESSION_ID = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b";

describe("relay: the control plane's tunnel endpoint", () => {
  let server: TestServer;
  let secret: string;
  let agent: FakeAgent;
  let cookie: string;

  beforeAll(async () => {
    rememberSecret(FAKE_JUPYTER_TOKEN);
    server = await startTestServer({}, { relay: (ctx) => createRelay(ctx, { pingIntervalMs: 60_000, helloTimeoutMs: 300 }) });
    const key = server.createKey();
    const reg = await call(server.url, "POST", "/provider/session", {
      headers: { Authorization: `Bearer ${key}` },
      body: { sessionId: SESSION_ID, tunnel: { kind: "relay" }, hardware: { cpus: 1, memoryMb: 512, gpus: [] }, pricing: { hourlyUsd: 0 } },
    });
    expect(reg.status).toBe(201);
    secret = (reg.json as { sessionSecret: string }).sessionSecret;
    rememberSecret(secret);
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

  /** Whether the store was last told the session's tunnel is up (TUNNEL_CONNECTED after any DISCONNECTED). */
  const tunnelUp = (): boolean => server.events("TUNNEL_CONNECTED").length > server.events("TUNNEL_DISCONNECTED").length;

  it("welcomes an agent with its session, and refuses a bad secret with 401 and a non-WebSocket upgrade with 400", async () => {
    const dialled = await FakeAgent.dial(server.url, secret);
    expect(dialled.status).toBe(101);
    agent = dialled.agent as FakeAgent;
    expect(await agent.next("welcome")).toEqual({ type: "welcome", sessionId: SESSION_ID, protocolVersion: 2 });
    expect((await FakeAgent.dial(server.url, "x".repeat(43))).status).toBe(401);
    expect(server.events("INVALID_SESSION_SECRET").at(-1)).toMatchObject({ via: "tunnel" });
    const notWebSocket = await new Promise<string>((resolve) => {
      const socket = connect(server.port, "127.0.0.1", () =>
        socket.write(`GET /agent/tunnel HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${secret}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`),
      );
      let text = "";
      socket.on("data", (d: Buffer) => (text += d.toString()));
      socket.on("close", () => resolve(text));
    });
    expect(notWebSocket).toMatch(/^HTTP\/1\.1 400 /);
    expect(notWebSocket).toContain("Sec-WebSocket-Version: 13 expected");
  });

  it("keeps the session unavailable until the agent's hello, and closes a tunnel whose hello is missing or speaks another version", async () => {
    // The first agent has not said hello: its session is not reachable yet.
    expect(tunnelUp()).toBe(false);
    const early = await call(server.url, "GET", `/s/${SESSION_ID}/api/status`, { headers: { Cookie: cookie } });
    expect(early.status).toBe(502);
    expect((early.json as { code: string }).code).toBe("TUNNEL_UNAVAILABLE");
    // No hello within helloTimeoutMs (300 ms here): closed with 4002.
    const silent = (await FakeAgent.dial(server.url, secret)).agent as FakeAgent;
    await new Promise((r) => setTimeout(r, 600));
    expect(silent.closeCode).toBe(TUNNEL_CLOSE_BAD_HELLO);
    const old = (await FakeAgent.dial(server.url, secret)).agent as FakeAgent;
    old.hello(1);
    await new Promise((r) => setTimeout(r, 200));
    expect(old.closeCode).toBe(TUNNEL_CLOSE_BAD_HELLO);
    // A current agent: live after its hello.
    expect(server.events("TUNNEL_CONNECTED")).toHaveLength(0);
    agent = await FakeAgent.connect(server.url, secret);
    expect(tunnelUp()).toBe(true);
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
    agent.ws.send(Buffer.from([1, 0]));
    expect(await agent.next("error")).toEqual({ type: "error", code: "BAD_FRAME", message: "data frame shorter than its header" });
    agent.send({ type: "open", streamId: 5, window: DEFAULT_STREAM_WINDOW_BYTES });
    expect(await agent.next("error")).toEqual({ type: "error", code: "BAD_FRAME", message: "open not accepted here" });
    agent.ws.send(dataFrame(12345, new Uint8Array([1, 2, 3]))); // unknown stream: dropped quietly
    agent.hello(); // a second hello changes nothing
    await agent.barrier();
    expect(agent.ws.readyState).toBe(WebSocket.OPEN);
    expect(server.events("TUNNEL_CONNECTED")).toHaveLength(1);
    expect(tunnelUp()).toBe(true);
  });

  it("logs only the first 10 error frames an agent sends on one tunnel, so a hostile agent cannot flood the log", async () => {
    const logged = (): string[] => server.err.join("").split("\n").filter((line) => line.includes("refused a frame"));
    const before = logged().length;
    for (let i = 0; i < 30; i++) agent.send({ type: "error", code: "BAD_FRAME", message: `complaint ${i}` });
    await agent.barrier();
    const lines = logged().slice(before);
    expect(lines).toHaveLength(10);
    expect(lines[9]).toContain("complaint 9 (further ones on this tunnel are not logged)");
    expect(agent.ws.readyState).toBe(WebSocket.OPEN);
  });

  it("speaks HTTP to Jupyter over a stream: the renter's credentials out, Jupyter's token in, the connection kept for the next request", async () => {
    const first = call(server.url, "GET", `/s/${SESSION_ID}/api/contents?x=1`, {
      headers: { Cookie: `${cookie}; theme=dark`, Authorization: "Bearer renter", Accept: "application/json" },
    });
    const open = await agent.next("open");
    expect(open).toEqual({ type: "open", streamId: open.streamId, window: DEFAULT_STREAM_WINDOW_BYTES });
    const head = await agent.requestHead(open.streamId);
    const lines = head.split("\r\n");
    expect(lines[0]).toBe(`GET /s/${SESSION_ID}/api/contents?x=1 HTTP/1.1`);
    expect(lines).toContain(`Authorization: token ${FAKE_JUPYTER_TOKEN}`);
    expect(lines).toContain(`Host: 127.0.0.1:${FAKE_JUPYTER_PORT}`);
    expect(lines).toContain("Accept: application/json");
    expect(head).not.toContain("runit_access");
    expect(head).not.toContain("theme=dark");
    expect(head).not.toContain("Bearer renter");
    agent.sendData(open.streamId, jsonResponse({ content: [] }, "Keep-Alive: timeout=5\r\nX-Jupyter: yes\r\n"));
    const reply = await first;
    expect(reply.status).toBe(200);
    expect(reply.json).toEqual({ content: [] });
    expect(reply.headers["x-jupyter"]).toBe("yes");
    expect(reply.headers["keep-alive"]).toBeUndefined(); // hop-by-hop: Jupyter's, not the renter's
    // The next request reuses the pooled connection: data on the same stream, no new open.
    agent.autoAnswer = () => jsonResponse({ again: true });
    const second = await call(server.url, "GET", `/s/${SESSION_ID}/api/status`, { headers: { Cookie: cookie } });
    expect(second.json).toEqual({ again: true });
    expect(agent.frames.filter((f) => f.type === "open")).toEqual([]);
    expect((agent.bytes.get(open.streamId) ?? Buffer.alloc(0)).toString()).toContain(`GET /s/${SESSION_ID}/api/status HTTP/1.1`);
    agent.autoAnswer = undefined;
  });

  it("aborts a stream whose sender ignores its credit (FLOW_CONTROL) instead of buffering", async () => {
    // A renter that reads nothing and an agent that keeps sending: the control plane must stop
    // the stream once the agent passes its credit, not buffer what the renter does not take.
    const renter = connect(server.port, "127.0.0.1");
    await new Promise<void>((resolve) => renter.once("connect", resolve));
    renter.write(`GET /s/${SESSION_ID}/big HTTP/1.1\r\nHost: x\r\nCookie: ${cookie}\r\n\r\n`);
    renter.pause();
    const stream = await waitForRequest(agent, `/s/${SESSION_ID}/big`);
    agent.sendData(stream, "HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n");
    const chunk = new Uint8Array(MAX_DATA_FRAME_PAYLOAD);
    let sent = 0;
    while (sent < 64 * 1024 * 1024 && !agent.frames.some((f) => f.type === "abort")) {
      for (let i = 0; i < 8; i++, sent += chunk.length) agent.sendData(stream, chunk);
      await new Promise((r) => setTimeout(r, 5));
    }
    expect(await agent.next("abort")).toEqual({ type: "abort", streamId: stream, code: "FLOW_CONTROL", message: "peer sent beyond its credit" });
    expect(sent).toBeLessThan(64 * 1024 * 1024);
    renter.destroy();
  });

  it("keeps Jupyter's origin-wide response headers (cookies, Clear-Site-Data, HSTS, ...) off the control plane's origin", async () => {
    const originWide =
      "Set-Cookie: _xsrf=2|abc; Path=/\r\n" +
      `Set-Cookie: username-x=1; HttpOnly; Path=/s/${SESSION_ID}/\r\n` +
      'Clear-Site-Data: "*"\r\n' +
      "Service-Worker-Allowed: /\r\n" +
      "Strict-Transport-Security: max-age=63072000; includeSubDomains\r\n" +
      'Alt-Svc: h2="elsewhere.example:443"\r\n' +
      'NEL: {"report_to":"p","max_age":86400}\r\n' +
      'Report-To: {"group":"p","max_age":86400,"endpoints":[{"url":"https://provider.example/r"}]}\r\n';
    agent.autoAnswer = () => jsonResponse({ ok: 1 }, `${originWide}Content-Security-Policy: frame-ancestors 'self'\r\nX-Kept: yes\r\n`);
    const reply = await call(server.url, "GET", `/s/${SESSION_ID}/tree`, { headers: { Cookie: cookie } });
    agent.autoAnswer = undefined;
    expect(reply.status).toBe(200);
    expect(reply.json).toEqual({ ok: 1 });
    for (const name of ["set-cookie", "clear-site-data", "service-worker-allowed", "strict-transport-security", "alt-svc", "nel", "report-to"]) {
      expect(reply.headers[name], name).toBeUndefined();
    }
    expect(reply.headers["content-security-policy"]).toBe("frame-ancestors 'self'");
    expect(reply.headers["x-kept"]).toBe("yes");
  });

  it("refuses to fetch a service worker script through the relay (404), without asking Jupyter", async () => {
    const before = [...agent.bytes.values()].reduce((n, b) => n + b.length, 0);
    const opens = agent.frames.filter((f) => f.type === "open").length;
    const reply = await call(server.url, "GET", `/s/${SESSION_ID}/sw.js`, { headers: { Cookie: cookie, "Service-Worker": "script" } });
    expect(reply.status).toBe(404);
    expect(reply.json).toEqual({ error: "Service workers are not relayed", code: "NOT_FOUND" });
    await agent.barrier();
    expect([...agent.bytes.values()].reduce((n, b) => n + b.length, 0)).toBe(before);
    expect(agent.frames.filter((f) => f.type === "open").length).toBe(opens);
  });

  it("answers 502 to a response head Node's parser refuses (control character in a header), without crashing", async () => {
    agent.autoAnswer = () => "HTTP/1.1 200 OK\r\nX-Evil: a\u0001b\r\nContent-Length: 2\r\n\r\nok";
    const reply = await call(server.url, "GET", `/s/${SESSION_ID}/x`, { headers: { Cookie: cookie } });
    agent.autoAnswer = undefined;
    expect(reply.status).toBe(502);
    expect(reply.headers["x-evil"]).toBeUndefined();
    expect((reply.json as { code: string }).code).toBe("TUNNEL_UNAVAILABLE");
    expect((await call(server.url, "GET", "/healthz")).status).toBe(200);
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

  it("answers 502 TUNNEL_UNAVAILABLE, naming the agent's reason, when the agent aborts before Jupyter answered", async () => {
    const pending = call(server.url, "GET", `/s/${SESSION_ID}/unreachable`, { headers: { Cookie: cookie } });
    const stream = await waitForRequest(agent, `/s/${SESSION_ID}/unreachable`);
    agent.send({ type: "abort", streamId: stream, code: "UPSTREAM_UNREACHABLE", message: "Jupyter unreachable" });
    const reply = await pending;
    expect(reply.status).toBe(502);
    expect(reply.json).toEqual({ error: "The provider is not reachable right now (Jupyter unreachable)", code: "TUNNEL_UNAVAILABLE" });
  });
});

/** The stream on which the request for `path` arrived (a new one or a pooled one). */
async function waitForRequest(agent: FakeAgent, path: string, timeoutMs = 3000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    for (const [streamId, bytes] of agent.bytes) if (bytes.toString("latin1").includes(`GET ${path} HTTP/1.1`)) return streamId;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`no request for ${path} within ${timeoutMs} ms`);
}
