import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { claimPidFile, readLiveSession, readPidFile, removePidFile, runningAgentPid, writeLiveSession, writePidFile } from "../src/stateFile.js";

// The pid-file guard that keeps two agents with one name from running (and re-adopting the same
// persisted session) at once.
const dirs: string[] = [];
const procs: ChildProcess[] = [];

afterEach(() => {
  for (const p of procs.splice(0)) p.kill("SIGKILL");
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function stateDir(): string {
  const d = mkdtempSync(join(tmpdir(), "runit-statefile-"));
  dirs.push(d);
  return d;
}

/** A live process; `argv` ends up in its /proc/<pid>/cmdline. */
async function liveProcess(...argv: string[]): Promise<number> {
  const p = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60000)", ...argv], { stdio: "ignore" });
  procs.push(p);
  await new Promise((r) => p.once("spawn", r));
  return p.pid!;
}

describe("runningAgentPid", () => {
  it("is undefined without a pid file, and for this process's own pid", async () => {
    const dir = stateDir();
    expect(await runningAgentPid(dir, "a")).toBeUndefined();
    await writePidFile(dir, "a");
    expect(await runningAgentPid(dir, "a")).toBeUndefined();
    await removePidFile(dir, "a");
  });

  it("names a live runit-agent process that holds the name", async () => {
    const dir = stateDir();
    const pid = await liveProcess("/opt/runit/bin/runit-agent.js", "start");
    await writePidFile(dir, "a", pid);
    expect(await runningAgentPid(dir, "a")).toBe(pid);
    expect(await runningAgentPid(dir, "b")).toBeUndefined();
  });

  it("ignores a stale pid file: the process is gone, or the pid now belongs to something else", async () => {
    const dir = stateDir();
    const gone = spawn(process.execPath, ["-e", "0"], { stdio: "ignore" });
    await new Promise((r) => gone.once("exit", r));
    await writePidFile(dir, "a", gone.pid!);
    expect(await runningAgentPid(dir, "a")).toBeUndefined();
    await writePidFile(dir, "a", await liveProcess("not-an-agent"));
    expect(await runningAgentPid(dir, "a")).toBeUndefined();
  });
});

describe("the live-session state file", () => {
  const state = {
    sessionId: "0b3f6c1e-2d4a-4c6b-8e9f-1a2b3c4d5e6f",
    sessionSecret: "s".repeat(43),
    jupyterToken: "j".repeat(43),
    containerId: "c0ffee",
    basePath: "/s/0b3f6c1e-2d4a-4c6b-8e9f-1a2b3c4d5e6f/",
    tunnel: "relay" as const,
    workspaceDir: "/srv/ws/0b3f6c1e-2d4a-4c6b-8e9f-1a2b3c4d5e6f",
  };

  it("round-trips a session on its Unix socket", async () => {
    const dir = stateDir();
    const s = { ...state, jupyter: { kind: "socket" as const, path: "/srv/ws/.jupyter-sockets/x.sock" } };
    await writeLiveSession(dir, "a", s);
    expect(await readLiveSession(dir, "a")).toEqual(s);
  });

  it("reads a file from before the socket (hostPort) as a TCP endpoint, so an upgrade can re-adopt it", async () => {
    const dir = stateDir();
    writeFileSync(join(dir, "a.session.json"), JSON.stringify({ ...state, hostPort: 49153 }));
    expect(await readLiveSession(dir, "a")).toEqual({ ...state, jupyter: { kind: "tcp", port: 49153 } });
    writeFileSync(join(dir, "a.session.json"), JSON.stringify({ ...state, hostPort: "49153" }));
    expect(await readLiveSession(dir, "a")).toBeUndefined();
  });
});

describe("claimPidFile", () => {
  it("lets exactly one of two simultaneous starts with one name hold it; the other learns the holder's pid", async () => {
    const dir = stateDir();
    const [a, b] = [await liveProcess("runit-agent", "start"), await liveProcess("runit-agent", "start")];
    const results = await Promise.all([claimPidFile(dir, "x", a), claimPidFile(dir, "x", b)]);
    const holder = await readPidFile(dir, "x");
    expect([a, b]).toContain(holder);
    expect(results.filter((r) => r === undefined)).toHaveLength(1);
    expect(results.find((r) => r !== undefined)).toBe(holder);
  });

  it("replaces a stale pid file, and refuses while its holder lives", async () => {
    const dir = stateDir();
    await writePidFile(dir, "x", 2 ** 22 + 12345); // no such process
    const a = await liveProcess("runit-agent", "start");
    expect(await claimPidFile(dir, "x", a)).toBeUndefined();
    expect(await readPidFile(dir, "x")).toBe(a);
    const b = await liveProcess("runit-agent", "start");
    expect(await claimPidFile(dir, "x", b)).toBe(a);
    expect(await readPidFile(dir, "x")).toBe(a);
  });
});
