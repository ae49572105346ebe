import { DEFAULT_LIMITS, DEFAULT_PORT, DEFAULT_TIMERS } from "@runit/protocol";
import { parseTrustProxy, type TrustProxy } from "./clientIp.js";
import { parseSessionOrigin, type SessionOrigin } from "./sessionOrigin.js";

/** One rate-limited route class: at most `max` requests per `windowMs` per client IP. */
export interface RateLimitSetting {
  max: number;
  windowMs: number;
}

/** Everything the control plane can be configured with; `loadConfig` reads it from env. */
export interface ServerConfig {
  port: number;
  /** Listen address; undefined means every interface (Node's default). */
  host: string | undefined;
  dbPath: string;
  /** Bearer token for /metrics; when undefined /metrics always answers 401. */
  adminToken: string | undefined;
  corsOrigins: string[];
  trustProxy: TrustProxy;
  /** DNS suffixes a cloudflared publicUrl must sit under. */
  tunnelHostSuffixes: string[];
  providerHeartbeatIntervalMs: number;
  providerStaleMs: number;
  lockTimeoutMs: number;
  sweepIntervalMs: number;
  maxJsonBodyBytes: number;
  rateLimits: { registration: RateLimitSetting; provider: RateLimitSetting; renter: RateLimitSetting };
  bandwidthCapBytes: number;
  bandwidthWindowMs: number;
  /** How long SIGTERM waits for in-flight requests before closing their sockets. */
  shutdownDrainMs: number;
  /** How long the relay waits for Jupyter's response head once a request is sent (504 after). */
  relayResponseTimeoutMs: number;
  /** Each relayed session on a host of its own (RUNIT_SESSION_ORIGIN); undefined: all on this host. */
  sessionOrigin: SessionOrigin | undefined;
}

/** A configuration value that cannot be used; the CLI prints it and exits non-zero. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

type Env = Record<string, string | undefined>;

/** Jupyter answers in milliseconds; a request that started a long job (a big save, an export) may take a while. */
export const DEFAULT_RELAY_RESPONSE_TIMEOUT_MS = 120_000;

function intFrom(env: Env, name: string, fallback: number, min = 0): number {
  const raw = env[name];
  if (raw === undefined || raw.trim() === "") return fallback;
  if (!/^\d+$/.test(raw.trim())) throw new ConfigError(`${name} must be a non-negative integer, got "${raw}"`);
  const value = Number(raw.trim());
  if (!Number.isSafeInteger(value) || value < min) throw new ConfigError(`${name} must be an integer >= ${min}`);
  return value;
}

function listFrom(env: Env, name: string, fallback: string[]): string[] {
  const raw = env[name];
  if (raw === undefined || raw.trim() === "") return fallback;
  return raw.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
}

function suffixesFrom(env: Env): string[] {
  const suffixes = listFrom(env, "RUNIT_TUNNEL_HOST_SUFFIXES", ["trycloudflare.com"]).map((s) =>
    s.toLowerCase().replace(/^\./, ""),
  );
  for (const s of suffixes) {
    if (!/^[a-z0-9-]+(\.[a-z0-9-]+)+$/.test(s)) {
      throw new ConfigError(`RUNIT_TUNNEL_HOST_SUFFIXES: "${s}" is not a DNS suffix with at least two labels`);
    }
  }
  return suffixes;
}

function sessionOriginFrom(env: Env): SessionOrigin | undefined {
  const raw = env.RUNIT_SESSION_ORIGIN;
  if (raw === undefined || raw.trim() === "") return undefined;
  const parsed = parseSessionOrigin(raw);
  if (typeof parsed === "string") throw new ConfigError(`RUNIT_SESSION_ORIGIN: ${parsed}, got "${raw}"`);
  return parsed;
}

function originsFrom(env: Env): string[] {
  return listFrom(env, "RUNIT_CORS_ORIGINS", []).map((origin) => {
    if (origin === "*") throw new ConfigError('RUNIT_CORS_ORIGINS: "*" is refused; list the origins');
    try {
      return new URL(origin).origin;
    } catch {
      throw new ConfigError(`RUNIT_CORS_ORIGINS: "${origin}" is not an origin`);
    }
  });
}

/** Reads the configuration from environment variables (see the package README for the table). */
export function loadConfig(env: Env = process.env): ServerConfig {
  const rate = (name: string, max: number, windowMs: number): RateLimitSetting => ({
    max: intFrom(env, `RUNIT_RATE_${name}_MAX`, max, 1),
    windowMs: intFrom(env, `RUNIT_RATE_${name}_WINDOW_MS`, windowMs, 1),
  });
  return {
    port: intFrom(env, "PORT", DEFAULT_PORT),
    host: env.RUNIT_HOST?.trim() || undefined,
    dbPath: env.RUNIT_DB?.trim() || "./data/runit.db",
    adminToken: env.RUNIT_ADMIN_TOKEN?.trim() || undefined,
    corsOrigins: originsFrom(env),
    trustProxy: parseTrustProxy(env.RUNIT_TRUST_PROXY),
    tunnelHostSuffixes: suffixesFrom(env),
    providerHeartbeatIntervalMs: intFrom(
      env,
      "RUNIT_PROVIDER_HEARTBEAT_INTERVAL_MS",
      DEFAULT_TIMERS.providerHeartbeatIntervalMs,
      1,
    ),
    providerStaleMs: intFrom(env, "RUNIT_PROVIDER_STALE_MS", DEFAULT_TIMERS.providerStaleMs, 1),
    lockTimeoutMs: intFrom(env, "RUNIT_LOCK_TIMEOUT_MS", DEFAULT_TIMERS.lockTimeoutMs, 1),
    sweepIntervalMs: intFrom(env, "RUNIT_SWEEP_INTERVAL_MS", DEFAULT_TIMERS.sweepIntervalMs, 10),
    maxJsonBodyBytes: intFrom(env, "RUNIT_MAX_JSON_BODY_BYTES", DEFAULT_LIMITS.maxJsonBodyBytes, 1),
    rateLimits: {
      registration: rate("REGISTRATION", DEFAULT_LIMITS.registrationPerWindow, DEFAULT_LIMITS.registrationWindowMs),
      provider: rate("PROVIDER", DEFAULT_LIMITS.providerPerWindow, DEFAULT_LIMITS.providerWindowMs),
      renter: rate("RENTER", DEFAULT_LIMITS.renterPerWindow, DEFAULT_LIMITS.renterWindowMs),
    },
    bandwidthCapBytes: intFrom(env, "RUNIT_BANDWIDTH_CAP_BYTES", DEFAULT_LIMITS.bandwidthCapBytes, 1),
    bandwidthWindowMs: intFrom(env, "RUNIT_BANDWIDTH_WINDOW_MS", DEFAULT_LIMITS.bandwidthWindowMs, 1),
    shutdownDrainMs: intFrom(env, "RUNIT_SHUTDOWN_DRAIN_MS", 10_000),
    relayResponseTimeoutMs: intFrom(env, "RUNIT_RELAY_RESPONSE_TIMEOUT_MS", DEFAULT_RELAY_RESPONSE_TIMEOUT_MS, 1),
    sessionOrigin: sessionOriginFrom(env),
  };
}
