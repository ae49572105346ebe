import { randomUUID } from "node:crypto";
import { ConnectResponseSchema, RenterSessionListSchema } from "@runit/protocol";
import { afterAll, describe, expect, it } from "vitest";
import { readAudit } from "../src/index.js";
import {
  call,
  connectRenter,
  registerSession,
  registrationBody,
  rememberSecret,
  startTestServer,
  stopAll,
} from "./harness.js";

afterAll(stopAll);

describe("renter listing", () => {
  it("lists READY and LOCKED sessions with public fields only, never ENDED ones", async () => {
    const server = await startTestServer();
    const ready = await registerSession(server);
    const locked = await registerSession(server);
    const ended = await registerSession(server);
    const token = await connectRenter(server, locked.sessionId);
    await call(server.url, "DELETE", `/provider/session/${ended.sessionId}`, {
      headers: { authorization: `Bearer ${ended.sessionSecret}` },
    });
    const reply = await call(server.url, "GET", "/renter/sessions");
    expect(reply.status).toBe(200);
    const list = RenterSessionListSchema.parse(reply.json);
    expect(list.map((s) => [s.sessionId, s.status])).toEqual([
      [ready.sessionId, "READY"],
      [locked.sessionId, "LOCKED"],
    ]);
    expect(Object.keys(list[0] ?? {}).sort()).toEqual(
      ["available", "createdAt", "hardware", "pricing", "sessionId", "status", "tunnel"].sort(),
    );
    for (const secret of [ready.sessionSecret, locked.sessionSecret, token]) expect(reply.text).not.toContain(secret);
    expect(reply.text).not.toMatch(/token|secret/i);
  });

  it("available follows the relay tunnel and provider heartbeats", async () => {
    const server = await startTestServer({ providerHeartbeatIntervalMs: 30_000 });
    const { sessionId } = await registerSession(server);
    const available = async () =>
      RenterSessionListSchema.parse((await call(server.url, "GET", "/renter/sessions")).json)[0]?.available;
    expect(await available()).toBe(false);
    server.sessions.setTunnelConnected(sessionId, true);
    expect(await available()).toBe(true);
    server.clock.advance(61_000);
    expect(await available()).toBe(false);
    expect(server.events("TUNNEL_CONNECTED")).toEqual([{ sessionId }]);
  });
});

describe("connect and the lock", () => {
  it("connect locks the session to a token and IP, durably; a second connect gets 409", async () => {
    const server = await startTestServer({ lockTimeoutMs: 60_000 });
    const { sessionId } = await registerSession(server);
    const reply = await call(server.url, "POST", `/renter/sessions/${sessionId}/connect`);
    expect(reply.status).toBe(201);
    const body = ConnectResponseSchema.parse(reply.json);
    rememberSecret(body.accessToken);
    expect(body.accessUrl).toBe(`/access/${body.accessToken}`);
    expect(body.expiresAt).toBe(new Date(server.clock.now() + 60_000).toISOString());
    // Committed before the reply: a second connection to the same file sees the lock.
    const { default: Database } = await import("better-sqlite3");
    const other = new Database(`${server.dir}/runit.db`, { readonly: true });
    expect(other.prepare("SELECT status FROM sessions WHERE id = ?").get(sessionId)).toEqual({ status: "LOCKED" });
    expect(other.prepare("SELECT ip FROM locks WHERE session_id = ?").get(sessionId)).toEqual({ ip: "127.0.0.1" });
    other.close();
    expect(server.events("SESSION_LOCKED")).toEqual([{ sessionId, ip: "127.0.0.1" }]);

    const second = await call(server.url, "POST", `/renter/sessions/${sessionId}/connect`, { from: "127.0.0.2" });
    expect(second.status).toBe(409);
    expect(second.json).toEqual({ error: "Session already in use", code: "SESSION_ALREADY_LOCKED" });
    expect(server.events("SESSION_ALREADY_LOCKED")).toEqual([{ sessionId, ip: "127.0.0.2" }]);
  });

  it("connect to an unknown or ended session is 404", async () => {
    const server = await startTestServer();
    expect((await call(server.url, "POST", `/renter/sessions/${randomUUID()}/connect`)).status).toBe(404);
    expect((await call(server.url, "POST", `/renter/sessions/not-a-uuid/connect`)).status).toBe(404);
  });

  it("a renter heartbeat from another IP is 403 IP mismatch and SESSION_HIJACK_ATTEMPT", async () => {
    const server = await startTestServer();
    const { sessionId } = await registerSession(server);
    const token = await connectRenter(server, sessionId, "127.0.0.1");
    const own = await call(server.url, "POST", `/renter/heartbeat/${token}`, { from: "127.0.0.1" });
    expect(own.status).toBe(200);
    expect(own.json).toEqual({ ok: true, lockExpiresAt: new Date(server.clock.now() + 60_000).toISOString() });
    const hijack = await call(server.url, "POST", `/renter/heartbeat/${token}`, { from: "127.0.0.2" });
    expect(hijack.status).toBe(403);
    expect(hijack.json).toEqual({ error: "IP mismatch - access denied", code: "IP_MISMATCH" });
    expect(server.events("SESSION_HIJACK_ATTEMPT")).toEqual([
      { sessionId, ip: "127.0.0.2", expectedIp: "127.0.0.1", role: "renter" },
    ]);
    const access = await call(server.url, "GET", `/access/${token}`, { from: "127.0.0.2" });
    expect(access.status).toBe(403);
    expect((access.json as { error: string }).error).toBe("IP mismatch - access denied");
    const release = await call(server.url, "POST", `/renter/release/${token}`, { from: "127.0.0.2" });
    expect(release.status).toBe(403);
  });

  it("a lock with no renter heartbeat for lockTimeoutMs is released and the session ENDS", async () => {
    const server = await startTestServer({ lockTimeoutMs: 60_000, providerStaleMs: 600_000 });
    const { sessionId, sessionSecret } = await registerSession(server);
    const token = await connectRenter(server, sessionId);
    server.clock.advance(50_000);
    expect((await call(server.url, "POST", `/renter/heartbeat/${token}`)).status).toBe(200);
    server.clock.advance(59_000);
    expect(server.sweep().ended).toEqual([]);
    server.clock.advance(2_000);
    expect(server.sweep().ended).toEqual([sessionId]);
    expect(server.events("SESSION_UNLOCKED")).toEqual([{ sessionId, reason: "LOCK_TIMEOUT", ip: "127.0.0.1" }]);
    const hb = await call(server.url, "POST", "/provider/heartbeat", {
      body: { sessionId },
      headers: { authorization: `Bearer ${sessionSecret}` },
    });
    expect(hb.json).toEqual({ status: "ENDED", endReason: "LOCK_TIMEOUT" });
    const late = await call(server.url, "POST", `/renter/heartbeat/${token}`);
    expect(late.status).toBe(403);
    expect(late.json).toEqual({ error: "Invalid or expired token", code: "INVALID_ACCESS_TOKEN" });
  });

  it("an expired lock is refused even before the sweep runs", async () => {
    const server = await startTestServer({ lockTimeoutMs: 60_000, providerStaleMs: 600_000 });
    const { sessionId } = await registerSession(server);
    const token = await connectRenter(server, sessionId);
    server.clock.advance(61_000);
    expect((await call(server.url, "GET", `/access/${token}`)).status).toBe(403);
    expect(readAudit(server.store, "SESSION_UNLOCKED")).toHaveLength(1);
  });

  it("release ends the session (RELEASED) and the provider is told", async () => {
    const server = await startTestServer();
    const { sessionId, sessionSecret } = await registerSession(server);
    const token = await connectRenter(server, sessionId);
    const ended: string[] = [];
    server.sessions.onSessionEnded((id, reason) => ended.push(`${id}:${reason}`));
    const reply = await call(server.url, "POST", `/renter/release/${token}`);
    expect(reply.status).toBe(200);
    expect(reply.json).toEqual({ ok: true });
    expect(ended).toEqual([`${sessionId}:RELEASED`]);
    const hb = await call(server.url, "POST", "/provider/heartbeat", {
      body: { sessionId },
      headers: { authorization: `Bearer ${sessionSecret}` },
    });
    expect(hb.json).toEqual({ status: "ENDED", endReason: "RELEASED" });
    expect((await call(server.url, "POST", `/renter/release/${token}`)).status).toBe(403);
  });
});

describe("/access/:token", () => {
  it("an invalid token is 403 Invalid or expired token and INVALID_ACCESS_ATTEMPT (masked)", async () => {
    const server = await startTestServer();
    const bogus = "bogusbogusbogusbogusbogusbogusbogus";
    rememberSecret(bogus);
    const reply = await call(server.url, "GET", `/access/${bogus}`);
    expect(reply.status).toBe(403);
    expect(reply.json).toEqual({ error: "Invalid or expired token", code: "INVALID_ACCESS_TOKEN" });
    expect(server.events("INVALID_ACCESS_ATTEMPT")).toEqual([{ ip: "127.0.0.1", accessToken: "bogusbog…" }]);
  });

  it("relay mode: 302 to /s/<id>/ with an httpOnly, SameSite=Strict cookie scoped to the session", async () => {
    const server = await startTestServer();
    const { sessionId } = await registerSession(server);
    const token = await connectRenter(server, sessionId);
    const reply = await call(server.url, "GET", `/access/${token}`);
    expect(reply.status).toBe(302);
    expect(reply.headers.location).toBe(`/s/${sessionId}/`);
    expect(reply.headers["set-cookie"]).toEqual([
      `runit_access=${token}; Path=/s/${sessionId}/; HttpOnly; SameSite=Strict`,
    ]);
  });

  it("relay mode behind a trusted https proxy adds Secure", async () => {
    const server = await startTestServer({ trustProxy: { kind: "hops", hops: 1 } });
    const { sessionId } = await registerSession(server);
    const token = await connectRenter(server, sessionId);
    const reply = await call(server.url, "GET", `/access/${token}`, { headers: { "x-forwarded-proto": "https" } });
    expect(reply.headers["set-cookie"]).toEqual([
      `runit_access=${token}; Path=/s/${sessionId}/; HttpOnly; SameSite=Strict; Secure`,
    ]);
  });

  it("cloudflared mode: 302 to the provider URL with its Jupyter token, which is never listed or logged", async () => {
    const server = await startTestServer();
    const jupyterToken = "jupyterTokenValue_0123456789abcdef";
    rememberSecret(jupyterToken);
    const { sessionId } = await registerSession(server, {
      body: registrationBody({
        tunnel: { kind: "cloudflared", publicUrl: "https://quiet-river-1234.trycloudflare.com/" },
        jupyterToken,
      }),
    });
    const list = await call(server.url, "GET", "/renter/sessions");
    expect(list.text).not.toContain(jupyterToken);
    expect(list.text).not.toContain("trycloudflare");
    const token = await connectRenter(server, sessionId);
    const reply = await call(server.url, "GET", `/access/${token}`);
    expect(reply.status).toBe(302);
    expect(reply.headers.location).toBe(`https://quiet-river-1234.trycloudflare.com/?token=${jupyterToken}`);
    expect(reply.headers["set-cookie"]).toBeUndefined();
  });
});
