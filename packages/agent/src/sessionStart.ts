import { randomBytes, randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { PROTOCOL_VERSION, asSecret, maskSecret, relayBasePath, type RegisterSessionRequest, type Secret } from "@runit/protocol";
import { ControlPlaneError, backoffDelay, type Registration } from "./controlPlaneClient.js";
import { diskTooFull } from "./diskGuard.js";
import { hardenedContainerSpec } from "./docker/hardenedSpec.js";
import { isContainerRunning, removeContainer, startSessionContainer, type RunningContainer } from "./docker/sessionContainer.js";
import { SOCKET_IN_CONTAINER, createSocketDir, removeSocketDir, sessionSocketPaths, type JupyterEndpoint, type SessionSocketPaths } from "./jupyter/jupyterEndpoint.js";
import { waitForJupyter } from "./jupyter/jupyterProbe.js";
import type { AgentContext, LiveSession } from "./sessionContext.js";
import { writeLiveSession } from "./stateFile.js";
import type { SessionTunnel } from "./tunnel/types.js";
import { createSessionWorkspace } from "./workspace.js";

/** Registers, retrying with exponential backoff when the failure is worth retrying. */
export async function registerWithRetry(ctx: AgentContext, body: RegisterSessionRequest, signal: AbortSignal): Promise<Registration> {
  const attempts = ctx.options.registerAttempts;
  for (let attempt = 0; ; attempt++) {
    try {
      return await ctx.client.register(body);
    } catch (err) {
      const retryable = err instanceof ControlPlaneError && !err.fatal;
      if (!retryable || attempt + 1 >= attempts || signal.aborted) throw err;
      const delay = backoffDelay(attempt);
      ctx.logger.error(`[agent] registration failed (${(err as Error).message}); retrying in ${(delay / 1000).toFixed(1)} s`);
      await sleep(delay, undefined, { signal }).catch(() => undefined);
    }
  }
}

/**
 * Starts one fresh session: new id, new token, new empty workspace, a hardened container, the
 * tunnel, the registration. Cleans up everything it made when a step fails.
 */
export async function startSession(ctx: AgentContext, signal: AbortSignal): Promise<LiveSession> {
  const { options: o, logger } = ctx;
  // No session on a nearly full disk: the agent's loop logs this and backs off until there is room.
  const full = await diskTooFull(o.workspaceRoot, o.minFreeDiskMb);
  if (full) throw new Error(`${full}: no session is offered until there is room`);
  const startedAt = Date.now();
  const sessionId = randomUUID();
  const jupyterToken = asSecret(randomBytes(32).toString("base64url"));
  ctx.secrets.add(jupyterToken);
  const tunnelKind = o.tunnel;
  const basePath = tunnelKind === "relay" ? relayBasePath(sessionId) : "/";
  const workspaceDir = await createSessionWorkspace(o.workspaceRoot, sessionId);
  logger.info(`[agent] session workspace: ${workspaceDir}`);
  // Relay mode: Jupyter listens on a Unix socket, reached through the agent's pin (jupyterEndpoint.ts).
  const socket = tunnelKind === "relay" ? sessionSocketPaths(o.workspaceRoot, sessionId) : undefined;
  logger.info("[agent] starting dockerized jupyter...");
  const mounts = { workspaceDir, socketDir: socket?.dir };
  const spec = hardenedContainerSpec({ sessionId, agentName: o.agentName, ...mounts, image: o.image, network: o.network, limits: o.limits });
  if (socket) await createSocketDir(o.workspaceRoot, sessionId);
  const allowOrigin = tunnelKind === "relay" ? new URL(o.serverUrl).origin : "";
  const config = { token: jupyterToken, baseUrl: basePath, allowOrigin, ...(socket ? { socket: SOCKET_IN_CONTAINER } : {}) };
  let container: RunningContainer | undefined;
  let tunnel: SessionTunnel | undefined;
  let registration: Registration | undefined;
  try {
    // A start that fails removes its own container.
    const running = await startSessionContainer(ctx.docker, spec, mounts, config, logger);
    container = running;
    const jupyter = jupyterEndpointOf(running, socket);
    await waitForJupyter(jupyter, basePath, jupyterToken, 60_000, () => isContainerRunning(ctx.docker, running.id), socket);
    logger.info(`[agent] token detected: ${maskSecret(jupyterToken)}`);
    tunnel = ctx.tunnelFactory({ logger, jupyter });
    const tunnelSpec = await tunnel.describe();
    logger.info("=== SESSION READY ===");
    registration = await registerWithRetry(
      ctx,
      {
        sessionId,
        ...(o.providerId ? { providerId: o.providerId } : {}),
        protocolVersion: PROTOCOL_VERSION,
        tunnel: tunnelSpec,
        ...(tunnelSpec.kind === "cloudflared" ? { jupyterToken } : {}),
        hardware: ctx.hardware,
        pricing: { hourlyUsd: o.hourlyUsd },
      },
      signal,
    );
    if (registration.sessionId !== sessionId) throw new ControlPlaneError("the control plane ignored the proposed session id", undefined, undefined, true);
    ctx.secrets.add(registration.sessionSecret);
    const session: LiveSession = {
      sessionId,
      sessionSecret: registration.sessionSecret,
      jupyterToken,
      containerId: running.id,
      jupyter,
      basePath,
      workspaceDir,
      tunnel,
      tunnelKind,
      heartbeatIntervalMs: o.heartbeatIntervalMs || registration.heartbeatIntervalMs,
      startedAt,
      registeredAt: Date.now(),
      adopted: false,
    };
    await persist(ctx, session);
    logger.info(`[agent] session registered: ${sessionId}`);
    await tunnel.attach({
      serverUrl: o.serverUrl,
      sessionId,
      sessionSecret: registration.sessionSecret,
      jupyter,
      jupyterToken,
      basePath,
    });
    return session;
  } catch (err) {
    if (registration) await ctx.client.deregister(sessionId, registration.sessionSecret).catch(() => undefined);
    await tunnel?.close().catch(() => undefined);
    const removed = container
      ? await removeContainer(ctx.docker, container.id).then(
          () => true,
          () => false,
        )
      : true;
    // Only once no container mounts it (a renter could race a deletion); else the purge takes it later.
    if (socket && removed) await removeSocketDir(socket).catch(() => undefined);
    throw err;
  }
}

/** The started container's Jupyter: the pinned socket link in relay mode, the published port otherwise. */
function jupyterEndpointOf(running: RunningContainer, socket: SessionSocketPaths | undefined): JupyterEndpoint {
  if (socket) return { kind: "socket", path: socket.link };
  if (running.hostPort === undefined) throw new Error("Jupyter's port was not published on 127.0.0.1");
  return { kind: "tcp", port: running.hostPort };
}

/** Persists the live session (0600, in the state dir) for recovery after a SIGKILL. */
export async function persist(ctx: AgentContext, s: LiveSession): Promise<void> {
  await writeLiveSession(ctx.options.stateDir, ctx.options.agentName, {
    sessionId: s.sessionId,
    sessionSecret: s.sessionSecret,
    jupyterToken: s.jupyterToken,
    containerId: s.containerId,
    jupyter: s.jupyter,
    basePath: s.basePath,
    tunnel: s.tunnelKind,
    workspaceDir: s.workspaceDir,
  });
}

/** A secret read back from the state file. */
export function secretOf(value: string): Secret {
  return asSecret(value);
}
