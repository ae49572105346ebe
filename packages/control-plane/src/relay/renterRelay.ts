import type { IncomingMessage, ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import { RELAY_COOKIE_NAME, RunitError, toRunitError } from "@runit/protocol";
import { TunnelStreamError } from "@runit/relay-link";
import { writeJsonError } from "../httpErrors.js";
import { foreignRelayRequest } from "../originPolicy.js";
import { rawResponseHead, writeRawError } from "./rawHttp.js";
import { MalformedResponseError, ResponseTimeoutError, type JupyterExchange } from "./jupyterConnections.js";
import { readCookies, responseHeadersForRenter, upstreamRequest, withoutHeader } from "./relayHeaders.js";
import type { RelayMeter } from "./relayMeter.js";
import type { TunnelHub } from "./tunnelHub.js";
import type { RelayContext } from "./types.js";

const SESSION_PATH = /^\/s\/([^/?#]+)(\/[^?#]*)?(\?.*)?$/;

/**
 * The renter's side of the relay: authorizes every `/s/<id>/...` request and upgrade (cookie +
 * locking IP) and sends it to the session's Jupyter over the connection pool of the session's
 * tunnel (`JupyterPool`), streaming the answer back.
 */
export class RenterRelay {
  constructor(
    private readonly ctx: RelayContext,
    private readonly hub: TunnelHub,
    private readonly meter: RelayMeter,
    private readonly responseTimeoutMs: number,
  ) {}

  /**
   * True when `url` is a session path the relay can serve straight from the server's 'request'
   * listener, ahead of Express. Anything else (a segment Express would refuse as a bad escape,
   * `/S/...`, `/s//...`) still goes through Express and its mount at `/s/:sessionId`.
   */
  claims(url: string): boolean {
    if (!url.startsWith("/s/")) return false;
    const match = SESSION_PATH.exec(url);
    if (!match) return false;
    try {
      decodeURIComponent(match[1] as string); // Express answers 400 for a malformed escape
      return true;
    } catch {
      return false;
    }
  }

  /** Relays one HTTP request (Express handler mounted at `/s/:sessionId`, or the fast path). */
  handleHttp(req: IncomingMessage & { originalUrl?: string }, res: ServerResponse): void {
    const url = req.originalUrl ?? req.url ?? "/";
    const match = SESSION_PATH.exec(url);
    if (!match) return sendError(res, new RunitError("NOT_FOUND"));
    const sessionId = match[1] as string; // a UUID: never decoded (a bad escape must not throw)
    if (match[2] === undefined) {
      res.writeHead(308, { Location: `/s/${match[1]}/${match[3] ?? ""}` }).end();
      return;
    }
    const denied = this.authorize(req, sessionId, false);
    if (denied) return sendError(res, denied);
    // A service worker registered from a session's page would live on the control plane's
    // origin after the session; its script is never fetched through the relay.
    if (req.headers["service-worker"] !== undefined) return sendError(res, new RunitError("NOT_FOUND", "Service workers are not relayed"));
    this.relayHttp(req, res, sessionId, url);
  }

  /** Relays a WebSocket upgrade of `/s/<id>/...`; false when the path is not a session path. */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): boolean {
    const url = req.url ?? "/";
    const match = SESSION_PATH.exec(url);
    if (!match || match[2] === undefined) return false;
    socket.on("error", () => socket.destroy());
    if ((req.headers.upgrade ?? "").toLowerCase() !== "websocket") {
      writeRawError(socket, 400, new RunitError("INVALID_BODY", "Only WebSocket upgrades are relayed").toBody());
      return true;
    }
    const sessionId = match[1] as string; // a UUID: never decoded (a bad escape must not throw)
    const denied = this.authorize(req, sessionId, true);
    if (denied) writeRawError(socket, denied.status, denied.toBody());
    else this.relayUpgrade(req, socket, head, sessionId, url);
    return true;
  }

  /**
   * Another site's or origin's request is refused first (`foreignRelayRequest`), then the lock
   * check (cookie + locking IP), whose refusals the store logs. Undefined = allowed.
   */
  private authorize(req: IncomingMessage, sessionId: string, upgrade: boolean): RunitError | undefined {
    const ip = this.ctx.clientIp(req);
    const foreign = foreignRelayRequest(req.method ?? "GET", req.headers, upgrade, this.ctx.originAllowed);
    if (foreign) {
      const origin = req.headers.origin?.slice(0, 200);
      this.ctx.securityLog("CORS_ORIGIN_DENIED", { sessionId, ip, reason: foreign, origin, method: req.method, upgrade });
      return new RunitError("CORS_ORIGIN_DENIED");
    }
    // Every runit_access cookie sent counts: one planted with a longer path comes first.
    const tokens = readCookies(req.headers.cookie, RELAY_COOKIE_NAME);
    let refusal: RunitError | undefined;
    try {
      for (const token of tokens.length > 0 ? tokens : [undefined]) {
        const answer = this.ctx.sessions.authorizeRelay(sessionId, token, ip);
        if (answer.ok) return undefined;
        refusal = answer.error;
      }
      return refusal;
    } catch (err) {
      return toRunitError(err);
    }
  }

  private relayHttp(req: IncomingMessage, res: ServerResponse, sessionId: string, url: string): void {
    const tunnel = this.hub.tunnelFor(sessionId);
    if (!tunnel) return sendError(res, new RunitError("TUNNEL_UNAVAILABLE"));
    this.meter.touch(sessionId);
    const method = req.method ?? "GET";
    const request = upstreamRequest(method, url, req.rawHeaders, tunnel.upstream, false);
    if (!request) return sendError(res, new RunitError("INVALID_BODY", "A request header could not be relayed"));
    const exchange: JupyterExchange = {
      method,
      sink: res,
      head: (status, statusMessage, rawHeaders) => {
        try {
          res.writeHead(status, statusMessage, responseHeadersForRenter(rawHeaders, status));
          return true;
        } catch (err) {
          // Defence in depth: llhttp already refuses what writeHead would refuse.
          sendError(res, new RunitError("TUNNEL_UNAVAILABLE", `Jupyter sent an unusable response head (${(err as Error).message})`));
          return false;
        }
      },
      fail: (err) => sendError(res, this.relayError(sessionId, err)),
    };
    res.on("close", tunnel.pool.send(exchange, request, req, this.responseTimeoutMs));
  }

  private relayUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer, sessionId: string, url: string): void {
    const tunnel = this.hub.tunnelFor(sessionId);
    const request = tunnel && upstreamRequest("GET", url, req.rawHeaders, tunnel.upstream, true);
    if (!tunnel || !request) {
      const error = tunnel ? new RunitError("INVALID_BODY", "A request header could not be relayed") : new RunitError("TUNNEL_UNAVAILABLE");
      return writeRawError(socket, error.status, error.toBody());
    }
    this.meter.touch(sessionId);
    let answered = false;
    const exchange: JupyterExchange = {
      method: "GET",
      sink: socket,
      // A refused upgrade: relayed as Jupyter's status and body, delimited by closing the connection.
      head: (status, statusMessage, rawHeaders) => {
        answered = true;
        const headers = withoutHeader(responseHeadersForRenter(rawHeaders, status), "content-length");
        socket.write(rawResponseHead(status, statusMessage, [...headers, "Connection", "close"]));
        return true;
      },
      upgraded: (statusMessage, rawHeaders, jupyter, jupyterHead) => {
        answered = true;
        socket.write(rawResponseHead(101, statusMessage, responseHeadersForRenter(rawHeaders, 101)));
        if (jupyterHead.length > 0) socket.write(jupyterHead);
        if (head.length > 0) jupyter.write(head);
        jupyter.on("error", () => socket.destroy());
        jupyter.on("close", () => socket.destroy());
        socket.on("error", () => jupyter.destroy());
        socket.on("close", () => jupyter.destroy());
        jupyter.pipe(socket);
        socket.pipe(jupyter);
      },
      fail: (err) => {
        if (answered) return void socket.destroy();
        const error = this.relayError(sessionId, err);
        writeRawError(socket, error.status, error.toBody());
      },
    };
    socket.on("close", tunnel.pool.send(exchange, request, req, this.responseTimeoutMs));
  }

  /** What a renter sees when its request to Jupyter failed before the response started. */
  private relayError(sessionId: string, err: Error): RunitError {
    if (err instanceof ResponseTimeoutError) {
      this.ctx.logger.warn(`[relay] Jupyter did not answer within ${err.ms} ms: ${sessionId}`);
      return new RunitError("UPSTREAM_TIMEOUT");
    }
    if (err instanceof TunnelStreamError && err.code === "BANDWIDTH_EXCEEDED") return new RunitError("BANDWIDTH_EXCEEDED");
    const why = err instanceof TunnelStreamError || err instanceof MalformedResponseError ? err.message : "connection to Jupyter lost";
    return new RunitError("TUNNEL_UNAVAILABLE", `${new RunitError("TUNNEL_UNAVAILABLE").message} (${why})`);
  }
}

function sendError(res: ServerResponse, error: RunitError): void {
  if (res.headersSent) return void res.destroy();
  writeJsonError(res, error);
}
