/* global process, console, performance, setTimeout, Buffer, URL */
// Benchmark (not a timed test): the relay's two hops (control plane → agent tunnel → Jupyter on
// its Unix socket, as the agent runs it in relay mode) against going straight to Jupyter's
// published port, against configurable-http-proxy (one hop) in front of that port and on the
// container's bridge address (chp-ip, past Docker's userland proxy), and against
// two bare TCP pipes in a chain (the floor of any two-process path: no HTTP work), on the same
// machine in the same run. Small requests (GET api/status) and 1 MiB bodies (GET files/),
// latency at concurrency 1 and throughput at higher concurrency. Prints figures and ratios.
//
// The machines are shared and noisy, so the run starts with a warm-up pass through every
// scenario and every scenario again warms each target up (JIT compiled, pools filled), then
// measures BENCH_ROUNDS short rounds with the targets interleaved
// (order reversed every other round) and reports each target's median round: drift of the
// machine hits all three alike. The verdict is taken on the relay/CHP ratio round by round (the
// two measured seconds apart), with a distribution-free 95% confidence interval of its median:
// met only when the whole interval clears the line, missed only when the whole interval is below
// it, and otherwise undecided — the run's noise covers the line, and more rounds would tell. Besides rates and latencies it prints the proxies' own CPU time
// and event-loop context switches per request (from /proc), the steadier figures.
//
// BENCH_PIN=1 shapes the run as deployed, on two CPUs: CPU 0 is the control plane's machine (the
// control plane, CHP, the first pipe, and the renters' load, which every target shares alike) and
// CPU 1 the provider's (Jupyter's container, the agent, the second pipe). Without it every process
// may run on any CPU, so the agent competes with the proxy for the same two cores.
// Run: ./scripts/bench.sh   (BENCH_ROUNDS=30 rounds of BENCH_SECONDS=0.5 s, BENCH_WARMUP_SECONDS=1)
import { execFileSync, spawn } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { chownSync, chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { Agent, request } from "node:http";
import { availableParallelism, tmpdir } from "node:os";
import { SOCKET_IN_CONTAINER, createSocketDir, waitForJupyter } from "@runit/agent";
import { join } from "node:path";

const SECONDS = Number(process.env.BENCH_SECONDS ?? 0.5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 30);
const WARMUP_SECONDS = Number(process.env.BENCH_WARMUP_SECONDS ?? 1);
const PIN = process.env.BENCH_PIN === "1";
/** BENCH_PIN's CPUs: the control plane's machine and the provider's. */
const CP_CPU = "0";
const PROVIDER_CPU = "1";
const root = new URL("..", import.meta.url).pathname;
const children = [];
const cleanups = [];

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** One GET over a keep-alive agent; resolves with the body length. */
function get(agent, port, path, headers) {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path, headers, agent }, (res) => {
      let n = 0;
      res.on("data", (c) => (n += c.length));
      res.on("end", () => (res.statusCode === 200 ? resolve(n) : reject(new Error(`HTTP ${res.statusCode} for ${path}`))));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end();
  });
}

function call(port, method, path, headers = {}, body) {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path, method, headers, agent: false }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

/** CPU time (user + system, ms) a process has used so far, from /proc (Linux). */
function cpuMs(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/**
 * The rest of the machine's CPU time a request costs, besides the proxy's own: the upstream
 * (Jupyter's container, or the plain server), Docker's userland proxy in front of its port, and
 * this process, the renters' load. Filled in by main(); each reader returns CPU ms so far.
 */
const machineParts = [];

/** CPU ms a container has used so far (cgroup v1 or v2 accounting), or undefined if not found. */
function containerCpuReader(id) {
  const usecOf = (text) => Number(/usage_usec (\d+)/.exec(text)?.[1]) / 1000;
  const sources = [
    { path: `/sys/fs/cgroup/cpuacct/docker/${id}/cpuacct.usage`, ms: (text) => Number(text) / 1e6 },
    { path: `/sys/fs/cgroup/system.slice/docker-${id}.scope/cpu.stat`, ms: usecOf },
    { path: `/sys/fs/cgroup/docker/${id}/cpu.stat`, ms: usecOf },
  ];
  const found = sources.find(({ path }) => existsSync(path));
  return found && (() => found.ms(readFileSync(found.path, "utf8")));
}

/** Context switches of a process's main thread (the event loop) so far, from /proc (Linux). */
function switches(pid) {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const count = (name) => Number(new RegExp(`^${name}:\\s+(\\d+)`, "m").exec(status)?.[1] ?? 0);
  return count("voluntary_ctxt_switches") + count("nonvoluntary_ctxt_switches");
}

/** Runs `concurrency` workers for `seconds` (and at most 200,000 requests); latency percentiles and rates. */
async function measure(target, path, concurrency, seconds = SECONDS) {
  const agent = new Agent({ keepAlive: true, maxSockets: concurrency });
  // Open every connection before the clock starts (at once: one after another would reuse one
  // socket), so a round measures the steady state and not connection setup.
  await Promise.all(Array.from({ length: concurrency }, () => get(agent, target.port, path, target.headers)));
  await get(agent, target.port, path, target.headers);
  const latencies = [];
  let bytes = 0;
  const deadline = performance.now() + seconds * 1000;
  const worker = async () => {
    while (performance.now() < deadline && latencies.length < 200_000) {
      const t0 = performance.now();
      const n = await get(agent, target.port, path, target.headers);
      bytes += n;
      latencies.push(performance.now() - t0);
    }
  };
  const cpuBefore = target.pids.map(cpuMs);
  const machineBefore = machineParts.map((part) => part.read());
  const switchesBefore = target.pids.map(switches);
  const t0 = performance.now();
  await Promise.all(Array.from({ length: concurrency }, worker));
  const elapsed = (performance.now() - t0) / 1000;
  // CPU per request of the proxy's own processes: robust on a busy machine, where wall-clock
  // figures swing with whatever else runs.
  const cpuSplit = target.pids.map((pid, i) => (cpuMs(pid) - cpuBefore[i]) / Math.max(1, latencies.length));
  const machineSplit = machineParts.map((part, i) => (part.read() - machineBefore[i]) / Math.max(1, latencies.length));
  const cpuPerReq = cpuSplit.reduce((sum, ms) => sum + ms, 0);
  const switchesPerReq = target.pids.reduce((sum, pid, i) => sum + (switches(pid) - switchesBefore[i]), 0) / Math.max(1, latencies.length);
  agent.destroy();
  latencies.sort((a, b) => a - b);
  const pct = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))];
  return { requests: latencies.length, rps: latencies.length / elapsed, mibps: bytes / elapsed / 1048576, p50: pct(0.5), p99: pct(0.99), cpuMsPerReq: cpuPerReq, cpuSplit, machineSplit, switchesPerReq };
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/**
 * A distribution-free confidence interval for the median of `values` (order statistics: the
 * count of values below the true median is Binomial(n, 1/2)). The narrowest pair of order
 * statistics whose coverage is at least 95%; below 6 values no pair reaches it and the
 * interval is the whole range. Returns the bounds and the coverage actually reached.
 */
function medianInterval(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const n = sorted.length;
  // [x(c+1), x(n-c)] covers the median with probability 1 - 2·P(X <= c): cut as many as 95% allows.
  let cut = 0;
  while (cut + 1 < n / 2 && binomialBelow(n, cut + 1) <= 0.025) cut++;
  return { low: sorted[cut], high: sorted[n - 1 - cut], coverage: 1 - 2 * binomialBelow(n, cut) };
}

/** P(X <= k), X ~ Binomial(n, 1/2). */
function binomialBelow(n, k) {
  let sum = 0;
  let choose = 1;
  for (let i = 0; i <= k; i++) {
    sum += choose;
    choose = (choose * (n - i)) / (i + 1);
  }
  return sum / 2 ** n;
}

/** Warms every target up, then ROUNDS interleaved rounds; per target the median of each figure. */
async function measureScenario(targets, scenario) {
  for (const target of targets) await measure(target, scenario.path, scenario.concurrency, WARMUP_SECONDS);
  const rounds = Object.fromEntries(targets.map((t) => [t.name, []]));
  for (let r = 0; r < ROUNDS; r++) {
    for (const target of r % 2 === 0 ? targets : [...targets].reverse()) rounds[target.name].push(await measure(target, scenario.path, scenario.concurrency));
  }
  const row = { scenario: scenario.name };
  for (const target of targets) {
    const rs = rounds[target.name];
    const of = (key) => median(rs.map((x) => x[key]));
    row[target.name] = {
      requests: rs.reduce((n, x) => n + x.requests, 0),
      rps: of("rps"),
      mibps: of("mibps"),
      p50: of("p50"),
      p99: of("p99"),
      cpuMsPerReq: of("cpuMsPerReq"),
      cpuSplit: target.pids.map((_, i) => median(rs.map((x) => x.cpuSplit[i]))),
      machineSplit: machineParts.map((_, i) => median(rs.map((x) => x.machineSplit[i]))),
      switchesPerReq: of("switchesPerReq"),
      roundsRps: rs.map((x) => Math.round(x.rps)),
      roundRates: rs.map((x) => x.rps),
    };
  }
  return row;
}

async function waitHttp(port, path, headers, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      if ((await call(port, "GET", path, headers)).status === 200) return;
    } catch {
      // not yet listening
    }
    await sleep(200);
  }
  throw new Error(`nothing answered 200 on 127.0.0.1:${port}${path}`);
}

function spawnChild(cmd, args, env = {}, cpu = CP_CPU) {
  // BENCH_PROFILE=<dir>: CPU profiles of the relay's processes (control plane and agent).
  const relayProcess = cmd === "node" && /(runit-control-plane\.js|relay-agent\.mjs)$/.test(args[0]);
  if (process.env.BENCH_PROFILE && relayProcess) args = [`--cpu-prof`, `--cpu-prof-dir=${process.env.BENCH_PROFILE}`, ...args];
  // BENCH_TRACE_GC=1: count the relay processes' garbage collections (printed at the end).
  if (process.env.BENCH_TRACE_GC && relayProcess) args = ["--trace-gc", ...args];
  // taskset execs the command, so the child's pid is the pinned process's own.
  if (PIN) [cmd, args] = ["taskset", ["-c", cpu, cmd, ...args]];
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ["pipe", "pipe", "inherit"] });
  children.push(child);
  let out = "";
  child.stdout.on("data", (d) => (out += d));
  return { child, output: () => out };
}

async function waitOutput(proc, pattern, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const m = pattern.exec(proc.output());
    if (m) return m;
    await sleep(50);
  }
  throw new Error(`no ${pattern} in output`);
}

/**
 * `docker run` of runit-jupyter with the agent's hardening flags (read-only, tmpfs, no
 * capabilities, uid 1000), the workspace mounted and `extra` added; hands it `config` on stdin as the agent
 * does, and removes it at the end of the run.
 */
function runJupyterContainer(name, workspace, extra, config) {
  const child = spawn("docker", [
    "run", "--rm", "-i", "--name", name, "--read-only",
    "--tmpfs", "/tmp:rw,noexec,nosuid,size=64m", "--tmpfs", "/home/jupyteruser:rw,nosuid,size=64m,uid=1000,gid=1000,mode=0700",
    "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--user", "1000:1000",
    "-v", `${workspace}:/workspace`, ...extra, ...(PIN ? ["--cpuset-cpus", PROVIDER_CPU] : []), "runit-jupyter:latest",
  ], { stdio: ["pipe", "ignore", "ignore"] });
  child.stdin.end(`${JSON.stringify(config)}\n`);
  cleanups.push(() => {
    try {
      execFileSync("docker", ["rm", "-f", name], { stdio: "ignore" });
    } catch {
      // already gone
    }
  });
  return child;
}

async function startJupyter(sessionId, token) {
  const name = `runit-bench-${sessionId.slice(0, 8)}`;
  const workspace = mkdtempSync(join(tmpdir(), "runit-bench-ws-"));
  chownSync(workspace, 1000, 1000);
  chmodSync(workspace, 0o700);
  const file = join(workspace, "1mib.bin");
  writeFileSync(file, randomBytes(1024 * 1024), { mode: 0o644 });
  chownSync(file, 1000, 1000);
  const config = { token, baseUrl: `/s/${sessionId}/`, allowOrigin: "" };
  runJupyterContainer(name, workspace, ["-p", "127.0.0.1::8888"], config);
  cleanups.push(() => rmSync(workspace, { recursive: true, force: true }));
  let port = 0;
  for (let i = 0; i < 200 && !port; i++) {
    try {
      port = Number(/127\.0\.0\.1:(\d+)/.exec(execFileSync("docker", ["port", name, "8888/tcp"], { stdio: ["ignore", "pipe", "ignore"] }).toString())?.[1] ?? 0);
    } catch {
      await sleep(250);
    }
  }
  if (!port) throw new Error("the Jupyter container published no port");
  const containerCpu = containerCpuReader(execFileSync("docker", ["inspect", "-f", "{{.Id}}", name]).toString().trim());
  if (containerCpu) machineParts.push({ name: "Jupyter", read: containerCpu });
  // Docker's userland proxy carries the published port (for every target alike).
  let proxies = [];
  try {
    proxies = execFileSync("pgrep", ["-f", `docker-proxy .*-host-port ${port}( |$)`]).toString().trim().split("\n").map(Number);
  } catch {
    // no userland proxy: the port is published by iptables alone
  }
  if (proxies.length > 0) machineParts.push({ name: "docker-proxy", read: () => proxies.reduce((sum, pid) => sum + cpuMs(pid), 0) });
  // BENCH_PIN: the userland proxy is the provider's too.
  if (PIN) for (const pid of proxies) execFileSync("taskset", ["-a", "-pc", PROVIDER_CPU, String(pid)], { stdio: "ignore" });
  await waitHttp(port, `/s/${sessionId}/api/status`, { Authorization: `token ${token}` }, 60_000);
  const ip = execFileSync("docker", ["inspect", "-f", "{{.NetworkSettings.IPAddress}}", name]).toString().trim();
  // The relay's Jupyter, as the agent runs it in relay mode: the same image and workspace, on a
  // Unix socket in a directory mounted at /run/runit, no port; the agent connects through its
  // pinned link (packages/agent/src/jupyter/jupyterEndpoint.ts). A second container because
  // Jupyter listens either on a socket or on a port.
  const socketRoot = mkdtempSync(join(tmpdir(), "runit-bench-sock-"));
  const socket = await createSocketDir(socketRoot, sessionId);
  const socketName = `${name}-socket`;
  const socketDocker = runJupyterContainer(socketName, workspace, ["-v", `${socket.dir}:/run/runit`], { ...config, socket: SOCKET_IN_CONTAINER });
  cleanups.push(() => rmSync(socketRoot, { recursive: true, force: true }));
  await waitForJupyter({ kind: "socket", path: socket.link }, `/s/${sessionId}/`, token, 60_000, async () => socketDocker.exitCode === null, socket);
  const socketCpu = containerCpuReader(execFileSync("docker", ["inspect", "-f", "{{.Id}}", socketName]).toString().trim());
  if (socketCpu) machineParts.push({ name: "Jupyter on its socket", read: socketCpu });
  return { port, ip, socketPath: socket.link };
}

/** Starts one of bench/'s servers (it prints "listening on <port>"); its process and port. */
async function startBenchServer(script, env, cpu) {
  const server = spawnChild("node", [join(root, "bench", script)], env, cpu);
  return { pid: server.child.pid, port: Number((await waitOutput(server, /listening on (\d+)/, 10_000))[1]) };
}

async function main() {
  const sessionId = randomUUID();
  const jupyterToken = randomBytes(24).toString("hex");
  const plain = process.env.BENCH_TARGET === "plain";
  let jupyterPort;
  let jupyter;
  if (plain) {
    const server = await startBenchServer("plain-target.mjs", { BENCH_BASE: `/s/${sessionId}/` }, PROVIDER_CPU);
    machineParts.push({ name: "plain server", read: () => cpuMs(server.pid) });
    jupyterPort = server.port;
  } else {
    jupyter = await startJupyter(sessionId, jupyterToken);
    jupyterPort = jupyter.port;
  }
  // BENCH_RELAY_TCP=1: the relay's agent dials Jupyter's published port, as before relay mode
  // moved Jupyter to a Unix socket (the A/B of that change).
  const relaySocket = jupyter && process.env.BENCH_RELAY_TCP !== "1" ? jupyter.socketPath : undefined;
  machineParts.push({ name: "load", read: () => {
    const { user, system } = process.cpuUsage();
    return (user + system) / 1000;
  } });
  const base = `/s/${sessionId}/`;
  const jupyterAuth = { Authorization: `token ${jupyterToken}` };

  // The control plane (its CLI, relay on) in its own process, on a fresh database.
  const dir = mkdtempSync(join(tmpdir(), "runit-bench-cp-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const cpBin = join(root, "packages/control-plane/bin/runit-control-plane.js");
  const db = join(dir, "runit.db");
  const keyOut = execFileSync("node", [cpBin, "keys", "create", "--name", "bench", "--db", db]).toString().trim().split("\n");
  const providerKey = keyOut[keyOut.length - 1];
  // The stand-in agent sends no provider heartbeats and the benchmark no renter heartbeats: the
  // session's timers are set out of the way (the run lasts minutes), and so is the bandwidth cap.
  const cp = spawnChild("node", [cpBin, "--port", "0", "--db", db], {
    RUNIT_BANDWIDTH_CAP_BYTES: String(2 ** 50),
    RUNIT_PROVIDER_STALE_MS: String(24 * 3600_000),
    RUNIT_PROVIDER_HEARTBEAT_INTERVAL_MS: String(12 * 3600_000),
    RUNIT_LOCK_TIMEOUT_MS: String(24 * 3600_000),
  });
  const cpPort = Number((await waitOutput(cp, /listening on port (\d+)/, 20_000))[1]);
  const reg = await call(cpPort, "POST", "/provider/session", { Authorization: `Bearer ${providerKey}`, "Content-Type": "application/json" },
    JSON.stringify({ sessionId, tunnel: { kind: "relay" }, hardware: { cpus: 2, memoryMb: 1024, gpus: [] }, pricing: { hourlyUsd: 0 } }));
  if (reg.status !== 201) throw new Error(`registration: ${reg.status} ${reg.body}`);
  const { sessionSecret } = JSON.parse(reg.body);

  // The agent's relay tunnel in its own process.
  const agent = spawnChild("node", [join(root, "bench/relay-agent.mjs")], {
    BENCH_SERVER_URL: `http://127.0.0.1:${cpPort}`, BENCH_SESSION_ID: sessionId, BENCH_SESSION_SECRET: sessionSecret,
    BENCH_JUPYTER_PORT: String(jupyterPort), BENCH_JUPYTER_TOKEN: jupyterToken, ...(relaySocket ? { BENCH_JUPYTER_SOCKET: relaySocket } : {}),
  }, PROVIDER_CPU);
  await waitOutput(agent, /relay tunnel connected/, 20_000);
  const connect = await call(cpPort, "POST", `/renter/sessions/${sessionId}/connect`);
  if (connect.status !== 201) throw new Error(`connect: ${connect.status} ${connect.body}`);
  const access = await call(cpPort, "GET", `/access/${JSON.parse(connect.body).accessToken}`);
  const cookie = String(access.headers["set-cookie"]?.[0] ?? "").split(";")[0];

  // configurable-http-proxy 4.6.3, one hop, default target = Jupyter.
  const chpPort = 20000 + Math.floor(Math.random() * 20000);
  const chp = spawnChild(join(root, "node_modules/.bin/configurable-http-proxy"), [
    "--ip", "127.0.0.1", "--port", String(chpPort), "--api-ip", "127.0.0.1", "--api-port", String(chpPort + 1),
    "--default-target", `http://127.0.0.1:${jupyterPort}`, "--log-level", "error",
  ], { CONFIGPROXY_AUTH_TOKEN: randomBytes(16).toString("hex") });
  await waitHttp(chpPort, `${base}api/status`, jupyterAuth, 20_000);
  // CHP's best path to a container: its address on the Docker bridge, past Docker's userland
  // proxy (as JupyterHub's DockerSpawner does on a user-defined network). CHP 4.6 cannot dial a
  // Unix socket. Not with the plain target, which has no container.
  let chpIp;
  if (jupyter) {
    const chpIpPort = chpPort + 2;
    chpIp = spawnChild(join(root, "node_modules/.bin/configurable-http-proxy"), [
      "--ip", "127.0.0.1", "--port", String(chpIpPort), "--api-ip", "127.0.0.1", "--api-port", String(chpIpPort + 1),
      "--default-target", `http://${jupyter.ip}:8888`, "--log-level", "error",
    ], { CONFIGPROXY_AUTH_TOKEN: randomBytes(16).toString("hex") });
    chpIp.port = chpIpPort;
    await waitHttp(chpIpPort, `${base}api/status`, jupyterAuth, 20_000);
  }

  // Two bare TCP pipes in a chain: renter → pipe 1 → pipe 2 → Jupyter.
  const pipe2 = await startBenchServer("tcp-pipe.mjs", { BENCH_PIPE_TO: String(jupyterPort) }, PROVIDER_CPU);
  const pipe1 = await startBenchServer("tcp-pipe.mjs", { BENCH_PIPE_TO: String(pipe2.port) }, CP_CPU);

  // The relay sits between the two CHPs in each round's order (reversed every other round), so
  // each pair it is judged on was measured back to back.
  const targets = [
    { name: "direct", port: jupyterPort, headers: jupyterAuth, pids: [], parts: [] },
    { name: "pipes", port: pipe1.port, headers: jupyterAuth, pids: [pipe1.pid, pipe2.pid], parts: ["pipe 1", "pipe 2"] },
    { name: "chp", port: chpPort, headers: jupyterAuth, pids: [chp.child.pid], parts: ["chp"] },
    { name: "relay", port: cpPort, headers: { Cookie: cookie }, pids: [cp.child.pid, agent.child.pid], parts: ["control plane", "agent"] },
    ...(chpIp ? [{ name: "chp-ip", port: chpIp.port, headers: jupyterAuth, pids: [chpIp.child.pid], parts: ["chp"] }] : []),
  ];
  await waitHttp(cpPort, `${base}api/status`, { Cookie: cookie }, 10_000);
  const scenarios = [
    { name: "small, c=1", path: `${base}api/status`, concurrency: 1 },
    { name: "small, c=16", path: `${base}api/status`, concurrency: 16 },
    { name: "1 MiB, c=1", path: `${base}files/1mib.bin`, concurrency: 1 },
    { name: "1 MiB, c=4", path: `${base}files/1mib.bin`, concurrency: 4 },
  ];
  // BENCH_ONLY=<scenario name> runs one scenario (profiling).
  const only = process.env.BENCH_ONLY;
  if (only) scenarios.splice(0, scenarios.length, ...scenarios.filter((sc) => sc.name === only));
  const results = [];
  const proxyCpu = (target, r) =>
    r.cpuMsPerReq > 0
      ? `  proxy CPU ${(r.cpuMsPerReq * 1000).toFixed(0).padStart(5)} µs/req, ${r.switchesPerReq.toFixed(1)} switches/req` +
        (r.cpuSplit.length > 1 ? ` (${target.parts.map((part, i) => `${part} ${(r.cpuSplit[i] * 1000).toFixed(0)}`).join(" + ")})` : "")
      : "";
  if (PIN) {
    if (availableParallelism() < 2) throw new Error("BENCH_PIN=1 needs two CPUs");
    execFileSync("taskset", ["-a", "-pc", CP_CPU, String(process.pid)], { stdio: "ignore" }); // the renters' load
  }
  const targetName = plain ? "a plain Node HTTP server (BENCH_TARGET=plain)" : "Jupyter in runit-jupyter";
  console.log(
    `relay benchmark: node ${process.version}, target ${targetName}, all on 127.0.0.1; a warm-up pass of every scenario (${2 * WARMUP_SECONDS} s per target), then per scenario ` +
      `${WARMUP_SECONDS} s warm-up per target and ${ROUNDS} interleaved rounds of ${SECONDS} s, medians` +
      (PIN ? `; BENCH_PIN: control plane, CHP, pipe 1 and the load on CPU ${CP_CPU}, Jupyter, agent and pipe 2 on CPU ${PROVIDER_CPU}` : ""),
  );
  // One pass through every scenario first: each process has then run every code path it will be
  // measured on (a fresh relay kept speeding up for ~10 s of the first scenario otherwise).
  for (const scenario of scenarios) for (const target of targets) await measure(target, scenario.path, scenario.concurrency, 2 * WARMUP_SECONDS);
  for (const scenario of scenarios) {
    const row = await measureScenario(targets, scenario);
    results.push(row);
    const fmt = (target, r) =>
      `${r.rps.toFixed(0).padStart(6)} req/s ${r.mibps.toFixed(1).padStart(7)} MiB/s p50 ${r.p50.toFixed(2).padStart(7)} ms p99 ${r.p99.toFixed(2).padStart(7)} ms` +
      proxyCpu(target, r) +
      `  rounds ${r.roundsRps.join(",")}`;
    console.log(`\n${scenario.name}`);
    for (const target of targets) console.log(`  ${target.name.padEnd(7)}${fmt(target, row[target.name])}`);
    // The whole machine's CPU per request, and the rate two CPUs could sustain at that cost: where
    // the CPUs are the limit (bulk bodies at c=4), a second process's cost is rate lost.
    const machineMs = (r) => r.cpuMsPerReq + r.machineSplit.reduce((sum, ms) => sum + ms, 0);
    const cpus = availableParallelism();
    for (const target of targets) {
      const r = row[target.name];
      const parts = [...machineParts.map((part, i) => `${part.name} ${(r.machineSplit[i] * 1000).toFixed(0)}`), ...(r.cpuMsPerReq > 0 ? [`proxy ${(r.cpuMsPerReq * 1000).toFixed(0)}`] : [])];
      r.machineUsPerReq = machineMs(r) * 1000;
      console.log(`  ${target.name.padEnd(7)}machine CPU ${r.machineUsPerReq.toFixed(0).padStart(5)} µs/req (${parts.join(" + ")}), ${cpus} CPUs at that cost: ${((cpus * 1000) / machineMs(r)).toFixed(0)} req/s`);
    }
    console.log(
      `  ratios: relay/chp throughput ${(row.relay.rps / row.chp.rps).toFixed(2)}, relay/direct throughput ${(row.relay.rps / row.direct.rps).toFixed(2)}, ` +
        `relay/chp p50 latency ${(row.relay.p50 / row.chp.p50).toFixed(2)}, relay/chp proxy CPU per request ${(row.relay.cpuMsPerReq / row.chp.cpuMsPerReq).toFixed(2)}; ` +
        `two bare pipes/chp throughput ${(row.pipes.rps / row.chp.rps).toFixed(2)}, relay/two bare pipes CPU per request ${(row.relay.cpuMsPerReq / row.pipes.cpuMsPerReq).toFixed(2)}`,
    );
    // Relay and CHP measured in the same round, seconds apart: the per-round ratio cancels the drift of
    // the machine between rounds, which the ratio of the two medians does not.
    row.paired = {};
    for (const name of ["chp", "chp-ip"]) {
      if (!row[name]) continue;
      const ratios = row.relay.roundRates.map((rate, i) => rate / row[name].roundRates[i]);
      const ci = medianInterval(ratios);
      row.paired[name] = { median: median(ratios), ...ci };
      console.log(
        `  relay/${name} throughput round by round: ${ratios.map((x) => x.toFixed(2)).join(", ")}; ` +
          `median ${median(ratios).toFixed(2)}, ${(ci.coverage * 100).toFixed(1)}% interval ${ci.low.toFixed(2)}–${ci.high.toFixed(2)}` +
          (name === "chp-ip" ? `; chp-ip/chp ${(row["chp-ip"].rps / row.chp.rps).toFixed(2)}` : ""),
      );
    }
  }
  // The target, against CHP in front of Jupyter's published port (DockerSpawner's default, what
  // every run before 2026-12-02 14:00 UTC measured) and, stricter, against CHP on the container's
  // bridge address. Per scenario, on the round-by-round ratio's median: met when its whole
  // confidence interval is at or above 0.95, missed when the whole interval is below, else
  // undecided (this run cannot tell).
  const LINE = 0.95;
  const verdict = (name) => {
    const judged = results.map((r) => ({ r, p: r.paired[name] }));
    const fmt = ({ r, p }) => `${r.scenario}: ${p.median.toFixed(2)} (${p.low.toFixed(2)}–${p.high.toFixed(2)})`;
    const missed = judged.filter(({ p }) => p.high < LINE);
    const undecided = judged.filter(({ p }) => p.high >= LINE && p.low < LINE);
    if (missed.length > 0) return `NOT MET (${missed.map(fmt).join("; ")})${undecided.length > 0 ? `; undecided: ${undecided.map(fmt).join("; ")}` : ""}`;
    if (undecided.length > 0) return `UNDECIDED: the interval spans the line (${undecided.map(fmt).join("; ")}); more rounds (BENCH_ROUNDS) would tell`;
    return `MET (lowest interval bound ${Math.min(...judged.map(({ p }) => p.low)).toFixed(2)})`;
  };
  const path = relaySocket ? "the relay to Jupyter's Unix socket" : "the relay to Jupyter's port";
  console.log(`\ntarget (relay's two hops at least match CHP's one: relay/CHP throughput, median of the rounds' ratios, at least ${LINE} in every scenario with 95% confidence; ${path})`);
  console.log(`  against chp, in front of Jupyter's published port: ${verdict("chp")}`);
  if (results[0]?.paired["chp-ip"]) console.log(`  against chp-ip, on the container's bridge address: ${verdict("chp-ip")}`);
  if (process.env.BENCH_TRACE_GC) {
    for (const [name, proc] of [["control plane", cp], ["agent", agent]]) {
      const out = proc.output();
      if (process.env.BENCH_TRACE_GC !== "1") writeFileSync(join(process.env.BENCH_TRACE_GC, `${name.replace(" ", "-")}.log`), out);
      console.log(`gc ${name}: ${(out.match(/Mark-Compact/g) ?? []).length} mark-compacts, ${(out.match(/Scavenge/g) ?? []).length} scavenges`);
    }
  }
  console.log(`JSON ${JSON.stringify(results.map((r) => ({ scenario: r.scenario, paired: Object.fromEntries(Object.entries(r.paired).map(([name, p]) => [name, { median: +p.median.toFixed(3), low: +p.low.toFixed(3), high: +p.high.toFixed(3), coverage: +p.coverage.toFixed(3) }])), machineUsPerReq: Object.fromEntries(targets.map((t) => [t.name, Math.round(r[t.name].machineUsPerReq)])), ...Object.fromEntries(targets.map((t) => [t.name, { rps: +r[t.name].rps.toFixed(1), mibps: +r[t.name].mibps.toFixed(2), p50: +r[t.name].p50.toFixed(3), p99: +r[t.name].p99.toFixed(3), cpuUsPerReq: Math.round(r[t.name].cpuMsPerReq * 1000), switchesPerReq: +r[t.name].switchesPerReq.toFixed(1), roundsRps: r[t.name].roundsRps }])) })))}`);
}

try {
  await main();
} finally {
  for (const child of children) child.kill("SIGTERM");
  for (const cleanup of cleanups) cleanup();
}
