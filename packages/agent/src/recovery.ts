import { DEFAULT_TIMERS, asSecret } from "@runit/protocol";
import { listAgentContainers, removeContainer, type ManagedContainer } from "./docker/sessionContainer.js";
import { sessionSocketPaths } from "./jupyter/jupyterEndpoint.js";
import { readJupyterActivity } from "./jupyter/jupyterProbe.js";
import type { AgentContext, LiveSession } from "./sessionContext.js";
import { clearLiveSession, readLiveSession, type LiveSessionState } from "./stateFile.js";

/**
 * After a restart (a SIGKILL leaves containers and a registered session behind): re-adopts the
 * persisted session when its container runs, Jupyter answers and the server still has it READY or
 * LOCKED; removes every other container of this agent and DELETEs a session it cannot adopt.
 * Afterwards there is no orphan container and at most one live session for this agent.
 */
export async function recoverSessions(ctx: AgentContext): Promise<LiveSession | undefined> {
  const { options: o, logger } = ctx;
  const state = await readLiveSession(o.stateDir, o.agentName);
  const containers = await listAgentContainers(ctx.docker, o.agentName);
  // Only the persisted session's own running container can be adopted. Every other container is
  // removed first, so that "[agent] re-adopted session …" is the last line of a finished recovery.
  const candidate = state ? containers.find((c) => c.id === state.containerId && c.sessionId === state.sessionId && c.running) : undefined;
  for (const c of containers) if (c !== candidate) await removeLeftover(ctx, c);
  if (!state) return undefined;
  ctx.secrets.add(state.sessionSecret);
  ctx.secrets.add(state.jupyterToken);
  // A socket link elsewhere than this root's (--workspace-root changed) is not adopted: the end of
  // the session and the purge clean up under this root only.
  const ownSocket = state.jupyter.kind !== "socket" || state.jupyter.path === sessionSocketPaths(o.workspaceRoot, state.sessionId).link;
  const adopted = candidate && state.tunnel === o.tunnel && ownSocket ? await tryAdopt(ctx, state) : undefined;
  if (adopted) return adopted;
  await ctx.client.deregister(state.sessionId, asSecret(state.sessionSecret)).catch((err: Error) => {
    logger.error(`[agent] could not deregister leftover session ${state.sessionId}: ${err.message}`);
  });
  logger.info(`[agent] leftover session ${state.sessionId} ended`);
  if (candidate) await removeLeftover(ctx, candidate);
  await clearLiveSession(o.stateDir, o.agentName);
  return undefined;
}

async function removeLeftover(ctx: AgentContext, c: ManagedContainer): Promise<void> {
  await removeContainer(ctx.docker, c.id);
  ctx.logger.info(`[agent] removed leftover container ${c.id.slice(0, 12)} (session ${c.sessionId || "?"})`);
}

async function tryAdopt(ctx: AgentContext, state: LiveSessionState): Promise<LiveSession | undefined> {
  const secret = asSecret(state.sessionSecret);
  const token = asSecret(state.jupyterToken);
  try {
    const status = await ctx.client.status(state.sessionId, secret);
    if (status.status !== "READY" && status.status !== "LOCKED") return undefined;
    await readJupyterActivity(state.jupyter, state.basePath, token);
  } catch {
    return undefined;
  }
  const tunnel = ctx.tunnelFactory({ logger: ctx.logger, jupyter: state.jupyter });
  try {
    await tunnel.describe();
    await tunnel.attach({
      serverUrl: ctx.options.serverUrl,
      sessionId: state.sessionId,
      sessionSecret: secret,
      jupyter: state.jupyter,
      jupyterToken: token,
      basePath: state.basePath,
    });
  } catch {
    await tunnel.close().catch(() => undefined);
    return undefined;
  }
  ctx.logger.info(`[agent] re-adopted session ${state.sessionId}`);
  const now = Date.now();
  return {
    sessionId: state.sessionId,
    sessionSecret: secret,
    jupyterToken: token,
    containerId: state.containerId,
    jupyter: state.jupyter,
    basePath: state.basePath,
    workspaceDir: state.workspaceDir,
    tunnel,
    tunnelKind: state.tunnel,
    heartbeatIntervalMs: ctx.options.heartbeatIntervalMs || DEFAULT_TIMERS.providerHeartbeatIntervalMs,
    startedAt: now,
    registeredAt: now,
    adopted: true,
  };
}
