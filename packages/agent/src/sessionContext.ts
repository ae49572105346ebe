import type { EventEmitter } from "node:events";
import type Docker from "dockerode";
import type { Hardware, Secret } from "@runit/protocol";
import type { ControlPlaneClient } from "./controlPlaneClient.js";
import type { JupyterEndpoint } from "./jupyter/jupyterEndpoint.js";
import type { AgentLogger, MaskedSecrets } from "./logger.js";
import type { ResolvedAgentOptions } from "./options.js";
import type { SessionTunnel, TunnelFactory } from "./tunnel/types.js";

/** Everything the session lifecycle needs, built once by runAgent(). */
export interface AgentContext {
  options: ResolvedAgentOptions;
  docker: Docker;
  client: ControlPlaneClient;
  logger: AgentLogger;
  fetch: typeof fetch;
  hardware: Hardware;
  tunnelFactory: TunnelFactory;
  events: EventEmitter;
  /** Secrets the logger masks wherever they appear. */
  secrets: MaskedSecrets;
}

/** A session the agent runs: its container, its registration, its tunnel. */
export interface LiveSession {
  sessionId: string;
  sessionSecret: Secret;
  jupyterToken: Secret;
  containerId: string;
  jupyter: JupyterEndpoint;
  basePath: string;
  workspaceDir: string;
  tunnel: SessionTunnel;
  tunnelKind: "relay" | "cloudflared";
  heartbeatIntervalMs: number;
  /** When the agent began creating it (epoch ms) and when it was registered. */
  startedAt: number;
  registeredAt: number;
  /** True when re-adopted after an agent restart. */
  adopted: boolean;
}

/** Public, secret-free view of the current session (AgentHandle.current()). */
export interface SessionInfo {
  sessionId: string;
  containerId: string;
  /** Where the agent reaches Jupyter (a socket path or a port; neither is a secret). */
  jupyter: JupyterEndpoint;
  basePath: string;
  workspaceDir: string;
  tunnel: "relay" | "cloudflared";
  startedAt: number;
  registeredAt: number;
  adopted: boolean;
}

/** Strips the secrets off a LiveSession. */
export function sessionInfo(s: LiveSession): SessionInfo {
  return {
    sessionId: s.sessionId,
    containerId: s.containerId,
    jupyter: s.jupyter,
    basePath: s.basePath,
    workspaceDir: s.workspaceDir,
    tunnel: s.tunnelKind,
    startedAt: s.startedAt,
    registeredAt: s.registeredAt,
    adopted: s.adopted,
  };
}

/** Why a session ended, from the agent's side; after FATAL the agent stops with `error`. */
export type SessionEndReason =
  | { by: "server"; reason: string }
  | { by: "agent"; reason: "IDLE_TIMEOUT" | "CONTAINER_STOPPED" | "TUNNEL" | "STOPPING" | "SECRET_REFUSED" | "DISK_LOW" }
  | { by: "agent"; reason: "FATAL"; error: Error };
