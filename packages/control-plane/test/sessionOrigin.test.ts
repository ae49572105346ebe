// Per-session origins (RUNIT_SESSION_ORIGIN): every relayed session on a host of its own. The
// control plane with the real relay and a hand-driven agent; hosts chosen with the Host header.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { loadConfig } from "../src/config.js";
import { createRelay } from "../src/relay/index.js";
import { parseSessionOrigin, type SessionOrigin } from "../src/sessionOrigin.js";
import { FAKE_JUPYTER_TOKEN, FakeAgent, jsonResponse } from "./fakeAgent.js";
import { call, rememberSecret, startTestServer, stopAll, type TestServer } from "./harness.js";

const SESSION_ID = "7a1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b";
const OTHER_ID = "8b2d3c4e-5f60-4a71-9b8c-0d1e2f3a4b5c";
const ADMIN_TOKEN = "operator-token-for-session-origin-tests";

describe("RUNIT_SESSION_ORIGIN", () => {
  it("takes http(s)://{id}.<suffix>[:port] and refuses anything else, naming the variable", () => {
    expect(parseSessionOrigin("https://{id}.sessions.example.com")).toEqual({ scheme: "https", suffix: "sessions.example.com", port: "" });
    expect(parseSessionOrigin("http://{id}.localhost:10000/")).toEqual({ scheme: "http", suffix: "localhost", port: "10000" });
    for (const bad of ["https://sessions.example.com", "https://x{id}.example.com", "https://{id}.example.com/s/", "ftp://{id}.example.com", "https://{id}.exa_mple.com", "https://{id}.example.com:70000"]) {
      expect(typeof parseSessionOrigin(bad), bad).toBe("string");
    }
    expect(loadConfig({}).sessionOrigin).toBeUndefined();
    expect(loadConfig({ RUNIT_SESSION_ORIGIN: "https://{id}.s.example.org" }).sessionOrigin).toEqual({ scheme: "https", suffix: "s.example.org", port: "" });
    expect(() => loadConfig({ RUNIT_SESSION_ORIGIN: "https://s.example.org" })).toThrow(/RUNIT_SESSION_ORIGIN/);
  });
});

describe("per-session origins", () => {
  let server: TestServer;
  let agent: FakeAgent;
  let token: string;
  const sessionHost = `${SESSION_ID}.localhost`;
  const origin = parseSessionOrigin("http://{id}.localhost") as SessionOrigin;
  const on = (host: string, headers: Record<string, string> = {}): Record<string, string> => ({ Host: host, ...headers });

  beforeAll(async () => {
    rememberSecret(FAKE_JUPYTER_TOKEN);
    server = await startTestServer({ sessionOrigin: origin, adminToken: ADMIN_TOKEN }, { relay: (ctx) => createRelay(ctx, { pingIntervalMs: 60_000 }) });
    const key = server.createKey();
    const reg = await call(server.url, "POST", "/provider/session", {
      headers: { Authorization: `Bearer ${key}` },
      body: { sessionId: SESSION_ID, tunnel: { kind: "relay" }, hardware: { cpus: 1, memoryMb: 512, gpus: [] }, pricing: { hourlyUsd: 0 } },
    });
    expect(reg.status).toBe(201);
    const secret = (reg.json as { sessionSecret: string }).sessionSecret;
    rememberSecret(secret);
    agent = await FakeAgent.connect(server.url, secret); // the tunnel is dialled on the control plane's own host
    agent.autoAnswer = () => jsonResponse({ jupyter: true });
  });
  afterAll(async () => {
    agent?.ws.terminate();
    await stopAll();
  });

  it("connect hands out an access URL on the session's own host", async () => {
    const connect = await call(server.url, "POST", `/renter/sessions/${SESSION_ID}/connect`);
    expect(connect.status).toBe(201);
    token = (connect.json as { accessToken: string }).accessToken;
    rememberSecret(token);
    expect((connect.json as { accessUrl: string }).accessUrl).toBe(`http://${sessionHost}/access/${token}`);
  });

  it("/access on the control plane's host sends the renter on to the session's host, setting no cookie there", async () => {
    const reply = await call(server.url, "GET", `/access/${token}`);
    expect(reply.status).toBe(302);
    expect(reply.headers.location).toBe(`http://${sessionHost}/access/${token}`);
    expect(reply.headers["set-cookie"]).toBeUndefined();
  });

  it("/access on the session's host sets the scoped cookie there and moves on with a page, not a redirect", async () => {
    const reply = await call(server.url, "GET", `/access/${token}`, { headers: on(sessionHost) });
    expect(reply.status).toBe(200);
    expect(reply.headers["set-cookie"]).toEqual([`runit_access=${token}; Path=/s/${SESSION_ID}/; HttpOnly; SameSite=Strict`]);
    expect(reply.headers["content-security-policy"]).toBe("default-src 'none'");
    expect(reply.headers["referrer-policy"]).toBe("no-referrer");
    expect(reply.text).toContain(`<meta http-equiv="refresh" content="0;url=/s/${SESSION_ID}/">`);
    // Another session's host does not hand this token in: it sends the renter to the right host.
    const elsewhere = await call(server.url, "GET", `/access/${token}`, { headers: on(`${OTHER_ID}.localhost`) });
    expect(elsewhere.status).toBe(302);
    expect(elsewhere.headers.location).toBe(`http://${sessionHost}/access/${token}`);
    expect(elsewhere.headers["set-cookie"]).toBeUndefined();
  });

  it("relays on the session's host; the control plane's host redirects there and another session's host refuses", async () => {
    const cookie = { Cookie: `runit_access=${token}` };
    const relayed = await call(server.url, "GET", `/s/${SESSION_ID}/api/status`, { headers: on(`${sessionHost}:8080`, cookie) });
    expect(relayed.status).toBe(200);
    expect(relayed.json).toEqual({ jupyter: true });
    const opens = agent.frames.filter((f) => f.type === "open").length;
    const main = await call(server.url, "GET", `/s/${SESSION_ID}/api/status?x=1`, { headers: cookie });
    expect(main.status).toBe(308);
    expect(main.headers.location).toBe(`http://${sessionHost}/s/${SESSION_ID}/api/status?x=1`);
    const other = await call(server.url, "GET", `/s/${SESSION_ID}/api/status`, { headers: on(`${OTHER_ID}.localhost`, cookie) });
    expect(other.status).toBe(404);
    expect(other.json).toEqual({ error: "Not found", code: "NOT_FOUND" });
    await agent.barrier();
    expect(agent.frames.filter((f) => f.type === "open").length).toBe(opens);
  });

  it("a session's host serves nothing but its session and the hand-in", async () => {
    for (const [method, path] of [
      ["GET", "/"],
      ["GET", "/healthz"],
      ["GET", "/renter"],
      ["GET", "/renter/sessions"],
      ["POST", `/renter/sessions/${SESSION_ID}/connect`],
      ["POST", `/renter/heartbeat/${token}`],
      ["POST", "/provider/heartbeat"],
      ["GET", "/metrics"],
      ["POST", `/access/${token}`],
      ["GET", `/s/${OTHER_ID}/api/status`],
    ] as const) {
      const reply = await call(server.url, method, path, { headers: on(sessionHost) });
      expect(reply.status, `${method} ${path}`).toBe(404);
    }
    // The control plane's own host is unchanged, and what the host split answered is counted.
    expect((await call(server.url, "GET", "/renter/sessions")).status).toBe(200);
    const metrics = await call(server.url, "GET", "/metrics", { headers: { Authorization: `Bearer ${ADMIN_TOKEN}` } });
    expect(metrics.text).toMatch(/runit_http_requests_total\{method="GET",status="308"\} 1\b/);
    expect(metrics.text).toMatch(/runit_http_requests_total\{method="POST",status="404"\} [1-9]/);
  });

  it("upgrades: a session's relay only on its own host, the agent tunnel never on a session host", async () => {
    const status = (url: string, host: string): Promise<number> =>
      new Promise((resolve) => {
        const ws = new WebSocket(url, { headers: { Host: host, Cookie: `runit_access=${token}` } });
        ws.once("unexpected-response", (_req, res) => resolve(res.statusCode ?? 0));
        ws.once("open", () => (ws.terminate(), resolve(101)));
        ws.once("error", () => resolve(-1));
      });
    const base = `ws://127.0.0.1:${server.port}`;
    expect(await status(`${base}/agent/tunnel`, sessionHost)).toBe(404);
    expect(await status(`${base}/s/${SESSION_ID}/api/kernels/k/channels`, `127.0.0.1:${server.port}`)).toBe(404);
    expect(await status(`${base}/s/${SESSION_ID}/api/kernels/k/channels`, `${OTHER_ID}.localhost`)).toBe(404);
    // On its own host the upgrade reaches "Jupyter" (the fake agent answers it with a plain 200).
    expect(await status(`${base}/s/${SESSION_ID}/api/kernels/k/channels`, sessionHost)).toBe(200);
  });
});
