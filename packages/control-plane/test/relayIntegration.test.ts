import { afterAll, describe, expect, it } from "vitest";
import { RunitError } from "@runit/protocol";
import type { RelayFactory } from "../src/index.js";
import { call, connectRenter, registerSession, registrationBody, rememberSecret, startTestServer, stopAll } from "./harness.js";

afterAll(stopAll);

describe("relay integration points", () => {
  it("authenticateTunnel: the live relay session of a secret, from its registering IP only", async () => {
    const server = await startTestServer();
    const { sessionId, sessionSecret } = await registerSession(server);
    const ok = server.sessions.authenticateTunnel(sessionSecret, "127.0.0.1");
    expect(ok).not.toBeInstanceOf(RunitError);
    expect((ok as { sessionId: string }).sessionId).toBe(sessionId);
    expect((server.sessions.authenticateTunnel("nope-nope-nope-nope", "127.0.0.1") as RunitError).code).toBe("INVALID_SESSION_SECRET");
    expect((server.sessions.authenticateTunnel(sessionSecret, "127.0.0.2") as RunitError).code).toBe("IP_MISMATCH");
    const jupyterToken = "jupyter_token_abcdefghijklmnop";
    rememberSecret(jupyterToken);
    const cf = await registerSession(server, {
      body: registrationBody({ tunnel: { kind: "cloudflared", publicUrl: "https://a.trycloudflare.com" }, jupyterToken }),
    });
    expect((server.sessions.authenticateTunnel(cf.sessionSecret, "127.0.0.1") as RunitError).code).toBe("TUNNEL_UNAVAILABLE");
    server.sessions.endSession(sessionId, "OPERATOR");
    expect((server.sessions.authenticateTunnel(sessionSecret, "127.0.0.1") as RunitError).code).toBe("SESSION_NOT_FOUND");
  });

  it("authorizeRelay: the lock holder's token from the lock holder's IP; denials are logged", async () => {
    const server = await startTestServer();
    const { sessionId } = await registerSession(server);
    expect(server.sessions.authorizeRelay(sessionId, undefined, "127.0.0.1")).toMatchObject({ ok: false });
    const token = await connectRenter(server, sessionId);
    expect(server.sessions.authorizeRelay(sessionId, token, "127.0.0.1")).toEqual({ ok: true });
    const wrong = server.sessions.authorizeRelay(sessionId, "x".repeat(43), "127.0.0.1");
    expect(wrong.ok || wrong.error.code).toBe("LOCK_REQUIRED");
    const hijack = server.sessions.authorizeRelay(sessionId, token, "127.0.0.2");
    expect(hijack.ok || hijack.error.message).toBe("IP mismatch - access denied");
    expect(server.events("RELAY_ACCESS_DENIED").map((e) => e.sessionId)).toEqual([sessionId, sessionId]);
    expect(server.events("SESSION_HIJACK_ATTEMPT")).toEqual([{ sessionId, ip: "127.0.0.2", expectedIp: "127.0.0.1", role: "relay" }]);
  });

  // authorizeRelay decides a plainly live session from one read; this guards that the shortcut
  // never admits a request a timer or a revocation should have refused.
  it("authorizeRelay refuses, and ends, a session whose lock or provider timed out or whose key was revoked", async () => {
    const server = await startTestServer({ lockTimeoutMs: 60_000, providerStaleMs: 120_000 });
    const admitted = async (setup: (sessionId: string, token: string) => void, reason: string): Promise<void> => {
      const { sessionId } = await registerSession(server);
      const token = await connectRenter(server, sessionId);
      expect(server.sessions.authorizeRelay(sessionId, token, "127.0.0.1")).toEqual({ ok: true });
      setup(sessionId, token);
      const answer = server.sessions.authorizeRelay(sessionId, token, "127.0.0.1");
      expect(answer.ok || answer.error.code).toBe("INVALID_ACCESS_TOKEN");
      expect(server.store.db.prepare("SELECT status, end_reason FROM sessions WHERE id = ?").get(sessionId)).toEqual({ status: "ENDED", end_reason: reason });
    };
    await admitted(() => server.clock.advance(60_001), "LOCK_TIMEOUT");
    await admitted((sessionId, token) => {
      // The renter keeps the lock alive through the relay; the provider goes silent.
      for (let i = 0; i < 4; i++) {
        server.clock.advance(30_000);
        expect(server.sessions.authorizeRelay(sessionId, token, "127.0.0.1")).toEqual({ ok: true });
      }
      server.clock.advance(30_000);
    }, "PROVIDER_STALE");
    await admitted((sessionId) => {
      const keyId = (server.store.db.prepare("SELECT provider_key_id FROM sessions WHERE id = ?").get(sessionId) as { provider_key_id: string }).provider_key_id;
      server.store.db.prepare("UPDATE provider_keys SET revoked_at = ? WHERE id = ?").run(server.clock.now(), keyId);
    }, "OPERATOR");
  });

  it("recordRelayTraffic extends the lock and ends the session past the bandwidth cap", async () => {
    const server = await startTestServer({ bandwidthCapBytes: 1000, bandwidthWindowMs: 60_000, lockTimeoutMs: 60_000, providerStaleMs: 10_000_000 });
    const { sessionId, sessionSecret } = await registerSession(server);
    await connectRenter(server, sessionId);
    const ended: string[] = [];
    server.sessions.onSessionEnded((id, reason) => ended.push(`${id}:${reason}`));
    for (let i = 0; i < 3; i += 1) {
      server.clock.advance(50_000);
      expect(server.sessions.recordRelayTraffic(sessionId, 100, 100)).toBe(true);
      expect(server.sweep().ended).toEqual([]);
    }
    // A new window resets the meter.
    server.clock.advance(61_000);
    expect(server.sessions.recordRelayTraffic(sessionId, 500, 400)).toBe(true);
    expect(server.sessions.recordRelayTraffic(sessionId, 100, 1)).toBe(false);
    expect(ended).toEqual([`${sessionId}:BANDWIDTH_EXCEEDED`]);
    expect(server.events("BANDWIDTH_EXCEEDED")).toEqual([{ sessionId, reason: "BANDWIDTH_EXCEEDED", ip: "127.0.0.1", bytes: 1001, capBytes: 1000 }]);
    expect(server.sessions.recordRelayTraffic(sessionId, 1, 1)).toBe(false);
    const hb = await call(server.url, "POST", "/provider/heartbeat", { body: { sessionId }, headers: { authorization: `Bearer ${sessionSecret}` } });
    expect(hb.json).toEqual({ status: "ENDED", endReason: "BANDWIDTH_EXCEEDED" });
    const row = server.store.db.prepare("SELECT bw_bytes FROM sessions WHERE id = ?").get(sessionId);
    expect(row).toEqual({ bw_bytes: 1001 });
  });

  it("a relay plugin is mounted at /s/:sessionId and offered upgrades; close() is awaited", async () => {
    const seen: string[] = [];
    let closed = false;
    const relay: RelayFactory = (ctx) => ({
      handleHttp: (req, res) => {
        seen.push(`${req.method} ${req.originalUrl} ${ctx.clientIp(req)}`);
        res.status(418).json({ relayed: req.params.sessionId ?? null });
      },
      handleUpgrade: (_req, socket) => {
        socket.end("HTTP/1.1 101 Switching Protocols\r\n\r\n");
        return true;
      },
      close: async () => {
        closed = true;
      },
    });
    const server = await startTestServer({}, { relay });
    const reply = await call(server.url, "POST", "/s/abc/api/x?y=1", { raw: "not json at all" });
    expect(reply.status).toBe(418);
    expect(reply.json).toEqual({ relayed: "abc" });
    expect(seen).toEqual(["POST /s/abc/api/x?y=1 127.0.0.1"]);
    await server.stop();
    expect(closed).toBe(true);
  });
});

describe("the upgrade dispatcher", () => {
  it("a relay whose handleUpgrade throws refuses that upgrade with 400 and the server keeps serving", async () => {
    const server = await startTestServer({}, {
      relay: () => ({
        handleHttp: (_req, res) => void res.status(404).end(),
        handleUpgrade: () => {
          throw new URIError("URI malformed");
        },
        close: async () => undefined,
      }),
    });
    const upgrade = await call(server.url, "GET", "/s/%E0%A4%A/", {
      headers: { connection: "Upgrade", upgrade: "websocket", "sec-websocket-version": "13", "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==" },
    });
    expect(upgrade.status).toBe(400);
    expect(server.err.join("")).toContain("upgrade refused: URI malformed");
    expect((await call(server.url, "GET", "/healthz")).status).toBe(200);
  });
});
