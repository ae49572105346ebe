import type { IncomingMessage, ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import {
  RELAY_COOKIE_NAME,
  RunitError,
  toRunitError,
  type ErrorBody,
  type TunnelErrorCode,
} from "@runit/protocol";
import { rawResponseHead, writeRawError } from "./rawHttp.js";
import { readCookie, requestHeadersForTunnel, responseHeadersForRenter } from "./relayHeaders.js";
import type { RelayMeter } from "./relayMeter.js";
import type { TunnelHub } from "./tunnelHub.js";
import type { TunnelStream } from "@runit/relay-link";
import type { RelayContext } from "./types.js";

const SESSION_PATH = /^\/s\/([^/?#]+)(\/[^?#]*)?(\?.*)?$/;

/** The renter's side of the relay: authorizes `/s/<id>/...` and carries it over the session's tunnel. */
export class RenterRelay {
  constructor(
    private readonly ctx: RelayContext,
    private readonly hub: TunnelHub,
    private readonly meter: RelayMeter,
    private readonly windowBytes: number,
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

  private openStream(req: IncomingMessage, sessionId: string, url: string, upgrade: boolean): TunnelStream {
    const link = this.hub.linkFor(sessionId);
    if (!link) throw new RunitError("TUNNEL_UNAVAILABLE");
    const stream = link.createStream(this.windowBytes, {
      onSent: (bytes) => this.meter.addRx(sessionId, bytes),
      onReceived: (bytes) => this.meter.addTx(sessionId, bytes),
    });
    if (!stream) throw new RunitError("TUNNEL_UNAVAILABLE", "Too many open requests on this session");
    this.meter.touch(sessionId);
    link.send({
      type: "open",
      streamId: stream.id,
      method: (req.method ?? "GET").toUpperCase(),
      path: url,
      headers: requestHeadersForTunnel(req.rawHeaders, upgrade),
      upgrade,
      window: this.windowBytes,
    });
    stream.setPeerWindow(this.windowBytes);
    return stream;
  }

  private relayHttp(req: IncomingMessage, res: ServerResponse, sessionId: string, url: string): void {
    let stream: TunnelStream;
    try {
      stream = this.openStream(req, sessionId, url, false);
    } catch (err) {
      return sendError(res, toRunitError(err));
    }
    stream.onAbort((code, message) => {
      if (!res.headersSent) sendError(res, abortError(code, message));
      else res.destroy();
    });
    res.on("close", () => {
      if (!res.writableFinished) stream.abort("CLIENT_GONE", "renter went away");
    });
    stream.onResponse((frame) => {
      try {
        res.statusCode = frame.status;
        if (frame.statusMessage) res.statusMessage = frame.statusMessage;
        for (const [name, value] of responseHeadersForRenter(frame.headers, frame.status)) res.appendHeader(name, value);
      } catch (err) {
        // Defence in depth: the frame schema already refuses what Node would refuse here.
        for (const name of res.getHeaderNames()) res.removeHeader(name);
        return stream.abort("BAD_FRAME", `unusable response head: ${(err as Error).message}`);
      }
      stream.attachSink(res);
    });
    stream.attachSource(req);
  }

  private relayUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer, sessionId: string, url: string): void {
    let stream: TunnelStream;
    try {
      stream = this.openStream(req, sessionId, url, true);
    } catch (err) {
      const error = toRunitError(err);
      return writeRawError(socket, error.status, error.toBody());
    }
    let answered = false;
    stream.onAbort((code, message) => {
      if (!answered) return writeRawError(socket, 502, abortError(code, message).toBody());
      socket.destroy();
    });
    socket.on("close", () => stream.abort("CLIENT_GONE", "renter went away"));
    stream.onResponse((frame) => {
      answered = true;
      let headers = responseHeadersForRenter(frame.headers, frame.status);
      if (frame.status !== 101) {
        // A refused upgrade: the body is delimited by closing the connection.
        headers = headers.filter(([name]) => name.toLowerCase() !== "content-length");
        headers.push(["Connection", "close"]);
      }
      socket.write(rawResponseHead(frame.status, frame.statusMessage, headers));
      stream.attachSink(socket);
      if (frame.status === 101) stream.attachSource(socket, head);
      else stream.endLocal();
    });
  }
}

/** What a renter sees when a stream dies before its response started. */
function abortError(code: TunnelErrorCode, message: string): RunitError {
  if (code === "BANDWIDTH_EXCEEDED") return new RunitError("BANDWIDTH_EXCEEDED");
  return new RunitError("TUNNEL_UNAVAILABLE", `${new RunitError("TUNNEL_UNAVAILABLE").message} (${message})`);
}

function sendError(res: ServerResponse, error: RunitError): void {
  if (res.headersSent) return void res.destroy();
  const body: ErrorBody = error.toBody();
  res
    .writeHead(error.status, { "Content-Type": "application/json; charset=utf-8", "X-Content-Type-Options": "nosniff" })
    .end(JSON.stringify(body));
}
