// Where the agent reaches a session's Jupyter. In relay mode: a Unix socket, and no TCP port at
// all. Jupyter binds `/run/runit/jupyter.sock` inside the container, in a directory the agent
// mounts there; the agent then hard-links that socket into a directory only it can enter and
// connects through the link, never through the container's directory.
//
// Why a socket: no port on the provider host's loopback, so no local user or process can reach a
// session's Jupyter (before, any of them could reach its login page and try tokens), and no
// Docker userland proxy in the byte path; Jupyter writes to a Unix socket far faster than to TCP
// (bench/, the "Relay design" section of the control plane's README).
//
// Why the link: the container's directory is the renter's to change (Jupyter, uid 1000, must be
// able to create the socket there). A renter who replaced `jupyter.sock` with a symlink to the
// host's Docker socket would have the agent, which may run as root, connect to Docker on its
// behalf. `link(2)` does not follow a symlink (it links the symlink itself), so the agent links
// first and then checks, with `lstat`, that what it linked is a socket; the link lives where the
// renter cannot reach, so what was checked is what is connected to, for the session's life.
import { chown, link, lstat, mkdir, readdir, realpath, rm, unlink } from "node:fs/promises";
import { request } from "node:http";
import { dirname, join, resolve } from "node:path";
import type { z } from "zod";
import type { JupyterEndpointSchema } from "@runit/protocol";
import { JUPYTER_CONTAINER_PORT, SOCKETS_DIR, SOCKET_MOUNT, sessionSocketPaths, type SessionSocketPaths } from "../docker/hardenedSpec.js";
import { mountTester } from "../workspace.js";

export { sessionSocketPaths, type SessionSocketPaths };

/** How to reach a session's Jupyter: its Unix socket (relay), or its port on 127.0.0.1 (cloudflared). */
export type JupyterEndpoint = z.infer<typeof JupyterEndpointSchema>;

/** The socket Jupyter binds in its socket directory, and its path inside the container. */
export const SOCKET_NAME = "jupyter.sock";
export const SOCKET_IN_CONTAINER = `${SOCKET_MOUNT}/${SOCKET_NAME}`;

/** `net.connect` options for an endpoint (`http.request` names the socket `socketPath`). */
export function connectOptions(e: JupyterEndpoint): { path: string } | { host: string; port: number } {
  return e.kind === "socket" ? { path: e.path } : { host: "127.0.0.1", port: e.port };
}

/** The port Jupyter believes it serves on (8888 inside the container): what Host and Origin name towards it. */
export function hostHeaderPort(e: JupyterEndpoint): number {
  return e.kind === "socket" ? JUPYTER_CONTAINER_PORT : e.port;
}

/**
 * Creates a session's socket directory fresh: `<root>/.jupyter-sockets/` private to the agent's
 * user (0700) and in it `<sessionId>/` for jupyteruser (1000:1000, 0700). Leaves nothing behind
 * when it fails.
 */
export async function createSocketDir(workspaceRoot: string, sessionId: string): Promise<SessionSocketPaths> {
  const paths = sessionSocketPaths(workspaceRoot, sessionId);
  await mkdir(dirname(paths.dir), { recursive: true, mode: 0o700 });
  await mkdir(paths.dir, { mode: 0o700 });
  await chown(paths.dir, 1000, 1000).catch(async (err: NodeJS.ErrnoException) => {
    // An agent running as uid 1000 already owns it; any other failure is real.
    if (process.getuid?.() === 1000) return;
    await removeSocketDir(paths);
    throw err;
  });
  return paths;
}

/** Removes a session's socket directory and link (both may be gone already). */
export async function removeSocketDir(paths: SessionSocketPaths): Promise<void> {
  await rm(paths.link, { force: true });
  await rm(paths.dir, { recursive: true, force: true });
}

/** Thrown when what Jupyter's directory holds under the socket's name is not a socket. */
export class NotASocketError extends Error {
  override name = "NotASocketError";
}

/**
 * Hard-links `<dir>/jupyter.sock` to `link` and checks that the linked inode is a socket. Returns
 * false while Jupyter has not bound it yet; throws NotASocketError for anything else (a symlink,
 * a file, a FIFO), removing the link it made.
 */
export async function pinJupyterSocket(paths: SessionSocketPaths): Promise<boolean> {
  await rm(paths.link, { force: true });
  try {
    await link(join(paths.dir, SOCKET_NAME), paths.link);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw err;
  }
  const info = await lstat(paths.link);
  if (info.isSocket()) return true;
  await unlink(paths.link).catch(() => undefined);
  throw new NotASocketError(`${join(paths.dir, SOCKET_NAME)} is not a socket (${info.isSymbolicLink() ? "a symlink" : "another kind of file"}); refusing to connect through it`);
}

/** `connectOptions` as `http.request` spells them. */
function httpConnectOptions(e: JupyterEndpoint): { socketPath: string } | { host: string; port: number } {
  const c = connectOptions(e);
  return "path" in c ? { socketPath: c.path } : c;
}

/** One GET to Jupyter with its token; resolves with the parsed JSON body of a 2xx answer. */
export function jupyterGetJson(e: JupyterEndpoint, path: string, token: string, timeoutMs: number): Promise<unknown> {
  return new Promise((resolvePromise, reject) => {
    const req = request(
      {
        ...httpConnectOptions(e),
        path,
        headers: { Host: `127.0.0.1:${hostHeaderPort(e)}`, Authorization: `token ${token}` },
        agent: false,
        timeout: timeoutMs,
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (c: Buffer) => {
          size += c.length;
          if (size > 1024 * 1024) return req.destroy(new Error(`Jupyter's answer on ${path.split("?")[0]} is over 1 MiB`));
          chunks.push(c);
        });
        res.on("end", () => {
          const status = res.statusCode ?? 0;
          if (status < 200 || status >= 300) return reject(new Error(`Jupyter answered ${status} on ${path.split("?")[0]}`));
          try {
            resolvePromise(JSON.parse(Buffer.concat(chunks).toString("utf8")));
          } catch {
            reject(new Error(`Jupyter's answer on ${path.split("?")[0]} is not JSON`));
          }
        });
        res.on("error", reject);
      },
    );
    req.on("timeout", () => req.destroy(new Error(`Jupyter did not answer ${path.split("?")[0]} within ${timeoutMs} ms`)));
    req.on("error", reject);
    req.end();
  });
}

/** How old an unmounted socket directory must be before the purge removes it. */
export const SOCKET_DIR_MIN_AGE_MS = 3600_000;

/**
 * Removes socket directories and links left by sessions that are over (an agent killed before
 * its cleanup): entries of `<root>/.jupyter-sockets/` that are not `keep`'s, that no container
 * mounts (compared as given and with symlinks resolved, as for workspaces), and that are older
 * than `minAgeMs`. The age keeps a session that is starting right now, whose directory exists
 * before its container does, out of reach: the purge must never walk a directory a renter can
 * still write into (the agent may be root). Returns how many sessions' entries it removed.
 */
export async function purgeSocketDirs(
  workspaceRoot: string,
  keep: ReadonlySet<string>,
  mountSources: readonly string[],
  o: { minAgeMs?: number; now?: number } = {},
): Promise<number> {
  const base = join(resolve(workspaceRoot), SOCKETS_DIR);
  const names = await readdir(base).catch(() => [] as string[]);
  const realBase = await realpath(base).catch(() => base);
  const mounted = await mountTester(mountSources);
  const now = o.now ?? Date.now();
  const minAgeMs = o.minAgeMs ?? SOCKET_DIR_MIN_AGE_MS;
  let removed = 0;
  for (const sessionId of new Set(names.map((n) => n.replace(/\.sock$/, "")))) {
    const paths = sessionSocketPaths(workspaceRoot, sessionId);
    const inUse = keep.has(sessionId) || mounted(paths.dir, join(realBase, sessionId));
    if (inUse) continue;
    const changed = await Promise.all([paths.dir, paths.link].map((p) => lstat(p).then((i) => i.ctimeMs, () => 0)));
    if (now - Math.max(...changed) < minAgeMs) continue;
    await removeSocketDir(paths);
    removed++;
  }
  return removed;
}
