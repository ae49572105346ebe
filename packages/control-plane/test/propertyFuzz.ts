import { Agent, request as httpRequest } from "node:http";
import fc from "fast-check";

// Shared by the property*.test.ts files: hostile-input generators (random JSON, schema-valid
// bodies mutated at a random spot, broken JSON text, odd content types) and a keep-alive sender
// that fires them at a real server with bounded concurrency.

/** Enough inputs per schema that a one-in-a-thousand crash shows up. */
export const INPUTS_PER_SCHEMA = 10_000;
/** Fixed seed so a failure is reproducible; printed by each test. */
export const FUZZ_SEED = Number(process.env.RUNIT_FUZZ_SEED ?? 20260114);

/** Rate limits out of the way: the fuzzers send tens of thousands of requests from one IP. */
export const UNLIMITED = {
  registration: { max: 1_000_000_000, windowMs: 60_000 },
  provider: { max: 1_000_000_000, windowMs: 60_000 },
  renter: { max: 1_000_000_000, windowMs: 60_000 },
};

/** One request the fuzzer sends. */
export interface FuzzRequest {
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: string;
}

/** What came back (status -1: the connection failed). */
export interface FuzzOutcome {
  request: FuzzRequest;
  status: number;
  text: string;
}

/** A JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Values that have broken parsers and validators before. */
const nastyValue: fc.Arbitrary<Json> = fc.oneof(
  fc.constantFrom<Json>(
    "", " ", "\u0000", "\ud800", "💥", "../../etc/passwd", "<script>alert(1)</script>", "' OR 1=1 --",
    "%00", "constructor", "__proto__", "toString", "NaN", "Infinity", "-0", "1e309",
    1e308, -1e308, 5e-324, -1, 0, 1.5, 2 ** 53 + 2, -(2 ** 31), 4096.0001, true, false, null, [], {},
    [[[[[[[[[[]]]]]]]]]], { a: { b: { c: { d: {} } } } },
  ),
  fc.string({ maxLength: 40 }),
  fc.string({ unit: "binary", maxLength: 40 }),
  fc.integer(),
  fc.double(),
  fc.constant("x".repeat(5000)),
  fc.jsonValue({ maxDepth: 3 }) as fc.Arbitrary<Json>,
);

const keyName = fc.oneof(
  fc.constantFrom("__proto__", "constructor", "prototype", "sessionId", "tunnel", "kind", "stats", "hardware", "", "0"),
  fc.string({ maxLength: 12 }),
);

/** Every container node of `value`, by path. */
function containerPaths(value: Json, path: Array<string | number> = []): Array<Array<string | number>> {
  if (value === null || typeof value !== "object") return [];
  const here = [path];
  const entries: Array<[string | number, Json]> = Array.isArray(value)
    ? Array.from({ length: value.length }, (_, i): [number, Json] => [i, value[i] as Json])
    : Object.entries(value);
  return here.concat(...entries.map(([k, v]) => containerPaths(v, [...path, k])));
}

function nodeAt(root: Json, path: Array<string | number>): Json {
  let node: Json = root;
  for (const k of path) node = (node as Record<string | number, Json>)[k] as Json;
  return node;
}

/** Sets a property as an own data property, even `__proto__` (an assignment would not). */
function define(target: object, key: string | number, value: Json): void {
  Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
}

interface Mutation {
  op: "set" | "delete" | "extra" | "retype" | "wrap";
  where: number;
  key: string;
  value: Json;
}

const mutation: fc.Arbitrary<Mutation> = fc.record({
  op: fc.constantFrom("set", "delete", "extra", "retype", "wrap"),
  where: fc.nat(),
  key: keyName,
  value: nastyValue,
});

function applyMutation(root: Json, m: Mutation): Json {
  if (m.op === "wrap") return [root];
  const paths = containerPaths(root);
  if (paths.length === 0) return m.value;
  const path = paths[m.where % paths.length] ?? [];
  const node = nodeAt(root, path) as Record<string | number, Json> | Json[];
  const keys = Array.isArray(node) ? Array.from({ length: node.length }, (_, i) => i) : Object.keys(node);
  const target = keys.length > 0 ? keys[m.where % keys.length] : undefined;
  if (Array.isArray(node) && (m.op === "extra" || target === undefined)) node.push(m.value);
  else if (m.op === "extra" || target === undefined) define(node, m.key, m.value);
  else if (m.op === "delete") delete (node as Record<string | number, Json>)[target];
  else if (m.op === "retype") {
    const current = (node as Record<string | number, Json>)[target];
    define(node, target, typeof current === "number" ? String(current) : typeof current === "string" ? current.length : m.value);
  } else define(node, target, m.value);
  return root;
}

/** A schema-valid value with one to three mutations applied somewhere in it. */
export function mutatedJson(valid: fc.Arbitrary<Json>): fc.Arbitrary<Json> {
  return fc
    .tuple(valid, fc.array(mutation, { minLength: 1, maxLength: 3 }))
    .map(([value, mutations]) => {
      let root: Json = JSON.parse(JSON.stringify(value)) as Json;
      for (const m of mutations) root = applyMutation(root, m);
      return root;
    });
}

/** Text-level damage to a JSON document: truncation, insertion, deletion, duplication. */
export function brokenJsonText(valid: fc.Arbitrary<Json>): fc.Arbitrary<string> {
  return fc
    .tuple(valid, fc.nat(), fc.string({ maxLength: 4 }), fc.constantFrom("truncate", "insert", "delete", "duplicate"))
    .map(([value, at, text, op]) => {
      const s = JSON.stringify(value);
      const i = at % (s.length + 1);
      if (op === "truncate") return s.slice(0, i);
      if (op === "insert") return s.slice(0, i) + text + s.slice(i);
      if (op === "delete") return s.slice(0, i) + s.slice(i + 1 + (at % 3));
      return s.slice(0, i) + s + s.slice(i);
    });
}

/** A body and its content type: mostly JSON-typed, sometimes lying about it. */
export function hostileBody(valid: fc.Arbitrary<Json>): fc.Arbitrary<{ contentType: string | undefined; body: string }> {
  const body = fc.oneof(
    { weight: 2, arbitrary: valid.map((v) => JSON.stringify(v)) },
    { weight: 6, arbitrary: mutatedJson(valid).map((v) => JSON.stringify(v)) },
    { weight: 3, arbitrary: brokenJsonText(valid) },
    { weight: 2, arbitrary: fc.jsonValue({ maxDepth: 4 }).map((v) => JSON.stringify(v) ?? "null") },
    { weight: 1, arbitrary: fc.string({ unit: "binary", maxLength: 200 }) },
    { weight: 1, arbitrary: fc.constantFrom("", "null", "[]", "{}", '"x"', "1", "{".repeat(5000), "[".repeat(30000)) },
  );
  const contentType = fc.oneof(
    { weight: 12, arbitrary: fc.constant("application/json") },
    {
      weight: 1,
      arbitrary: fc.constantFrom(
        undefined, "text/plain", "application/json; charset=utf-16", "application/json; charset=latin1",
        "application/json; charset=bogus", "application/x-www-form-urlencoded", "application/*+json",
        "multipart/form-data; boundary=x", "application/JSON",
      ),
    },
  );
  return fc.record({ contentType, body });
}

/** A keep-alive sender with bounded concurrency. */
export function createSender(baseUrl: string, concurrency = 32) {
  const url = new URL(baseUrl);
  const agent = new Agent({ keepAlive: true, maxSockets: concurrency });
  const sendOne = (request: FuzzRequest): Promise<FuzzOutcome> =>
    new Promise((resolve) => {
      const headers = { ...request.headers };
      if (request.body !== undefined) headers["content-length"] = String(Buffer.byteLength(request.body));
      let req;
      try {
        req = httpRequest(
          { host: url.hostname, port: url.port, method: request.method, path: request.path, headers, agent },
          (res) => {
            const chunks: Buffer[] = [];
            res.on("data", (c: Buffer) => chunks.push(c));
            res.on("end", () => resolve({ request, status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString("utf8") }));
          },
        );
      } catch (err) {
        // The client refused to send it (e.g. an invalid header): not the server's fault.
        resolve({ request, status: 0, text: String(err) });
        return;
      }
      req.setTimeout(15_000, () => req.destroy(new Error("timed out")));
      req.on("error", (err) => resolve({ request, status: -1, text: String(err) }));
      req.end(request.body);
    });

  return {
    /** Sends every request (at most `concurrency` in flight) and returns the outcomes in order. */
    async sendAll(requests: FuzzRequest[]): Promise<FuzzOutcome[]> {
      const outcomes: FuzzOutcome[] = new Array(requests.length);
      let next = 0;
      const worker = async () => {
        while (next < requests.length) {
          const i = next++;
          outcomes[i] = await sendOne(requests[i] as FuzzRequest);
        }
      };
      await Promise.all(Array.from({ length: concurrency }, worker));
      return outcomes;
    },
    close: () => agent.destroy(),
  };
}

/** Outcomes whose status is not in `allowed`, summarised for an assertion message. */
export function unexpected(outcomes: FuzzOutcome[], allowed: readonly number[]): string[] {
  return outcomes
    .filter((o) => !allowed.includes(o.status))
    .slice(0, 5)
    .map((o) => `${o.status} ${o.request.method} ${o.request.path.slice(0, 80)} ${JSON.stringify(o.request.body ?? "").slice(0, 200)} → ${o.text.slice(0, 200)}`);
}

/** Counts of each status, for the test's printed summary. */
export function statusHistogram(outcomes: FuzzOutcome[]): Record<number, number> {
  const counts: Record<number, number> = {};
  for (const o of outcomes) counts[o.status] = (counts[o.status] ?? 0) + 1;
  return counts;
}
