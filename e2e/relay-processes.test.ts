// The relay with real processes: the runit-control-plane CLI, the runit-agent CLI (which starts
// its own hardened runit-jupyter container and dials the relay tunnel), and renter traffic over
// real sockets. Needs the builds: `pnpm exec tsc -b packages/control-plane packages/agent`.
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { connect as connectTcp } from "node:net";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createServer as createTlsServer, type TLSSocket } from "node:tls";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { agentContainers, cleanupDocker, requireDocker } from "./agent-harness.js";
import { fetchRaw, waitFor } from "./relay-harness.js";
import { connectAsRenter, onePlusOneThroughRelay } from "./relay-jupyter-harness.js";

const run = promisify(execFile);
const root = fileURLToPath(new URL("..", import.meta.url));
const cpBin = join(root, "packages/control-plane/bin/runit-control-plane.js");
const agentBin = join(root, "packages/agent/bin/runit-agent.js");
const MB = 1024 * 1024;
const tlsFixtures = join(root, "e2e/fixtures/tls");

interface Proc {
  child: ChildProcess;
  out: string[];
  text(): string;
}

function startProc(args: string[], env: Record<string, string> = {}): Proc {
  const child = spawn("node", args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  const out: string[] = [];
  child.stdout?.on("data", (d: Buffer) => out.push(d.toString()));
  child.stderr?.on("data", (d: Buffer) => out.push(d.toString()));
  return { child, out, text: () => out.join("") };
}

async function stopProc(proc: Proc | undefined, timeoutMs: number): Promise<void> {
  if (!proc || proc.child.exitCode !== null) return;
  const exited = new Promise<void>((resolve) => proc.child.once("exit", () => resolve()));
  proc.child.kill("SIGCONT");
  proc.child.kill("SIGTERM");
  const timer = setTimeout(() => proc.child.kill("SIGKILL"), timeoutMs);
  await exited;
  clearTimeout(timer);
}

/** A new provider key in the database at `db` (`keys create` prints it alone on its last line). */
async function createKey(db: string, name: string): Promise<string> {
  const { stdout } = await run("node", [cpBin, "keys", "create", "--name", name, "--db", db]);
  return stdout.trim().split("\n").at(-1) as string;
}

/** The port the control-plane CLI says it listens on. */
async function listeningPort(cp: Proc): Promise<number> {
  return Number((await waitForMatch(() => cp.text(), /listening on port (\d+)/, 20_000))[1]);
}

/** The agent CLI offering one small session to `serverUrl`, with its own name, network and directories under `dir`. */
function startAgentCli(serverUrl: string, key: string, dir: string, name: string, network: string, env: Record<string, string> = {}): Proc {
  return startProc(
    [agentBin, "start", "--server", serverUrl, "--name", name, "--network", network,
      "--workspace-root", join(dir, "workspaces"), "--state-dir", join(dir, "state"), "--memory", "1g", "--cpus", "1", "--pids", "200"],
    { RUNIT_PROVIDER_KEY: key, ...env },
  );
}

/** The id of the session the agent registered. */
async function registeredSession(agent: Proc): Promise<string> {
  return (await waitForMatch(() => agent.text(), /session registered: ([0-9a-f-]{36})/, 90_000))[1] as string;
}

function count(text: string, needle: string): number {
  return text.split(needle).length - 1;
}

describe("relay with real processes (control plane CLI + agent CLI + container)", () => {
  const tag = randomBytes(4).toString("hex");
  const agentName = `relay-e2e-${tag}`;
  const network = `runit-e2e-${tag}`;
  const dir = mkdtempSync(join(tmpdir(), "runit-relay-proc-"));
  const db = join(dir, "runit.db");
  let cp: Proc | undefined;
  let agent: Proc | undefined;
  let cpPort = 0;
  let sessionId = "";
  let base = "";
  let cookie = "";
  let containerId = "";

  beforeAll(async () => {
    await requireDocker();
    const key = await createKey(db, "relay-e2e");
    cp = startProc([cpBin, "--port", "0", "--db", db], { RUNIT_SWEEP_INTERVAL_MS: "500" });
    cpPort = await listeningPort(cp);
    agent = startAgentCli(`http://127.0.0.1:${cpPort}`, key, dir, agentName, network);
    sessionId = await registeredSession(agent);
    base = `/s/${sessionId}/`;
    await waitFor(() => (cp?.text() ?? "").includes("TUNNEL_CONNECTED"), 20_000, "the agent's relay tunnel");
    const renter = await connectAsRenter(cpPort, sessionId);
    expect(renter.access.headers.location).toBe(base);
    cookie = renter.cookie;
    containerId = (await agentContainers(agentName))[0]?.id ?? "";
    expect(containerId).not.toBe("");
  }, 180_000);

  afterAll(async () => {
    await stopProc(agent, 30_000);
    await stopProc(cp, 10_000);
    await cleanupDocker(agentName, network);
    rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  it("relays GET api/status for the lock holder only (no cookie → 403, 127.0.0.2 → 403)", async () => {
    const ok = await fetchRaw(cpPort, `${base}api/status`, { headers: { Cookie: cookie } });
    expect(ok.status).toBe(200);
    expect(Object.keys(JSON.parse(ok.body.toString()) as object).sort()).toEqual(["connections", "kernels", "last_activity", "started"]);
    expect((await fetchRaw(cpPort, `${base}api/status`)).status).toBe(403);
    const other = await fetchRaw(cpPort, `${base}api/status`, { headers: { Cookie: cookie }, localAddress: "127.0.0.2" });
    expect(other.status).toBe(403);
    expect(JSON.parse(other.body.toString())).toEqual({ error: "IP mismatch - access denied", code: "IP_MISMATCH" });
    // The 403 reply can arrive before the child's stdout has been read: wait for the line.
    await waitForMatch(() => cp?.text(), /\[SECURITY\] \S+ - SESSION_HIJACK_ATTEMPT: \{"sessionId":"[^"]+","ip":"127\.0\.0\.2"/, 10_000);
  });

  it("runs 1+1 on a kernel through the relay", async () => {
    expect(await onePlusOneThroughRelay(cpPort, base, cookie)).toBe("2");
  });

  it("downloads a 50 MB file made in /workspace intact, and the persisted meter shows its bytes", async () => {
    const { stdout } = await run("docker", ["exec", containerId, "sh", "-c", "head -c 52428800 /dev/urandom > /workspace/big.bin && sha256sum /workspace/big.bin"]);
    const expected = stdout.split(" ")[0];
    const res = await fetchRaw(cpPort, `${base}files/big.bin`, { headers: { Cookie: cookie } });
    expect(res.status).toBe(200);
    expect(res.body.length).toBe(50 * MB);
    expect(createHash("sha256").update(res.body).digest("hex")).toBe(expected);
    const Database = createRequire(join(root, "packages/control-plane/package.json"))("better-sqlite3") as new (
      path: string,
      opts: { readonly: boolean },
    ) => { prepare(sql: string): { get(...a: unknown[]): unknown }; close(): void };
    const store = new Database(db, { readonly: true });
    try {
      // The control plane persists its meters at each sweep (every 500 ms here).
      await waitFor(() => ((store.prepare("SELECT bw_bytes FROM sessions WHERE id = ?").get(sessionId) as { bw_bytes: number }).bw_bytes >= 50 * MB), 10_000, "the persisted meter");
      const bytes = (store.prepare("SELECT bw_bytes FROM sessions WHERE id = ?").get(sessionId) as { bw_bytes: number }).bw_bytes;
      expect(bytes).toBeLessThan(51 * MB);
    } finally {
      store.close();
    }
  });

  it("survives a tunnel drop: 502 while the agent is away, unavailable in the listing, then relayed again", async () => {
    const proc = agent as Proc;
    proc.child.kill("SIGSTOP"); // the agent cannot redial while its tunnel is cut
    try {
      await run("ss", ["-K", "dport", "=", `:${cpPort}`]).catch(() => undefined);
      await run("ss", ["-K", "sport", "=", `:${cpPort}`]).catch(() => undefined);
      await waitFor(() => count(cp?.text() ?? "", "TUNNEL_DISCONNECTED") === 1, 10_000, "TUNNEL_DISCONNECTED");
      const during = await fetchRaw(cpPort, `${base}api/status`, { headers: { Cookie: cookie } });
      expect(during.status).toBe(502);
      expect(JSON.parse(during.body.toString())).toEqual({ error: "The provider is not reachable right now", code: "TUNNEL_UNAVAILABLE" });
      const listing = JSON.parse((await fetchRaw(cpPort, "/renter/sessions")).body.toString()) as Array<{ sessionId: string; status: string; available?: boolean }>;
      expect(listing.find((s) => s.sessionId === sessionId)).toMatchObject({ status: "LOCKED", available: false });
    } finally {
      proc.child.kill("SIGCONT");
    }
    await waitFor(() => count(cp?.text() ?? "", "TUNNEL_CONNECTED") === 2, 20_000, "the agent to redial");
    const after = await fetchRaw(cpPort, `${base}api/status`, { headers: { Cookie: cookie } });
    expect(after.status).toBe(200);
  });
});

describe("an agent behind TLS: https:// registration and a wss:// tunnel through a TLS-terminating front", () => {
  const tag = randomBytes(4).toString("hex");
  const agentName = `relay-tls-${tag}`;
  const network = `runit-tls-${tag}`;
  const dir = mkdtempSync(join(tmpdir(), "runit-relay-tls-"));
  const db = join(dir, "runit.db");
  const protocols: string[] = [];
  let cp: Proc | undefined;
  let agent: Proc | undefined;
  // What an operator's TLS terminator does: TLS in, plain TCP to the control plane.
  const front = createTlsServer({ key: readFileSync(join(tlsFixtures, "server.key")), cert: readFileSync(join(tlsFixtures, "server.pem")) }, (tls: TLSSocket) => {
    protocols.push(tls.getProtocol() ?? "?");
    const plain = connectTcp(cpPort, "127.0.0.1");
    tls.pipe(plain).pipe(tls);
    tls.on("error", () => plain.destroy());
    plain.on("error", () => tls.destroy());
    tls.on("close", () => plain.destroy());
    plain.on("close", () => tls.destroy());
  });
  let cpPort = 0;

  afterAll(async () => {
    await stopProc(agent, 30_000);
    await stopProc(cp, 10_000);
    front.close();
    await cleanupDocker(agentName, network);
    rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  it("registers over https, relays over wss, and the renter reaches Jupyter (api/status, kernel 1+1)", async () => {
    await requireDocker();
    const key = await createKey(db, "relay-tls");
    cp = startProc([cpBin, "--port", "0", "--db", db]);
    cpPort = await listeningPort(cp);
    await new Promise<void>((resolve) => front.listen(0, "127.0.0.1", resolve));
    const frontPort = (front.address() as { port: number }).port;
    agent = startAgentCli(`https://127.0.0.1:${frontPort}`, key, dir, agentName, network, { NODE_EXTRA_CA_CERTS: join(tlsFixtures, "ca.pem") });
    const sessionId = await registeredSession(agent);
    await waitForMatch(() => cp?.text(), new RegExp(`TUNNEL_CONNECTED: \\{"sessionId":"${sessionId}"`), 20_000);
    // Registration, heartbeats and the tunnel all came through the front, over TLS 1.3.
    expect(protocols.length).toBeGreaterThanOrEqual(2);
    expect(new Set(protocols)).toEqual(new Set(["TLSv1.3"]));
    const base = `/s/${sessionId}/`;
    const { cookie } = await connectAsRenter(cpPort, sessionId);
    const status = await fetchRaw(cpPort, `${base}api/status`, { headers: { Cookie: cookie } });
    expect(status.status).toBe(200);
    expect(Object.keys(JSON.parse(status.body.toString()) as object).sort()).toEqual(["connections", "kernels", "last_activity", "started"]);
    expect(await onePlusOneThroughRelay(cpPort, base, cookie)).toBe("2");
  }, 150_000);
});

async function waitForMatch(text: () => string | undefined, pattern: RegExp, timeoutMs: number): Promise<RegExpExecArray> {
  let match: RegExpExecArray | null = null;
  await waitFor(() => (match = pattern.exec(text() ?? "")) !== null, timeoutMs, String(pattern));
  return match as unknown as RegExpExecArray;
}
