import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { call, registrationBody, rememberSecret } from "./harness.js";

const packageDir = fileURLToPath(new URL("..", import.meta.url));
const repoDir = join(packageDir, "..", "..");
const bin = join(packageDir, "bin", "runit-control-plane.js");
const dir = mkdtempSync(join(tmpdir(), "runit-durable-"));
const dbPath = join(dir, "runit.db");
const env = { ...process.env, RUNIT_DB: dbPath, PORT: "0", RUNIT_HOST: "127.0.0.1" };
const children: ChildProcess[] = [];

beforeAll(() => {
  // The CLI runs from dist/; `pnpm run ci` builds first, a lone run builds here.
  if (!existsSync(join(packageDir, "dist", "cli.js"))) {
    execFileSync("pnpm", ["exec", "tsc", "-b", "packages/control-plane"], { cwd: repoDir, stdio: "inherit" });
  }
});

afterAll(() => {
  for (const child of children) if (child.exitCode === null) child.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

function cli(args: string[]): { stdout: string; status: number } {
  try {
    return { stdout: execFileSync(process.execPath, [bin, ...args], { env, encoding: "utf8" }), status: 0 };
  } catch (err) {
    const e = err as { stdout?: string; status?: number };
    return { stdout: e.stdout ?? "", status: e.status ?? -1 };
  }
}

/** Starts `serve` and resolves with its URL once it logs the listening line (at most 15 s). */
function serve(): Promise<{ child: ChildProcess; url: string; output: () => string }> {
  const child = spawn(process.execPath, [bin], { env, stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  let out = "";
  child.stdout?.on("data", (c: Buffer) => (out += c.toString("utf8")));
  child.stderr?.on("data", (c: Buffer) => (out += c.toString("utf8")));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start: ${out}`)), 15_000);
    const check = () => {
      const match = /^RUNIT server listening on port (\d+)$/m.exec(out);
      if (!match) return;
      clearTimeout(timer);
      child.stdout?.off("data", check);
      resolve({ child, url: `http://127.0.0.1:${match[1]}`, output: () => out });
    };
    child.stdout?.on("data", check);
    child.once("exit", (code) => reject(new Error(`server exited ${code}: ${out}`)));
  });
}

function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  }
  return new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
}

describe("the runit-control-plane CLI", () => {
  it("keys create prints the key alone on the last line; list never shows it; revoke works once", () => {
    const created = cli(["keys", "create", "--name", "durable-test"]);
    expect(created.status).toBe(0);
    const lines = created.stdout.trimEnd().split("\n");
    const key = lines.at(-1) ?? "";
    rememberSecret(key);
    expect(key).toMatch(/^rk_[A-Za-z0-9_-]{43}$/);
    expect(lines.slice(0, -1).join("\n")).not.toContain(key);
    const extra = cli(["keys", "create", "--name", "to-revoke"]);
    const extraKey = extra.stdout.trimEnd().split("\n").at(-1) ?? "";
    rememberSecret(extraKey);
    const list = cli(["keys", "list"]);
    expect(list.stdout).not.toContain(key);
    expect(list.stdout).toContain("durable-test");
    const id = list.stdout.split("\n").find((l) => l.includes("to-revoke"))?.split("\t")[0] ?? "";
    const revoked = cli(["keys", "revoke", id]);
    expect(revoked.status).toBe(0);
    expect(revoked.stdout).toMatch(new RegExp(`^\\[SECURITY\\] \\S+ - PROVIDER_KEY_REVOKED: \\{"keyId":"${id}","sessionsEnded":0\\}\\nrevoked provider key ${id}; ended 0 live sessions\\n$`));
    expect(cli(["keys", "revoke", id]).status).toBe(1);
  });

  it("survives SIGKILL: session, lock and audit records are all there after a restart; SIGTERM drains", async () => {
    const key = cli(["keys", "create", "--name", "provider"]).stdout.trimEnd().split("\n").at(-1) ?? "";
    rememberSecret(key);
    const first = await serve();
    const reg = await call(first.url, "POST", "/provider/session", {
      body: registrationBody(),
      headers: { authorization: `Bearer ${key}` },
    });
    expect(reg.status).toBe(201);
    const { sessionId, sessionSecret } = reg.json as { sessionId: string; sessionSecret: string };
    rememberSecret(sessionSecret);
    const conn = await call(first.url, "POST", `/renter/sessions/${sessionId}/connect`);
    expect(conn.status).toBe(201);
    const token = (conn.json as { accessToken: string }).accessToken;
    rememberSecret(token);
    first.child.kill("SIGKILL");
    expect(await exited(first.child)).toEqual({ code: null, signal: "SIGKILL" });

    const second = await serve();
    const list = await call(second.url, "GET", "/renter/sessions");
    expect((list.json as Array<{ sessionId: string; status: string }>).map((s) => [s.sessionId, s.status])).toEqual([
      [sessionId, "LOCKED"],
    ]);
    expect((await call(second.url, "POST", `/renter/heartbeat/${token}`)).status).toBe(200);
    expect((await call(second.url, "POST", `/renter/sessions/${sessionId}/connect`)).status).toBe(409);
    const hb = await call(second.url, "POST", "/provider/heartbeat", {
      body: { sessionId },
      headers: { authorization: `Bearer ${sessionSecret}` },
    });
    expect(hb.json).toEqual({ status: "LOCKED", locked: true });
    const db = new Database(dbPath, { readonly: true });
    const events = (db.prepare("SELECT event FROM audit ORDER BY id").all() as Array<{ event: string }>).map((r) => r.event);
    const auditText = JSON.stringify(db.prepare("SELECT * FROM audit").all());
    db.close();
    expect(events).toEqual(
      expect.arrayContaining(["PROVIDER_KEY_CREATED", "NEW_PROVIDER_REGISTERED", "SESSION_REGISTERED", "SESSION_LOCKED", "SESSION_ALREADY_LOCKED"]),
    );
    for (const secret of [key, sessionSecret, token]) {
      expect(auditText).not.toContain(secret);
      expect(first.output() + second.output()).not.toContain(secret);
    }

    second.child.kill("SIGTERM");
    expect(await exited(second.child)).toEqual({ code: 0, signal: null });
    expect(second.output()).toContain("RUNIT server closed");
  });
});
