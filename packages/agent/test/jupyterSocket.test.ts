// Jupyter on a Unix socket (relay mode): the pin (link, then lstat) against a missing socket, a
// symlink, a file and a real socket; then a real hardened container started as the agent starts
// it in relay mode: no port published, Jupyter answering through the agent's link, and a renter
// who swaps the socket in its directory for a symlink to a host socket never reaches that socket.
import { randomBytes, randomUUID } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync, existsSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type Docker from "dockerode";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { JupyterStatusSchema, asSecret } from "@runit/protocol";
import { hardenedContainerSpec } from "../src/docker/hardenedSpec.js";
import { startSessionContainer, type RunningContainer } from "../src/docker/sessionContainer.js";
import { ensureSessionNetwork } from "../src/docker/sessionNetwork.js";
import {
  NotASocketError,
  SOCKET_IN_CONTAINER,
  createSocketDir,
  jupyterGetJson,
  pinJupyterSocket,
  purgeSocketDirs,
  removeSocketDir,
  sessionSocketPaths,
  type SessionSocketPaths,
} from "../src/jupyter/jupyterEndpoint.js";
import { waitForJupyter } from "../src/jupyter/jupyterProbe.js";
import { silentLogger } from "../src/logger.js";
import { createSessionWorkspace } from "../src/workspace.js";
import { cleanupDocker, dockerExec, dockerInspect, requireDocker, testIdentity } from "./dockerHarness.js";

/** A host-side Unix socket server that counts connections: what a symlink must never reach. */
async function decoy(path: string): Promise<{ server: Server; connections: () => number; close: () => void }> {
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    s.end("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
  });
  let n = 0;
  server.on("connection", () => n++);
  await new Promise<void>((r) => server.listen(path, r));
  return { server, connections: () => n, close: () => (server.close(), sockets.forEach((s) => s.destroy())) };
}

describe("pinJupyterSocket", () => {
  let root: string;
  let paths: SessionSocketPaths;
  const servers: Array<{ close: () => void }> = [];
  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), "runit-pin-"));
  });
  afterAll(async () => {
    for (const s of servers) s.close();
    rmSync(root, { recursive: true, force: true });
  });
  const fresh = (): SessionSocketPaths => {
    paths = sessionSocketPaths(root, randomUUID());
    mkdirSync(paths.dir, { recursive: true });
    return paths;
  };

  it("waits (false) while nothing is bound, then links a real socket that answers through the link", async () => {
    const p = fresh();
    expect(await pinJupyterSocket(p)).toBe(false);
    const jupyter = await decoy(join(p.dir, "jupyter.sock"));
    servers.push(jupyter);
    expect(await pinJupyterSocket(p)).toBe(true);
    expect(statSync(p.link).isSocket()).toBe(true);
    expect(await jupyterGetJson({ kind: "socket", path: p.link }, "/api/status", "t", 2000)).toEqual({});
    expect(jupyter.connections()).toBe(1);
  });

  it("refuses a symlink to a host socket without ever connecting to it, and leaves no link", async () => {
    const p = fresh();
    const target = await decoy(join(root, `host-${randomUUID().slice(0, 8)}.sock`));
    servers.push(target);
    symlinkSync(target.server.address() as string, join(p.dir, "jupyter.sock"));
    await expect(pinJupyterSocket(p)).rejects.toThrow(NotASocketError);
    await expect(pinJupyterSocket(p)).rejects.toThrow(/is not a socket \(a symlink\); refusing to connect through it/);
    expect(existsSync(p.link)).toBe(false);
    expect(target.connections()).toBe(0);
  });

  it("refuses a regular file", async () => {
    const p = fresh();
    writeFileSync(join(p.dir, "jupyter.sock"), "not a socket");
    await expect(pinJupyterSocket(p)).rejects.toThrow("is not a socket (another kind of file)");
  });

  it("purges the entries of ended sessions, keeping the current one, any still mounted (by any spelling) and any young one", async () => {
    const sweep = mkdtempSync(join(tmpdir(), "runit-sweep-"));
    try {
      const [current, mounted, gone] = [randomUUID(), randomUUID(), randomUUID()];
      for (const id of [current, mounted, gone]) {
        const p = await createSocketDir(sweep, id);
        writeFileSync(p.link, "");
      }
      // A session that is starting has its directory before its container: too young to purge.
      expect(await purgeSocketDirs(sweep, new Set(), [])).toBe(0);
      // Another agent sharing the root through a symlinked path mounts `mounted` by that spelling.
      const alias = `${sweep}-alias`;
      symlinkSync(sweep, alias);
      const later = { now: Date.now() + 2 * 3600_000 };
      expect(await purgeSocketDirs(sweep, new Set([current]), [sessionSocketPaths(alias, mounted).dir], later)).toBe(1);
      rmSync(alias);
      expect(existsSync(sessionSocketPaths(sweep, current).dir)).toBe(true);
      expect(existsSync(sessionSocketPaths(sweep, mounted).link)).toBe(true);
      expect([existsSync(sessionSocketPaths(sweep, gone).dir), existsSync(sessionSocketPaths(sweep, gone).link)]).toEqual([false, false]);
      expect(statSync(join(sweep, ".jupyter-sockets")).mode & 0o777).toBe(0o700);
    } finally {
      rmSync(sweep, { recursive: true, force: true });
    }
  });
});

describe("a relay-mode session container (real Docker)", () => {
  const id = testIdentity("sock");
  const sessionId = randomUUID();
  const token = asSecret(randomBytes(32).toString("base64url"));
  const base = `/s/${sessionId}/`;
  let docker: Docker;
  let running: RunningContainer;
  let socket: SessionSocketPaths;
  let host: { server: Server; connections: () => number; close: () => void };

  beforeAll(async () => {
    docker = await requireDocker();
    await ensureSessionNetwork(docker, id.network);
    const workspaceDir = await createSessionWorkspace(id.dir, sessionId);
    socket = await createSocketDir(id.dir, sessionId);
    const spec = hardenedContainerSpec({ sessionId, agentName: id.agentName, workspaceDir, socketDir: socket.dir, network: id.network, limits: { memoryMb: 512, cpus: 1, pids: 100 } });
    running = await startSessionContainer(docker, spec, { workspaceDir, socketDir: socket.dir }, { token, baseUrl: base, allowOrigin: "http://127.0.0.1:10000", socket: SOCKET_IN_CONTAINER }, silentLogger);
    await waitForJupyter({ kind: "socket", path: socket.link }, base, token, 60_000, async () => true, socket);
    host = await decoy(join(id.dir, "host-service.sock"));
  }, 90_000);

  afterAll(async () => {
    host?.close();
    if (docker) await cleanupDocker(docker, id.agentName, id.network);
    if (socket) await removeSocketDir(socket);
  });

  it("publishes no port: Jupyter listens on its socket only, owned by jupyteruser, mode 0600", async () => {
    expect(running.hostPort).toBeUndefined();
    const inspect = (await dockerInspect(running.id)) as { NetworkSettings: { Ports: Record<string, unknown> | null }; HostConfig: { PortBindings: Record<string, unknown> | null } };
    expect(Object.keys(inspect.HostConfig.PortBindings ?? {})).toEqual([]);
    expect(Object.values(inspect.NetworkSettings.Ports ?? {}).filter((b) => b !== null)).toEqual([]);
    // Listening TCP sockets in the container's network namespace: only Docker's embedded DNS
    // resolver (127.0.0.11, hex 0B00007F); nothing of Jupyter's.
    const listening = await dockerExec(running.id, ["sh", "-c", "cat /proc/net/tcp /proc/net/tcp6 | awk '$4 == \"0A\" { print $2 }'"]);
    expect(listening.code).toBe(0);
    expect(listening.stdout.trim().split("\n").filter((l) => l !== "" && !l.startsWith("0B00007F:"))).toEqual([]);
    const info = statSync(socket.link);
    expect([info.isSocket(), info.uid, info.mode & 0o777]).toEqual([true, 1000, 0o600]);
    expect(statSync(socket.dir).mode & 0o777).toBe(0o700);
  });

  it("answers through the agent's link with the token, and refuses without it", async () => {
    const status = JupyterStatusSchema.parse(await jupyterGetJson({ kind: "socket", path: socket.link }, `${base}api/status`, token, 5000));
    expect(status.connections).toBe(0);
    await expect(jupyterGetJson({ kind: "socket", path: socket.link }, `${base}api/status`, "wrong-token", 5000)).rejects.toThrow("Jupyter answered 403");
  });

  it("a renter who swaps the socket for a symlink to a host socket never reaches it", async () => {
    // As the renter can, from a terminal or a kernel in the container (uid 1000).
    const swap = await dockerExec(running.id, ["sh", "-c", `rm ${SOCKET_IN_CONTAINER} && ln -s ${host.server.address() as string} ${SOCKET_IN_CONTAINER} && ls -l ${SOCKET_IN_CONTAINER}`]);
    expect(swap.code).toBe(0);
    expect(swap.stdout).toContain(`-> ${host.server.address() as string}`);
    // The agent's link still names Jupyter's socket: requests reach Jupyter, not the host service.
    const status = JupyterStatusSchema.parse(await jupyterGetJson({ kind: "socket", path: socket.link }, `${base}api/status`, token, 5000));
    expect(typeof status.last_activity).toBe("string");
    // And pinning again (what a fresh start would do) refuses the symlink.
    await expect(pinJupyterSocket(socket)).rejects.toThrow("is not a socket (a symlink)");
    expect(host.connections()).toBe(0);
  });
});
