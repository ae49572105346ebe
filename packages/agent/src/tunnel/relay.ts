import {
  AGENT_TUNNEL_PATH,
  DEFAULT_STREAM_WINDOW_BYTES,
  PROTOCOL_VERSION,
  TUNNEL_CLOSE_SESSION_ENDED,
  maskSecret,
} from "@runit/protocol";
import type { AgentLogger } from "../logger.js";
import { CLOSE_CODE, TunnelLink, WebSocketRefusedError, dialWebSocket } from "@runit/relay-link";
import { RelayUpstream, type UpstreamCounters } from "./relayUpstream.js";
import type { SessionTunnel, TunnelAttachment, TunnelEvent } from "./types.js";

/** How long the WebSocket handshake with the control plane may take. */
const HANDSHAKE_TIMEOUT_MS = 10_000;

/** Options of the relay tunnel; every timer is configurable so tests run in seconds. */
export interface RelayTunnelOptions {
  logger: AgentLogger;
  /** Ping period; the tunnel is dropped and redialled when a pong is missed for two periods. */
  pingIntervalMs?: number;
  /** First reconnect delay; doubles per failed attempt (with jitter) up to `reconnectMaxMs`. */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  /** Largest per-stream window accepted from the control plane. */
  maxStreamWindowBytes?: number;
}

/** The relay tunnel plus what tests and the heartbeat loop read from it. */
export interface RelayTunnel extends SessionTunnel {
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
 * exponential backoff when it drops, and connects each stream the control plane opens to the
 * session's Jupyter on 127.0.0.1 (one TCP connection per stream, bytes piped). Its hello tells the
 * control plane Jupyter's port and token, so the control plane's HTTP client authenticates itself
 * and the token never reaches a renter.
 */
export function createRelayTunnel(opts: RelayTunnelOptions): RelayTunnel {
  const pingIntervalMs = opts.pingIntervalMs ?? 15_000;
  const reconnectMinMs = opts.reconnectMinMs ?? 250;
  const reconnectMaxMs = opts.reconnectMaxMs ?? 30_000;
  const listeners = new Set<(event: TunnelEvent) => void>();
  let reg: TunnelAttachment | undefined;
  let upstream: RelayUpstream | undefined;
  let link: TunnelLink | undefined;
  let dialing = false;
  let closed = false;
  let attempt = 0;
  let retryTimer: NodeJS.Timeout | undefined;
  let pingTimer: NodeJS.Timeout | undefined;
  let connectedWaiters: Array<() => void> = [];

  const scheduleRedial = (): void => {
    if (closed || retryTimer) return;
    const base = Math.min(reconnectMaxMs, reconnectMinMs * 2 ** Math.min(attempt, 16));
    const delay = Math.round(base / 2 + Math.random() * (base / 2));
    attempt += 1;
    retryTimer = setTimeout(() => {
      retryTimer = undefined;
      if (!dialing) dial();
    }, delay);
    retryTimer.unref();
  };

  const dial = (): void => {
    if (closed || !reg || !upstream) return;
    const current = reg;
    const target = upstream;
    dialing = true;
    dialWebSocket(tunnelUrl(current.serverUrl), { Authorization: `Bearer ${current.sessionSecret}` }, HANDSHAKE_TIMEOUT_MS).then(
      ({ socket, head }) => {
        dialing = false;
        if (closed) return void socket.destroy();
        attempt = 0;
        const socketLink: TunnelLink = new TunnelLink(
          socket,
          "client",
          {
            onOpen: (frame) => target.open(socketLink, frame),
            onPeerError: (code, message) => opts.logger.error(`[agent] control plane refused a relay frame: ${code} ${message}`),
            onClose: (code) => {
              if (link === socketLink) {
                link = undefined;
                clearInterval(pingTimer);
              }
              if (closed) return;
              const why = code === TUNNEL_CLOSE_SESSION_ENDED ? "session ended" : code === undefined ? "connection lost" : `code ${code}`;
              opts.logger.info(`[agent] relay tunnel down for ${current.sessionId} (${why}), redialling`);
              scheduleRedial();
            },
          },
          head,
        );
        link = socketLink;
        // Where Jupyter listens and its token: the control plane's HTTP client authenticates itself.
        socketLink.sendControl({ type: "hello", protocolVersion: PROTOCOL_VERSION, jupyterPort: current.jupyterPort, jupyterToken: current.jupyterToken });
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
        port: attachment.jupyterPort,
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
