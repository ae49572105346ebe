import { chown, mkdir, readdir, rm, stat } from "node:fs/promises";
import { join, resolve } from "node:path";

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
 * Deletes session workspaces under `root` whose last change is older than `retentionMs`, except
 * those in `keep` (live sessions). Returns the removed paths. Only UUID-named directories are touched.
 */
export async function purgeOldWorkspaces(root: string, retentionMs: number, keep: ReadonlySet<string>, now = Date.now()): Promise<string[]> {
  let entries: string[];
  try {
    entries = await readdir(resolve(root));
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of entries) {
    if (!SESSION_DIR.test(name) || keep.has(name)) continue;
    const dir = join(resolve(root), name);
    const info = await stat(dir).catch(() => undefined);
    if (!info?.isDirectory() || now - info.mtimeMs < retentionMs) continue;
    await rm(dir, { recursive: true, force: true });
    removed.push(dir);
  }
  return removed;
}
