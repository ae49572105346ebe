import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { call, connectRenter, registerSession, registrationBody, startTestServer, stopAll, type TestServer } from "./harness.js";
import {
  FUZZ_SEED,
  INPUTS_PER_SCHEMA,
  UNLIMITED,
  createSender,
  hostileBody,
  statusHistogram,
  unexpected,
  type FuzzRequest,
  type Json,
} from "./propertyFuzz.js";

// Property: whatever body arrives at POST /provider/session or POST /provider/heartbeat, the real
// server answers with a 4xx it documents (or a success for a valid body), never a 5xx, never a
// dropped connection, and keeps serving afterwards. 10,000 random and mutated inputs per schema.

const dnsLabel = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$/);
const gpu = fc.record({ name: fc.string({ minLength: 1, maxLength: 24 }), vramMb: fc.integer({ min: 0, max: 200_000 }) });

/** Bodies that satisfy RegisterSessionRequestSchema (the URL may still be refused by policy). */
const validRegistration: fc.Arbitrary<Json> = fc.record(
  {
    tunnel: fc.oneof(
      fc.constant({ kind: "relay" }),
      dnsLabel.map((l) => ({ kind: "cloudflared", publicUrl: `https://${l}.trycloudflare.com` })),
    ),
    hardware: fc.record({
      cpus: fc.integer({ min: 1, max: 256 }),
      memoryMb: fc.integer({ min: 1, max: 2_000_000 }),
      gpus: fc.array(gpu, { maxLength: 3 }),
    }),
    pricing: fc.record({ hourlyUsd: fc.double({ min: 0, max: 1000, noNaN: true, noDefaultInfinity: true }) }),
    providerId: fc.string({ minLength: 1, maxLength: 32 }),
    protocolVersion: fc.constant(1),
    jupyterToken: fc.stringMatching(/^[A-Za-z0-9_-]{16,40}$/),
    sessionId: fc.uuid({ version: 4 }),
  },
  { requiredKeys: ["tunnel", "hardware", "pricing"] },
) as fc.Arbitrary<Json>;

function validHeartbeat(sessionId: string): fc.Arbitrary<Json> {
  return fc.record(
    {
      sessionId: fc.constant(sessionId),
      stats: fc.record(
        {
          rxBytes: fc.nat(),
          txBytes: fc.nat(),
          lastActivity: fc
            .date({ min: new Date("2000-01-01T00:00:00Z"), max: new Date("2100-01-01T00:00:00Z"), noInvalidDate: true })
            .map((d) => d.toISOString()),
          kernels: fc.nat({ max: 10 }),
        },
        { requiredKeys: [] },
      ),
    },
    { requiredKeys: ["sessionId"] },
  ) as fc.Arbitrary<Json>;
}

/** Mostly the right credential; sometimes none or garbage, which must be a clean 401. */
function authHeader(good: string): fc.Arbitrary<string | undefined> {
  return fc.oneof(
    { weight: 30, arbitrary: fc.constant(`Bearer ${good}`) },
    { weight: 1, arbitrary: fc.constant(undefined) },
    { weight: 1, arbitrary: fc.stringMatching(/^[\x21-\x7e]{0,80}$/) },
    { weight: 1, arbitrary: fc.stringMatching(/^[\x21-\x7e]{0,80}$/).map((s) => `Bearer ${s}`) },
  );
}

function requests(path: string, body: fc.Arbitrary<Json>, auth: fc.Arbitrary<string | undefined>, seed: number): FuzzRequest[] {
  const arb = fc.record({ hostile: hostileBody(body), auth });
  return fc.sample(arb, { numRuns: INPUTS_PER_SCHEMA, seed }).map(({ hostile, auth: a }) => {
    const headers: Record<string, string> = {};
    if (hostile.contentType !== undefined) headers["content-type"] = hostile.contentType;
    if (a !== undefined) headers.authorization = a;
    return { method: "POST", path, headers, body: hostile.body };
  });
}

describe("property: hostile HTTP bodies never yield a 5xx", () => {
  let server: TestServer;
  let prototypeKeys: string[];

  beforeAll(async () => {
    prototypeKeys = Object.getOwnPropertyNames(Object.prototype).sort();
    server = await startTestServer({ rateLimits: UNLIMITED });
  });

  afterAll(async () => {
    await stopAll();
  });

  async function assertStillServing(): Promise<void> {
    expect((await call(server.url, "GET", "/healthz")).status).toBe(200);
    const { sessionId } = await registerSession(server, { body: registrationBody() });
    await connectRenter(server, sessionId);
    expect(server.err.join("")).not.toMatch(/unhandled error/);
    // The server runs in this process: a polluted Object.prototype would show here.
    expect(Object.getOwnPropertyNames(Object.prototype).sort()).toEqual(prototypeKeys);
  }

  it(`POST /provider/session: ${INPUTS_PER_SCHEMA} random and mutated bodies`, { timeout: 180_000 }, async () => {
    const key = server.createKey("fuzz");
    const sender = createSender(server.url);
    const started = Date.now();
    const outcomes = await sender.sendAll(requests("/provider/session", validRegistration, authHeader(key), FUZZ_SEED));
    sender.close();
    const histogram = statusHistogram(outcomes);
    console.log(`[fuzz] /provider/session seed=${FUZZ_SEED} ${outcomes.length} inputs in ${Date.now() - started} ms`, histogram);

    expect(outcomes).toHaveLength(INPUTS_PER_SCHEMA);
    expect(unexpected(outcomes, [201, 400, 401, 409, 413, 415])).toEqual([]);
    // The generator must reach both sides of the validator, or the property says little.
    expect(histogram[201] ?? 0).toBeGreaterThan(100);
    expect(histogram[400] ?? 0).toBeGreaterThan(1000);
    await assertStillServing();
  });

  it(`POST /provider/heartbeat: ${INPUTS_PER_SCHEMA} random and mutated bodies`, { timeout: 180_000 }, async () => {
    const { sessionId, sessionSecret } = await registerSession(server);
    const sender = createSender(server.url);
    const started = Date.now();
    const outcomes = await sender.sendAll(
      requests("/provider/heartbeat", validHeartbeat(sessionId), authHeader(sessionSecret), FUZZ_SEED + 1),
    );
    sender.close();
    const histogram = statusHistogram(outcomes);
    console.log(`[fuzz] /provider/heartbeat seed=${FUZZ_SEED + 1} ${outcomes.length} inputs in ${Date.now() - started} ms`, histogram);

    expect(outcomes).toHaveLength(INPUTS_PER_SCHEMA);
    expect(unexpected(outcomes, [200, 400, 401, 403, 404, 413, 415])).toEqual([]);
    expect(histogram[200] ?? 0).toBeGreaterThan(100);
    expect(histogram[400] ?? 0).toBeGreaterThan(1000);
    // The session survived thousands of hostile heartbeats: its own heartbeat still works.
    const ok = await call(server.url, "POST", "/provider/heartbeat", {
      body: { sessionId },
      headers: { authorization: `Bearer ${sessionSecret}` },
    });
    expect(ok.status, ok.text).toBe(200);
    await assertStillServing();
  });
});
