import { randomBytes, randomUUID } from "node:crypto";
import { statSync } from "node:fs";
import type Docker from "dockerode";
import type { ContainerInspectInfo } from "dockerode";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { asSecret } from "@runit/protocol";
import { hardenedContainerSpec } from "../src/docker/hardenedSpec.js";
import { startSessionContainer, type RunningContainer } from "../src/docker/sessionContainer.js";
import { ensureSessionNetwork } from "../src/docker/sessionNetwork.js";
import { waitForJupyter } from "../src/jupyter/jupyterProbe.js";
import { createLogger } from "../src/logger.js";
import { createSessionWorkspace } from "../src/workspace.js";
import { cleanupDocker, dockerExec, dockerInspect, requireDocker, testIdentity } from "./dockerHarness.js";

// One real session container, created exactly as the agent creates it, inspected field by field
// against the CIS Docker Benchmark section 5 list, then probed from inside.
type InspectJson = ContainerInspectInfo & {
  HostConfig: ContainerInspectInfo["HostConfig"] & { Tmpfs: Record<string, string>; NanoCpus: number; Init: boolean; UTSMode: string; UsernsMode: string };
};
const id = testIdentity("ctr");
const sessionId = randomUUID();
const token = asSecret(randomBytes(32).toString("base64url"));
const LIMITS = { memoryMb: 256, cpus: 1.5, pids: 100 };
const lines: string[] = [];
let docker: Docker;
let running: RunningContainer;
let workspaceDir: string;
let inspect: InspectJson;

beforeAll(async () => {
  docker = await requireDocker();
  await ensureSessionNetwork(docker, id.network);
  workspaceDir = await createSessionWorkspace(id.dir, sessionId);
  const spec = hardenedContainerSpec({ sessionId, agentName: id.agentName, workspaceDir, network: id.network, limits: LIMITS });
  const logger = createLogger({ write: (s: string) => lines.push(s) });
  running = await startSessionContainer(docker, spec, { workspaceDir }, { token, baseUrl: `/s/${sessionId}/`, allowOrigin: "http://127.0.0.1:10000" }, logger);
  await waitForJupyter({ kind: "tcp", port: running.hostPort! }, `/s/${sessionId}/`, token, 60_000);
  inspect = (await dockerInspect(running.id)) as unknown as InspectJson;
});

afterAll(async () => {
  if (docker) await cleanupDocker(docker, id.agentName, id.network);
});

describe("docker inspect of a session container (CIS 5.x)", () => {
  it("is not privileged and has every capability dropped, none added (5.4, 5.3)", () => {
    expect(inspect.HostConfig.Privileged).toBe(false);
    expect(inspect.HostConfig.CapAdd ?? []).toEqual([]);
    expect(inspect.HostConfig.CapDrop).toEqual(["ALL"]);
  });
  it("has a read-only root filesystem (5.12)", () => {
    expect(inspect.HostConfig.ReadonlyRootfs).toBe(true);
  });
  it("has memory, CPU and PIDs limits (5.10, 5.11, 5.28)", () => {
    expect(inspect.HostConfig.Memory).toBe(256 * 1024 * 1024);
    expect(inspect.HostConfig.MemorySwap).toBe(256 * 1024 * 1024);
    expect(inspect.HostConfig.NanoCpus).toBe(1.5e9);
    expect(inspect.HostConfig.PidsLimit).toBe(100);
  });
  it("sets no-new-privileges (5.25)", () => {
    expect(inspect.HostConfig.SecurityOpt).toEqual(["no-new-privileges:true"]);
  });
  it("publishes Jupyter on 127.0.0.1 only (5.13)", () => {
    const bindings = inspect.HostConfig.PortBindings as Record<string, Array<{ HostIp: string }>>;
    expect(Object.keys(bindings)).toEqual(["8888/tcp"]);
    expect(bindings["8888/tcp"]!.map((b) => b.HostIp)).toEqual(["127.0.0.1"]);
    const live = inspect.NetworkSettings.Ports as Record<string, Array<{ HostIp: string; HostPort: string }> | null>;
    for (const list of Object.values(live)) for (const b of list ?? []) expect(b.HostIp).toBe("127.0.0.1");
    expect(live["8888/tcp"]![0]!.HostPort).toBe(String(running.hostPort));
  });
  it("is on a user-defined network, not docker0 / the default bridge (5.29), with inter-container traffic off", async () => {
    expect(inspect.HostConfig.NetworkMode).toBe(id.network);
    expect(Object.keys(inspect.NetworkSettings.Networks)).toEqual([id.network]);
    const net = await docker.getNetwork(id.network).inspect();
    expect(net.Options?.["com.docker.network.bridge.enable_icc"]).toBe("false");
  });
  it("mounts no docker.sock and no host path other than the workspace (5.5, 5.31)", () => {
    const mounts = inspect.Mounts as Array<{ Type: string; Source: string; Destination: string; RW: boolean }>;
    expect(mounts.filter((m) => m.Type === "bind")).toEqual([
      expect.objectContaining({ Source: workspaceDir, Destination: "/workspace", RW: true }),
    ]);
    expect(mounts.filter((m) => m.Type === "volume")).toEqual([]);
    expect(JSON.stringify(inspect)).not.toContain("docker.sock");
  });
  it("does not share the host's namespaces (5.9, 5.15, 5.16, 5.21)", () => {
    expect(inspect.HostConfig.PidMode).toBe("");
    expect(inspect.HostConfig.IpcMode).toBe("private");
    expect(inspect.HostConfig.UTSMode).toBe("");
    expect(inspect.HostConfig.UsernsMode).toBe("");
    expect(inspect.HostConfig.Devices ?? []).toEqual([]);
  });
  it("runs as uid 1000, not root, with init and no restart policy (5.14)", () => {
    expect(inspect.Config.User).toBe("1000:1000");
    expect(inspect.HostConfig.Init).toBe(true);
    expect(inspect.HostConfig.RestartPolicy?.Name).toBe("no");
  });
  it("mounts /tmp and the home directory as tmpfs with a size, nosuid and nodev", () => {
    const tmpfs = inspect.HostConfig.Tmpfs as Record<string, string>;
    expect(Object.keys(tmpfs).sort()).toEqual(["/home/jupyteruser", "/tmp"]);
    for (const opts of Object.values(tmpfs)) expect(opts.split(",")).toEqual(expect.arrayContaining(["nosuid", "nodev", "noexec"]));
    for (const opts of Object.values(tmpfs)) expect(opts).toMatch(/size=\d+m/);
  });
  it("carries the session labels", () => {
    expect(inspect.Config.Labels).toMatchObject({ "runit.managed": "true", "runit.session": sessionId, "runit.agent": id.agentName });
  });
  it("never shows the Jupyter token: not in Env, Args, Cmd, Entrypoint, the process list nor docker logs", async () => {
    expect(JSON.stringify(inspect)).not.toContain(token);
    expect(JSON.stringify(inspect.Config.Env)).not.toMatch(/token/i);
    const top = await docker.getContainer(running.id).top({ ps_args: "-eo pid,args" });
    expect(JSON.stringify(top)).not.toContain(token);
    const logs = (await docker.getContainer(running.id).logs({ stdout: true, stderr: true })).toString("utf8");
    expect(logs).toContain("?token=...");
    expect(logs).not.toContain(token);
    expect(lines.join("")).toBe("[docker] Running as: jupyteruser\n");
  });
});

describe("inside a session container", () => {
  it("whoami is jupyteruser", async () => {
    const r = await dockerExec(running.id, ["whoami"]);
    expect(r.stdout.trim()).toBe("jupyteruser");
  });
  it("the root filesystem refuses writes: touch /etc/test → Read-only file system", async () => {
    const r = await dockerExec(running.id, ["touch", "/etc/test"]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("Read-only file system");
  });
  it("/workspace is writable, and the file lands in this session's workspace owned by uid 1000", async () => {
    const r = await dockerExec(running.id, ["sh", "-c", "echo hello > /workspace/probe.txt && cat /workspace/probe.txt"]);
    expect(r).toMatchObject({ code: 0, stdout: "hello\n" });
    expect(statSync(`${workspaceDir}/probe.txt`).uid).toBe(1000);
    expect(statSync(workspaceDir).mode & 0o777).toBe(0o700);
  });
  it("Jupyter answers with the token on 127.0.0.1 and refuses without it", async () => {
    const base = `http://127.0.0.1:${running.hostPort}/s/${sessionId}/api/status`;
    expect((await fetch(base, { headers: { Authorization: `token ${token}` } })).status).toBe(200);
    expect((await fetch(base)).status).toBe(403);
    expect((await fetch(base, { headers: { Authorization: "token wrong-token-0123456789" } })).status).toBe(403);
  });
  it("a fork bomb stops at the PIDs limit (bounded: at most 300 spawns, 20 s)", async () => {
    const script = [
      "import subprocess, sys",
      "ps = []",
      "try:",
      "    for i in range(300): ps.append(subprocess.Popen(['sleep', '20']))",
      "    print('spawned', len(ps))",
      "except (OSError, BlockingIOError) as e:",
      "    print('blocked', len(ps))",
      "for p in ps: p.kill()",
    ].join("\n");
    const r = await dockerExec(running.id, ["python3", "-c", script], 25_000);
    const m = /^(blocked|spawned) (\d+)/.exec(r.stdout.trim());
    expect(m?.[1]).toBe("blocked");
    expect(Number(m?.[2])).toBeLessThan(100);
    expect(Number(m?.[2])).toBeGreaterThan(50);
  });
  it("allocating past the memory limit kills that process, not the container or the host", async () => {
    const r = await dockerExec(running.id, ["python3", "-c", "b = b'x' * (600 * 1024 * 1024); print('allocated')"], 30_000);
    expect(r.stdout).not.toContain("allocated");
    expect(r.code).toBe(137);
    const after = await docker.getContainer(running.id).inspect();
    expect(after.State.Running).toBe(true);
    expect((await dockerExec(running.id, ["whoami"])).stdout.trim()).toBe("jupyteruser");
  });
  it("has no sudo", async () => {
    const r = await dockerExec(running.id, ["sh", "-c", "command -v sudo || echo none"]);
    expect(r.stdout.trim()).toBe("none");
  });
});
