import { randomUUID } from "node:crypto";
import { mkdtempSync, mkdirSync, statSync, utimesSync, existsSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { createSessionWorkspace, purgeOldWorkspaces } from "../src/workspace.js";
import { backoffDelay } from "../src/controlPlaneClient.js";

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
    for (const id of [old, live, recent]) mkdirSync(join(root, id));
    mkdirSync(join(root, "not-a-session"));
    writeFileSync(join(root, "notes.txt"), "x");
    const past = new Date(Date.now() - 48 * 3600_000);
    utimesSync(join(root, old), past, past);
    utimesSync(join(root, live), past, past);
    utimesSync(join(root, "not-a-session"), past, past);
    const removed = await purgeOldWorkspaces(root, 24 * 3600_000, new Set([live]));
    expect(removed).toEqual([join(root, old)]);
    expect([live, recent, "not-a-session", "notes.txt"].every((n) => existsSync(join(root, n)))).toBe(true);
  });
});

describe("registration backoff", () => {
  it("doubles from 0.5 s and caps at 30 s", () => {
    expect([0, 1, 2, 3, 10].map((a) => backoffDelay(a, 30_000, () => 1))).toEqual([500, 1000, 2000, 4000, 30_000]);
    expect(backoffDelay(0, 30_000, () => 0)).toBe(250);
  });
});
