import type { IncomingMessage, ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import { RELAY_COOKIE_NAME, RunitError, toRunitError } from "@runit/protocol";
import { TunnelStreamError } from "@runit/relay-link";
import { writeJsonError } from "../httpErrors.js";
import { rawResponseHead, writeRawError } from "./rawHttp.js";
import { MalformedResponseError, type JupyterConnection, type JupyterExchange } from "./jupyterConnections.js";
import { readCookie, responseHeadersForRenter, upstreamRequest, withoutHeader } from "./relayHeaders.js";
import type { RelayMeter } from "./relayMeter.js";
import type { TunnelHub } from "./tunnelHub.js";
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
    const method = req.method ?? "GET";
    const request = upstreamRequest(method, url, req.rawHeaders, tunnel.upstream, false);
    if (!request) return sendError(res, new RunitError("INVALID_BODY", "A request header could not be relayed"));
    const wait = this.answerTimer(sessionId);
    const exchange: JupyterExchange = {
      method,
      upgrade: false,
      sink: res,
      head: (status, statusMessage, rawHeaders) => {
        wait.stop();
        try {
          res.writeHead(status, statusMessage, responseHeadersForRenter(rawHeaders, status));
          return true;
        } catch (err) {
          // Defence in depth: llhttp already refuses what writeHead would refuse.
          sendError(res, new RunitError("TUNNEL_UNAVAILABLE", `Jupyter sent an unusable response head (${(err as Error).message})`));
          return false;
        }
      },
      body: (chunk) => res.write(chunk),
      end: () => void res.end(),
      upgraded: (_message, _headers, stream) => stream.destroy(), // never: not an upgrade request
      fail: (err) => {
        wait.stop();
        sendError(res, relayError(err));
      },
    };
    let connection: JupyterConnection | undefined;
    const withdraw = tunnel.pool.acquire((acquired) => {
      if (acquired instanceof Error) return exchange.fail(acquired);
      connection = acquired;
      acquired.send(exchange, request.head, request.body, req, () => wait.start(acquired, exchange));
    });
    // The renter went away: stop waiting, or stop reading Jupyter's answer (no-op once it is done).
    res.on("close", () => {
      wait.stop();
      withdraw();
      connection?.cancel(exchange);
    });
  }

  private relayUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer, sessionId: string, url: string): void {
    const tunnel = this.hub.tunnelFor(sessionId);
    const request = tunnel && upstreamRequest("GET", url, req.rawHeaders, tunnel.upstream, true);
    if (!tunnel || !request) {
      const error = tunnel ? new RunitError("INVALID_BODY", "A request header could not be relayed") : new RunitError("TUNNEL_UNAVAILABLE");
      return writeRawError(socket, error.status, error.toBody());
    }
    this.meter.touch(sessionId);
    const wait = this.answerTimer(sessionId);
    let answered = false;
    let connection: JupyterConnection | undefined;
    const exchange: JupyterExchange = {
      method: "GET",
      upgrade: true,
      sink: socket,
      // A refused upgrade: relayed as Jupyter's status and body, delimited by closing the connection.
      head: (status, statusMessage, rawHeaders) => {
        wait.stop();
        answered = true;
        const headers = withoutHeader(responseHeadersForRenter(rawHeaders, status), "content-length");
        socket.write(rawResponseHead(status, statusMessage, [...headers, "Connection", "close"]));
        return true;
      },
      body: (chunk) => socket.write(chunk),
      end: () => void socket.end(),
      upgraded: (statusMessage, rawHeaders, jupyter, jupyterHead) => {
        wait.stop();
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
        wait.stop();
        if (answered) return void socket.destroy();
        const error = relayError(err);
        writeRawError(socket, error.status, error.toBody());
      },
    };
    const withdraw = tunnel.pool.acquire((acquired) => {
      if (acquired instanceof Error) return exchange.fail(acquired);
      connection = acquired;
      acquired.send(exchange, request.head, "none", req, () => wait.start(acquired, exchange));
    });
    socket.on("close", () => {
      wait.stop();
      withdraw();
      connection?.cancel(exchange); // a no-op once the stream is handed over or the answer is done
    });
  }

  /**
   * Gives Jupyter `responseTimeoutMs` from the moment the whole request is sent to start its
   * answer; past that the connection is closed (the agent is told to drop its Jupyter connection,
   * so it never carries another request) and the renter gets 504. Once the head has arrived the
   * body may take any time: downloads and kernel WebSockets are long by nature. Waiting for a
   * free pooled connection does not count.
   */
  private answerTimer(sessionId: string): { start(connection: JupyterConnection, exchange: JupyterExchange): void; stop(): void } {
    let timer: NodeJS.Timeout | undefined;
    let stopped = false;
    return {
      start: (connection, exchange) => {
        if (stopped) return;
        timer = setTimeout(() => {
          this.ctx.logger.warn(`[relay] Jupyter did not answer within ${this.responseTimeoutMs} ms: ${sessionId}`);
          connection.abort(new ResponseTimeoutError(this.responseTimeoutMs), exchange);
        }, this.responseTimeoutMs);
      },
      stop: () => {
        stopped = true;
        clearTimeout(timer);
      },
    };
  }
}

/** What a renter sees when its request to Jupyter failed before the response started. */
function relayError(err: Error): RunitError {
  if (err instanceof ResponseTimeoutError) return new RunitError("UPSTREAM_TIMEOUT");
  if (err instanceof TunnelStreamError && err.code === "BANDWIDTH_EXCEEDED") return new RunitError("BANDWIDTH_EXCEEDED");
  const why = err instanceof TunnelStreamError || err instanceof MalformedResponseError ? err.message : "connection to Jupyter lost";
  return new RunitError("TUNNEL_UNAVAILABLE", `${new RunitError("TUNNEL_UNAVAILABLE").message} (${why})`);
}

function sendError(res: ServerResponse, error: RunitError): void {
  if (res.headersSent) return void res.destroy();
  writeJsonError(res, error);
}
