import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { createSecurityLog, readAudit, RunitDatabase } from "../src/index.js";
import { MIGRATIONS } from "../src/store/migrations.js";
import { FakeClock, call, registerSession, startTestServer, stopAll } from "./harness.js";

afterAll(stopAll);

const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));
function tempDb(): string {
  const dir = mkdtempSync(join(tmpdir(), "runit-log-"));
  dirs.push(dir);
  return join(dir, "runit.db");
}

describe("security log", () => {
  it("writes exactly `[SECURITY] <iso> - <EVENT>: <json>` and the same record to the audit table", () => {
    const store = RunitDatabase.open(tempDb());
    const lines: string[] = [];
    const log = createSecurityLog({ writer: { write: (s: string) => lines.push(s) }, store, clock: new FakeClock() });
    log("SESSION_LOCKED", { sessionId: "abc", ip: "127.0.0.1" });
    expect(lines).toEqual(['[SECURITY] 2026-01-14T10:32:00.000Z - SESSION_LOCKED: {"sessionId":"abc","ip":"127.0.0.1"}\n']);
    expect(readAudit(store)).toEqual([
      { id: 1, at: "2026-01-14T10:32:00.000Z", event: "SESSION_LOCKED", details: { sessionId: "abc", ip: "127.0.0.1" } },
    ]);
    store.close();
  });

  it("masks secret fields itself: at most an 8-character prefix and …", () => {
    const store = RunitDatabase.open(tempDb());
    const lines: string[] = [];
    const log = createSecurityLog({ writer: { write: (s: string) => lines.push(s) }, store, clock: new FakeClock() });
    const token = "abcdefghijklmnopqrstuvwxyz0123456789";
    log("INVALID_ACCESS_ATTEMPT", { ip: "127.0.0.1", accessToken: token, secret: token, key: token, jupyterToken: token, undefinedField: undefined });
    const expected = '{"ip":"127.0.0.1","accessToken":"abcdefgh…","secret":"abcdefgh…","key":"abcdefgh…","jupyterToken":"abcdefgh…"}';
    expect(lines).toEqual([`[SECURITY] 2026-01-14T10:32:00.000Z - INVALID_ACCESS_ATTEMPT: ${expected}\n`]);
    expect(JSON.stringify(readAudit(store))).not.toContain(token);
    store.close();
  });

  it("server lines are in the same format, one per event", async () => {
    const server = await startTestServer();
    await registerSession(server);
    const securityLines = server.out.join("").split("\n").filter((l) => l.startsWith("[SECURITY]"));
    expect(securityLines).toHaveLength(2);
    for (const line of securityLines) {
      expect(line).toMatch(/^\[SECURITY\] \d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z - [A-Z_]+: \{.*\}$/);
    }
    expect(server.out[0]).toBe(`RUNIT server listening on port ${server.port}\n`);
    expect(readAudit(server.store).map((r) => r.event)).toEqual(["NEW_PROVIDER_REGISTERED", "SESSION_REGISTERED"]);
    expect((await call(server.url, "GET", "/healthz")).status).toBe(200);
  });
});

describe("migrations", () => {
  it("are recorded in schema_version and idempotent across reopenings", () => {
    const path = tempDb();
    RunitDatabase.open(path).close();
    const again = RunitDatabase.open(path);
    const versions = again.db.prepare("SELECT version FROM schema_version ORDER BY version").all();
    expect(versions).toEqual(MIGRATIONS.map((m) => ({ version: m.version })));
    expect(again.db.pragma("journal_mode", { simple: true })).toBe("wal");
    again.close();
  });
});
