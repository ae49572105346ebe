import { homedir, hostname } from "node:os";
import { join, resolve } from "node:path";
import type Docker from "dockerode";
import { DEFAULT_CONTAINER_LIMITS, DEFAULT_TIMERS } from "@runit/protocol";
import { DEFAULT_MIN_FREE_DISK_MB } from "./diskGuard.js";
import { DEFAULT_IMAGE, DEFAULT_SESSION_NETWORK, type ContainerLimits } from "./docker/hardenedSpec.js";
import type { AgentLogger, LineSink } from "./logger.js";
import type { TunnelFactory } from "./tunnel/types.js";

/** Options of `runAgent()`; the CLI maps its flags onto these. */
export interface AgentOptions {
  /** Control-plane base URL (http or https). */
  serverUrl: string;
  /** Provider API key (`runit-control-plane keys create`). */
  providerKey: string;
  /** Name of this agent instance: the `runit.agent` label, the state and pid file names. Default: host name. */
  agentName?: string;
  /** Session image; must be an allowlisted repository (runit-jupyter). */
  image?: string;
  /** Where per-session workspaces are created. Default: ./workspace. */
  workspaceRoot?: string;
  /** How long an ended session's workspace is kept. Default 24 h. */
  workspaceRetentionMs?: number;
  /**
   * Free space (MiB) the disk under the workspace root keeps: a session ends when it drops below,
   * and none is offered until it is back. Default 2048.
   */
  minFreeDiskMb?: number;
  /** State dir for the live-session file and the pid file. Default: ~/.runit/agent. */
  stateDir?: string;
  /** The user-defined bridge sessions join. Default: runit-sessions. */
  network?: string;
  limits?: Partial<ContainerLimits>;
  /** A READY session with no Jupyter activity this long is ended and replaced. Default 10 min. */
  idleTimeoutMs?: number;
  /** Overrides the heartbeat interval the server asks for (tests). */
  heartbeatIntervalMs?: number;
  /** How often Jupyter's activity is read. Default 5 s (or less, for short idle timeouts). */
  activityIntervalMs?: number;
  /** Tunnel kind (default relay) or a factory that replaces it (tests). */
  tunnel?: "relay" | "cloudflared";
  tunnelFactory?: TunnelFactory;
  cloudflaredBin?: string;
  /** Price asked per hour, in USD. */
  hourlyUsd?: number;
  providerId?: string;
  /** Attempts for a registration that fails for a reason worth retrying (unreachable, 429, 5xx). */
  registerAttempts?: number;
  /** Injected dependencies. */
  docker?: Docker;
  fetch?: typeof fetch;
  stdout?: LineSink;
  stderr?: LineSink;
  logger?: AgentLogger;
  /** Installs the host firewall rules for the session network (default true; off only by explicit choice). */
  hostFirewall?: boolean;
  /** Writes and removes the pid file (the CLI does; in-process callers usually do not). */
  writePidFile?: boolean;
}

/** AgentOptions with every default filled in. */
export type ResolvedAgentOptions = Required<Omit<AgentOptions, "docker" | "fetch" | "stdout" | "stderr" | "logger" | "tunnelFactory" | "providerId" | "limits">> & {
  limits: ContainerLimits;
  providerId: string | undefined;
  tunnelFactory: TunnelFactory | undefined;
};

/** Thrown for options that make no sense; its message is one line for the provider. */
export class AgentOptionError extends Error {
  override name = "AgentOptionError";
}

/** The default state dir. */
export function defaultStateDir(): string {
  return join(homedir(), ".runit", "agent");
}

/** The default agent name: safe label characters from the host name. */
export function defaultAgentName(): string {
  return hostname().replace(/[^A-Za-z0-9_.-]/g, "-").slice(0, 63) || "runit-agent";
}

/** Fills defaults and validates. */
export function resolveAgentOptions(o: AgentOptions): ResolvedAgentOptions {
  if (!o.serverUrl) throw new AgentOptionError("--server is required (or set RUNIT_SERVER)");
  let url: URL;
  try {
    url = new URL(o.serverUrl);
  } catch {
    throw new AgentOptionError(`--server ${o.serverUrl} is not a URL`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new AgentOptionError("--server must be an http:// or https:// URL");
  if (!o.providerKey) throw new AgentOptionError("--key is required, or RUNIT_PROVIDER_KEY (create one with: runit-control-plane keys create --name <name>)");
  const limits: ContainerLimits = { ...DEFAULT_CONTAINER_LIMITS, ...o.limits };
  for (const [k, v] of Object.entries(limits)) {
    if (v !== undefined && (!Number.isFinite(v) || v <= 0)) throw new AgentOptionError(`container limit ${k} must be a positive number`);
  }
  const idleTimeoutMs = o.idleTimeoutMs ?? DEFAULT_TIMERS.idleTimeoutMs;
  if (!(idleTimeoutMs > 0)) throw new AgentOptionError("--idle-timeout must be positive");
  const minFreeDiskMb = o.minFreeDiskMb ?? DEFAULT_MIN_FREE_DISK_MB;
  if (!(Number.isFinite(minFreeDiskMb) && minFreeDiskMb >= 0)) throw new AgentOptionError("--min-free-disk-mb must be a number of MiB, 0 or more");
  const agentName = o.agentName ?? defaultAgentName();
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/.test(agentName)) throw new AgentOptionError("--name may hold letters, digits, '.', '_' and '-' only");
  return {
    serverUrl: url.toString().replace(/\/+$/, ""),
    providerKey: o.providerKey,
    agentName,
    image: o.image ?? DEFAULT_IMAGE,
    workspaceRoot: resolve(o.workspaceRoot ?? "workspace"),
    workspaceRetentionMs: o.workspaceRetentionMs ?? 24 * 3600_000,
    minFreeDiskMb,
    stateDir: resolve(o.stateDir ?? defaultStateDir()),
    network: o.network ?? DEFAULT_SESSION_NETWORK,
    limits,
    idleTimeoutMs,
    heartbeatIntervalMs: o.heartbeatIntervalMs ?? 0,
    activityIntervalMs: o.activityIntervalMs ?? Math.max(200, Math.min(5000, Math.floor(idleTimeoutMs / 4))),
    tunnel: o.tunnel ?? "relay",
    tunnelFactory: o.tunnelFactory,
    cloudflaredBin: o.cloudflaredBin ?? "cloudflared",
    hourlyUsd: o.hourlyUsd ?? 0.5,
    providerId: o.providerId,
    registerAttempts: o.registerAttempts ?? 8,
    writePidFile: o.writePidFile ?? false,
    hostFirewall: o.hostFirewall ?? true,
  };
}
