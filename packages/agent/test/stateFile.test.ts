import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { removePidFile, runningAgentPid, writePidFile } from "../src/stateFile.js";

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
