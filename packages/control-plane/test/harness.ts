import { request as httpRequest } from "node:http";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "vitest";
import { RELAY_COOKIE_NAME } from "@runit/protocol";
import { readAudit, startServer, type RunningServer, type ServerConfig, type StartServerOptions } from "../src/index.js";
import { ProviderKeyStore } from "../src/store/providerKeys.js";

/** A clock the test moves by hand. */
export class FakeClock {
  constructor(public t = Date.parse("2026-01-14T10:32:00.000Z")) {}
  now(): number {
    return this.t;
  }
  advance(ms: number): void {
    this.t += ms;
  }
}

/** Every secret handed out in this test file, and every log line written: checked in afterAll. */
const issuedSecrets = new Set<string>();
const servers: TestServer[] = [];

/** Remembers a secret so `assertNoSecretLeaked` can look for it. */
export function rememberSecret(secret: string): void {
  issuedSecrets.add(secret);
}

/** A started control plane with its captured stdout/stderr, fake clock and temp database. */
export interface TestServer extends RunningServer {
  clock: FakeClock;
  out: string[];
  err: string[];
  dir: string;
  /** Creates a provider key directly in the store. */
  createKey(name?: string): string;
  /** Security lines of one event, parsed. */
  events(event: string): Array<Record<string, unknown>>;
  stop(): Promise<void>;
}

/** Starts a control plane on 127.0.0.1:0 with a temp database and a fake clock. */
export async function startTestServer(
  config: Partial<ServerConfig> = {},
  options: Omit<StartServerOptions, "config"> = {},
): Promise<TestServer> {
  const dir = mkdtempSync(join(tmpdir(), "runit-cp-"));
  const clock = new FakeClock();
  const out: string[] = [];
  const err: string[] = [];
  const running = await startServer({
    env: {},
    clock,
    stdout: { write: (s: string) => out.push(s) },
    stderr: { write: (s: string) => err.push(s) },
    sweepTimer: false,
    ...options,
    config: { port: 0, host: "127.0.0.1", dbPath: join(dir, "runit.db"), ...config },
  });
  let stopped = false;
  const server: TestServer = {
    ...running,
    clock,
    out,
    err,
    dir,
    createKey(name = "test") {
      const { key } = new ProviderKeyStore(running.store).create(name, clock.now());
      rememberSecret(key);
      return key;
    },
    events(event: string) {
      const prefix = ` - ${event}: `;
      return out
        .join("")
        .split("\n")
        .filter((line) => line.startsWith("[SECURITY] ") && line.includes(prefix))
        .map((line) => JSON.parse(line.slice(line.indexOf(prefix) + prefix.length)) as Record<string, unknown>);
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      assertNoSecretLeaked(server);
      await running.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  servers.push(server);
  return server;
}

/** Stops every server this file started (after checking none leaked a secret). */
export async function stopAll(): Promise<void> {
  await Promise.all(servers.splice(0).map((s) => s.stop()));
}

/** No secret issued in this file appears whole in the server's stdout, stderr or audit table. */
export function assertNoSecretLeaked(server: TestServer): void {
  const text = server.out.join("") + server.err.join("");
  const audit = server.store.db.open ? JSON.stringify(readAudit(server.store)) : "";
  for (const secret of issuedSecrets) {
    expect(text.includes(secret), `secret ${secret.slice(0, 8)}… leaked into stdout/stderr`).toBe(false);
    expect(audit.includes(secret), `secret ${secret.slice(0, 8)}… leaked into the audit table`).toBe(false);
  }
}

/** A reply as the tests see it. */
export interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  json: unknown;
}

/** One HTTP request over a real socket, optionally from a chosen loopback source address. */
export function call(
  baseUrl: string,
  method: string,
  path: string,
  opts: { body?: unknown; raw?: string | Buffer; headers?: Record<string, string>; from?: string } = {},
): Promise<Reply> {
  const url = new URL(path, baseUrl);
  const payload = opts.raw ?? (opts.body === undefined ? undefined : JSON.stringify(opts.body));
  const headers: Record<string, string> = { ...opts.headers };
  if (payload !== undefined && !Object.keys(headers).some((h) => h.toLowerCase() === "content-type")) {
    headers["content-type"] = "application/json";
  }
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { host: url.hostname, port: url.port, path: url.pathname + url.search, method, headers, localAddress: opts.from, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          let json: unknown = undefined;
          try {
            json = JSON.parse(text);
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json });
        });
        // A response cut before its end (the relay cuts one whose source died) never ends.
        res.on("close", () => {
          if (!res.complete) reject(new Error(`response ${res.statusCode ?? 0} cut before its end`));
        });
      },
    );
    req.setTimeout(10_000, () => req.destroy(new Error("request timed out")));
    req.on("error", reject);
    if (payload !== undefined) req.write(payload);
    req.end();
  });
}

/** A valid registration body. */
export function registrationBody(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    tunnel: { kind: "relay" },
    hardware: { cpus: 2, memoryMb: 4096, gpus: [{ name: "RTX 4090", vramMb: 24564 }] },
    pricing: { hourlyUsd: 0.5 },
    ...extra,
  };
}

/** Registers a session with a fresh key; returns its id and secret (remembered as secrets). */
export async function registerSession(
  server: TestServer,
  opts: { body?: Record<string, unknown>; from?: string } = {},
): Promise<{ sessionId: string; sessionSecret: string }> {
  const key = server.createKey();
  const reply = await call(server.url, "POST", "/provider/session", {
    body: opts.body ?? registrationBody(),
    headers: { authorization: `Bearer ${key}` },
    from: opts.from,
  });
  expect(reply.status, reply.text).toBe(201);
  const body = reply.json as { sessionId: string; sessionSecret: string };
  rememberSecret(body.sessionSecret);
  return body;
}

/** Connects as a renter; returns the access token (remembered). */
export async function connectRenter(server: TestServer, sessionId: string, from = "127.0.0.1"): Promise<string> {
  const reply = await call(server.url, "POST", `/renter/sessions/${sessionId}/connect`, { from });
  expect(reply.status, reply.text).toBe(201);
  const token = (reply.json as { accessToken: string }).accessToken;
  rememberSecret(token);
  return token;
}

/** Connects a renter and follows `/access/:token`; returns the relay cookie pair (`runit_access=…`). */
export async function relayCookieFor(server: TestServer, sessionId: string): Promise<string> {
  const token = await connectRenter(server, sessionId);
  const access = await call(server.url, "GET", `/access/${token}`);
  const setCookie = ([] as string[]).concat(access.headers["set-cookie"] ?? []);
  const cookie = setCookie.map((c) => c.split(";")[0] ?? "").find((c) => c.startsWith(`${RELAY_COOKIE_NAME}=`)) ?? "";
  expect(cookie).not.toBe("");
  return cookie;
}
