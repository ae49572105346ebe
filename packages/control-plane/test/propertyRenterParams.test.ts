import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { call, connectRenter, registerSession, startTestServer, stopAll, type TestServer } from "./harness.js";
import { FUZZ_SEED, INPUTS_PER_SCHEMA, UNLIMITED, createSender, statusHistogram, unexpected, type FuzzRequest } from "./propertyFuzz.js";

// Property: whatever lands in a route parameter (session id, access token) of the renter and
// provider routes — garbage, broken percent-encoding, path tricks, near-misses of real ids and
// tokens — the real server answers with a documented 4xx or a real success, never a 5xx, and
// keeps serving afterwards. 10,000 inputs per route.

/** Small edits of a real value: one character changed, case flipped, cut short, extended. */
function nearMiss(real: string[]): fc.Arbitrary<string> {
  return fc
    .tuple(fc.constantFrom(...real), fc.nat(), fc.constantFrom("flip", "upper", "cut", "extend", "same"), fc.string({ maxLength: 3 }))
    .map(([value, at, op, extra]) => {
      const i = at % value.length;
      if (op === "flip") return value.slice(0, i) + (value[i] === "a" ? "b" : "a") + value.slice(i + 1);
      if (op === "upper") return value.toUpperCase();
      if (op === "cut") return value.slice(0, i);
      if (op === "extend") return value + extra;
      return value;
    })
    .map((s) => encodeURIComponent(s));
}

/** Raw path segments, already in request-target form (the client sends them as they are). */
function hostileSegment(real: string[]): fc.Arbitrary<string> {
  return fc.oneof(
    { weight: 4, arbitrary: nearMiss(real) },
    { weight: 3, arbitrary: fc.string({ unit: "binary", maxLength: 120 }).map((s) => encodeURIComponent(s)) },
    { weight: 2, arbitrary: fc.stringMatching(/^[A-Za-z0-9._~!$&'()*+,;=:@%-]{1,80}$/) },
    {
      weight: 2,
      arbitrary: fc.constantFrom(
        "%", "%zz", "%E0%A4%A", "%00", "..", "%2e%2e", "%2F", "a%2Fb", "%C0%AF", "%ED%A0%80", "%F0%9F%92%A5",
        "null", "undefined", "__proto__", "constructor", "hasOwnProperty", "x".repeat(8000), "x".repeat(20000),
        "00000000-0000-0000-0000-000000000000", "%20", "%0d%0aSet-Cookie:%20x=1",
      ),
    },
    { weight: 1, arbitrary: fc.uuid().map((u) => u) },
  );
}

const suffix = fc.oneof(
  { weight: 6, arbitrary: fc.constant("") },
  { weight: 1, arbitrary: fc.constantFrom("/", "/x", "?a=1", "?__proto__[x]=1", "?a=%zz", "#frag", "/..%2F..") },
);

interface RouteSpec {
  method: string;
  /** Builds the path from one hostile segment. */
  path: (segment: string) => string;
  headers?: Record<string, string>;
  allowed: number[];
}

describe("property: hostile route parameters never yield a 5xx", () => {
  let server: TestServer;
  const sessionIds: string[] = [];
  const tokens: string[] = [];
  let secret = "";

  beforeAll(async () => {
    server = await startTestServer({ rateLimits: UNLIMITED });
    for (let i = 0; i < 20; i++) {
      const { sessionId, sessionSecret } = await registerSession(server);
      sessionIds.push(sessionId);
      secret = sessionSecret;
      if (i < 10) tokens.push(await connectRenter(server, sessionId));
    }
  });

  afterAll(async () => {
    await stopAll();
  });

  const routes: Record<string, () => RouteSpec> = {
    "POST /renter/sessions/:id/connect": () => ({
      method: "POST",
      path: (s) => `/renter/sessions/${s}/connect`,
      allowed: [201, 400, 404, 409],
    }),
    "POST /renter/heartbeat/:accessToken": () => ({ method: "POST", path: (s) => `/renter/heartbeat/${s}`, allowed: [200, 400, 403, 404] }),
    "POST /renter/release/:accessToken": () => ({ method: "POST", path: (s) => `/renter/release/${s}`, allowed: [200, 400, 403, 404] }),
    "GET /access/:accessToken": () => ({ method: "GET", path: (s) => `/access/${s}`, allowed: [302, 400, 403, 404] }),
    "GET|DELETE /provider/session/:id": () => ({
      method: "GET",
      path: (s) => `/provider/session/${s}`,
      headers: { authorization: `Bearer ${secret}` },
      allowed: [200, 204, 400, 401, 403, 404],
    }),
  };

  let seedOffset = 10;
  for (const [name, spec] of Object.entries(routes)) {
    const seed = FUZZ_SEED + seedOffset++;
    it(`${name}: ${INPUTS_PER_SCHEMA} hostile parameters`, { timeout: 180_000 }, async () => {
      const route = spec();
      const real = name.includes(":accessToken") ? tokens : sessionIds;
      const method = name.startsWith("GET|DELETE") ? fc.constantFrom("GET", "GET", "DELETE") : fc.constant(route.method);
      const inputs: FuzzRequest[] = fc
        .sample(fc.tuple(hostileSegment(real), suffix, method), { numRuns: INPUTS_PER_SCHEMA, seed })
        .map(([segment, tail, m]) => ({ method: m, path: route.path(segment) + tail, headers: { ...route.headers } }));
      const sender = createSender(server.url);
      const started = Date.now();
      const outcomes = await sender.sendAll(inputs);
      sender.close();
      const histogram = statusHistogram(outcomes);
      console.log(`[fuzz] ${name} seed=${seed} ${outcomes.length} inputs in ${Date.now() - started} ms`, histogram);

      expect(outcomes).toHaveLength(INPUTS_PER_SCHEMA);
      expect(unexpected(outcomes, route.allowed)).toEqual([]);
      expect((await call(server.url, "GET", "/healthz")).status).toBe(200);
      expect(server.err.join("")).not.toMatch(/unhandled error/);
    });
  }
});
