import { ControlPlaneError } from "./controlPlaneClient.js";
import { diskTooFull } from "./diskGuard.js";
import { containerNetworkBytes, isContainerRunning } from "./docker/sessionContainer.js";
import { readJupyterActivity, type JupyterActivity } from "./jupyter/jupyterProbe.js";
import type { AgentContext, LiveSession, SessionEndReason } from "./sessionContext.js";

/** Resolves after `ms`, or at once when `signal` aborts or `wake` is called. */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

/**
 * Watches a live session until it ends: reads Jupyter's activity, heartbeats with stats, ends
 * an idle READY session, notices a dead container or tunnel, and ends the session when the disk
 * under the workspace root is nearly full. Returns why it ended.
 */
export async function watchSession(ctx: AgentContext, s: LiveSession, signal: AbortSignal): Promise<SessionEndReason> {
  const { options: o, logger } = ctx;
  let tunnelEvent: string | undefined;
  let fatal: Error | undefined;
  const unsubscribe = s.tunnel.onEvent?.((e) => {
    if (e.type === "fatal") fatal = e.error;
    else tunnelEvent = e.type === "died" ? `tunnel died: ${e.reason}` : "tunnel URL changed";
  });
  let lastActivityAt = Date.now();
  let previous: JupyterActivity | undefined;
  let status: "READY" | "LOCKED" = "READY";
  let nextHeartbeat = Date.now();
  let nextProbe = Date.now();
  try {
    for (let tick = 0; tick < Number.MAX_SAFE_INTEGER; tick++) {
      if (signal.aborted) return { by: "agent", reason: "STOPPING" };
      // A fresh session would fail the same way: end this one and let the agent stop.
      if (fatal) return { by: "agent", reason: "FATAL", error: fatal };
      if (tunnelEvent) {
        logger.info(`[agent] ${tunnelEvent}: replacing session ${s.sessionId}`);
        return { by: "agent", reason: "TUNNEL" };
      }
      const now = Date.now();
      if (now >= nextProbe) {
        nextProbe = now + o.activityIntervalMs;
        const full = await diskTooFull(o.workspaceRoot, o.minFreeDiskMb).catch(() => undefined);
        if (full) {
          logger.error(`[agent] ${full}: ending session ${s.sessionId} and deleting its workspace`);
          return { by: "agent", reason: "DISK_LOW" };
        }
        try {
          const a = await readJupyterActivity(s.jupyter, s.basePath, s.jupyterToken);
          const changed = previous !== undefined && a.lastActivity !== previous.lastActivity;
          if (changed || (a.busy && !previous?.busy)) logger.info("[agent] container activity detected");
          if (changed || a.busy || a.connections > 0) lastActivityAt = Date.now();
          previous = a;
        } catch {
          if (!(await isContainerRunning(ctx.docker, s.containerId))) {
            logger.info(`[agent] container of session ${s.sessionId} stopped`);
            return { by: "agent", reason: "CONTAINER_STOPPED" };
          }
        }
        if (status === "READY" && Date.now() - lastActivityAt >= o.idleTimeoutMs) {
          logger.info(`[agent] session ${s.sessionId} idle for ${Math.round((Date.now() - lastActivityAt) / 1000)} s: replacing it`);
          return { by: "agent", reason: "IDLE_TIMEOUT" };
        }
      }
      if (Date.now() >= nextHeartbeat) {
        nextHeartbeat = Date.now() + s.heartbeatIntervalMs;
        const stats = await containerNetworkBytes(ctx.docker, s.containerId).catch(() => undefined);
        const lastActivity = new Date(previous ? Math.max(Date.parse(previous.lastActivity) || 0, lastActivityAt) : lastActivityAt).toISOString();
        try {
          const reply = await ctx.client.heartbeat(s.sessionId, s.sessionSecret, { ...stats, lastActivity });
          if (reply.status === "GONE") {
            logger.info(`[agent] session ${s.sessionId} is unknown to the control plane`);
            return { by: "server", reason: "NOT_FOUND" };
          }
          if (reply.status === "ENDED") return { by: "server", reason: reply.endReason ?? "ENDED" };
          if (reply.status === "LOCKED" && status === "READY") lastActivityAt = Date.now();
          status = reply.status === "LOCKED" || reply.locked ? "LOCKED" : "READY";
          logger.info(`[agent] heartbeat updated for: ${s.sessionId}`);
          ctx.events.emit("heartbeat", { sessionId: s.sessionId, status });
        } catch (err) {
          if (err instanceof ControlPlaneError && err.status === 401) {
            logger.error(`[agent] the control plane refused the session secret of ${s.sessionId}`);
            return { by: "agent", reason: "SECRET_REFUSED" };
          }
          logger.error(`[agent] heartbeat failed: ${(err as Error).message}`);
        }
      }
      await pause(Math.max(20, Math.min(nextHeartbeat, nextProbe) - Date.now()), signal);
    }
    return { by: "agent", reason: "STOPPING" };
  } finally {
    unsubscribe?.();
  }
}
