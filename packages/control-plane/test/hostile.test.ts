import { afterAll, describe, expect, it } from "vitest";
import { call, registerSession, registrationBody, startTestServer, stopAll } from "./harness.js";

afterAll(stopAll);

const generous = {
  registration: { max: 1000, windowMs: 60_000 },
  provider: { max: 1000, windowMs: 60_000 },
  renter: { max: 1000, windowMs: 60_000 },
};

describe("hostile bodies", () => {
  it("malformed JSON is 400 INVALID_JSON on every JSON route", async () => {
    const server = await startTestServer({ rateLimits: generous });
    const key = server.createKey();
    for (const raw of ["{bad", '{"a":', "[1,2", "nul", '{"a":1}}', "\u0000", '"just a string"', "42"]) {
      for (const path of ["/provider/session", "/provider/heartbeat"]) {
        const reply = await call(server.url, "POST", path, { raw, headers: { authorization: `Bearer ${key}` } });
        expect([reply.status, reply.json], `${path} ${JSON.stringify(raw)}`).toEqual([
          400,
          { error: "Malformed JSON body", code: "INVALID_JSON" },
        ]);
      }
    }
  });

  it("wrong types and missing fields are 400 INVALID_BODY naming the field path", async () => {
    const server = await startTestServer({ rateLimits: generous });
    const key = server.createKey();
    const cases: Array<[unknown, string]> = [
      [{ ...registrationBody(), hardware: { cpus: "2", memoryMb: 4096, gpus: [] } }, "hardware.cpus"],
      [{ ...registrationBody(), hardware: { cpus: 2, memoryMb: 4096, gpus: [{ name: 5, vramMb: 1 }] } }, "hardware.gpus.0.name"],
      [{ ...registrationBody(), pricing: { hourlyUsd: -1 } }, "pricing.hourlyUsd"],
      [{ ...registrationBody(), pricing: undefined }, "pricing"],
      [{ ...registrationBody(), tunnel: { kind: "ngrok" } }, "tunnel.kind"],
      [{ ...registrationBody(), sessionId: "../../etc/passwd" }, "sessionId"],
      [{ ...registrationBody(), hardware: { cpus: 1e308, memoryMb: 4096, gpus: [] } }, "hardware.cpus"],
      [{ ...registrationBody(), jupyterToken: "short" }, "jupyterToken"],
      [[registrationBody()], ""],
    ];
    for (const [body, path] of cases) {
      const reply = await call(server.url, "POST", "/provider/session", { body, headers: { authorization: `Bearer ${key}` } });
      expect(reply.status, JSON.stringify(body)).toBe(400);
      const json = reply.json as { code: string; path: string; error: string };
      expect(json.code).toBe("INVALID_BODY");
      expect(json.path).toBe(path);
      if (path) expect(json.error.startsWith(`${path}: `)).toBe(true);
    }
  });

  it("unknown fields are refused, naming the field", async () => {
    const server = await startTestServer({ rateLimits: generous });
    const key = server.createKey();
    const cases: Array<[unknown, string]> = [
      [{ ...registrationBody(), isAdmin: true }, "isAdmin"],
      [{ ...registrationBody(), hardware: { cpus: 2, memoryMb: 1, gpus: [], extra: 1 } }, "hardware.extra"],
      [{ ...registrationBody(), tunnel: { kind: "relay", publicUrl: "https://x.trycloudflare.com" } }, "tunnel.publicUrl"],
      [JSON.parse(`{"__proto__": {"polluted": true}, ${JSON.stringify(registrationBody()).slice(1)}`), "__proto__"],
    ];
    for (const [body, path] of cases) {
      const reply = await call(server.url, "POST", "/provider/session", { body, headers: { authorization: `Bearer ${key}` } });
      expect(reply.status).toBe(400);
      expect(reply.json).toEqual({ error: `${path}: unknown field`, code: "INVALID_BODY", path });
    }
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it("a body over 64 KiB is 413, whether declared or chunked", async () => {
    const server = await startTestServer({ rateLimits: generous });
    const big = JSON.stringify({ ...registrationBody(), providerId: "x".repeat(70 * 1024) });
    const declared = await call(server.url, "POST", "/provider/session", { raw: big });
    expect(declared.status).toBe(413);
    expect(declared.json).toEqual({ error: "Request body too large", code: "BODY_TOO_LARGE" });
    const chunked = await call(server.url, "POST", "/provider/heartbeat", {
      raw: big,
      headers: { "content-type": "application/json", "transfer-encoding": "chunked" },
    });
    expect(chunked.status).toBe(413);
    // Just under the limit is parsed (and then refused for its shape, not its size).
    const under = JSON.stringify({ sessionId: "x".repeat(60 * 1024) });
    expect((await call(server.url, "POST", "/provider/heartbeat", { raw: under })).status).toBe(400);
  });

  it("wrong content types, encodings and charsets never give a 500", async () => {
    const server = await startTestServer({ rateLimits: generous });
    const replies = await Promise.all([
      call(server.url, "POST", "/provider/session", { raw: "a=b", headers: { "content-type": "application/x-www-form-urlencoded" } }),
      call(server.url, "POST", "/provider/heartbeat", { raw: "{}", headers: { "content-type": "application/json; charset=utf-7" } }),
      call(server.url, "POST", "/provider/heartbeat", { raw: "{}", headers: { "content-type": "application/json", "content-encoding": "br-nope" } }),
      call(server.url, "POST", "/provider/heartbeat", { raw: "{}", headers: { "content-type": "text/plain" } }),
      call(server.url, "GET", "/access/%E0%A4%A"),
      call(server.url, "POST", "/renter/heartbeat/%ZZ"),
    ]);
    for (const reply of replies) {
      expect(reply.status).toBeGreaterThanOrEqual(400);
      expect(reply.status).toBeLessThan(500);
      expect(reply.json).toMatchObject({ code: expect.any(String), error: expect.any(String) });
      expect(reply.text).not.toMatch(/at .*\.(js|ts):\d+/);
    }
  });

  it("an unknown route is a JSON 404; /s/... is 404 until the relay is plugged in; upgrades are refused", async () => {
    const server = await startTestServer();
    for (const [method, path] of [["GET", "/nope"], ["POST", "/provider"], ["GET", `/s/${"a".repeat(8)}/`], ["DELETE", "/renter/sessions"]]) {
      const reply = await call(server.url, method as string, path as string);
      expect(reply.status).toBe(404);
      expect(reply.json).toEqual({ error: "Not found", code: "NOT_FOUND" });
    }
    const upgrade = await call(server.url, "GET", "/agent/tunnel", {
      headers: { connection: "Upgrade", upgrade: "websocket", "sec-websocket-version": "13", "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==" },
    }).catch((err: Error) => ({ status: -1, text: err.message }));
    expect(upgrade.status).toBe(404);
  });
});

describe("operator endpoints and headers", () => {
  it("GET / and /healthz; /healthz is 503 when the database is unusable", async () => {
    const server = await startTestServer();
    const root = await call(server.url, "GET", "/");
    expect(root.status).toBe(200);
    expect(root.headers["content-type"]).toBe("text/plain; charset=utf-8");
    expect(root.text).toBe("RUNIT control plane running ✅");
    expect((await call(server.url, "GET", "/healthz")).json).toEqual({ status: "ok" });
    const { sessionId } = await registerSession(server);
    server.store.db.close();
    const health = await call(server.url, "GET", "/healthz");
    expect(health.status).toBe(503);
    expect(health.json).toEqual({ status: "unavailable" });
    const connect = await call(server.url, "POST", `/renter/sessions/${sessionId}/connect`);
    expect(connect.status).toBe(503);
    expect(connect.json).toEqual({ error: "Store unavailable", code: "STORE_UNAVAILABLE" });
    expect((await call(server.url, "GET", "/renter/sessions")).status).toBe(503);
  });

  it("/metrics needs the operator token, and is closed when none is configured", async () => {
    const closed = await startTestServer();
    expect((await call(closed.url, "GET", "/metrics")).status).toBe(401);
    expect((await call(closed.url, "GET", "/metrics", { headers: { authorization: "Bearer " } })).status).toBe(401);
    const adminToken = "operator-token-0123456789";
    const server = await startTestServer({ adminToken });
    const denied = await call(server.url, "GET", "/metrics", { headers: { authorization: "Bearer wrong" } });
    expect(denied.status).toBe(401);
    expect(denied.json).toEqual({ error: "Operator token required", code: "ADMIN_TOKEN_REQUIRED" });
    await registerSession(server);
    const ok = await call(server.url, "GET", "/metrics", { headers: { authorization: `Bearer ${adminToken}` } });
    expect(ok.status).toBe(200);
    expect(ok.text).toContain('runit_sessions{status="READY"} 1');
    expect(ok.text).toContain('runit_security_events_total{event="SESSION_REGISTERED"} 1');
  });

  it("helmet sets a CSP fitting our own pages: scripts from self only, nothing inline", async () => {
    const server = await startTestServer();
    // Every response carries it (the renter page's own tests check /renter once it is built).
    const page = await call(server.url, "GET", "/");
    expect(page.status).toBe(200);
    const csp = String(page.headers["content-security-policy"]);
    expect(csp).toContain("script-src 'self'");
    expect(csp).toContain("frame-ancestors 'none'");
    expect(csp).not.toContain("unsafe-inline");
    expect(page.headers["x-content-type-options"]).toBe("nosniff");
  });

  it("CORS answers only RUNIT_CORS_ORIGINS; foreign-origin POSTs are refused with CORS_ORIGIN_DENIED", async () => {
    const server = await startTestServer({ corsOrigins: ["https://renter.example"] });
    const allowed = await call(server.url, "GET", "/renter/sessions", { headers: { origin: "https://renter.example" } });
    expect(allowed.headers["access-control-allow-origin"]).toBe("https://renter.example");
    const foreign = await call(server.url, "GET", "/renter/sessions", { headers: { origin: "https://evil.example" } });
    expect(foreign.status).toBe(200);
    expect(foreign.headers["access-control-allow-origin"]).toBeUndefined();
    const { sessionId } = await registerSession(server);
    const post = await call(server.url, "POST", `/renter/sessions/${sessionId}/connect`, { headers: { origin: "https://evil.example" } });
    expect(post.status).toBe(403);
    expect((post.json as { code: string }).code).toBe("CORS_ORIGIN_DENIED");
    expect(server.events("CORS_ORIGIN_DENIED")).toEqual([{ ip: "127.0.0.1", origin: "https://evil.example", method: "POST" }]);
    const ownPage = await call(server.url, "POST", `/renter/sessions/${sessionId}/connect`, {
      headers: { origin: server.url },
    });
    expect(ownPage.status).toBe(201);
  });
});

describe("rate limits and client IP", () => {
  it("registration: the 11th request in the window is 429 with RateLimit headers and RATE_LIMIT_EXCEEDED", async () => {
    const server = await startTestServer();
    const statuses: number[] = [];
    let last;
    for (let i = 0; i < 11; i += 1) {
      last = await call(server.url, "POST", "/provider/session", { body: registrationBody() });
      statuses.push(last.status);
    }
    expect(statuses).toEqual([...Array(10).fill(401), 429]);
    expect(String(last?.headers["ratelimit-policy"])).toMatch(/^"registration"; q=10; w=300; pk=:[A-Za-z0-9+/=]+:$/);
    expect(String(last?.headers["ratelimit"])).toMatch(/^"registration"; r=0; t=\d+$/);
    expect(last?.json).toMatchObject({ error: "Too many requests, please try again later", code: "RATE_LIMITED" });
    expect(server.events("RATE_LIMIT_EXCEEDED")).toEqual([{ ip: "127.0.0.1", routeClass: "registration", method: "POST" }]);
    // Another client IP has its own budget.
    const other = await call(server.url, "POST", "/provider/session", { body: registrationBody(), from: "127.0.0.2" });
    expect(other.status).toBe(401);
  });

  it("limits are configurable per class, and a forged X-Forwarded-For changes nothing by default", async () => {
    const server = await startTestServer({ rateLimits: { ...generous, renter: { max: 2, windowMs: 60_000 } } });
    const statuses: number[] = [];
    for (let i = 0; i < 4; i += 1) {
      const r = await call(server.url, "GET", "/renter/sessions", { headers: { "x-forwarded-for": `10.0.0.${i}` } });
      statuses.push(r.status);
    }
    expect(statuses).toEqual([200, 200, 429, 429]);
    // Logged once per client and window, however many requests are refused.
    expect(server.events("RATE_LIMIT_EXCEEDED").map((e) => e.ip)).toEqual(["127.0.0.1"]);
  });

  it("list polling cannot starve the renter heartbeat: heartbeat and release have a budget of their own", async () => {
    const server = await startTestServer({ rateLimits: { ...generous, renter: { max: 3, windowMs: 60_000 } } });
    const { sessionId } = await registerSession(server);
    const connect = await call(server.url, "POST", `/renter/sessions/${sessionId}/connect`);
    expect(connect.status).toBe(201);
    const token = (connect.json as { accessToken: string }).accessToken;
    const { rememberSecret } = await import("./harness.js");
    rememberSecret(token);
    // Connect and two polls use up the renter budget (3): the page's next poll is refused...
    expect((await call(server.url, "GET", "/renter/sessions")).status).toBe(200);
    expect((await call(server.url, "GET", "/renter/sessions")).status).toBe(200);
    expect((await call(server.url, "GET", "/renter/sessions")).status).toBe(429);
    // ...while the heartbeats that keep the lock still pass, up to their own budget.
    const beats = [];
    for (let i = 0; i < 3; i++) beats.push((await call(server.url, "POST", `/renter/heartbeat/${token}`)).status);
    expect(beats).toEqual([200, 200, 200]);
    expect((await call(server.url, "POST", `/renter/heartbeat/${token}`)).status).toBe(429);
    expect(server.events("RATE_LIMIT_EXCEEDED").map((e) => e.routeClass)).toEqual(["renter", "renter-lock"]);
  });

  it("with RUNIT_TRUST_PROXY set to a CIDR, the client IP comes from X-Forwarded-For across trusted hops only", async () => {
    const server = await startTestServer({
      rateLimits: generous,
      trustProxy: (await import("../src/clientIp.js")).parseTrustProxy("127.0.0.0/8"),
    });
    const { sessionId } = await registerSession(server);
    const connect = await call(server.url, "POST", `/renter/sessions/${sessionId}/connect`, {
      headers: { "x-forwarded-for": "198.51.100.7, 127.0.0.9" },
    });
    expect(connect.status).toBe(201);
    expect(server.events("SESSION_LOCKED")).toEqual([{ sessionId, ip: "198.51.100.7" }]);
    const { rememberSecret } = await import("./harness.js");
    rememberSecret((connect.json as { accessToken: string }).accessToken);
  });
});
