import { EventEmitter } from "node:events";
import { rm } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import Docker from "dockerode";
import { asSecret } from "@runit/protocol";
import { ControlPlaneError, backoffDelay, createControlPlaneClient } from "./controlPlaneClient.js";
import { listAgentContainers, listMountSources, removeContainer } from "./docker/sessionContainer.js";
import { ensureSessionImage } from "./docker/sessionImage.js";
import { isolateSessionNetwork } from "./docker/sessionFirewall.js";
import { SessionNetworkError, ensureSessionNetwork } from "./docker/sessionNetwork.js";
import { detectHardware } from "./hardware.js";
import { MaskedSecrets, createLogger, type AgentLogger } from "./logger.js";
import { resolveAgentOptions, type AgentOptions } from "./options.js";
import { recoverSessions } from "./recovery.js";
import { sessionInfo, type AgentContext, type LiveSession, type SessionEndReason, type SessionInfo } from "./sessionContext.js";
import { startSession } from "./sessionStart.js";
import { watchSession } from "./sessionWatch.js";
import { claimPidFile, clearLiveSession, removePidFile } from "./stateFile.js";
import { createCloudflaredTunnel } from "./tunnel/cloudflared.js";
import { createRelayTunnel } from "./tunnel/relay.js";
import type { TunnelFactory } from "./tunnel/types.js";
import { purgeOldWorkspaces, secureWorkspaceRoot } from "./workspace.js";
import { purgeSocketDirs, removeSocketDir, sessionSocketPaths } from "./jupyter/jupyterEndpoint.js";

/** Events of a running agent. */
export interface AgentEvents {
  /** A session is registered and offered (also after re-adoption). */
  ready: [SessionInfo];
  /** A heartbeat was accepted. */
  heartbeat: [{ sessionId: string; status: "READY" | "LOCKED" }];
  /** A session ended; `endedAt` is epoch ms. */
  ended: [{ sessionId: string; reason: string; endedAt: number }];
  /** The agent stopped for a reason it cannot recover from (one line for the provider). */
  fatal: [Error];
}

/** A running agent (runAgent's result). */
export interface AgentHandle {
  readonly agentName: string;
  /** The session being offered, without secrets. */
  current(): SessionInfo | undefined;
  on<E extends keyof AgentEvents>(event: E, listener: (...args: AgentEvents[E]) => void): void;
  off<E extends keyof AgentEvents>(event: E, listener: (...args: AgentEvents[E]) => void): void;
  /** Deregisters and removes the current session's container; resolves when done. Idempotent. */
  stop(): Promise<void>;
  /** Resolves when the agent has stopped (stop() or a fatal error, which it rejects with). */
  readonly done: Promise<void>;
}

/** Thrown by runAgent when the agent cannot start; the message is one line for the provider. */
export class AgentStartError extends Error {
  override name = "AgentStartError";
}

async function connectDocker(docker: Docker): Promise<void> {
  try {
    await docker.ping();
  } catch (err) {
    const where = process.env.DOCKER_HOST ?? "/var/run/docker.sock";
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "EACCES") throw new AgentStartError(`no permission on the Docker socket ${where} (add this user to the docker group or run as root)`);
    throw new AgentStartError(`no Docker engine answers at ${where} (${code ?? (err as Error).message}); start Docker or set DOCKER_HOST`);
  }
}

/** Stops session containers from opening connections to this host (see docker/sessionFirewall.ts). */
async function protectHost(docker: Docker, network: string, enabled: boolean, logger: AgentLogger): Promise<void> {
  if (!enabled) {
    logger.error("[agent] warning: host firewall off (--no-host-firewall): sessions can reach services this host exposes on its bridge address");
    return;
  }
  try {
    const r = await isolateSessionNetwork(docker, network);
    logger.info(`[agent] host firewall: containers on ${network} (${r.bridge}) cannot open connections to this host`);
  } catch (err) {
    throw new AgentStartError(`cannot isolate the session network from this host: ${(err as Error).message} (run as root, or pass --no-host-firewall to accept the risk)`);
  }
}

/** The workspace root, private to the agent's user (see secureWorkspaceRoot); logs what it did. */
async function prepareWorkspaceRoot(root: string, logger: AgentLogger): Promise<void> {
  let previousMode: number | undefined;
  try {
    ({ previousMode } = await secureWorkspaceRoot(root));
  } catch (err) {
    throw new AgentStartError((err as Error).message);
  }
  if (previousMode !== undefined) {
    logger.info(`[agent] workspace directory ${root} had mode ${previousMode.toString(8).padStart(4, "0")}: set to 0700, so no other local user can reach a renter's files (a setuid program, say)`);
  }
  logger.info(`[agent] workspace directory: ${root}`);
}

function tunnelFactoryFor(ctx: Pick<AgentContext, "options" | "fetch">): TunnelFactory {
  if (ctx.options.tunnelFactory) return ctx.options.tunnelFactory;
  if (ctx.options.tunnel === "cloudflared") {
    return ({ logger, jupyter }) => {
      // cloudflared dials Jupyter's published port (sessionStart publishes one in this mode).
      if (jupyter.kind !== "tcp") throw new Error("cloudflared needs Jupyter's published port");
      return createCloudflaredTunnel({ logger, jupyterPort: jupyter.port, bin: ctx.options.cloudflaredBin, fetch: ctx.fetch });
    };
  }
  return ({ logger }) => createRelayTunnel({ logger });
}

/**
 * Starts the provider agent: checks Docker, the image and the network, recovers what a previous
 * run left behind, offers a first session and keeps offering fresh ones as sessions end.
 * Resolves once the first session is registered; rejects (AgentStartError or ControlPlaneError)
 * with a one-line message when it cannot.
 */
export async function runAgent(options: AgentOptions): Promise<AgentHandle> {
  const o = resolveAgentOptions(options);
  const secrets = new MaskedSecrets([o.providerKey]);
  const logger = options.logger ?? createLogger(options.stdout ?? process.stdout, options.stderr ?? process.stderr, () => secrets.list());
  const docker = options.docker ?? new Docker();
  const fetchFn = options.fetch ?? fetch;
  if (o.writePidFile) {
    // Two processes with one name would both re-adopt the same persisted session and fight over it.
    const other = await claimPidFile(o.stateDir, o.agentName);
    if (other !== undefined) throw new AgentStartError(`agent ${o.agentName} is already running (pid ${other}); stop it first: runit-agent stop --name ${o.agentName}`);
  }
  try {
    await connectDocker(docker);
    await ensureSessionImage(docker, o.image, logger);
    await ensureSessionNetwork(docker, o.network).catch((err: Error) => {
      throw err instanceof SessionNetworkError ? new AgentStartError(err.message) : err;
    });
    await protectHost(docker, o.network, o.hostFirewall, logger);
    await prepareWorkspaceRoot(o.workspaceRoot, logger);
  } catch (err) {
    if (o.writePidFile) await removePidFile(o.stateDir, o.agentName);
    throw err;
  }

  const events = new EventEmitter();
  const ctx: AgentContext = {
    options: o,
    docker,
    client: createControlPlaneClient({ serverUrl: o.serverUrl, providerKey: asSecret(o.providerKey), fetch: fetchFn }),
    logger,
    fetch: fetchFn,
    hardware: await detectHardware(o.limits),
    tunnelFactory: tunnelFactoryFor({ options: o, fetch: fetchFn }),
    events,
    secrets,
  };
  const stopController = new AbortController();
  let current: LiveSession | undefined;

  let purging = false;
  const purge = async (): Promise<void> => {
    if (purging) return; // a slow rm outlasted the interval
    purging = true;
    try {
      // Without the list of mounts nothing is known to be safe to delete: skip this round.
      const mountSources = await listMountSources(docker);
      const keep = new Set(current ? [current.sessionId] : []);
      const { removed, failed } = await purgeOldWorkspaces(o.workspaceRoot, { retentionMs: o.workspaceRetentionMs, keep, mountSources });
      await purgeSocketDirs(o.workspaceRoot, keep, mountSources);
      for (const f of failed) logger.error(`[agent] could not delete old workspace ${f.dir}: ${f.error.message}`);
      if (removed.length) logger.info(`[agent] removed ${removed.length} workspace(s) older than the retention`);
    } catch (err) {
      logger.error(`[agent] workspace purge skipped: ${(err as Error).message}`);
    } finally {
      purging = false;
    }
  };

  /** A container whose removal failed when its session ended still runs renter code: not with a fresh session. */
  async function removeStrayContainers(): Promise<void> {
    for (const c of await listAgentContainers(docker, o.agentName)) {
      if (c.id === current?.containerId) continue;
      await removeContainer(docker, c.id);
      logger.info(`[agent] removed stray container ${c.id.slice(0, 12)} (session ${c.sessionId || "?"}) before offering a fresh session`);
    }
  }

  async function endSession(s: LiveSession, end: SessionEndReason): Promise<void> {
    if (end.by === "agent" && end.reason !== "SECRET_REFUSED") {
      await ctx.client.deregister(s.sessionId, s.sessionSecret).catch((err: Error) => logger.error(`[agent] deregistration failed: ${err.message}`));
    }
    await s.tunnel.close().catch(() => undefined);
    const removed = await removeContainer(docker, s.containerId).then(
      () => true,
      (err: Error) => (logger.error(`[agent] could not remove container: ${err.message}`), false),
    );
    // The workspace that filled the disk goes at once, not after the retention. Only once its
    // container is gone: a renter who can still write into it could race the deletion.
    if (removed && s.jupyter.kind === "socket") {
      await removeSocketDir(sessionSocketPaths(o.workspaceRoot, s.sessionId)).catch((err: Error) => logger.error(`[agent] could not delete the socket directory of ${s.sessionId}: ${err.message}`));
    }
    if (end.by === "agent" && end.reason === "DISK_LOW" && removed) {
      await rm(s.workspaceDir, { recursive: true, force: true }).catch((err: Error) => logger.error(`[agent] could not delete workspace ${s.workspaceDir}: ${err.message}`));
    }
    await clearLiveSession(o.stateDir, o.agentName);
    logger.info(`[agent] session ended: ${s.sessionId} (${end.reason}); container removed`);
    events.emit("ended", { sessionId: s.sessionId, reason: end.reason, endedAt: Date.now() });
  }

  async function offer(): Promise<LiveSession> {
    await removeStrayContainers();
    const s = await startSession(ctx, stopController.signal);
    current = s;
    events.emit("ready", sessionInfo(s));
    return s;
  }

  async function loop(first: LiveSession): Promise<void> {
    let s: LiveSession | undefined = first;
    for (let failures = 0; !stopController.signal.aborted; ) {
      if (!s) {
        try {
          logger.info("[agent] offering a fresh session");
          s = await offer();
          failures = 0;
        } catch (err) {
          if (err instanceof ControlPlaneError && err.fatal && err.status === 401) throw err;
          failures++;
          logger.error(`[agent] could not start a session: ${(err as Error).message}`);
          await sleep(backoffDelay(failures), undefined, { signal: stopController.signal }).catch(() => undefined);
          continue;
        }
      }
      const end = await watchSession(ctx, s, stopController.signal);
      await endSession(s, end);
      current = undefined;
      s = undefined;
      // Like a revoked key: what no fresh session cures stops the agent (done rejects, `fatal`).
      if (end.by === "agent" && end.reason === "FATAL") throw end.error;
    }
  }

  let first: LiveSession;
  let purgeTimer: NodeJS.Timeout | undefined;
  try {
    // Recovery first: a re-adopted session's workspace may be older than the retention (a session
    // LOCKED for days writes into subfolders only), and purge() keeps the current session's.
    current = await recoverSessions(ctx);
    await purge();
    purgeTimer = setInterval(() => void purge(), Math.min(3600_000, Math.max(60_000, o.workspaceRetentionMs / 4)));
    purgeTimer.unref();
    first = current ?? (await offer());
    current = first;
    if (first.adopted) events.emit("ready", sessionInfo(first));
  } catch (err) {
    clearInterval(purgeTimer);
    if (o.writePidFile) await removePidFile(o.stateDir, o.agentName);
    throw err;
  }

  const done = loop(first)
    .catch((err: Error) => {
      events.emit("fatal", err);
      throw err;
    })
    .finally(async () => {
      clearInterval(purgeTimer);
      if (o.writePidFile) await removePidFile(o.stateDir, o.agentName);
    });
  done.catch(() => undefined);

  return {
    agentName: o.agentName,
    current: () => (current ? sessionInfo(current) : undefined),
    on: (event, listener) => void events.on(event, listener as (...a: unknown[]) => void),
    off: (event, listener) => void events.off(event, listener as (...a: unknown[]) => void),
    async stop() {
      stopController.abort();
      await done.catch(() => undefined);
    },
    done,
  };
}
