import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import type { AddressInfo } from "node:net";
import type { Server } from "node:http";
import { fileURLToPath } from "node:url";
import express, { type Request, type Response } from "express";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

// test_security.sh is only worth something if it can fail. These tests run it against a
// deliberately insecure server (the seed's mistakes, on purpose) and expect the specific ❌
// lines, then against a real, freshly started control plane (scripts/security-ci.sh) and expect
// every check to pass.

const repoRoot = fileURLToPath(new URL("../../../", import.meta.url));
const script = `${repoRoot}test_security.sh`;

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

function run(file: string, args: string[], env: Record<string, string>, timeoutMs: number): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(file, args, { cwd: repoRoot, env: { ...process.env, ...env }, timeout: timeoutMs }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** The seed's server, more or less: every defence off. */
function insecureApp(): express.Express {
  const app = express();
  const sessions = new Map<string, { secret: string; accessToken?: string; publicUrl?: string }>();
  app.use((_req, res, next) => {
    res.setHeader("Access-Control-Allow-Origin", "*");
    res.setHeader("Access-Control-Allow-Headers", "*");
    res.setHeader("Access-Control-Allow-Methods", "*");
    next();
  });
  app.use(express.json({ limit: "10mb" }));
  app.options(/.*/, (_req, res) => {
    res.sendStatus(204);
  });
  app.get("/", (_req, res) => {
    res.type("text/plain").send("RUNIT control plane running ✅");
  });
  app.get("/healthz", (_req, res) => {
    res.json({ status: "ok" });
  });
  app.get("/metrics", (_req, res) => {
    res.type("text/plain").send("sessions 1\n");
  });
  app.post("/provider/session", (req: Request, res: Response) => {
    const body = (req.body ?? {}) as { tunnel?: { publicUrl?: string } };
    const sessionId = randomUUID();
    const secret = randomUUID().replaceAll("-", "");
    // Substring test, like the seed.
    const url = body.tunnel?.publicUrl;
    if (url !== undefined && !url.includes("trycloudflare.com")) {
      res.status(400).json({ error: "bad url" });
      return;
    }
    sessions.set(sessionId, { secret, publicUrl: url });
    res.status(201).json({ sessionId, sessionSecret: secret, heartbeatIntervalMs: 30_000 });
  });
  app.post("/provider/heartbeat", (_req, res) => {
    res.json({ status: "READY" });
  });
  app.delete("/provider/session/:id", (req, res) => {
    sessions.delete(req.params.id);
    res.sendStatus(204);
  });
  app.get("/renter/sessions", (_req, res) => {
    res.json([...sessions.entries()].map(([sessionId, s]) => ({ sessionId, status: "READY", ...s })));
  });
  app.post("/renter/sessions/:id/connect", (req, res) => {
    const session = sessions.get(req.params.id);
    if (!session) {
      res.status(404).json({ error: "Session not found" });
      return;
    }
    session.accessToken = randomUUID();
    res.status(201).json({ accessToken: session.accessToken, accessUrl: "/", expiresAt: new Date().toISOString() });
  });
  app.post("/renter/heartbeat/:token", (_req, res) => {
    res.json({ ok: true, lockExpiresAt: new Date().toISOString() });
  });
  app.post("/renter/release/:token", (_req, res) => {
    res.json({ ok: true });
  });
  app.get("/access/:token", (_req, res) => {
    res.redirect("/s/x/");
  });
  app.all(/^\/s\/.*/, (_req, res) => {
    res.json({ jupyter: "open to everyone" });
  });
  return app;
}

describe("test_security.sh", () => {
  let server: Server;
  let baseUrl: string;

  beforeAll(async () => {
    server = await new Promise<Server>((resolve) => {
      const s = insecureApp().listen(0, "127.0.0.1", () => resolve(s));
    });
    baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it("fails against a server with the defences turned off, naming each missing defence", async () => {
    const result = await run(script, [baseUrl], { RUNIT_PROVIDER_KEY: "any-key-will-do" }, 60_000);
    console.log(`[test_security.sh vs an insecure server]\n${result.stdout}`);
    const lines = result.stdout.trimEnd().split("\n");

    expect(result.code).toBe(1);
    expect(lines.at(-1)).toMatch(/^\d+ passed, [1-9]\d* failed$/);
    const failed = (prefix: string) => lines.some((line) => line.startsWith(`❌ FAIL ${prefix}`));
    expect(failed("CORS preflight from unknown origin https://evil.example allowed")).toBe(true);
    expect(failed("CORS GET /renter/sessions from unknown origin allowed")).toBe(true);
    expect(failed("NOT RATE LIMITED: registration sends no RateLimit-Policy header")).toBe(true);
    expect(failed("session listing LEAKS")).toBe(true);
    expect(failed("IP hijack: renter heartbeat from 127.0.0.2: expected 403")).toBe(true);
    expect(failed("IP hijack with forged X-Forwarded-For")).toBe(true);
    expect(failed("registration without a provider key: expected 401")).toBe(true);
    expect(failed("registration with a wrong provider key: expected 401")).toBe(true);
    expect(failed("second connect to a locked session: expected 409")).toBe(true);
    expect(failed("invalid provider URL accepted or mishandled: https://x.trycloudflare.com.evil.example")).toBe(true);
    expect(failed("relay /s/")).toBe(true);
    expect(failed("security header Content-Security-Policy")).toBe(true);
    expect(failed("X-Powered-By reveals the stack")).toBe(true);
    expect(failed("70 KB body on /provider/heartbeat: expected 413")).toBe(true);
    // The substring check still refuses a URL without the suffix: the suite must not claim otherwise.
    expect(lines).toContain("✅ PASS invalid provider URL refused → 400 : https://127.0.0.1");
    expect(lines.some((line) => line.includes("RATE LIMITED (expected after") && line.startsWith("✅"))).toBe(false);
  });

  it("passes against a freshly started control plane (scripts/security-ci.sh)", async () => {
    const result = await run(`${repoRoot}scripts/security-ci.sh`, [], {}, 120_000);
    console.log(`[scripts/security-ci.sh]\n${result.stdout}${result.stderr}`);
    const lines = result.stdout.trimEnd().split("\n");

    expect(result.stderr).not.toContain("❌");
    expect(lines.filter((line) => line.startsWith("❌"))).toEqual([]);
    expect(lines.at(-1)).toMatch(/^\d+ passed, 0 failed$/);
    expect(result.code).toBe(0);
    expect(lines).toContain("✅ PASS root banner: RUNIT control plane running ✅");
    expect(lines.some((line) => /^✅ PASS ❌ RATE LIMITED \(expected after 10 requests\) — request 11 refused with 429/.test(line))).toBe(true);
    expect(lines).toContain("✅ PASS second connect to a locked session → 409 \"Session already in use\"");
    expect(lines).toContain("✅ PASS IP hijack: renter heartbeat from 127.0.0.2 → 403 \"IP mismatch - access denied\"");
    // Two passes (scripts/security-ci.sh): the first, without per-session origins, skips only
    // their checks; the second runs them against a server that has them, so nothing is left out.
    expect(lines.filter((line) => line.startsWith("⏭️"))).toEqual(["⏭️  SKIP per-session origin checks (RUNIT_SESSION_ORIGIN not set)"]);
    expect(lines.filter((line) => /^\d+ passed, 0 failed$/.test(line))).toHaveLength(2);
    expect(lines).toContain("✅ PASS /s/<id>/... on <base-url> → 308 to the session's own host");
    expect(lines).toContain("✅ PASS a session's host serves none of the API, the renter page, /healthz or /metrics (404)");
  });
});
