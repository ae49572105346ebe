import {
  AGENT_TUNNEL_PATH,
  DEFAULT_STREAM_WINDOW_BYTES,
  PROTOCOL_VERSION,
  TUNNEL_CLOSE_BAD_HELLO,
  TUNNEL_CLOSE_SESSION_ENDED,
  maskSecret,
  versionRequiredBy,
} from "@runit/protocol";
import { ControlPlaneError } from "../controlPlaneClient.js";
import type { AgentLogger } from "../logger.js";
import { CLOSE_CODE, TunnelLink, WebSocketRefusedError, dialWebSocket } from "@runit/relay-link";
import { hostHeaderPort } from "../jupyter/jupyterEndpoint.js";
import { RelayUpstream, type UpstreamCounters } from "./relayUpstream.js";
import type { SessionTunnel, TunnelAttachment, TunnelEvent } from "./types.js";

/** How long the WebSocket handshake with the control plane may take. */
const HANDSHAKE_TIMEOUT_MS = 10_000;

/**
 * The fatal error of a control plane that speaks another tunnel protocol version: redialling
 * cannot cure it, so it stops the agent the way a revoked provider key does.
 */
function protocolMismatch(theirs: number): ControlPlaneError {
  const fix = theirs > PROTOCOL_VERSION ? "upgrade runit-agent" : "ask the operator to upgrade the control plane, or run a runit-agent release that speaks it";
  const message = `the control plane speaks tunnel protocol ${theirs} and this agent ${PROTOCOL_VERSION}: ${fix}`;
  return new ControlPlaneError(message, undefined, "PROTOCOL_VERSION_MISMATCH", true);
}

/** Options of the relay tunnel; every timer is configurable so tests run in seconds. */
export interface RelayTunnelOptions {
  logger: AgentLogger;
  /** Ping period; the tunnel is dropped and redialled when a pong is missed for two periods. */
  pingIntervalMs?: number;
  /** First reconnect delay; doubles per failed attempt (with jitter) up to `reconnectMaxMs`. */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  /**
   * A tunnel that stayed open this long resets the backoff (default 10 s); one that closes sooner
   * counts as a failed attempt, so a control plane that accepts and then closes is not hammered.
   */
  stableAfterMs?: number;
  /** Largest per-stream window accepted from the control plane. */
  maxStreamWindowBytes?: number;
}

/** The relay tunnel plus what tests and the heartbeat loop read from it. */
export interface RelayTunnel extends SessionTunnel {
  /** Subscribes to the tunnel's events (`fatal` on a protocol version mismatch). */
  onEvent(listener: (event: TunnelEvent) => void): () => void;
  /** True while the WebSocket to the control plane is open. */
  readonly connected: boolean;
  /** Bytes relayed so far (rx: renter → Jupyter, tx: Jupyter → renter). */
  counters(): UpstreamCounters;
  /** Drops the current WebSocket as if the network failed (the tunnel redials). For tests. */
  dropConnection(): void;
  /** Resolves once the tunnel is connected (or rejects after `timeoutMs`). */
  waitConnected(timeoutMs: number): Promise<void>;
}

/** The tunnel WebSocket URL for a control-plane base URL (`http` → `ws`, `https` → `wss`). */
export function tunnelUrl(serverUrl: string): string {
  const url = new URL(AGENT_TUNNEL_PATH, serverUrl);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.toString();
}

/**
 * The built-in relay tunnel (issue 4): the agent dials OUT to the control plane's
 * `/agent/tunnel` with the session secret, keeps the WebSocket alive with ping/pong, redials with
 * exponential backoff when it drops (a `fatal` event instead when the control plane speaks another
 * protocol version), and connects each stream the control plane opens to the
 * session's Jupyter (one connection to its Unix socket per stream, bytes piped). Its hello tells
 * the control plane Jupyter's token (and the port Jupyter believes it serves on, for the Host
 * header), so the control plane's HTTP client authenticates itself and the token never reaches a
 * renter.
 */
export function createRelayTunnel(opts: RelayTunnelOptions): RelayTunnel {
  const pingIntervalMs = opts.pingIntervalMs ?? 15_000;
  const reconnectMinMs = opts.reconnectMinMs ?? 250;
  const reconnectMaxMs = opts.reconnectMaxMs ?? 30_000;
  const stableAfterMs = opts.stableAfterMs ?? 10_000;
  const listeners = new Set<(event: TunnelEvent) => void>();
  let reg: TunnelAttachment | undefined;
  let upstream: RelayUpstream | undefined;
  let link: TunnelLink | undefined;
  let dialing = false;
  let closed = false;
  /** Set when the control plane speaks another protocol version: the tunnel never dials again. */
  let fatal: ControlPlaneError | undefined;
  let attempt = 0;
  let retryTimer: NodeJS.Timeout | undefined;
  let pingTimer: NodeJS.Timeout | undefined;
  let connectedWaiters: Array<() => void> = [];

  const scheduleRedial = (): void => {
    if (closed || fatal || retryTimer) return;
    const base = Math.min(reconnectMaxMs, reconnectMinMs * 2 ** Math.min(attempt, 16));
    const delay = Math.round(base / 2 + Math.random() * (base / 2));
    attempt += 1;
    retryTimer = setTimeout(() => {
      retryTimer = undefined;
      if (!dialing) dial();
    }, delay);
    retryTimer.unref();
  };

  /** Stops for good on a protocol version mismatch: one error line, one `fatal` event, no redial. */
  const stopFatally = (err: ControlPlaneError, socketLink: TunnelLink): void => {
    if (closed || fatal) return;
    fatal = err;
    clearTimeout(retryTimer);
    clearInterval(pingTimer);
    opts.logger.error(`[agent] relay tunnel stopped: ${err.message}`);
    socketLink.close(CLOSE_CODE.normal, "protocol version mismatch");
    for (const listener of listeners) listener({ type: "fatal", error: err });
  };

  const dial = (): void => {
    if (closed || fatal || !reg || !upstream) return;
    const current = reg;
    const target = upstream;
    dialing = true;
    dialWebSocket(tunnelUrl(current.serverUrl), { Authorization: `Bearer ${current.sessionSecret}` }, HANDSHAKE_TIMEOUT_MS).then(
      ({ socket, head }) => {
        dialing = false;
        if (closed || fatal) return void socket.destroy();
        const openedAt = Date.now();
        const socketLink: TunnelLink = new TunnelLink(
          socket,
          "client",
          {
            onOpen: (frame) => target.open(socketLink, frame),
            onWelcome: (frame) => {
              if (frame.protocolVersion !== PROTOCOL_VERSION) stopFatally(protocolMismatch(frame.protocolVersion), socketLink);
            },
            onPeerError: (code, message) => opts.logger.error(`[agent] control plane refused a relay frame: ${code} ${message}`),
            onClose: (code, reason) => {
              if (link === socketLink) {
                link = undefined;
                clearInterval(pingTimer);
              }
              // The welcome usually tells first; the close reason covers a welcome this agent could not read.
              const required = code === TUNNEL_CLOSE_BAD_HELLO ? versionRequiredBy(reason) : undefined;
              if (required !== undefined && required !== PROTOCOL_VERSION) stopFatally(protocolMismatch(required), socketLink);
              if (closed || fatal) return;
              // Only a tunnel that stayed up resets the backoff: accept-then-close loops back off to the cap.
              if (Date.now() - openedAt >= stableAfterMs) attempt = 0;
              const why = code === TUNNEL_CLOSE_SESSION_ENDED ? "session ended" : code === undefined ? "connection lost" : `code ${code}`;
              opts.logger.info(`[agent] relay tunnel down for ${current.sessionId} (${why}), redialling`);
              scheduleRedial();
            },
          },
          head,
        );
        link = socketLink;
        // Where Jupyter listens and its token: the control plane's HTTP client authenticates itself.
        socketLink.sendControl({ type: "hello", protocolVersion: PROTOCOL_VERSION, jupyterPort: hostHeaderPort(current.jupyter), jupyterToken: current.jupyterToken });
        opts.logger.info(`[agent] relay tunnel connected for: ${current.sessionId}`);
        clearInterval(pingTimer);
        pingTimer = setInterval(() => socketLink.heartbeat(), pingIntervalMs);
        pingTimer.unref();
        for (const resolve of connectedWaiters) resolve();
        connectedWaiters = [];
      },
      (err: Error) => {
        dialing = false;
        if (closed) return;
        if (err instanceof WebSocketRefusedError) opts.logger.error(`[agent] relay tunnel refused (HTTP ${err.status}) for ${current.sessionId}`);
        scheduleRedial();
      },
    );
  };

  return {
    describe: async () => ({ kind: "relay" }),
    async attach(attachment: TunnelAttachment): Promise<void> {
      reg = attachment;
      upstream = new RelayUpstream({
        jupyter: attachment.jupyter,
        maxWindowBytes: opts.maxStreamWindowBytes ?? 4 * DEFAULT_STREAM_WINDOW_BYTES,
      });
      opts.logger.info(
        `[agent] relay tunnel dialling ${tunnelUrl(attachment.serverUrl)} (secret ${maskSecret(attachment.sessionSecret)})`,
      );
      dial();
    },
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      clearTimeout(retryTimer);
      clearInterval(pingTimer);
      link?.close(CLOSE_CODE.normal, "agent closing");
      link?.terminate();
      upstream?.close();
    },
    onEvent(listener: (event: TunnelEvent) => void): () => void {
      listeners.add(listener);
      // A fatal condition stays true: a listener that subscribes later still hears of it.
      const error = fatal;
      if (error) queueMicrotask(() => listeners.has(listener) && listener({ type: "fatal", error }));
      return () => listeners.delete(listener);
    },
    get connected(): boolean {
      return link?.isOpen ?? false;
    },
    counters: () => ({ ...(upstream?.counters ?? { rxBytes: 0, txBytes: 0, lastActivity: 0 }) }),
    dropConnection(): void {
      link?.terminate();
    },
    waitConnected(timeoutMs: number): Promise<void> {
      if (link?.isOpen) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("relay tunnel not connected in time")), timeoutMs);
        connectedWaiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    },
  };
}
