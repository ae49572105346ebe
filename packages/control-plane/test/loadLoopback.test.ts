import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { Agent, request as httpRequest } from "node:http";
import { createServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

// Load on loopback against the real CLI (a child process, so its memory is its own): 200
// providers heartbeating (and re-registering when their session ends, like the agent) and 500
// renters listing, connecting, heartbeating and releasing, all at once, for a few rounds.
// Asserted: zero 5xx, every lock a renter got held until that renter released it, never two
// renters on one session (from the locks table and the audit), and memory flat between rounds.
// RUNIT_LOAD_ROUNDS=8 runs a longer soak (40 s bound per round). On a machine busy with other
// suites a round may be cut by the deadline; two complete rounds are the minimum to compare memory.

const PROVIDERS = 200;
const RENTERS = 500;
const ROUNDS = Number(process.env.RUNIT_LOAD_ROUNDS ?? 3);
const DEADLINE_MS = 40_000 * ROUNDS;

const cliPath = fileURLToPath(new URL("../bin/runit-control-plane.js", import.meta.url));
const distCli = fileURLToPath(new URL("../dist/cli.js", import.meta.url));
const adminToken = "load-admin-token-0123456789abcdef";

interface Reply {
  status: number;
  json: unknown;
  ms: number;
}

/** A client with its own loopback source address and keep-alive connection. */
function client(port: number, from: string) {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  return {
    /**
     * One request. Lock changes (connect, release) go on a fresh connection, so they never meet a
     * keep-alive socket the server has just closed; an idempotent request that does (a reset on a
     * reused socket, Node's documented idle-close race) is retried once.
     */
    async call(method: string, path: string, opts: { body?: unknown; auth?: string } = {}): Promise<Reply> {
      const lockChange = /\/(connect|release\/)/.test(path);
      const first = await this.once(method, path, opts, lockChange);
      if (first.status === -2) return this.once(method, path, opts, true);
      return first;
    },
    once(method: string, path: string, opts: { body?: unknown; auth?: string }, fresh: boolean): Promise<Reply> {
      const started = performance.now();
      const payload = opts.body === undefined ? undefined : JSON.stringify(opts.body);
      const headers: Record<string, string> = {};
      if (payload !== undefined) headers["content-type"] = "application/json";
      if (opts.auth) headers.authorization = `Bearer ${opts.auth}`;
      return new Promise((resolve) => {
        const req = httpRequest({ host: "127.0.0.1", port, method, path, headers, agent: fresh ? false : agent, localAddress: from }, (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => {
            const text = Buffer.concat(chunks).toString("utf8");
            let json: unknown;
            try {
              json = text ? JSON.parse(text) : undefined;
            } catch {
              json = text;
            }
            resolve({ status: res.statusCode ?? 0, json, ms: performance.now() - started });
          });
        });
        req.setTimeout(45_000, () => req.destroy(new Error("timed out")));
        req.on("error", (err: NodeJS.ErrnoException) => {
          // Node's advice for keep-alive: a reset on a reused socket is the idle-close race.
          const stale = req.reusedSocket && err.code === "ECONNRESET";
          resolve({ status: stale ? -2 : -1, json: `${method} ${path}: ${err.message}`, ms: performance.now() - started });
        });
        req.end(payload);
      });
    },
    close: () => agent.destroy(),
  };
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address() as AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

describe("load on loopback", () => {
  let dir: string;
  let child: ChildProcess;
  let port: number;
  let key: string;
  let dbPath: string;

  beforeAll(async () => {
    if (!existsSync(distCli)) throw new Error("packages/control-plane is not built: run pnpm exec tsc -b packages/control-plane");
    dir = mkdtempSync(join(tmpdir(), "runit-load-"));
    dbPath = join(dir, "runit.db");
    port = await freePort();
    const env = {
      ...process.env,
      RUNIT_DB: dbPath,
      RUNIT_ADMIN_TOKEN: adminToken,
      PORT: String(port),
      RUNIT_HOST: "127.0.0.1",
      RUNIT_RATE_REGISTRATION_MAX: "1000000",
      RUNIT_RATE_PROVIDER_MAX: "1000000",
      RUNIT_RATE_RENTER_MAX: "1000000",
    };
    key = execFileSync(process.execPath, [cliPath, "keys", "create", "--name", "load"], { env, encoding: "utf8" }).trim().split("\n").at(-1) ?? "";
    child = spawn(process.execPath, [cliPath, "serve"], { env, stdio: ["ignore", "pipe", "pipe"] });
    child.stdout?.resume();
    child.stderr?.resume();
    const probe = client(port, "127.0.0.1");
    for (let i = 0; i < 100 && (await probe.call("GET", "/healthz")).status !== 200; i++) await new Promise((r) => setTimeout(r, 100));
    probe.close();
  });

  afterAll(async () => {
    if (child && child.exitCode === null) {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await Promise.race([exited, new Promise((r) => setTimeout(r, 15_000))]);
      if (child.exitCode === null) child.kill("SIGKILL");
    }
    rmSync(dir, { recursive: true, force: true });
  });

  /** RSS from /proc and heap from the server's own metrics. */
  async function memory(): Promise<{ rssMb: number; heapMb: number }> {
    const status = readFileSync(`/proc/${child.pid}/status`, "utf8");
    const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
    const metrics = (await client(port, "127.0.0.1").call("GET", "/metrics", { auth: adminToken })).json as string;
    const heap = Number(/^runit_process_nodejs_heap_size_used_bytes (\S+)$/m.exec(String(metrics))?.[1] ?? NaN);
    return { rssMb: Math.round(rssKb / 1024), heapMb: Math.round(heap / 1024 / 1024) };
  }

  it(`${PROVIDERS} providers and ${RENTERS} renters at once: zero 5xx, no lost or double lock, flat memory`, { timeout: DEADLINE_MS + 30_000 }, async () => {
    const deadline = Date.now() + DEADLINE_MS;
    const statuses: Record<number, number> = {};
    const failures: string[] = [];
    const latencies: number[] = [];
    const count = (r: Reply) => {
      statuses[r.status] = (statuses[r.status] ?? 0) + 1;
      latencies.push(r.ms);
      if (r.status < 0 || r.status >= 500) failures.push(`${r.status} ${JSON.stringify(r.json).slice(0, 160)}`);
    };
    const locksBySession = new Map<string, number>();
    const lostLocks: string[] = [];
    const body = { tunnel: { kind: "relay" }, hardware: { cpus: 2, memoryMb: 4096, gpus: [] }, pricing: { hourlyUsd: 0.5 } };

    const providers = Array.from({ length: PROVIDERS }, (_, i) => ({ http: client(port, `127.2.${(i >> 7) + 1}.${(i & 127) + 1}`), id: "", secret: "" }));
    const renters = Array.from({ length: RENTERS }, (_, i) => client(port, `127.3.${(i >> 7) + 1}.${(i & 127) + 1}`));

    async function register(p: (typeof providers)[number]): Promise<void> {
      const r = await p.http.call("POST", "/provider/session", { body, auth: key });
      count(r);
      const reply = r.json as { sessionId: string; sessionSecret: string };
      p.id = reply.sessionId;
      p.secret = reply.sessionSecret;
    }

    async function providerRound(p: (typeof providers)[number]): Promise<void> {
      for (let beat = 0; beat < 5 && Date.now() < deadline; beat++) {
        const r = await p.http.call("POST", "/provider/heartbeat", { body: { sessionId: p.id }, auth: p.secret });
        count(r);
        // Like the agent: an ended session is replaced by a fresh one.
        if (r.status === 404 || (r.json as { status?: string } | undefined)?.status === "ENDED") await register(p);
      }
    }

    async function renterRound(r: (typeof renters)[number]): Promise<void> {
      for (let attempt = 0; attempt < 3 && Date.now() < deadline; attempt++) {
        const list = await r.call("GET", "/renter/sessions");
        count(list);
        const rows = Array.isArray(list.json) ? (list.json as Array<{ sessionId: string; status: string }>) : [];
        const ready = rows.filter((s) => s.status === "READY");
        const pick = ready[Math.floor(Math.random() * ready.length)];
        if (!pick) continue;
        const connect = await r.call("POST", `/renter/sessions/${pick.sessionId}/connect`);
        count(connect);
        if (connect.status !== 201) continue;
        locksBySession.set(pick.sessionId, (locksBySession.get(pick.sessionId) ?? 0) + 1);
        const token = (connect.json as { accessToken: string }).accessToken;
        for (let hb = 0; hb < 2; hb++) {
          const beat = await r.call("POST", `/renter/heartbeat/${token}`);
          count(beat);
          if (beat.status !== 200) lostLocks.push(`${pick.sessionId}: heartbeat ${beat.status}`);
        }
        const release = await r.call("POST", `/renter/release/${token}`);
        count(release);
        if (release.status !== 200) lostLocks.push(`${pick.sessionId}: release ${release.status}`);
        return;
      }
    }

    await Promise.all(providers.map(register));
    const samples: Array<{ round: number; rssMb: number; heapMb: number; ms: number }> = [];
    for (let round = 1; round <= ROUNDS && Date.now() < deadline; round++) {
      const started = Date.now();
      await Promise.all([...providers.map(providerRound), ...renters.map(renterRound)]);
      samples.push({ round, ...(await memory()), ms: Date.now() - started });
    }
    for (const c of [...providers.map((p) => p.http), ...renters]) c.close();
    latencies.sort((a, b) => a - b);
    const pct = (p: number) => Math.round(latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))] ?? 0);
    console.log("[load] statuses", statuses, `requests=${latencies.length} p50=${pct(50)}ms p99=${pct(99)}ms max=${pct(100)}ms`);
    console.log("[load] rounds", JSON.stringify(samples));
    if (failures.length > 0) console.log("[load] failures", failures.slice(0, 5));

    expect(samples.length).toBeGreaterThanOrEqual(Math.min(2, ROUNDS));
    expect(Object.keys(statuses).filter((s) => Number(s) >= 500 || Number(s) < 0)).toEqual([]);
    expect(statuses[201] ?? 0).toBeGreaterThan(PROVIDERS);
    expect(lostLocks).toEqual([]);
    expect([...locksBySession.values()].filter((n) => n > 1)).toEqual([]);

    const db = new Database(dbPath, { readonly: true, fileMustExist: true });
    try {
      const doubled = db.prepare("SELECT session_id, COUNT(*) AS n FROM locks GROUP BY session_id HAVING n > 1").all();
      expect(doubled).toEqual([]);
      const unreleased = db.prepare("SELECT COUNT(*) AS n FROM locks WHERE released_at IS NULL").get() as { n: number };
      expect(unreleased.n).toBe(0);
      const lockedEvents = db.prepare("SELECT details FROM audit WHERE event = 'SESSION_LOCKED'").all() as Array<{ details: string }>;
      const perSession = new Map<string, number>();
      for (const e of lockedEvents) {
        const id = (JSON.parse(e.details) as { sessionId: string }).sessionId;
        perSession.set(id, (perSession.get(id) ?? 0) + 1);
      }
      expect([...perSession.values()].filter((n) => n > 1)).toEqual([]);
      expect(perSession.size).toBe(locksBySession.size);
      const timeouts = db.prepare("SELECT COUNT(*) AS n FROM audit WHERE event = 'SESSION_UNLOCKED' AND details NOT LIKE '%RELEASED%'").get() as { n: number };
      expect(timeouts.n).toBe(0);
    } finally {
      db.close();
    }

    // Flat: after the first (warm-up) round, memory grows by less than 64 MB over the rest.
    const first = samples[0] as (typeof samples)[number];
    const last = samples.at(-1) as (typeof samples)[number];
    expect(last.rssMb - first.rssMb).toBeLessThan(64);
    expect(last.heapMb - first.heapMb).toBeLessThan(64);
  });
});
