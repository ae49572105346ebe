/** Bumped when a wire shape changes incompatibly; the agent sends it, the server checks it. */
export const PROTOCOL_VERSION = 2;

const SECOND = 1000;
const MINUTE = 60 * SECOND;

/** Default timers. Every one is configurable; tests shorten them or inject a clock. */
export const DEFAULT_TIMERS = {
  /** How often the agent heartbeats a session. */
  providerHeartbeatIntervalMs: 30 * SECOND,
  /** A session whose provider is silent this long is removed (SESSION_REMOVED). */
  providerStaleMs: 120 * SECOND,
  /** How often the renter page heartbeats its lock. */
  renterHeartbeatIntervalMs: 15 * SECOND,
  /** A lock with no renter heartbeat (nor relayed traffic) this long is released; the session ENDS. */
  lockTimeoutMs: 60 * SECOND,
  /** A READY session with no Jupyter activity this long is replaced by a fresh one (agent). */
  idleTimeoutMs: 10 * MINUTE,
  /** How often the control plane sweeps for stale providers and expired locks. */
  sweepIntervalMs: 5 * SECOND,
} as const;

/** Default limits. */
export const DEFAULT_LIMITS = {
  /** Largest JSON body accepted on any route. */
  maxJsonBodyBytes: 64 * 1024,
  /** Registration: requests per window per client IP. */
  registrationPerWindow: 10,
  registrationWindowMs: 5 * MINUTE,
  /** Provider heartbeats and status calls per window per client IP. */
  providerPerWindow: 600,
  providerWindowMs: MINUTE,
  /** Renter API (listing, connect, heartbeat, release, access) per window per client IP. */
  renterPerWindow: 120,
  renterWindowMs: MINUTE,
  /** Relayed bytes (both directions) per session per bandwidth window. */
  bandwidthCapBytes: 10 * 1024 * 1024 * 1024,
  bandwidthWindowMs: 24 * 60 * MINUTE,
} as const;

/** Default container limits of a session (the checklist's 4g / 2 CPUs / 100 PIDs). */
export const DEFAULT_CONTAINER_LIMITS = {
  memoryMb: 4096,
  cpus: 2,
  pids: 100,
} as const;

/** Default HTTP port of the control plane. */
export const DEFAULT_PORT = 10000;

/** Path the agent dials (WebSocket, `Authorization: Bearer <session secret>`). */
export const AGENT_TUNNEL_PATH = "/agent/tunnel";

/** Name of the httpOnly cookie `/access/:token` sets, scoped to the session's relay prefix. */
export const RELAY_COOKIE_NAME = "runit_access";

/** The relay prefix of a session; Jupyter runs with this base_url in relay mode. */
export function relayBasePath(sessionId: string): string {
  return `/s/${sessionId}/`;
}
