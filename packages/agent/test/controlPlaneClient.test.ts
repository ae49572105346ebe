import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { asSecret } from "@runit/protocol";
import { ControlPlaneError, createControlPlaneClient } from "../src/controlPlaneClient.js";

// A scripted control plane on a real socket: each test sets the next reply.
let server: Server;
let url = "";
let reply: { status: number; body: unknown } = { status: 200, body: {} };
const seen: Array<{ method: string; path: string; auth: string; body: string }> = [];

beforeAll(async () => {
  server = createServer((req, res) => {
    let body = "";
    req.on("data", (c: Buffer) => (body += c.toString()));
    req.on("end", () => {
      seen.push({ method: req.method ?? "", path: req.url ?? "", auth: req.headers.authorization ?? "", body });
      res.writeHead(reply.status, { "Content-Type": "application/json" });
      res.end(reply.body === undefined ? "" : JSON.stringify(reply.body));
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(() => server.close());

const ID = "0b3f6c1e-2d4a-4c6b-8e9f-1a2b3c4d5e6f";
const client = () => createControlPlaneClient({ serverUrl: `${url}/`, providerKey: asSecret("pk_test-key-0123456789") });
const body = { sessionId: ID, tunnel: { kind: "relay" as const }, hardware: { cpus: 2, memoryMb: 4096, gpus: [] }, pricing: { hourlyUsd: 0.5 } };

describe("control-plane client", () => {
  it("registers with the provider key and validates the reply", async () => {
    reply = { status: 201, body: { sessionId: ID, sessionSecret: "s".repeat(43), heartbeatIntervalMs: 30000 } };
    const reg = await client().register(body);
    expect(reg).toEqual({ sessionId: ID, sessionSecret: "s".repeat(43), heartbeatIntervalMs: 30000 });
    expect(seen.at(-1)).toMatchObject({ method: "POST", path: "/provider/session", auth: "Bearer pk_test-key-0123456789" });
    expect(JSON.parse(seen.at(-1)!.body)).toEqual(body);
  });

  it("refuses a malformed reply instead of trusting it", async () => {
    reply = { status: 201, body: { sessionId: "not-a-uuid", sessionSecret: "short", heartbeatIntervalMs: -1 } };
    await expect(client().register(body)).rejects.toThrow("registration: unexpected reply from the control plane");
  });

  it("marks a refused key as final and a 429 or 503 as worth retrying", async () => {
    reply = { status: 401, body: { error: "Invalid provider key", code: "INVALID_PROVIDER_KEY" } };
    const refused = await client().register(body).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(ControlPlaneError);
    expect(refused).toMatchObject({ status: 401, code: "INVALID_PROVIDER_KEY", fatal: true, message: "registration refused: 401 Invalid provider key (INVALID_PROVIDER_KEY)" });
    reply = { status: 429, body: { error: "Too many requests, please try again later", code: "RATE_LIMITED" } };
    expect(await client().register(body).catch((e: unknown) => e)).toMatchObject({ status: 429, fatal: false });
    reply = { status: 503, body: undefined };
    expect(await client().register(body).catch((e: unknown) => e)).toMatchObject({ status: 503, fatal: false });
  });

  it("heartbeats with the session secret; 404 means the session is gone; ENDED carries the reason", async () => {
    reply = { status: 200, body: { status: "LOCKED", locked: true } };
    expect(await client().heartbeat(ID, asSecret("secret-0123456789abcdef"), { rxBytes: 1, txBytes: 2 })).toEqual({ status: "LOCKED", locked: true });
    expect(seen.at(-1)).toMatchObject({ path: "/provider/heartbeat", auth: "Bearer secret-0123456789abcdef" });
    expect(JSON.parse(seen.at(-1)!.body)).toEqual({ sessionId: ID, stats: { rxBytes: 1, txBytes: 2 } });
    reply = { status: 404, body: { error: "Session not found", code: "SESSION_NOT_FOUND" } };
    expect(await client().heartbeat(ID, asSecret("x".repeat(20)))).toEqual({ status: "GONE" });
    reply = { status: 200, body: { status: "ENDED", endReason: "RELEASED" } };
    expect(await client().heartbeat(ID, asSecret("x".repeat(20)))).toEqual({ status: "ENDED", endReason: "RELEASED" });
    reply = { status: 200, body: { status: "WHATEVER" } };
    await expect(client().heartbeat(ID, asSecret("x".repeat(20)))).rejects.toThrow("heartbeat: unexpected reply");
  });

  it("deregisters with DELETE; an unknown session counts as deleted", async () => {
    reply = { status: 204, body: undefined };
    await client().deregister(ID, asSecret("x".repeat(20)));
    expect(seen.at(-1)).toMatchObject({ method: "DELETE", path: `/provider/session/${ID}` });
    reply = { status: 404, body: { error: "Session not found", code: "SESSION_NOT_FOUND" } };
    await expect(client().deregister(ID, asSecret("x".repeat(20)))).resolves.toBeUndefined();
  });

  it("reports an unreachable server as retryable", async () => {
    const c = createControlPlaneClient({ serverUrl: "http://127.0.0.1:1", providerKey: asSecret("k".repeat(20)) });
    expect(await c.register(body).catch((e: unknown) => e)).toMatchObject({ fatal: false, status: undefined });
    expect(await c.health()).toBe(false);
  });
});
