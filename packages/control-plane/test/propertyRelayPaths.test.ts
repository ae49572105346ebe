import { connect } from "node:net";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createRelay } from "../src/relay/index.js";
import { call, registerSession, relayCookieFor, startTestServer, stopAll, type TestServer } from "./harness.js";
import { FUZZ_SEED, INPUTS_PER_SCHEMA, UNLIMITED, createSender, statusHistogram, unexpected, type FuzzOutcome } from "./propertyFuzz.js";

// Property: hostile `/s/<sessionId>/...` paths — as plain HTTP and as WebSocket upgrades, with and
// without the lock cookie — are refused with a 3xx/4xx (or 502 while no agent is connected), never
// a 5xx, never a crash. Upgrades bypass Express, so they get their own 10,000 inputs.

function segment(real: string): fc.Arbitrary<string> {
  return fc.oneof(
    { weight: 3, arbitrary: fc.constant(real) },
    { weight: 3, arbitrary: fc.string({ unit: "binary", maxLength: 60 }).map((s) => encodeURIComponent(s)) },
    { weight: 2, arbitrary: fc.stringMatching(/^[A-Za-z0-9._~!$&'()*+,;=:@%-]{1,60}$/) },
    { weight: 2, arbitrary: fc.constantFrom("%", "%zz", "%E0%A4%A", "%ED%A0%80", "%00", "..", "%2e%2e", "%2F", "x".repeat(4000)) },
  );
}

const rest = fc.oneof(
  fc.constantFrom("", "/", "/api/status", "/api/kernels/x/channels", "/../../agent/tunnel", "/%2e%2e/%2e%2e/metrics", "?x=%zz", "/api/status?token=x"),
  fc.stringMatching(/^(\/[A-Za-z0-9._~%-]{0,20}){0,4}$/),
);

/** Sends one raw WebSocket upgrade and returns the status of the reply (-1: connection failed). */
function rawUpgrade(port: number, path: string, cookie: string | undefined): Promise<number> {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    let head = "";
    const done = (status: number) => {
      socket.destroy();
      resolve(status);
    };
    socket.setTimeout(5000, () => done(-1));
    socket.on("error", () => done(-1));
    socket.on("close", () => done(head ? Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? -1) : -1));
    socket.on("data", (chunk: Buffer) => {
      head += chunk.toString("latin1");
      if (head.includes("\r\n")) done(Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? -1));
    });
    socket.write(
      `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
        `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n` +
        (cookie ? `Cookie: ${cookie}\r\n` : "") +
        "\r\n",
    );
  });
}

describe("property: hostile relay paths never yield a 5xx or a crash", () => {
  let server: TestServer;
  let sessionId = "";
  let cookie = "";

  beforeAll(async () => {
    server = await startTestServer({ rateLimits: UNLIMITED, shutdownDrainMs: 1000 }, { relay: (ctx) => createRelay(ctx) });
    ({ sessionId } = await registerSession(server));
    cookie = await relayCookieFor(server, sessionId);
  });

  afterAll(async () => {
    await stopAll();
  });

  const inputs = (seed: number) =>
    fc.sample(fc.tuple(segment(sessionId), rest, fc.boolean()), { numRuns: INPUTS_PER_SCHEMA, seed });

  it(`HTTP /s/<id>/...: ${INPUTS_PER_SCHEMA} hostile paths`, { timeout: 180_000 }, async () => {
    const seed = FUZZ_SEED + 200;
    const sender = createSender(server.url);
    const outcomes = await sender.sendAll(
      inputs(seed).map(([seg, tail, withCookie]) => ({
        method: "GET",
        path: `/s/${seg}${tail}`,
        headers: withCookie ? { cookie } : ({} as Record<string, string>),
      })),
    );
    sender.close();
    console.log(`[fuzz] relay HTTP paths seed=${seed}`, statusHistogram(outcomes));
    // 502: the lock holder's request while no agent is connected (TUNNEL_UNAVAILABLE).
    expect(unexpected(outcomes, [308, 400, 403, 404, 502])).toEqual([]);
    expect((await call(server.url, "GET", "/healthz")).status).toBe(200);
    expect(server.err.join("")).not.toMatch(/unhandled error/);
  });

  it(`WebSocket upgrades of /s/<id>/...: ${INPUTS_PER_SCHEMA} hostile paths`, { timeout: 180_000 }, async () => {
    const seed = FUZZ_SEED + 201;
    const all = inputs(seed);
    const outcomes: FuzzOutcome[] = [];
    let next = 0;
    const worker = async () => {
      while (next < all.length) {
        const [seg, tail, withCookie] = all[next++] as [string, string, boolean];
        const path = `/s/${seg}${tail}`;
        const status = await rawUpgrade(server.port, path, withCookie ? cookie : undefined);
        outcomes.push({ request: { method: "GET", path, headers: {} }, status, text: "" });
      }
    };
    await Promise.all(Array.from({ length: 32 }, worker));
    console.log(`[fuzz] relay upgrade paths seed=${seed}`, statusHistogram(outcomes));
    expect(outcomes).toHaveLength(INPUTS_PER_SCHEMA);
    expect(unexpected(outcomes, [400, 403, 404, 502])).toEqual([]);
    expect((await call(server.url, "GET", "/healthz")).status).toBe(200);
  });
});
