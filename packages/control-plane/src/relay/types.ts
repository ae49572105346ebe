import type { IncomingMessage, ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import type { RequestHandler } from "express";
import type { EndReason, RunitError, SecurityEvent } from "@runit/protocol";

/** What the relay needs from the session store (SessionService in this package provides it). */
export interface RelaySessions {
  /** The live relay-mode session a tunnel secret belongs to, or the error to answer (401/403/404). */
  authenticateTunnel(secret: string, ip: string): { sessionId: string } | RunitError;
  /** May `accessToken` (the relay cookie) from `ip` use `sessionId`? Refusals are logged by the store. */
  authorizeRelay(sessionId: string, accessToken: string | undefined, ip: string): { ok: true } | { ok: false; error: RunitError };
  /** Adds relayed bytes (rx: renter → session, tx: session → renter); false once the cap ended the session. */
  recordRelayTraffic(sessionId: string, rxBytes: number, txBytes: number): boolean;
  /** Marks the session available (tunnel up) or unavailable (tunnel down); logs TUNNEL_(DIS)CONNECTED. */
  setTunnelConnected(sessionId: string, connected: boolean): void;
  /** Calls `listener` whenever a session ends, for any reason; returns an unsubscribe function. */
  onSessionEnded(listener: (sessionId: string, reason: EndReason) => void): () => void;
}

/** The logger the relay writes operational lines to. */
export interface RelayLogger {
  info(message: string): void;
  warn(message: string): void;
}

/** The security log: one `[SECURITY]` line and one audit record per event. */
export type RelaySecurityLog = (
  event: SecurityEvent,
  details: Record<string, string | number | boolean | null | undefined>,
) => void;

/** What the control plane hands the relay factory. */
export interface RelayContext {
  sessions: RelaySessions;
  clientIp(req: IncomingMessage): string;
  logger: RelayLogger;
  securityLog: RelaySecurityLog;
  /** Whether an `Origin` may act on a request sent to `host` (see `foreignRelayRequest`). */
  originAllowed(origin: string, host: string | undefined): boolean;
}

/** Tunables of the relay (tests shorten them). */
export interface RelayOptions {
  /** Initial credit of each stream direction, in bytes. */
  streamWindowBytes?: number;
  /** How often the control plane pings each agent tunnel; a tunnel silent for two pings is dropped. */
  pingIntervalMs?: number;
  /** How long a new tunnel may take to send its hello before it is closed (default 10 s). */
  helloTimeoutMs?: number;
  /**
   * How long Jupyter may take to start its answer (the response head, or the 101 of an upgrade)
   * once the renter's request has been sent; then the renter gets 504 UPSTREAM_TIMEOUT and the
   * upstream connection is dropped (default 120 s). A body that has started may take any time.
   */
  responseTimeoutMs?: number;
  /** Relayed bytes are reported to the store at least this often… */
  meterFlushMs?: number;
  /** …or as soon as this many bytes are pending for a session. */
  meterFlushBytes?: number;
}

/** The relay as the server mounts it. */
export interface RelayPlugin {
  /** Mounted at `/s/:sessionId` (before any body parser): relays renter HTTP requests. */
  handleHttp: RequestHandler;
  /**
   * The fast path: called by the server's 'request' listener before Express; serves a session
   * path (same checks, same answers as `handleHttp`) and returns true, or returns false and
   * leaves the request to Express.
   */
  handleRequest(req: IncomingMessage, res: ServerResponse): boolean;
  /** Takes `/agent/tunnel` and `/s/<id>/...` upgrades; false for any other path. */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): boolean;
  /** Drops every tunnel and stream and stops the timers. */
  close(): Promise<void>;
  /** Read-only view for tests and metrics. */
  stats(): RelayStats;
}

/** Counters of the relay. */
export interface RelayStats {
  tunnels: number;
  streams: number;
}
