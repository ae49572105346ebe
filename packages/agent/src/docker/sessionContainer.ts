import { PassThrough } from "node:stream";
import type Docker from "dockerode";
import type { Secret } from "@runit/protocol";
import type { AgentLogger } from "../logger.js";
import { JUPYTER_CONTAINER_PORT, LABELS, assertHardened } from "./hardenedSpec.js";
import type { ContainerCreateOptions } from "dockerode";

/** What the entrypoint reads on stdin (one JSON line); never put in Env or Cmd. */
export interface SessionConfig {
  token: Secret;
  baseUrl: string;
  /** Jupyter's allow_origin: the control plane's origin in relay mode, "" (same origin) otherwise. */
  allowOrigin: string;
  /** Relay mode: the Unix socket Jupyter listens on instead of a port (/run/runit/jupyter.sock). */
  socket?: string;
}

/** A started session container. */
export interface RunningContainer {
  id: string;
  /** Host port on 127.0.0.1 where Jupyter is published; absent when it listens on its socket. */
  hostPort?: number;
}

/**
 * Creates and starts a container from a hardened spec, hands it the session config on stdin and
 * returns once the entrypoint said who it runs as. Echoes the container's output lines as
 * `[docker] ...` only for the first line (`Running as: jupyteruser`); the rest is not the
 * provider's concern. Removes the container if anything fails.
 */
export async function startSessionContainer(
  docker: Docker,
  spec: ContainerCreateOptions,
  /** The host paths the spec must mount, and nothing else (checked again here). */
  mounts: { workspaceDir: string; socketDir?: string | undefined },
  config: SessionConfig,
  logger: AgentLogger,
  timeoutMs = 30_000,
): Promise<RunningContainer> {
  assertHardened(spec, mounts);
  const container = await docker.createContainer(spec);
  const out = new PassThrough();
  const runningAs = waitForLine(out, /^Running as: (.+)$/, timeoutMs);
  // Awaited below; when a step before fails, the catch ends `out` and this rejection is not news.
  runningAs.catch(() => undefined);
  try {
    const stream = await container.attach({ stream: true, stdin: true, stdout: true, stderr: true, hijack: true });
    // docker-modem's demux never ends `out`: end it when the attach stream ends (the container
    // exited) or fails (say the daemon restarted: ECONNRESET), so an early exit fails at once
    // instead of after `timeoutMs`, and a socket error never goes unhandled.
    const endOutput = (): void => void (out.writableEnded || out.end());
    stream.on("end", endOutput).on("close", endOutput).on("error", endOutput);
    container.modem.demuxStream(stream, out, out);
    await container.start();
    stream.write(`${JSON.stringify(config)}\n`);
    stream.end();
    const user = await runningAs;
    logger.info(`[docker] Running as: ${user}`);
    out.resume();
    if (config.socket) return { id: container.id };
    const info = await container.inspect();
    const binding = info.NetworkSettings.Ports[`${JUPYTER_CONTAINER_PORT}/tcp`]?.[0];
    const hostPort = Number(binding?.HostPort);
    if (!binding || binding.HostIp !== "127.0.0.1" || !Number.isInteger(hostPort) || hostPort <= 0) {
      throw new Error("Jupyter's port was not published on 127.0.0.1");
    }
    return { id: container.id, hostPort };
  } catch (err) {
    out.end();
    await removeContainer(docker, container.id);
    throw err;
  }
}

function waitForLine(stream: PassThrough, pattern: RegExp, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let buffer = "";
    const timer = setTimeout(() => finish(new Error("the session container did not start (no 'Running as' line)")), timeoutMs);
    const onData = (chunk: Buffer): void => {
      buffer += chunk.toString("utf8");
      for (const line of buffer.split("\n")) {
        const m = pattern.exec(line.trim());
        if (m?.[1]) return finish(undefined, m[1]);
      }
    };
    const onEnd = (): void => finish(new Error(`the session container exited early: ${buffer.trim().slice(-300)}`));
    function finish(err?: Error, value?: string): void {
      clearTimeout(timer);
      stream.off("data", onData);
      stream.off("end", onEnd);
      if (err) reject(err);
      else resolve(value ?? "");
    }
    stream.on("data", onData);
    stream.on("end", onEnd);
  });
}

/** Stops (2 s grace) and removes a container; a container that is already gone is fine. */
export async function removeContainer(docker: Docker, id: string): Promise<void> {
  const c = docker.getContainer(id);
  try {
    await c.remove({ force: true, v: true });
  } catch (err) {
    if ((err as { statusCode?: number }).statusCode !== 404) throw err;
  }
}

/** A managed container as recovery sees it. */
export interface ManagedContainer {
  id: string;
  sessionId: string;
  running: boolean;
}

/** Lists every container this agent instance created (label runit.agent=<name>), running or not. */
export async function listAgentContainers(docker: Docker, agentName: string): Promise<ManagedContainer[]> {
  const list = await docker.listContainers({
    all: true,
    filters: { label: [`${LABELS.managed}=true`, `${LABELS.agent}=${agentName}`] },
  });
  return list.map((c) => ({
    id: c.Id,
    sessionId: c.Labels[LABELS.session] ?? "",
    running: c.State === "running",
  }));
}

/**
 * Host paths mounted by every container on this engine, running or not, whichever agent (or
 * person) made it: a workspace one of them mounts is not safe to delete (see workspace.ts).
 */
export async function listMountSources(docker: Docker): Promise<string[]> {
  const list = await docker.listContainers({ all: true });
  return list.flatMap((c) => (c.Mounts ?? []).map((m) => m.Source).filter((s) => s !== ""));
}

/** Cumulative network bytes of a container (all interfaces), from one non-streaming stats read. */
export async function containerNetworkBytes(docker: Docker, id: string): Promise<{ rxBytes: number; txBytes: number }> {
  const stats = (await docker.getContainer(id).stats({ stream: false, "one-shot": true } as { stream: false })) as {
    networks?: Record<string, { rx_bytes: number; tx_bytes: number }>;
  };
  let rxBytes = 0;
  let txBytes = 0;
  for (const n of Object.values(stats.networks ?? {})) {
    rxBytes += n.rx_bytes;
    txBytes += n.tx_bytes;
  }
  return { rxBytes, txBytes };
}

/** True while the container exists and runs. */
export async function isContainerRunning(docker: Docker, id: string): Promise<boolean> {
  try {
    const info = await docker.getContainer(id).inspect();
    return info.State.Running;
  } catch {
    return false;
  }
}
