// The relay's tunnel core with real sockets: the control plane's relay plugin in Express, the
// agent's relay tunnel, and a local HTTP + WebSocket server standing in for Jupyter.
import { createHash } from "node:crypto";
import { Agent, request } from "node:http";
import { connect, createServer, type AddressInfo, type Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import {
  BASE,
  COOKIE,
  JUPYTER_TOKEN,
  fetchRaw,
  patternSha256,
  startAgentTunnel,
  startControlPlane,
  startCoreStack,
  startTarget,
  waitFor,
  type ControlPlane,
  type CoreStack,
  type Target,
} from "./relay-harness.js";
import type { RelayTunnel } from "../packages/agent/src/tunnel/relay.js";

const MB = 1024 * 1024;

describe("relay tunnel core", () => {
  let target: Target;
  let cp: ControlPlane;
  let tunnel: RelayTunnel;
  let stack: CoreStack | undefined;

  beforeAll(async () => void ({ target, cp, tunnel } = stack = await startCoreStack()));
  afterAll(() => stack?.close());

  it("relays a request from the lock holder and authenticates to Jupyter itself", async () => {
    const res = await fetchRaw(cp.port, `${BASE}api/status`, { headers: { ...COOKIE, Authorization: "Bearer renter-stuff" } });
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body.toString())).toEqual({ ok: true });
    expect(target.lastHeaders?.authorization).toBe(`token ${JUPYTER_TOKEN}`);
    expect(target.lastHeaders?.cookie).toBeUndefined();
    expect(target.lastHeaders?.host).toBe(`127.0.0.1:${target.port}`);
    expect(cp.sessions.tunnelStates).toEqual([true]);
  });

  it("refuses a request without the cookie with 403 and an event", async () => {
    const res = await fetchRaw(cp.port, `${BASE}api/status`);
    expect(res.status).toBe(403);
    expect(JSON.parse(res.body.toString())).toEqual({ error: "This session is locked to another renter", code: "LOCK_REQUIRED" });
    expect(cp.sessions.events.some((e) => e.event === "RELAY_ACCESS_DENIED")).toBe(true);
  });

  it("lets a planted runit_access cookie sent first not lock the renter out, and refuses planted ones alone", async () => {
    // Another page of the origin (or of the site) can set a same-named cookie with a longer path,
    // which the browser sends before the real one.
    const planted = await fetchRaw(cp.port, `${BASE}api/status`, { headers: { Cookie: `runit_access=planted-by-another-page; ${COOKIE.Cookie}` } });
    expect(planted.status).toBe(200);
    const onlyPlanted = await fetchRaw(cp.port, `${BASE}api/status`, { headers: { Cookie: "runit_access=planted-1; runit_access=planted-2" } });
    expect(onlyPlanted.status).toBe(403);
  });

  it("refuses the right cookie from another IP (127.0.0.2) with 403", async () => {
    const res = await fetchRaw(cp.port, `${BASE}api/status`, { headers: COOKIE, localAddress: "127.0.0.2" });
    expect(res.status).toBe(403);
    expect(JSON.parse(res.body.toString()).code).toBe("IP_MISMATCH");
  });

  it("streams a 50 MB download intact and meters its bytes", async () => {
    const blocks = 800; // 800 × 64 KiB = 50 MiB
    const txBefore = cp.sessions.tx;
    const res = await fetchRaw(cp.port, `${BASE}big?blocks=${blocks}`, { headers: COOKIE });
    expect(res.status).toBe(200);
    expect(res.body.length).toBe(blocks * 64 * 1024);
    expect(createHash("sha256").update(res.body).digest("hex")).toBe(patternSha256(blocks));
    await waitFor(() => cp.sessions.tx - txBefore >= blocks * 64 * 1024, 2000, "meter to count the download");
    // Bodies only; a few bytes of an earlier small response may land in the same flush.
    expect(cp.sessions.tx - txBefore).toBeGreaterThanOrEqual(blocks * 64 * 1024);
    expect(cp.sessions.tx - txBefore).toBeLessThan(blocks * 64 * 1024 + 1024);
    expect(tunnel.counters().txBytes).toBeGreaterThanOrEqual(blocks * 64 * 1024);
  });

  it("streams a 20 MB upload intact and meters its bytes", async () => {
    const body = Buffer.alloc(20 * MB);
    for (let i = 0; i < body.length; i += 4096) body[i] = i % 251;
    const rxBefore = cp.sessions.rx;
    const res = await fetchRaw(cp.port, `${BASE}upload`, { method: "POST", headers: COOKIE, body });
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body.toString())).toEqual({
      length: body.length,
      sha256: createHash("sha256").update(body).digest("hex"),
    });
    await waitFor(() => cp.sessions.rx - rxBefore >= body.length, 2000, "meter to count the upload");
    expect(cp.sessions.rx - rxBefore).toBeGreaterThanOrEqual(body.length);
    expect(cp.sessions.rx - rxBefore).toBeLessThan(body.length + 1024);
  });

  it("keeps memory bounded for a renter that does not read (credit flow control)", async () => {
    const blocks = 3200; // 200 MiB on offer
    const socket = connect(cp.port, "127.0.0.1");
    await new Promise<void>((resolve) => socket.once("connect", resolve));
    socket.write(`GET ${BASE}big?blocks=${blocks} HTTP/1.1\r\nHost: x\r\nCookie: ${COOKIE.Cookie}\r\n\r\n`);
    socket.pause(); // the renter reads nothing
    const before = process.memoryUsage().arrayBuffers;
    // Wait (at most 15 s) until the upstream has written nothing new for a whole second.
    let plateau = -1;
    let stableSince = Date.now();
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      if (target.bigWritten !== plateau) {
        plateau = target.bigWritten;
        stableSince = Date.now();
      } else if (plateau > 0 && Date.now() - stableSince >= 1000) break;
    }
    const grown = process.memoryUsage().arrayBuffers - before;
    socket.destroy();
    console.log(`[relay-core] slow renter: upstream wrote ${(plateau / MB).toFixed(1)} MiB then stopped; arrayBuffers grew ${(grown / MB).toFixed(1)} MiB`);
    expect(Date.now() - stableSince).toBeGreaterThanOrEqual(1000);
    // Kernel socket buffers + one stream window: far below the 200 MiB on offer. (arrayBuffers
    // is the whole test process, slabs included, and GC timing moves it: a loose upper bound.)
    expect(plateau).toBeLessThan(48 * MB);
    expect(grown).toBeLessThan(64 * MB);
    await waitFor(() => cp.relay.stats().streams === 0, 3000, "the abandoned stream to be dropped");
  });

  it("relays a WebSocket (text and a 1 MiB binary message) both ways", async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${cp.port}${BASE}api/kernels/k1/channels`, { headers: COOKIE });
    await new Promise<void>((resolve, reject) => (ws.once("open", () => resolve()), ws.once("error", reject)));
    const replies: Array<{ data: Buffer; binary: boolean }> = [];
    ws.on("message", (data: Buffer, binary) => replies.push({ data, binary }));
    const big = Buffer.alloc(MB, 7);
    ws.send("hello kernel");
    ws.send(big);
    await waitFor(() => replies.length === 2, 5000, "two echoes");
    expect(replies[0]).toEqual({ data: Buffer.from("hello kernel"), binary: false });
    expect(replies[1]?.binary).toBe(true);
    expect(replies[1]?.data.equals(big)).toBe(true);
    expect(target.lastHeaders?.authorization).toBe(`token ${JUPYTER_TOKEN}`);
    ws.close();
  });

  it("refuses a WebSocket upgrade without the cookie with 403", async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${cp.port}${BASE}api/kernels/k1/channels`);
    const status = await new Promise<number>((resolve) => {
      ws.once("unexpected-response", (_req, res) => resolve(res.statusCode ?? 0));
      ws.once("open", () => resolve(101));
      ws.once("error", () => resolve(-1));
    });
    expect(status).toBe(403);
  });

  it("refuses the lock holder's requests and upgrades that another site or origin starts, with 403 CORS_ORIGIN_DENIED and an event", async () => {
    const own = `http://127.0.0.1:${cp.port}`;
    const other = "http://0b3f6c1e-0000-4c6b-8e9f-1a2b3c4d5e6f.localhost:1234";
    const before = cp.sessions.events.length;
    const sameSite = await fetchRaw(cp.port, `${BASE}api/status`, { method: "POST", headers: { ...COOKIE, "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors" } });
    expect(sameSite.status).toBe(403);
    expect(JSON.parse(sameSite.body.toString())).toEqual({ error: "Origin not allowed", code: "CORS_ORIGIN_DENIED" });
    const foreignOrigin = await fetchRaw(cp.port, `${BASE}api/status`, { method: "POST", headers: { ...COOKIE, Origin: other } });
    expect(foreignOrigin.status).toBe(403);
    const upgrade = (origin: string) =>
      new Promise<number>((resolve) => {
        const ws = new WebSocket(`ws://127.0.0.1:${cp.port}${BASE}api/kernels/k1/channels`, { headers: COOKIE, origin });
        ws.once("unexpected-response", (_req, res) => resolve(res.statusCode ?? 0));
        ws.once("open", () => (ws.close(), resolve(101)));
        ws.once("error", () => resolve(-1));
      });
    expect(await upgrade(other)).toBe(403);
    const refusals = cp.sessions.events.slice(before);
    expect(refusals.map((e) => [e.event, e.details.reason, e.details.upgrade])).toEqual([
      ["CORS_ORIGIN_DENIED", "Sec-Fetch-Site: same-site", false],
      ["CORS_ORIGIN_DENIED", "Origin", false],
      ["CORS_ORIGIN_DENIED", "Origin", true],
    ]);
    expect(refusals[2]?.details.origin).toBe(other);
    // The session's own page, and a link from the same site, still pass.
    expect(await upgrade(own)).toBe(101);
    const ownPost = await fetchRaw(cp.port, `${BASE}api/status`, { method: "POST", headers: { ...COOKIE, Origin: own, "Sec-Fetch-Site": "same-origin" } });
    expect(ownPost.status).toBe(200);
    const link = await fetchRaw(cp.port, `${BASE}api/status`, { headers: { ...COOKIE, "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "navigate" } });
    expect(link.status).toBe(200);
  });

  it("fails in-flight and new requests with 502 TUNNEL_UNAVAILABLE while the tunnel is down, then recovers", async () => {
    const waiting = fetchRaw(cp.port, `${BASE}hang`, { headers: COOKIE });
    const midBody = fetchRaw(cp.port, `${BASE}hang-body`, { headers: COOKIE }).then(
      (res) => `completed ${res.status}`,
      (err: Error) => err.message,
    );
    await waitFor(() => cp.relay.stats().streams === 2, 2000, "both requests to reach the agent");
    await new Promise((r) => setTimeout(r, 100));
    cp.sessions.refuseTunnels = true;
    tunnel.dropConnection();
    const failed = await waiting;
    expect(failed.status).toBe(502);
    expect(JSON.parse(failed.body.toString())).toEqual({
      error: "The provider is not reachable right now (tunnel closed)",
      code: "TUNNEL_UNAVAILABLE",
    });
    // Its headers were already sent: the renter sees the connection cut, never a truncated "success".
    expect(await midBody).toBe("aborted");
    await waitFor(() => cp.sessions.tunnelStates.at(-1) === false, 2000, "setTunnelConnected(false)");

    const during = await fetchRaw(cp.port, `${BASE}api/status`, { headers: COOKIE });
    expect(during.status).toBe(502);
    expect(JSON.parse(during.body.toString())).toMatchObject({ code: "TUNNEL_UNAVAILABLE" });

    cp.sessions.refuseTunnels = false;
    await tunnel.waitConnected(5000);
    await waitFor(() => cp.sessions.tunnelStates.at(-1) === true, 2000, "setTunnelConnected(true)");
    const after = await fetchRaw(cp.port, `${BASE}api/status`, { headers: COOKIE });
    expect(after.status).toBe(200);
  });
});

describe("relay: Jupyter that does not answer", () => {
  let target: Target;
  let cp: ControlPlane;
  let stack: CoreStack | undefined;

  beforeAll(async () => void ({ target, cp } = stack = await startCoreStack({ responseTimeoutMs: 400 })));
  afterAll(() => stack?.close());

  it("answers 504 UPSTREAM_TIMEOUT once Jupyter has not started its answer in time, and drops the connection to Jupyter", async () => {
    const started = Date.now();
    const res = await fetchRaw(cp.port, `${BASE}hang`, { headers: COOKIE });
    expect(res.status).toBe(504);
    expect(JSON.parse(res.body.toString())).toEqual({ error: "Jupyter did not answer in time", code: "UPSTREAM_TIMEOUT" });
    expect(Date.now() - started).toBeGreaterThanOrEqual(400);
    // The agent was told to drop the stream: the hung connection to "Jupyter" is closed.
    await waitFor(() => target.hangsClosed === 1, 2000, "the hung Jupyter connection to close");
    await waitFor(() => cp.relay.stats().streams === 0, 2000, "the stream to be forgotten");
    // The tunnel itself is fine.
    expect((await fetchRaw(cp.port, `${BASE}api/status`, { headers: COOKIE })).status).toBe(200);
  });

  it("waits for a slow answer within the limit, and never cuts a body that has started", async () => {
    const slow = await fetchRaw(cp.port, `${BASE}slow?ms=250`, { headers: COOKIE });
    expect(slow.status).toBe(200);
    expect(slow.body.toString()).toBe("slow");
    // Head sent, body never ends: still open well past the limit.
    const req = request({ host: "127.0.0.1", port: cp.port, path: `${BASE}hang-body`, headers: COOKIE, agent: false });
    const body: Buffer[] = [];
    let ended = false;
    const status = await new Promise<number>((resolve, reject) => {
      req.on("response", (res) => {
        res.on("data", (c: Buffer) => body.push(c));
        res.on("end", () => (ended = true));
        res.on("error", () => undefined);
        resolve(res.statusCode ?? 0);
      });
      req.on("error", reject);
      req.end();
    });
    expect(status).toBe(200);
    await new Promise((r) => setTimeout(r, 1000));
    expect(Buffer.concat(body).toString()).toBe("started");
    expect(ended).toBe(false);
    expect(cp.relay.stats().streams).toBe(1);
    req.destroy();
    await waitFor(() => cp.relay.stats().streams === 0, 2000, "the stream to close with the renter");
  });

  it("answers an upgrade Jupyter never completes with 504, and drops that connection too", async () => {
    const before = target.hangsClosed;
    const ws = new WebSocket(`ws://127.0.0.1:${cp.port}${BASE}hang-ws`, { headers: COOKIE });
    const refused = await new Promise<{ status: number; body: string }>((resolve) => {
      ws.once("unexpected-response", (_req, res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
      });
      ws.once("open", () => resolve({ status: 101, body: "" }));
      ws.once("error", () => resolve({ status: -1, body: "" }));
    });
    expect(refused.status).toBe(504);
    expect(JSON.parse(refused.body)).toEqual({ error: "Jupyter did not answer in time", code: "UPSTREAM_TIMEOUT" });
    await waitFor(() => target.hangsClosed === before + 1, 2000, "the hung upgrade to close");
  });
});

describe("relay: an upload cut by a tunnel drop", () => {
  let cp: ControlPlane;
  let tunnel: RelayTunnel;
  let stack: CoreStack | undefined;

  beforeAll(async () => void ({ cp, tunnel } = stack = await startCoreStack()));
  afterAll(() => stack?.close());

  it("answers 502, reads the rest of the renter's upload, and keeps the renter's connection usable; the same for an upload Jupyter refuses", async () => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    const errors: string[] = [];
    const send = (method: string, path: string, body?: Buffer) => {
      let sent = false;
      const req = request({ host: "127.0.0.1", port: cp.port, path, method, headers: COOKIE, agent });
      const answer = new Promise<{ status: number; body: string }>((resolve) => {
        req.on("response", (res) => {
          let text = "";
          res.on("data", (c: Buffer) => (text += c.toString()));
          res.on("end", () => resolve({ status: res.statusCode ?? 0, body: text }));
        });
      });
      req.on("error", (err) => errors.push(err.message));
      req.end(body, () => (sent = true));
      return { req, answer, sent: () => sent };
    };
    try {
      // 64 MiB to a Jupyter that never reads: the upload stalls on backpressure long before its end.
      const upload = send("POST", `${BASE}hang`, Buffer.alloc(64 * MB));
      await waitFor(() => cp.relay.stats().streams === 1, 2000, "the upload to reach the agent");
      await new Promise((r) => setTimeout(r, 300));
      expect(upload.sent()).toBe(false); // stalled, not finished
      cp.sessions.refuseTunnels = true;
      tunnel.dropConnection();
      const res = await upload.answer;
      expect(res.status).toBe(502);
      expect(JSON.parse(res.body)).toMatchObject({ code: "TUNNEL_UNAVAILABLE" });
      // What is left of the body is read and discarded (Node's server dumps a request body nobody
      // reads once the answer is out), so the connection carries the renter's next request.
      await waitFor(() => upload.sent(), 5000, "the rest of the upload to be read");
      const next = send("GET", `${BASE}api/status`);
      expect((await next.answer).status).toBe(502); // the tunnel is still refused
      expect(next.req.reusedSocket).toBe(true);
      expect(errors).toEqual([]);

      // The same when Jupyter refuses an upload at once without reading it and closes. The renter
      // gets Jupyter's 413, or a 502 when the agent's write of the upload meets the closed
      // connection before it has read the 413 (EPIPE: the race every HTTP client has there).
      cp.sessions.refuseTunnels = false;
      await tunnel.waitConnected(5000);
      const refused = send("POST", `${BASE}refuse-upload`, Buffer.alloc(64 * MB));
      const answer = await refused.answer;
      if (answer.status === 502) expect(JSON.parse(answer.body)).toMatchObject({ code: "TUNNEL_UNAVAILABLE" });
      else expect(answer).toEqual({ status: 413, body: "too large" });
      await waitFor(() => refused.sent(), 5000, "the rest of the refused upload to be read");
      const after = send("GET", `${BASE}api/status`);
      expect(await after.answer).toEqual({ status: 200, body: '{"ok":true}' });
      expect(after.req.reusedSocket).toBe(true);
      expect(errors).toEqual([]);
    } finally {
      agent.destroy();
    }
  });
});

/**
 * A slow network between the agent and the control plane: a TCP forwarder that carries the
 * agent's bytes in bursts (reading for 20 ms, then not for 20 ms), so the agent's tunnel socket
 * fills up and holds bytes the agent has written but the kernel has not taken yet.
 */
async function startSlowLink(toPort: number): Promise<{ url: string; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer((fromAgent) => {
    const toCp = connect(toPort, "127.0.0.1");
    for (const s of [fromAgent, toCp]) {
      sockets.add(s);
      s.on("error", () => undefined);
      s.on("close", () => sockets.delete(s));
    }
    fromAgent.pipe(toCp);
    toCp.pipe(fromAgent);
    const timer = setInterval(() => {
      fromAgent.pause();
      setTimeout(() => fromAgent.resume(), 20);
    }, 40);
    fromAgent.on("close", () => clearInterval(timer));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe("relay: parallel downloads over a slow link to the agent", () => {
  let cp: ControlPlane;
  const closers: Array<() => Promise<void>> = [];

  beforeAll(async () => {
    const target = await startTarget();
    closers.unshift(() => target.close());
    cp = await startControlPlane();
    closers.unshift(() => cp.close());
    const link = await startSlowLink(cp.port);
    closers.unshift(() => link.close());
    const tunnel = await startAgentTunnel({ ...cp, url: link.url }, target);
    closers.unshift(() => tunnel.close());
  });
  afterAll(async () => {
    for (const close of closers) await close();
  });

  it("streams eight parallel 8 MiB downloads of different bytes, each intact", async () => {
    // The agent reads Jupyter's next bytes while earlier ones still wait in its tunnel socket: one
    // connection's reads must not overwrite the bytes another's are waiting to send.
    const blocks = 128; // 128 × 64 KiB = 8 MiB; download k starts at block 1000 × k
    const results = await Promise.all(
      [0, 1, 2, 3, 4, 5, 6, 7].map((k) => fetchRaw(cp.port, `${BASE}big?blocks=${blocks}&first=${k * 1000}`, { headers: COOKIE })),
    );
    results.forEach((res, k) => {
      expect(res.status).toBe(200);
      expect(res.body.length).toBe(blocks * 64 * 1024);
      expect(createHash("sha256").update(res.body).digest("hex"), `download ${k}`).toBe(patternSha256(blocks, k * 1000));
    });
  });
});
