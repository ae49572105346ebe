import { mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { AgentSessionStateSchema, type AgentSessionState } from "@runit/protocol";

/** The live session an agent persists so a restart after SIGKILL can re-adopt or clean it up. */
export type LiveSessionState = AgentSessionState;

/** File names inside the agent's state dir (never inside a workspace). */
function statePath(stateDir: string, agentName: string): string {
  return join(stateDir, `${agentName}.session.json`);
}
/** The pid file `runit-agent stop` reads. */
export function pidFilePath(stateDir: string, agentName: string): string {
  return join(stateDir, `${agentName}.pid`);
}

/**
 * A state file written before relay mode moved Jupyter to a Unix socket (2026-12-02) names its
 * published port as `hostPort`: that session's container still publishes it, so the agent can
 * re-adopt it over TCP after an upgrade instead of leaving it registered until it goes stale.
 */
function upgradeLegacyState(raw: unknown): unknown {
  if (typeof raw !== "object" || raw === null || "jupyter" in raw) return raw;
  const { hostPort, ...rest } = raw as { hostPort?: unknown };
  return typeof hostPort === "number" ? { ...rest, jupyter: { kind: "tcp", port: hostPort } } : raw;
}

/** Reads the persisted session, or undefined when there is none or it is unreadable. */
export async function readLiveSession(stateDir: string, agentName: string): Promise<LiveSessionState | undefined> {
  try {
    const parsed = AgentSessionStateSchema.safeParse(upgradeLegacyState(JSON.parse(await readFile(statePath(stateDir, agentName), "utf8"))));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

/** Writes the live session atomically with mode 0600 (it holds the session secret and the token). */
export async function writeLiveSession(stateDir: string, agentName: string, state: LiveSessionState): Promise<void> {
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  const target = statePath(stateDir, agentName);
  const tmp = `${target}.${process.pid}.tmp`;
  await writeFile(tmp, JSON.stringify(state), { mode: 0o600 });
  await rename(tmp, target);
}

/** Forgets the live session. */
export async function clearLiveSession(stateDir: string, agentName: string): Promise<void> {
  await rm(statePath(stateDir, agentName), { force: true });
}

/** Writes this process's pid so `runit-agent stop` can signal it. */
export async function writePidFile(stateDir: string, agentName: string, pid = process.pid): Promise<void> {
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  await writeFile(pidFilePath(stateDir, agentName), `${pid}\n`, { mode: 0o600 });
}

/**
 * Claims the agent name for this process, first thing at start: writes the pid file with O_EXCL,
 * replacing a stale one (see runningAgentPid). Returns the pid of a live runit-agent that holds
 * the name instead. Claiming before the preflight (which may build the image for a minute) rather
 * than after it keeps a second `start` with the same name from slipping in meanwhile.
 */
export async function claimPidFile(stateDir: string, agentName: string, pid = process.pid): Promise<number | undefined> {
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  const path = pidFilePath(stateDir, agentName);
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      await writeFile(path, `${pid}\n`, { mode: 0o600, flag: "wx" });
      return undefined;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
    const other = await runningAgentPid(stateDir, agentName, pid);
    if (other !== undefined) return other;
    await rm(path, { force: true }); // stale: its process is gone
  }
  throw new Error(`could not claim ${path}: it keeps reappearing`);
}

/** Reads the pid file; undefined when absent or garbage. */
export async function readPidFile(stateDir: string, agentName: string): Promise<number | undefined> {
  try {
    const pid = Number((await readFile(pidFilePath(stateDir, agentName), "utf8")).trim());
    return Number.isInteger(pid) && pid > 1 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The pid of another live runit-agent process that holds this agent name's pid file, if any.
 * A stale pid file (process gone, or the pid now belongs to a process that is not runit-agent,
 * judged from /proc/<pid>/cmdline where it exists) does not count.
 */
export async function runningAgentPid(stateDir: string, agentName: string, self = process.pid): Promise<number | undefined> {
  const pid = await readPidFile(stateDir, agentName);
  if (pid === undefined || pid === self) return undefined;
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EPERM") return undefined;
  }
  const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => undefined);
  return cmdline === undefined || cmdline.includes("runit-agent") ? pid : undefined;
}

/** Removes the pid file if it still names `pid`. */
export async function removePidFile(stateDir: string, agentName: string, pid = process.pid): Promise<void> {
  if ((await readPidFile(stateDir, agentName)) === pid) await rm(pidFilePath(stateDir, agentName), { force: true });
}
