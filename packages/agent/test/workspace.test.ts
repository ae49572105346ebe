import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, statSync, symlinkSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, expect, it } from "vitest";
import { createSessionWorkspace, purgeOldWorkspaces, secureWorkspaceRoot } from "../src/workspace.js";
import { backoffDelay } from "../src/controlPlaneClient.js";

const DAY = 24 * 3600_000;

/** A time between two directories' ctimes (which no one can set), to place `now` relative to them. */
function between(older: string, newer: string): number {
  return (statSync(older).ctimeMs + statSync(newer).ctimeMs) / 2;
}

describe("session workspaces", () => {
  it("creates <root>/<sessionId>/ fresh, mode 0700, owned by uid 1000", async () => {
    const root = mkdtempSync(join(tmpdir(), "runit-ws-"));
    const id = randomUUID();
    const dir = await createSessionWorkspace(root, id);
    expect(dir).toBe(join(root, id));
    const st = statSync(dir);
    expect(st.mode & 0o777).toBe(0o700);
    expect(st.uid).toBe(1000);
  });

  it("never reuses a workspace", async () => {
    const root = mkdtempSync(join(tmpdir(), "runit-ws-"));
    const id = randomUUID();
    await createSessionWorkspace(root, id);
    await expect(createSessionWorkspace(root, id)).rejects.toThrow("already exists; refusing to reuse it");
    await expect(createSessionWorkspace(root, "../etc")).rejects.toThrow("invalid session id");
  });

  it("purges ended workspaces past the retention, keeps live and recent ones and foreign files", async () => {
    const root = mkdtempSync(join(tmpdir(), "runit-ws-"));
    const [old, live, recent] = [randomUUID(), randomUUID(), randomUUID()];
    mkdirSync(join(root, old));
    mkdirSync(join(root, live));
    mkdirSync(join(root, "not-a-session"));
    writeFileSync(join(root, "notes.txt"), "x");
    await sleep(50);
    mkdirSync(join(root, recent));
    const removed = await purgeOldWorkspaces(root, { retentionMs: DAY, keep: new Set([live]), mountSources: [], now: between(join(root, old), join(root, recent)) + DAY });
    expect(removed).toEqual({ removed: [join(root, old)], failed: [] });
    expect([live, recent, "not-a-session", "notes.txt"].every((n) => existsSync(join(root, n)))).toBe(true);
  });

  it("judges age by ctime: a renter's backdated mtime purges nothing early, a future mtime keeps nothing forever", async () => {
    const root = mkdtempSync(join(tmpdir(), "runit-ws-"));
    const [ended, live] = [randomUUID(), randomUUID()];
    mkdirSync(join(root, ended));
    utimesSync(join(root, ended), new Date("2100-01-01"), new Date("2100-01-01")); // touch -d 2100-01-01 /workspace
    await sleep(50);
    mkdirSync(join(root, live));
    utimesSync(join(root, live), new Date("2001-01-01"), new Date("2001-01-01")); // touch -d 2001-01-01 /workspace
    const now = between(join(root, ended), join(root, live)) + DAY;
    const result = await purgeOldWorkspaces(root, { retentionMs: DAY, keep: new Set(), mountSources: [], now });
    expect(result).toEqual({ removed: [join(root, ended)], failed: [] });
    expect(existsSync(join(root, live))).toBe(true);
  });

  it("never purges a workspace an existing container mounts, by any path to it, and restarts its retention", async () => {
    const base = mkdtempSync(join(tmpdir(), "runit-ws-"));
    const root = join(base, "real");
    const link = join(base, "link"); // another agent configured with a symlinked --workspace-root
    mkdirSync(root);
    symlinkSync(root, link);
    const [viaLink, viaSubdir, unmounted] = [randomUUID(), randomUUID(), randomUUID()];
    for (const id of [viaLink, viaSubdir, unmounted]) mkdirSync(join(root, id, "sub"), { recursive: true });
    const before = statSync(join(root, viaLink)).ctimeMs;
    await sleep(50);
    const now = Date.now() + 2 * DAY;
    const mountSources = [join(link, viaLink), join(root, viaSubdir, "sub"), "/var/lib/docker/volumes/x/_data"];
    const result = await purgeOldWorkspaces(root, { retentionMs: DAY, keep: new Set(), mountSources, now });
    expect(result).toEqual({ removed: [join(root, unmounted)], failed: [] });
    expect(existsSync(join(root, viaLink, "sub")) && existsSync(join(root, viaSubdir, "sub"))).toBe(true);
    expect(statSync(join(root, viaLink)).ctimeMs).toBeGreaterThan(before);
  });

  it("deletes a planted symlink, not what it points to, and one failing workspace does not stop the others", async () => {
    const base = mkdtempSync(join(tmpdir(), "runit-ws-"));
    const root = join(base, "root");
    const host = join(base, "host-etc");
    mkdirSync(host);
    writeFileSync(join(host, "shadow"), "root's file");
    const [planted, stuck, plain] = [randomUUID(), randomUUID(), randomUUID()];
    mkdirSync(join(root, planted, "a", "b"), { recursive: true });
    symlinkSync(host, join(root, planted, "a", "b", "c"));
    mkdirSync(join(root, stuck, "d"), { recursive: true });
    mkdirSync(join(root, plain));
    const immutable = join(root, stuck, "d", "f");
    writeFileSync(immutable, "x");
    execFileSync("chattr", ["+i", immutable]); // rm fails, even as root
    try {
      const result = await purgeOldWorkspaces(root, { retentionMs: DAY, keep: new Set(), mountSources: [], now: Date.now() + 2 * DAY });
      expect(result.removed.sort()).toEqual([join(root, planted), join(root, plain)].sort());
      expect(result.failed.map((f) => f.dir)).toEqual([join(root, stuck)]);
      expect(result.failed[0]?.error).toBeInstanceOf(Error); // Node reports ENOTDIR for the EPERM
      expect(readFileSync(join(host, "shadow"), "utf8")).toBe("root's file");
    } finally {
      execFileSync("chattr", ["-i", immutable]);
    }
  });
});

describe("workspace root", () => {
  it("sets an existing root (as the old checklist made it) to mode 0700 and refuses one owned by another user", async () => {
    const base = mkdtempSync(join(tmpdir(), "runit-ws-"));
    const root = join(base, "workspace");
    mkdirSync(root, { mode: 0o755 });
    chmodSync(root, 0o2755);
    await expect(secureWorkspaceRoot(root)).resolves.toEqual({ previousMode: 0o2755 });
    expect(statSync(root).mode & 0o7777).toBe(0o700);
    await expect(secureWorkspaceRoot(root)).resolves.toEqual({});
    const created = join(base, "new", "workspace");
    await expect(secureWorkspaceRoot(created)).resolves.toEqual({});
    expect(statSync(created).mode & 0o7777).toBe(0o700);
    const foreign = join(base, "foreign");
    mkdirSync(foreign, { mode: 0o755 });
    chownSync(foreign, 1001, 1001);
    await expect(secureWorkspaceRoot(foreign)).rejects.toThrow(`workspace root ${foreign} is owned by uid 1001, not by this agent's user (uid ${process.getuid?.()})`);
    expect(statSync(foreign).mode & 0o7777).toBe(0o755);
  });
});

describe("registration backoff", () => {
  it("doubles from 0.5 s and caps at 30 s", () => {
    expect([0, 1, 2, 3, 10].map((a) => backoffDelay(a, 30_000, () => 1))).toEqual([500, 1000, 2000, 4000, 30_000]);
    expect(backoffDelay(0, 30_000, () => 0)).toBe(250);
  });
});
