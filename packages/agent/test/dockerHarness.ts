// Shared by the Docker tests: a real engine (the test FAILS when none answers), a per-file agent
// name and network, and cleanup of everything labelled with that agent name.
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import Docker from "dockerode";

const run = promisify(execFile);

/** A Docker client; throws a loud error when no engine answers (Docker tests never skip). */
export async function requireDocker(): Promise<Docker> {
  const docker = new Docker();
  try {
    await docker.ping();
  } catch (err) {
    throw new Error(`These tests need a real Docker engine and none answers (${(err as Error).message}). Run ./scripts/ensure-docker.sh.`);
  }
  try {
    await docker.getImage("runit-jupyter:latest").inspect();
  } catch {
    throw new Error("The session image runit-jupyter is missing. Run ./scripts/build-image.sh.");
  }
  return docker;
}

/** A unique agent name and network for one test file. */
export function testIdentity(prefix: string): { agentName: string; network: string; dir: string } {
  const tag = randomBytes(4).toString("hex");
  return { agentName: `${prefix}-${tag}`, network: `runit-test-${tag}`, dir: mkdtempSync(join(tmpdir(), `runit-${prefix}-`)) };
}

/** Removes every container labelled runit.agent=<agentName>, then the network. */
export async function cleanupDocker(docker: Docker, agentName: string, network?: string): Promise<void> {
  const list = await docker.listContainers({ all: true, filters: { label: [`runit.agent=${agentName}`] } });
  for (const c of list) await docker.getContainer(c.Id).remove({ force: true }).catch(() => undefined);
  if (network) await docker.getNetwork(network).remove().catch(() => undefined);
}

/** `docker exec` through the CLI (as a provider would), with a timeout; never throws on exit code. */
export async function dockerExec(id: string, cmd: string[], timeoutMs = 30_000): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run("docker", ["exec", id, ...cmd], { timeout: timeoutMs, maxBuffer: 4 * 1024 * 1024 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number | string; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : -1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

/** `docker inspect` through the CLI, parsed. */
export async function dockerInspect(id: string): Promise<Record<string, unknown>> {
  const { stdout } = await run("docker", ["inspect", id]);
  return (JSON.parse(stdout) as Array<Record<string, unknown>>)[0] ?? {};
}
