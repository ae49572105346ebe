import { randomUUID } from "node:crypto";
import { PROTOCOL_VERSION, RegisterSessionResponseSchema } from "@runit/protocol";
import { afterAll, describe, expect, it } from "vitest";
import { readAudit } from "../src/index.js";
import { call, registerSession, registrationBody, rememberSecret, startTestServer, stopAll } from "./harness.js";

afterAll(stopAll);

describe("provider registration", () => {
  it("refuses a missing or unknown provider key with 401 and INVALID_PROVIDER_KEY", async () => {
    const server = await startTestServer();
    const forged = "rk_forgedforgedforgedforgedforgedforged";
    rememberSecret(forged);
    const none = await call(server.url, "POST", "/provider/session", { body: registrationBody() });
    const bad = await call(server.url, "POST", "/provider/session", {
      body: registrationBody(),
      headers: { authorization: `Bearer ${forged}` },
    });
    expect(none.status).toBe(401);
    expect(bad.status).toBe(401);
    expect(bad.json).toEqual({ error: "Invalid provider key", code: "INVALID_PROVIDER_KEY" });
    expect(server.events("INVALID_PROVIDER_KEY")).toEqual([
      { ip: "127.0.0.1", key: "" },
      { ip: "127.0.0.1", key: "rk_forge…" },
    ]);
    expect(readAudit(server.store, "INVALID_PROVIDER_KEY")).toHaveLength(2);
  });

  it("refuses a revoked key", async () => {
    const server = await startTestServer();
    const key = server.createKey();
    const { ProviderKeyStore } = await import("../src/store/providerKeys.js");
    const keys = new ProviderKeyStore(server.store);
    const id = keys.list()[0]?.id ?? "";
    expect(keys.revoke(id, server.clock.now())).toBe(true);
    const reply = await call(server.url, "POST", "/provider/session", {
      body: registrationBody(),
      headers: { authorization: `Bearer ${key}` },
    });
    expect(reply.status).toBe(401);
  });

  it("returns a session id, a secret shown once and the heartbeat interval; stores only hashes", async () => {
    const server = await startTestServer({ providerHeartbeatIntervalMs: 1234 });
    const key = server.createKey("alice");
    const reply = await call(server.url, "POST", "/provider/session", {
      body: registrationBody({ providerId: "alice-box" }),
      headers: { authorization: `Bearer ${key}` },
    });
    expect(reply.status).toBe(201);
    const body = RegisterSessionResponseSchema.parse(reply.json);
    rememberSecret(body.sessionSecret);
    expect(body.heartbeatIntervalMs).toBe(1234);
    const dump = JSON.stringify(server.store.db.prepare("SELECT * FROM sessions").all()) +
      JSON.stringify(server.store.db.prepare("SELECT * FROM provider_keys").all());
    expect(dump).not.toContain(body.sessionSecret);
    expect(dump).not.toContain(key);
    expect(server.events("SESSION_REGISTERED")).toEqual([
      { sessionId: body.sessionId, providerKeyId: expect.any(String), tunnel: "relay", ip: "127.0.0.1" },
    ]);
    expect(server.events("NEW_PROVIDER_REGISTERED")).toEqual([
      { providerKeyId: expect.any(String), providerId: "alice-box", ip: "127.0.0.1" },
    ]);
    // A second session of the same key is not a new provider.
    await call(server.url, "POST", "/provider/session", { body: registrationBody(), headers: { authorization: `Bearer ${key}` } })
      .then((r) => rememberSecret((r.json as { sessionSecret: string }).sessionSecret));
    expect(server.events("NEW_PROVIDER_REGISTERED")).toHaveLength(1);
    expect(server.events("SESSION_REGISTERED")).toHaveLength(2);
  });

  it("accepts an agent-proposed session id once, then 409 SESSION_ID_TAKEN even after it ended", async () => {
    const server = await startTestServer();
    const sessionId = randomUUID();
    const first = await registerSession(server, { body: registrationBody({ sessionId }) });
    expect(first.sessionId).toBe(sessionId);
    const key = server.createKey();
    const again = await call(server.url, "POST", "/provider/session", {
      body: registrationBody({ sessionId }),
      headers: { authorization: `Bearer ${key}` },
    });
    expect(again.status).toBe(409);
    expect((again.json as { code: string }).code).toBe("SESSION_ID_TAKEN");
    const del = await call(server.url, "DELETE", `/provider/session/${sessionId}`, {
      headers: { authorization: `Bearer ${first.sessionSecret}` },
    });
    expect(del.status).toBe(204);
    const afterEnd = await call(server.url, "POST", "/provider/session", {
      body: registrationBody({ sessionId }),
      headers: { authorization: `Bearer ${key}` },
    });
    expect(afterEnd.status).toBe(409);
  });

  it("cloudflared registration needs jupyterToken", async () => {
    const server = await startTestServer();
    const key = server.createKey();
    const reply = await call(server.url, "POST", "/provider/session", {
      body: registrationBody({ tunnel: { kind: "cloudflared", publicUrl: "https://abc-def.trycloudflare.com" } }),
      headers: { authorization: `Bearer ${key}` },
    });
    expect(reply.status).toBe(400);
    expect(reply.json).toEqual({ error: "jupyterToken: required in cloudflared mode", code: "INVALID_BODY", path: "jupyterToken" });
  });

  it("refuses an agent of another protocol version with 400 and registers nothing; its own version and none pass", async () => {
    const server = await startTestServer();
    const key = server.createKey();
    const register = (extra: Record<string, unknown>) =>
      call(server.url, "POST", "/provider/session", { body: { ...registrationBody(), ...extra }, headers: { authorization: `Bearer ${key}` } });
    const other = await register({ protocolVersion: PROTOCOL_VERSION + 1 });
    expect(other.status).toBe(400);
    expect(other.json).toEqual({
      error: `protocolVersion: this control plane speaks protocol ${PROTOCOL_VERSION}, the agent ${PROTOCOL_VERSION + 1}; upgrade the older one`,
      code: "INVALID_BODY",
      path: "protocolVersion",
    });
    expect((await call(server.url, "GET", "/renter/sessions")).json).toEqual([]);
    for (const extra of [{ protocolVersion: PROTOCOL_VERSION }, {}]) {
      const ok = await register(extra);
      expect(ok.status).toBe(201);
      rememberSecret((ok.json as { sessionSecret: string }).sessionSecret);
    }
  });
});

describe("provider heartbeats", () => {
  it("need the session secret and the registering IP (127.0.0.2 is refused with 403)", async () => {
    const server = await startTestServer();
    const { sessionId, sessionSecret } = await registerSession(server, { from: "127.0.0.1" });
    const ok = await call(server.url, "POST", "/provider/heartbeat", {
      body: { sessionId, stats: { rxBytes: 1, txBytes: 2, lastActivity: "2026-01-14T10:31:00.000Z" } },
      headers: { authorization: `Bearer ${sessionSecret}` },
      from: "127.0.0.1",
    });
    expect(ok.status).toBe(200);
    expect(ok.json).toEqual({ status: "READY", locked: false });

    const otherIp = await call(server.url, "POST", "/provider/heartbeat", {
      body: { sessionId },
      headers: { authorization: `Bearer ${sessionSecret}` },
      from: "127.0.0.2",
    });
    expect(otherIp.status).toBe(403);
    expect(otherIp.json).toEqual({ error: "IP mismatch - access denied", code: "IP_MISMATCH" });
    expect(server.events("SESSION_HIJACK_ATTEMPT")).toEqual([
      { sessionId, ip: "127.0.0.2", expectedIp: "127.0.0.1", role: "provider" },
    ]);

    const wrongSecret = await call(server.url, "POST", "/provider/heartbeat", {
      body: { sessionId },
      headers: { authorization: "Bearer not-the-secret-at-all" },
    });
    expect(wrongSecret.status).toBe(401);
    expect((wrongSecret.json as { code: string }).code).toBe("INVALID_SESSION_SECRET");
  });

  it("answers 404 for an unknown session so the agent re-registers", async () => {
    const server = await startTestServer();
    const reply = await call(server.url, "POST", "/provider/heartbeat", {
      body: { sessionId: randomUUID() },
      headers: { authorization: "Bearer whatever-secret-value" },
    });
    expect(reply.status).toBe(404);
    expect((reply.json as { code: string }).code).toBe("SESSION_NOT_FOUND");
  });

  it("a provider silent for providerStaleMs is removed (SESSION_REMOVED) and told ENDED/PROVIDER_STALE", async () => {
    const server = await startTestServer({ providerStaleMs: 120_000 });
    const { sessionId, sessionSecret } = await registerSession(server);
    server.clock.advance(119_000);
    expect(server.sweep().ended).toEqual([]);
    server.clock.advance(2_000);
    expect(server.sweep().ended).toEqual([sessionId]);
    expect(server.events("SESSION_REMOVED")).toEqual([{ sessionId, reason: "PROVIDER_STALE" }]);
    expect(readAudit(server.store, "SESSION_REMOVED").map((r) => r.details)).toEqual([{ sessionId, reason: "PROVIDER_STALE" }]);
    const list = await call(server.url, "GET", "/renter/sessions");
    expect(list.json).toEqual([]);
    const hb = await call(server.url, "POST", "/provider/heartbeat", {
      body: { sessionId },
      headers: { authorization: `Bearer ${sessionSecret}` },
    });
    expect(hb.status).toBe(200);
    expect(hb.json).toEqual({ status: "ENDED", endReason: "PROVIDER_STALE" });
  });

  it("heartbeats keep a session alive past providerStaleMs", async () => {
    const server = await startTestServer({ providerStaleMs: 120_000 });
    const { sessionId, sessionSecret } = await registerSession(server);
    for (let i = 0; i < 5; i += 1) {
      server.clock.advance(60_000);
      const hb = await call(server.url, "POST", "/provider/heartbeat", {
        body: { sessionId },
        headers: { authorization: `Bearer ${sessionSecret}` },
      });
      expect(hb.json).toEqual({ status: "READY", locked: false });
      expect(server.sweep().ended).toEqual([]);
    }
  });

  it("GET and DELETE /provider/session/:id need the secret; DELETE ends the session", async () => {
    const server = await startTestServer();
    const { sessionId, sessionSecret } = await registerSession(server);
    const auth = { authorization: `Bearer ${sessionSecret}` };
    expect((await call(server.url, "GET", `/provider/session/${sessionId}`)).status).toBe(401);
    const got = await call(server.url, "GET", `/provider/session/${sessionId}`, { headers: auth });
    expect(got.json).toEqual({ status: "READY", locked: false });
    expect((await call(server.url, "GET", `/provider/session/${randomUUID()}`, { headers: auth })).status).toBe(404);
    expect((await call(server.url, "DELETE", `/provider/session/${sessionId}`, { headers: auth })).status).toBe(204);
    const after = await call(server.url, "GET", `/provider/session/${sessionId}`, { headers: auth });
    expect(after.json).toEqual({ status: "ENDED", endReason: "DEREGISTERED" });
  });
});
