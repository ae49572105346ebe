import type { IncomingMessage } from "node:http";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import {
  PROTOCOL_VERSION,
  TUNNEL_CLOSE_BAD_HELLO,
  TUNNEL_CLOSE_REPLACED,
  TUNNEL_CLOSE_SESSION_ENDED,
  maskSecret,
  RunitError,
  toRunitError,
  versionRequiredReason,
  type HelloFrame,
  type TunnelErrorCode,
} from "@runit/protocol";
import { TunnelLink, acceptWebSocket, checkWebSocketRequest, type StreamMeter } from "@runit/relay-link";
import { JupyterPool } from "./jupyterConnections.js";
import { writeRawError } from "./rawHttp.js";
import type { JupyterUpstream } from "./relayHeaders.js";
import type { RelayContext } from "./types.js";

/** A session's tunnel once its agent said hello: where to send renter requests. */
export interface LiveTunnel {
  pool: JupyterPool;
  upstream: JupyterUpstream;
}

interface AgentTunnel {
  link: TunnelLink;
  live: LiveTunnel | undefined;
  helloTimer: NodeJS.Timeout | undefined;
  /** `error` frames the agent sent; only the first few are logged (a hostile agent could flood the log). */
  peerErrors: number;
}

/** How many of an agent's `error` frames are logged per tunnel. */
const LOGGED_PEER_ERRORS = 10;

/**
 * The agents' side of the relay: accepts `GET /agent/tunnel` WebSocket handshakes authenticated
 * by the session secret, keeps one tunnel per session (a newer one replaces an older one), pings
 * them, and tells the store when a session's tunnel comes and goes. A tunnel counts as up once the
 * agent's hello told where Jupyter listens.
 */
export class TunnelHub {
  private readonly tunnels = new Map<string, AgentTunnel>();
  private readonly pingTimer: NodeJS.Timeout;

  constructor(
    private readonly ctx: RelayContext,
    pingIntervalMs: number,
    private readonly windowBytes: number,
    private readonly meterFor: (sessionId: string) => StreamMeter,
    private readonly helloTimeoutMs = 10_000,
  ) {
    this.pingTimer = setInterval(() => this.pingAll(), pingIntervalMs);
    this.pingTimer.unref();
  }

  /** The live tunnel of a session, if its agent is connected. */
  tunnelFor(sessionId: string): LiveTunnel | undefined {
    const tunnel = this.tunnels.get(sessionId);
    return tunnel?.link.isOpen ? tunnel.live : undefined;
  }

  /** Number of connected tunnels and live streams. */
  counts(): { tunnels: number; streams: number } {
    let streams = 0;
    for (const tunnel of this.tunnels.values()) streams += tunnel.link.size;
    return { tunnels: this.tunnels.size, streams };
  }

  /** Handles an upgrade of `/agent/tunnel`: secret and registering IP first, then the handshake. */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on("error", () => socket.destroy());
    const ip = this.ctx.clientIp(req);
    const secret = /^Bearer (\S+)$/.exec(req.headers.authorization ?? "")?.[1] ?? "";
    let found: { sessionId: string } | RunitError;
    try {
      found = this.ctx.sessions.authenticateTunnel(secret, ip);
    } catch (err) {
      found = toRunitError(err);
    }
    if (found instanceof RunitError) {
      this.ctx.logger.warn(`[relay] tunnel refused from ${ip} (secret ${maskSecret(secret)}): ${found.code}`);
      return writeRawError(socket, found.status, found.toBody());
    }
    const notWebSocket = checkWebSocketRequest(req);
    if (notWebSocket) return writeRawError(socket, 400, new RunitError("INVALID_BODY", notWebSocket).toBody());
    acceptWebSocket(req, socket);
    this.register(found.sessionId, socket as Socket, head);
  }

  /** Ends a session's tunnel and streams (session ended, cap reached). */
  endSession(sessionId: string, code: TunnelErrorCode, message: string): void {
    const tunnel = this.tunnels.get(sessionId);
    if (!tunnel) return;
    tunnel.link.abortAll(code, message);
    this.drop(sessionId, tunnel);
    tunnel.link.close(TUNNEL_CLOSE_SESSION_ENDED, code);
  }

  /** Closes every tunnel. */
  async close(): Promise<void> {
    clearInterval(this.pingTimer);
    for (const [sessionId, tunnel] of this.tunnels) {
      this.drop(sessionId, tunnel);
      tunnel.link.terminate();
    }
  }

  private register(sessionId: string, socket: Socket, head: Buffer): void {
    const previous = this.tunnels.get(sessionId);
    if (previous) {
      this.drop(sessionId, previous);
      previous.link.close(TUNNEL_CLOSE_REPLACED, "replaced by a newer tunnel");
    }
    const tunnel: AgentTunnel = { live: undefined, helloTimer: undefined, link: undefined as unknown as TunnelLink, peerErrors: 0 };
    tunnel.link = new TunnelLink(
      socket,
      "server",
      {
        onHello: (frame) => this.hello(sessionId, tunnel, frame),
        onPeerError: (code, message) => {
          if (++tunnel.peerErrors > LOGGED_PEER_ERRORS) return;
          const more = tunnel.peerErrors === LOGGED_PEER_ERRORS ? " (further ones on this tunnel are not logged)" : "";
          this.ctx.logger.warn(`[relay] agent of ${sessionId} refused a frame: ${code} ${message.slice(0, 200)}${more}`);
        },
        onClose: () => {
          if (this.tunnels.get(sessionId) !== tunnel) return;
          this.drop(sessionId, tunnel);
          this.ctx.logger.info(`[relay] tunnel down: ${sessionId}`);
        },
      },
      head,
    );
    this.tunnels.set(sessionId, tunnel);
    tunnel.helloTimer = setTimeout(() => tunnel.link.close(TUNNEL_CLOSE_BAD_HELLO, "no hello"), this.helloTimeoutMs);
    tunnel.helloTimer.unref();
    tunnel.link.sendControl({ type: "welcome", sessionId, protocolVersion: PROTOCOL_VERSION });
  }

  private hello(sessionId: string, tunnel: AgentTunnel, frame: HelloFrame): void {
    if (tunnel.live || this.tunnels.get(sessionId) !== tunnel) return;
    clearTimeout(tunnel.helloTimer);
    if (frame.protocolVersion !== PROTOCOL_VERSION) {
      this.ctx.logger.warn(`[relay] agent of ${sessionId} speaks tunnel protocol ${frame.protocolVersion}, not ${PROTOCOL_VERSION}`);
      return tunnel.link.close(TUNNEL_CLOSE_BAD_HELLO, versionRequiredReason(PROTOCOL_VERSION));
    }
    tunnel.live = {
      pool: new JupyterPool(tunnel.link, this.windowBytes, this.meterFor(sessionId)),
      upstream: { port: frame.jupyterPort, token: frame.jupyterToken },
    };
    this.ctx.logger.info(`[relay] tunnel up: ${sessionId}`);
    this.report(sessionId, true);
  }

  /** Forgets a session's tunnel: its pool is destroyed, the store told it is down. */
  private drop(sessionId: string, tunnel: AgentTunnel): void {
    if (this.tunnels.get(sessionId) === tunnel) this.tunnels.delete(sessionId);
    clearTimeout(tunnel.helloTimer);
    if (!tunnel.live) return;
    tunnel.live.pool.destroy();
    tunnel.live = undefined;
    this.report(sessionId, false);
  }

  private report(sessionId: string, connected: boolean): void {
    try {
      this.ctx.sessions.setTunnelConnected(sessionId, connected);
    } catch (err) {
      this.ctx.logger.warn(`[relay] could not mark ${sessionId} tunnel=${connected}: ${toRunitError(err).message}`);
    }
  }

  private pingAll(): void {
    for (const tunnel of this.tunnels.values()) tunnel.link.heartbeat();
  }
}
