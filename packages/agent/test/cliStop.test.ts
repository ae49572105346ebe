// `runit-agent stop` (the built CLI, dist/) signals only a live runit-agent process: a stale pid
// file, whose pid now belongs to something else (after a reboot), gets no SIGTERM.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { writePidFile } from "../src/stateFile.js";

const BIN = fileURLToPath(new URL("../bin/runit-agent.js", import.meta.url));
const dirs: string[] = [];
const procs: ChildProcess[] = [];

afterEach(() => {
  for (const p of procs.splice(0)) p.kill("SIGKILL");
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A live process whose /proc/<pid>/cmdline holds `argv`; resolves `exited` with its signal. */
async function liveProcess(...argv: string[]): Promise<{ pid: number; exited: Promise<NodeJS.Signals | null> }> {
  const p = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60000)", ...argv], { stdio: "ignore" });
  procs.push(p);
  await new Promise((r) => p.once("spawn", r));
  return { pid: p.pid!, exited: new Promise((r) => p.once("exit", (_code, signal) => r(signal))) };
}

async function stop(stateDir: string): Promise<{ code: number | null; out: string; err: string }> {
  const child = spawn(process.execPath, [BIN, "stop", "--name", "a", "--state-dir", stateDir], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (err += d.toString()));
  const code = await new Promise<number | null>((r) => child.once("exit", r));
  return { code, out, err };
}

describe("runit-agent stop", () => {
  it("does not signal a process that is not runit-agent (stale pid file)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "runit-cli-stop-"));
    dirs.push(dir);
    const other = await liveProcess("not-an-agent");
    await writePidFile(dir, "a", other.pid);
    expect(await stop(dir)).toEqual({ code: 1, out: "", err: `[agent] error: agent a (pid ${other.pid}) is not running\n` });
    expect(await Promise.race([other.exited, new Promise((r) => setTimeout(() => r("alive"), 300))])).toBe("alive");
  });

  it("signals a live runit-agent process and waits for it to stop", async () => {
    const dir = mkdtempSync(join(tmpdir(), "runit-cli-stop-"));
    dirs.push(dir);
    const agent = await liveProcess("/opt/runit/bin/runit-agent.js", "start");
    await writePidFile(dir, "a", agent.pid);
    expect(await stop(dir)).toEqual({ code: 0, out: `[agent] agent a (pid ${agent.pid}) stopped\n`, err: "" });
    expect(await agent.exited).toBe("SIGTERM");
  });
});
