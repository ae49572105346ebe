import { statfs } from "node:fs/promises";

// A renter's /workspace is a bind mount of a directory on the provider's disk, with no quota of
// its own (Docker has none for bind mounts, and a per-session filesystem needs root and mkfs on
// every host). What the agent can guarantee instead: the disk under the workspace root never
// fills. A session ends as soon as free space there drops below a floor, its workspace (the one
// that filled it) is deleted at once, and no session is offered while the floor is not met.

/** Default floor of free space under the workspace root. */
export const DEFAULT_MIN_FREE_DISK_MB = 2048;

/** Free space for unprivileged writers (what a renter's uid can still fill), in MiB. */
export async function freeDiskMb(path: string): Promise<number> {
  const s = await statfs(path);
  return Math.floor((s.bavail * s.bsize) / (1024 * 1024));
}

/** Undefined when at least `minFreeMb` MiB are free under `path`, else why not (one line). */
export async function diskTooFull(path: string, minFreeMb: number): Promise<string | undefined> {
  const free = await freeDiskMb(path);
  return free < minFreeMb ? `only ${free} MiB free under ${path} (the floor is ${minFreeMb} MiB, --min-free-disk-mb)` : undefined;
}
