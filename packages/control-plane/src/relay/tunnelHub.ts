import type { IncomingMessage } from "node:http";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import { WebSocketServer, type WebSocket } from "ws";
import {
  MAX_CONTROL_FRAME_BYTES,
  PROTOCOL_VERSION,
  TUNNEL_CLOSE_REPLACED,
  TUNNEL_CLOSE_SESSION_ENDED,
  maskSecret,
  RunitError,
  toRunitError,
  type TunnelErrorCode,
} from "@runit/protocol";
import { TunnelLink } from "@runit/relay-link";
import { writeRawError } from "./rawHttp.js";
import type { RelayContext } from "./types.js";

interface AgentTunnel {
  link: TunnelLink;
  ws: WebSocket;
  alive: boolean;
}

/**
 * The agents' side of the relay: accepts `GET /agent/tunnel` upgrades authenticated by the
 * session secret, keeps one tunnel per session (a newer one replaces an older one), pings them,
 * and tells the store when a session's tunnel comes and goes.
 */
export class TunnelHub {
  private readonly tunnels = new Map<string, AgentTunnel>();
  private readonly wss = new WebSocketServer({
    noServer: true,
    maxPayload: MAX_CONTROL_FRAME_BYTES,
    perMessageDeflate: false,
  });
  private readonly pingTimer: NodeJS.Timeout;

  constructor(
    private readonly ctx: RelayContext,
    pingIntervalMs: number,
  ) {
    this.pingTimer = setInterval(() => this.pingAll(), pingIntervalMs);
    this.pingTimer.unref();
  }

  /** The live tunnel link of a session, if its agent is connected. */
  linkFor(sessionId: string): TunnelLink | undefined {
    const tunnel = this.tunnels.get(sessionId);
    return tunnel?.link.isOpen ? tunnel.link : undefined;
  }

  /** Number of connected tunnels and live streams. */
  counts(): { tunnels: number; streams: number } {
    let streams = 0;
    for (const tunnel of this.tunnels.values()) streams += tunnel.link.size;
    return { tunnels: this.tunnels.size, streams };
  }

  /** Handles an upgrade of `/agent/tunnel`. */
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
    const { sessionId } = found;
    this.wss.handleUpgrade(req, socket, head, (ws) => this.register(sessionId, ws, socket as Socket));
  }

  /** Ends a session's tunnel and streams (session ended, cap reached). */
  endSession(sessionId: string, code: TunnelErrorCode, message: string): void {
    const tunnel = this.tunnels.get(sessionId);
    if (!tunnel) return;
    this.tunnels.delete(sessionId);
    tunnel.link.abortAll(code, message);
    tunnel.ws.close(TUNNEL_CLOSE_SESSION_ENDED, code);
  }

  /** Aborts the live streams of a session without closing its tunnel. */
  abortStreams(sessionId: string, code: TunnelErrorCode, message: string): void {
    this.tunnels.get(sessionId)?.link.abortAll(code, message);
  }

  /** Closes every tunnel. */
  async close(): Promise<void> {
    clearInterval(this.pingTimer);
    for (const [sessionId, tunnel] of this.tunnels) {
      this.tunnels.delete(sessionId);
      tunnel.ws.terminate();
    }
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
  }

  private register(sessionId: string, ws: WebSocket, socket: Socket): void {
    const previous = this.tunnels.get(sessionId);
    if (previous) {
      this.tunnels.delete(sessionId);
      previous.ws.close(TUNNEL_CLOSE_REPLACED, "replaced by a newer tunnel");
    }
    const tunnel: AgentTunnel = {
      ws,
      alive: true,
      link: new TunnelLink(ws, {
        onPeerError: (code, message) => this.ctx.logger.warn(`[relay] agent of ${sessionId} refused a frame: ${code} ${message}`),
      }, socket),
    };
    this.tunnels.set(sessionId, tunnel);
    ws.on("pong", () => (tunnel.alive = true));
    ws.on("message", () => (tunnel.alive = true));
    ws.on("error", () => ws.terminate());
    ws.on("close", () => {
      if (this.tunnels.get(sessionId) !== tunnel) return;
      this.tunnels.delete(sessionId);
      this.ctx.logger.info(`[relay] tunnel down: ${sessionId}`);
      this.report(sessionId, false);
    });
    tunnel.link.send({ type: "welcome", sessionId, protocolVersion: PROTOCOL_VERSION });
    this.ctx.logger.info(`[relay] tunnel up: ${sessionId}`);
    this.report(sessionId, true);
  }

  private report(sessionId: string, connected: boolean): void {
    try {
      this.ctx.sessions.setTunnelConnected(sessionId, connected);
    } catch (err) {
      this.ctx.logger.warn(`[relay] could not mark ${sessionId} tunnel=${connected}: ${toRunitError(err).message}`);
    }
  }

  private pingAll(): void {
    for (const tunnel of this.tunnels.values()) {
      if (!tunnel.alive) {
        tunnel.ws.terminate();
        continue;
      }
      tunnel.alive = false;
      tunnel.ws.ping();
    }
  }
}
