import { chmod, chown, lstat, mkdir, readdir, realpath, rm, stat } from "node:fs/promises";
import { join, resolve, sep } from "node:path";

const SESSION_DIR = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Thrown when a workspace cannot be prepared; its message is meant for the provider. */
export class WorkspaceError extends Error {
  override name = "WorkspaceError";
}

/**
 * Creates `<root>/<sessionId>/` fresh (owner 1000:1000, mode 0700). Fails if it already exists:
 * a workspace is never reused, so one renter's files can never reach another.
 */
export async function createSessionWorkspace(root: string, sessionId: string): Promise<string> {
  if (!SESSION_DIR.test(sessionId)) throw new WorkspaceError(`invalid session id ${sessionId}`);
  const absRoot = resolve(root);
  await mkdir(absRoot, { recursive: true, mode: 0o700 });
  const dir = join(absRoot, sessionId);
  try {
    await mkdir(dir, { mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") throw new WorkspaceError(`workspace ${dir} already exists; refusing to reuse it`);
    throw new WorkspaceError(`cannot create workspace ${dir}: ${(err as Error).message}`);
  }
  try {
    await chown(dir, 1000, 1000);
  } catch (err) {
    if (process.getuid?.() !== 1000) {
      await rm(dir, { recursive: true, force: true });
      throw new WorkspaceError(`cannot give workspace ${dir} to uid 1000 (${(err as NodeJS.ErrnoException).code}); run the agent as root or as uid 1000`);
    }
  }
  return dir;
}

/**
 * Makes the workspace root private to the agent's user before any workspace is created in it:
 * created if missing, and an existing one must be owned by this uid and is set to mode 0700.
 * A renter can leave a setuid-uid-1000 file in its workspace; through a traversable root any local
 * user could run it. Returns the mode it had when it had to be changed.
 */
export async function secureWorkspaceRoot(root: string): Promise<{ previousMode?: number }> {
  const absRoot = resolve(root);
  const info = await mkdir(absRoot, { recursive: true, mode: 0o700 })
    .then(() => stat(absRoot))
    .catch((err: Error) => {
      throw new WorkspaceError(`cannot create workspace root ${absRoot}: ${err.message}`);
    });
  if (!info.isDirectory()) throw new WorkspaceError(`workspace root ${absRoot} is not a directory`);
  const uid = process.getuid?.();
  if (uid !== undefined && info.uid !== uid) {
    throw new WorkspaceError(`workspace root ${absRoot} is owned by uid ${info.uid}, not by this agent's user (uid ${uid}); chown it to uid ${uid} or choose another --workspace-root`);
  }
  const mode = info.mode & 0o7777;
  if (mode === 0o700) return {};
  try {
    await chmod(absRoot, 0o700);
  } catch (err) {
    throw new WorkspaceError(`cannot set workspace root ${absRoot} to mode 0700: ${(err as Error).message}`);
  }
  return { previousMode: mode };
}

/** What purgeOldWorkspaces needs to know besides the root. */
export interface PurgeOptions {
  /** How long a workspace no container mounts is kept after its last change (its ctime). */
  retentionMs: number;
  /** Session ids never purged (the agent's current session). */
  keep: ReadonlySet<string>;
  /** Host paths that existing containers mount (every container on the engine, running or not). */
  mountSources: readonly string[];
  now?: number;
}

/** What one purge did: removed workspaces, and the ones whose removal failed (the others went on). */
export interface PurgeResult {
  removed: string[];
  failed: Array<{ dir: string; error: Error }>;
}

/**
 * Deletes session workspaces under `root` that no container mounts and whose ctime is older than
 * `retentionMs`, except those in `keep`. Only UUID-named directories are touched.
 *
 * A container that still mounts a workspace can swap a directory for a symlink while `rm` walks
 * it by path, so such a workspace is never purged; once none does, only the agent's user can reach
 * the tree (root mode 0700) and nothing changes under `rm`. Age is the ctime, which a renter
 * cannot set (it can set the mtime to 2001 or 2100); a workspace in use, or with a ctime ahead of
 * the clock, gets its ctime set to now (a chmod to its own mode), so the retention counts from
 * when it was last seen in use, not from its last top-level change.
 */
export async function purgeOldWorkspaces(root: string, o: PurgeOptions): Promise<PurgeResult> {
  const absRoot = resolve(root);
  const result: PurgeResult = { removed: [], failed: [] };
  let entries: string[];
  try {
    entries = await readdir(absRoot);
  } catch {
    return result;
  }
  const realRoot = await realpath(absRoot).catch(() => absRoot);
  const mounted = await mountTester(o.mountSources);
  const now = o.now ?? Date.now();
  for (const name of entries) {
    if (!SESSION_DIR.test(name)) continue;
    const dir = join(absRoot, name);
    try {
      const info = await lstat(dir);
      if (!info.isDirectory()) continue;
      const inUse = o.keep.has(name) || mounted(dir, join(realRoot, name));
      if (inUse || info.ctimeMs > now) {
        // Best effort: when it fails, the age counts from the last change instead.
        await chmod(dir, info.mode & 0o7777).catch(() => undefined);
        continue;
      }
      if (now - info.ctimeMs < o.retentionMs) continue;
      await rm(dir, { recursive: true, force: true });
      result.removed.push(dir);
    } catch (err) {
      result.failed.push({ dir, error: err as Error });
    }
  }
  return result;
}

/**
 * Whether any of `mountSources` lies at or under one of the directories it is asked about. Docker
 * reports a mount's path as given, so mounts are compared as given and with symlinks resolved;
 * callers pass a directory both ways too.
 */
export async function mountTester(mountSources: readonly string[]): Promise<(...dirs: string[]) => boolean> {
  const mounted = await canonicalPaths(mountSources);
  return (...dirs) => dirs.some((d) => mounted.some((m) => m === d || m.startsWith(d + sep)));
}

/** Each path as given (resolved) and with symlinks resolved. */
async function canonicalPaths(paths: readonly string[]): Promise<string[]> {
  const out = new Set<string>();
  for (const p of paths) {
    out.add(resolve(p));
    const real = await realpath(p).catch(() => undefined);
    if (real) out.add(real);
  }
  return [...out];
}
