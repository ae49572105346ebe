// Harness of the relay tests against a real Jupyter container: the real control plane (from
// source, with the relay plugged in), the agent's relay tunnel, and a runit-jupyter container
// started by hand with the agent's hardening flags, listening on its Unix socket as in relay mode
// (the agent's own container code is tested by the agent's suite; the full real-process test is
// e2e/relay-processes.test.ts).
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { chmodSync, chownSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { asSecret } from "@runit/protocol";
import { startServer, type RunningServer } from "../packages/control-plane/src/index.js";
import { createRelay } from "../packages/control-plane/src/relay/index.js";
import { ProviderKeyStore } from "../packages/control-plane/src/store/providerKeys.js";
import { createRelayTunnel, type RelayTunnel } from "../packages/agent/src/tunnel/relay.js";
import { SOCKET_IN_CONTAINER, createSocketDir, removeSocketDir, type JupyterEndpoint } from "../packages/agent/src/jupyter/jupyterEndpoint.js";
import { waitForJupyter } from "../packages/agent/src/jupyter/jupyterProbe.js";
import { WebSocket } from "ws";
import { fetchRaw, waitFor, type Fetched } from "./relay-harness.js";

const run = promisify(execFile);

/** A Jupyter container with base_url `/s/<sessionId>/`, on its Unix socket only (no port). */
export interface JupyterContainer {
  sessionId: string;
  token: string;
  /** The agent's pinned link to Jupyter's socket. */
  endpoint: JupyterEndpoint;
  workspace: string;
  name: string;
  stop(): Promise<void>;
}

/** Fails loudly when Docker is absent: these tests never skip. */
export async function requireDocker(): Promise<void> {
  try {
    await run("docker", ["info", "--format", "{{.ServerVersion}}"], { timeout: 20_000 });
  } catch (err) {
    throw new Error(`Docker is required for the relay Jupyter tests (run ./scripts/ensure-docker.sh): ${String(err)}`);
  }
}

export async function startJupyter(image = "runit-jupyter:latest"): Promise<JupyterContainer> {
  const sessionId = randomUUID();
  const token = randomBytes(24).toString("hex");
  const name = `runit-relay-test-${sessionId.slice(0, 8)}`;
  const workspace = mkdtempSync(join(tmpdir(), "runit-relay-ws-"));
  chownSync(workspace, 1000, 1000);
  chmodSync(workspace, 0o700);
  const socketRoot = mkdtempSync(join(tmpdir(), "runit-relay-sock-"));
  const socket = await createSocketDir(socketRoot, sessionId);
  const child: ChildProcess = spawn(
    "docker",
    [
      "run", "--rm", "-i", "--name", name,
      "--read-only", "--tmpfs", "/tmp:rw,noexec,nosuid,size=64m",
      "--tmpfs", "/home/jupyteruser:rw,nosuid,size=64m,uid=1000,gid=1000,mode=0700",
      "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--user", "1000:1000",
      "--memory", "1g", "--pids-limit", "200",
      "-v", `${workspace}:/workspace`, "-v", `${socket.dir}:/run/runit`,
      "--label", "runit.test=relay",
      image,
    ],
    { stdio: ["pipe", "ignore", "ignore"] },
  );
  child.stdin?.end(`${JSON.stringify({ token, baseUrl: `/s/${sessionId}/`, allowOrigin: "", socket: SOCKET_IN_CONTAINER })}\n`);
  const endpoint: JupyterEndpoint = { kind: "socket", path: socket.link };
  const stop = async (): Promise<void> => {
    await run("docker", ["rm", "-f", name]).catch(() => undefined);
    child.kill();
    await removeSocketDir(socket);
    rmSync(socketRoot, { recursive: true, force: true });
    rmSync(workspace, { recursive: true, force: true });
  };
  await waitForJupyter(endpoint, `/s/${sessionId}/`, asSecret(token), 60_000, async () => child.exitCode === null, socket).catch(async (err: Error) => {
    await stop();
    throw err;
  });
  return { sessionId, token, endpoint, workspace, name, stop };
}

/** A control plane with the relay, a provider key, one registered relay session and its tunnel. */
export interface RelayStack {
  cp: RunningServer;
  out: string[];
  tunnel: RelayTunnel;
  sessionSecret: string;
  accessToken: string;
  /** `runit_access=<token>` as the browser sends it after `/access/:token`. */
  cookie: string;
  setCookie: string;
  close(): Promise<void>;
}

export async function startRelayStack(
  jupyter: JupyterContainer,
  opts: { bandwidthCapBytes?: number; reconnectMinMs?: number } = {},
): Promise<RelayStack> {
  const dir = mkdtempSync(join(tmpdir(), "runit-relay-cp-"));
  const out: string[] = [];
  const cp = await startServer({
    env: {},
    stdout: { write: (s: string) => out.push(s) },
    stderr: { write: (s: string) => out.push(s) },
    config: {
      port: 0,
      host: "127.0.0.1",
      dbPath: join(dir, "runit.db"),
      ...(opts.bandwidthCapBytes ? { bandwidthCapBytes: opts.bandwidthCapBytes } : {}),
    },
    relay: (ctx) => createRelay(ctx, { pingIntervalMs: 1000 }),
  });
  const { key } = new ProviderKeyStore(cp.store).create("relay-test", Date.now());
  const reg = await postJson(cp.port, "/provider/session", key, {
    sessionId: jupyter.sessionId,
    tunnel: { kind: "relay" },
    hardware: { cpus: 1, memoryMb: 1024, gpus: [] },
    pricing: { hourlyUsd: 0.1 },
  });
  if (reg.status !== 201) throw new Error(`registration failed: ${reg.status} ${reg.body.toString()}`);
  const sessionSecret = (JSON.parse(reg.body.toString()) as { sessionSecret: string }).sessionSecret;
  const tunnel = createRelayTunnel({
    logger: { info: (l) => out.push(`${l}\n`), error: (l) => out.push(`${l}\n`) },
    pingIntervalMs: 1000,
    reconnectMinMs: opts.reconnectMinMs ?? 100,
    reconnectMaxMs: Math.max(1000, opts.reconnectMinMs ?? 0),
  });
  await tunnel.attach({
    serverUrl: cp.url,
    sessionId: jupyter.sessionId,
    sessionSecret: asSecret(sessionSecret),
    jupyter: jupyter.endpoint,
    jupyterToken: asSecret(jupyter.token),
    basePath: `/s/${jupyter.sessionId}/`,
  });
  await tunnel.waitConnected(10_000);
  await waitFor(() => out.join("").includes("TUNNEL_CONNECTED"), 5000, "TUNNEL_CONNECTED");
  const { accessToken, cookie, setCookie } = await connectAsRenter(cp.port, jupyter.sessionId);
  return {
    cp,
    out,
    tunnel,
    sessionSecret,
    accessToken,
    cookie,
    setCookie,
    close: async () => {
      await tunnel.close();
      await cp.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A renter's Connect to `sessionId` and its hand-in: `/access/<token>` must answer 302 with the lock cookie. */
export async function connectAsRenter(
  port: number,
  sessionId: string,
): Promise<{ accessToken: string; access: Fetched; setCookie: string; cookie: string }> {
  const connect = await postJson(port, `/renter/sessions/${sessionId}/connect`, undefined, {});
  if (connect.status !== 201) throw new Error(`connect failed: ${connect.status} ${connect.body.toString()}`);
  const accessToken = (JSON.parse(connect.body.toString()) as { accessToken: string }).accessToken;
  const access = await fetchRaw(port, `/access/${accessToken}`);
  const setCookie = String(access.headers["set-cookie"]?.[0] ?? "");
  if (access.status !== 302 || !setCookie) throw new Error(`access failed: ${access.status}`);
  return { accessToken, access, setCookie, cookie: setCookie.split(";")[0] as string };
}

/** POSTs JSON (with an optional bearer token). */
export function postJson(port: number, path: string, bearer: string | undefined, body: unknown) {
  const headers: Record<string, string> = { "Content-Type": "application/json" };
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  return fetchRaw(port, path, { method: "POST", headers, body: Buffer.from(JSON.stringify(body)) });
}

/**
 * Starts a kernel through the relay, then runs `1+1` over Jupyter's channels WebSocket (message
 * spec 5.3: execute_request on shell) and returns the execute_result's text/plain.
 */
export async function onePlusOneThroughRelay(port: number, base: string, cookie: string): Promise<string> {
  const started = await fetchRaw(port, `${base}api/kernels`, {
    method: "POST",
    headers: { Cookie: cookie, "Content-Type": "application/json" },
    body: Buffer.from("{}"),
  });
  if (started.status !== 201) throw new Error(`kernel start: HTTP ${started.status} ${started.body.toString()}`);
  const kernelId = (JSON.parse(started.body.toString()) as { id: string }).id;
  const session = randomUUID();
  const ws = new WebSocket(`ws://127.0.0.1:${port}${base}api/kernels/${kernelId}/channels?session_id=${session}`, {
    headers: { Cookie: cookie, Origin: `http://127.0.0.1:${port}` },
  });
  type Msg = { msg_type: string; parent_header: { msg_id?: string }; content: Record<string, unknown> };
  const messages: Msg[] = [];
  ws.on("message", (data: Buffer) => messages.push(JSON.parse(data.toString()) as Msg));
  await new Promise<void>((resolve, reject) => (ws.once("open", () => resolve()), ws.once("error", reject)));
  try {
    const msgId = randomUUID();
    ws.send(
      JSON.stringify({
        header: { msg_id: msgId, username: "renter", session, msg_type: "execute_request", version: "5.3", date: new Date().toISOString() },
        parent_header: {},
        metadata: {},
        content: { code: "1+1", silent: false, store_history: true, user_expressions: {}, allow_stdin: false, stop_on_error: true },
        channel: "shell",
        buffers: [],
      }),
    );
    const isResult = (m: Msg) => m.msg_type === "execute_result" && m.parent_header.msg_id === msgId;
    await waitFor(() => messages.some(isResult), 30_000, "execute_result");
    return String((messages.find(isResult)?.content.data as Record<string, unknown>)["text/plain"]);
  } finally {
    ws.close();
  }
}
