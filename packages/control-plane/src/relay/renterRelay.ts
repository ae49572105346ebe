import { request, type ClientRequest, type IncomingMessage, type ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import { RELAY_COOKIE_NAME, RunitError, toRunitError } from "@runit/protocol";
import { TunnelStreamError } from "@runit/relay-link";
import { writeJsonError } from "../httpErrors.js";
import { rawResponseHead, writeRawError } from "./rawHttp.js";
import { readCookie, responseHeadersForRenter, upstreamRequestHeaders, withoutHeader } from "./relayHeaders.js";
import type { RelayMeter } from "./relayMeter.js";
import type { LiveTunnel, TunnelHub } from "./tunnelHub.js";
import type { RelayContext } from "./types.js";

const SESSION_PATH = /^\/s\/([^/?#]+)(\/[^?#]*)?(\?.*)?$/;

/** Jupyter did not start its answer within the relay's response timeout. */
class ResponseTimeoutError extends Error {
  constructor(ms: number) {
    super(`Jupyter did not answer within ${ms} ms`);
    this.name = "ResponseTimeoutError";
  }
}

/**
 * The renter's side of the relay: authorizes every `/s/<id>/...` request and upgrade (cookie +
 * locking IP) and sends it with Node's HTTP client to the session's Jupyter, over the connection
 * pool of the session's tunnel (`TunnelHub`).
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
    const denied = this.authorize(req, sessionId);
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
    const denied = this.authorize(req, sessionId);
    if (denied) writeRawError(socket, denied.status, denied.toBody());
    else this.relayUpgrade(req, socket, head, sessionId, url);
    return true;
  }

  /** The lock check (cookie + locking IP); the store logs every refusal. Undefined = allowed. */
  private authorize(req: IncomingMessage, sessionId: string): RunitError | undefined {
    const ip = this.ctx.clientIp(req);
    const token = readCookie(req.headers.cookie, RELAY_COOKIE_NAME);
    try {
      const answer = this.ctx.sessions.authorizeRelay(sessionId, token, ip);
      return answer.ok ? undefined : answer.error;
    } catch (err) {
      return toRunitError(err);
    }
  }

  private relayHttp(req: IncomingMessage, res: ServerResponse, sessionId: string, url: string): void {
    const tunnel = this.hub.tunnelFor(sessionId);
    if (!tunnel) return sendError(res, new RunitError("TUNNEL_UNAVAILABLE"));
    this.meter.touch(sessionId);
    const upstream = this.upstreamRequest(tunnel, req.method ?? "GET", url, req.rawHeaders, false);
    this.limitWaitForAnswer(upstream, sessionId);
    upstream.on("error", (err) => {
      if (!res.headersSent) sendError(res, relayError(err));
      else res.destroy();
    });
    res.on("close", () => {
      if (!res.writableFinished) upstream.destroy();
    });
    upstream.on("response", (answer) => {
      answer.on("aborted", () => res.destroy());
      answer.on("error", () => res.destroy());
      const status = answer.statusCode ?? 502;
      try {
        res.writeHead(status, answer.statusMessage, responseHeadersForRenter(answer.rawHeaders, status));
      } catch (err) {
        // Defence in depth: Node's parser already refuses what writeHead would refuse.
        answer.destroy();
        return sendError(res, new RunitError("TUNNEL_UNAVAILABLE", `Jupyter sent an unusable response head (${(err as Error).message})`));
      }
      answer.pipe(res);
    });
    req.pipe(upstream);
  }

  private relayUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer, sessionId: string, url: string): void {
    const tunnel = this.hub.tunnelFor(sessionId);
    if (!tunnel) {
      const error = new RunitError("TUNNEL_UNAVAILABLE");
      return writeRawError(socket, error.status, error.toBody());
    }
    this.meter.touch(sessionId);
    const upstream = this.upstreamRequest(tunnel, "GET", url, req.rawHeaders, true);
    this.limitWaitForAnswer(upstream, sessionId);
    let answered = false;
    upstream.on("error", (err) => {
      if (answered) return socket.destroy();
      const error = relayError(err);
      writeRawError(socket, error.status, error.toBody());
    });
    socket.on("close", () => upstream.destroy());
    upstream.on("upgrade", (answer, jupyter, jupyterHead) => {
      answered = true;
      jupyter.setTimeout(0); // the pool's idle limit was for pooled HTTP connections
      socket.write(rawResponseHead(101, answer.statusMessage, responseHeadersForRenter(answer.rawHeaders, 101)));
      if (jupyterHead.length > 0) socket.write(jupyterHead);
      if (head.length > 0) jupyter.write(head);
      jupyter.on("error", () => socket.destroy());
      jupyter.on("close", () => socket.destroy());
      socket.on("error", () => jupyter.destroy());
      socket.on("close", () => jupyter.destroy());
      jupyter.pipe(socket);
      socket.pipe(jupyter);
    });
    upstream.on("response", (answer) => {
      // A refused upgrade: relayed as Jupyter's status and body, delimited by closing the connection.
      answered = true;
      const status = answer.statusCode ?? 502;
      const headers = withoutHeader(responseHeadersForRenter(answer.rawHeaders, status), "content-length");
      socket.write(rawResponseHead(status, answer.statusMessage, [...headers, "Connection", "close"]));
      answer.on("error", () => socket.destroy());
      answer.pipe(socket);
    });
    upstream.end();
  }

  /**
   * Gives Jupyter `responseTimeoutMs` from the moment the whole request is sent to start its
   * answer; past that the request, and with it the pooled connection, is destroyed (the agent is
   * told to drop its Jupyter connection) and the renter gets 504. Once the head has arrived the
   * body may take any time: downloads and kernel WebSockets are long by nature.
   */
  private limitWaitForAnswer(upstream: ClientRequest, sessionId: string): void {
    let timer: NodeJS.Timeout | undefined;
    const start = (): void => {
      timer = setTimeout(() => {
        this.ctx.logger.warn(`[relay] Jupyter did not answer within ${this.responseTimeoutMs} ms: ${sessionId}`);
        upstream.destroy(new ResponseTimeoutError(this.responseTimeoutMs));
      }, this.responseTimeoutMs);
    };
    const stop = (): void => {
      clearTimeout(timer);
      upstream.off("finish", start);
    };
    upstream.once("finish", start);
    upstream.once("response", stop);
    upstream.once("upgrade", stop);
    upstream.once("close", stop);
  }

  /** An HTTP request to the session's Jupyter over the tunnel's connection pool. */
  private upstreamRequest(tunnel: LiveTunnel, method: string, url: string, rawHeaders: string[], upgrade: boolean): ClientRequest {
    return request({
      agent: tunnel.pool,
      host: "127.0.0.1",
      port: tunnel.upstream.port,
      method,
      path: url,
      headers: upstreamRequestHeaders(rawHeaders, tunnel.upstream, upgrade),
      setHost: false,
    });
  }
}

/** What a renter sees when its request to Jupyter failed before the response started. */
function relayError(err: Error): RunitError {
  if (err instanceof ResponseTimeoutError) return new RunitError("UPSTREAM_TIMEOUT");
  if (err instanceof TunnelStreamError && err.code === "BANDWIDTH_EXCEEDED") return new RunitError("BANDWIDTH_EXCEEDED");
  const why = err instanceof TunnelStreamError ? err.message : "connection to Jupyter lost";
  return new RunitError("TUNNEL_UNAVAILABLE", `${new RunitError("TUNNEL_UNAVAILABLE").message} (${why})`);
}

function sendError(res: ServerResponse, error: RunitError): void {
  if (res.headersSent) return void res.destroy();
  writeJsonError(res, error);
}
