import { Agent, request, type ClientRequest, type IncomingMessage } from "node:http";
import type { Socket } from "node:net";
import type { HeaderList, OpenFrame } from "@runit/protocol";
import { HOP_BY_HOP_HEADERS, type TunnelLink, type TunnelStream } from "@runit/relay-link";

/** Where relayed requests go: the session's Jupyter on 127.0.0.1. */
export interface UpstreamTarget {
  port: number;
  /** Jupyter's token; sent as `Authorization: token …`, never towards the renter. */
  token: string;
  /** Only paths under this prefix (`/s/<id>/`) are forwarded. */
  basePath: string;
  /** Largest stream window the agent accepts from the control plane. */
  maxWindowBytes: number;
}

/** Byte counters of the relayed traffic (rx: renter → Jupyter, tx: Jupyter → renter). */
export interface UpstreamCounters {
  rxBytes: number;
  txBytes: number;
  lastActivity: number;
}

/**
 * Jupyter's request headers: the renter's credentials removed (defence in depth; the control
 * plane strips them too), the agent's own token added, and Host/Origin set to Jupyter's address
 * so its same-origin checks pass. Cross-site requests are stopped earlier: the relay cookie is
 * SameSite=Strict and bound to the locking IP.
 */
export function upstreamHeaders(headers: HeaderList, target: UpstreamTarget, upgrade: boolean): string[] {
  const origin = `127.0.0.1:${target.port}`;
  const flat: string[] = [];
  for (const [name, value] of headers) {
    const lower = name.toLowerCase();
    if (lower === "authorization" || lower === "cookie" || lower === "host" || HOP_BY_HOP_HEADERS.has(lower)) continue;
    flat.push(name, lower === "origin" ? `http://${origin}` : value);
  }
  flat.push("Host", origin, "Authorization", `token ${target.token}`);
  if (upgrade) flat.push("Connection", "Upgrade", "Upgrade", "websocket");
  return flat;
}

function responseHeaders(raw: string[], status: number): HeaderList {
  const list: HeaderList = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] as string;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP_HEADERS.has(lower) && !(status === 101 && (lower === "upgrade" || lower === "connection"))) continue;
    list.push([name, raw[i + 1] as string]);
  }
  return list;
}

/** Forwards the streams the control plane opens to Jupyter, one HTTP request each. */
export class RelayUpstream {
  private readonly agent = new Agent({ keepAlive: true, maxSockets: 64 });
  readonly counters: UpstreamCounters = { rxBytes: 0, txBytes: 0, lastActivity: 0 };

  constructor(private readonly target: UpstreamTarget) {}

  /** Handles an `open` frame arriving on `link`. */
  open(link: TunnelLink, frame: OpenFrame): void {
    const refuse = (code: "FORBIDDEN_PATH" | "FLOW_CONTROL" | "TOO_MANY_STREAMS", message: string): void =>
      link.send({ type: "abort", streamId: frame.streamId, code, message });
    if (!frame.path.startsWith(this.target.basePath)) return refuse("FORBIDDEN_PATH", "path outside the session");
    if (frame.window > this.target.maxWindowBytes) return refuse("FLOW_CONTROL", "window too large");
    const stream = link.createStream(
      frame.window,
      {
        onReceived: (bytes) => this.count("rxBytes", bytes),
        onSent: (bytes) => this.count("txBytes", bytes),
      },
      frame.streamId,
    );
    if (!stream) return refuse("TOO_MANY_STREAMS", "too many streams");
    stream.setPeerWindow(frame.window);
    this.counters.lastActivity = Date.now();
    let req: ClientRequest;
    try {
      req = request({
        host: "127.0.0.1",
        port: this.target.port,
        method: frame.method,
        path: frame.path,
        headers: upstreamHeaders(frame.headers, this.target, frame.upgrade),
        agent: this.agent,
      });
    } catch (err) {
      // Defence in depth: the frame schema already refuses what http.request would throw on.
      return stream.abort("BAD_FRAME", `unusable request: ${(err as Error).message}`);
    }
    this.wire(link, stream, req, frame.upgrade);
  }

  /** Closes idle upstream connections. */
  close(): void {
    this.agent.destroy();
  }

  private wire(link: TunnelLink, stream: TunnelStream, req: ClientRequest, upgrade: boolean): void {
    let upstream: IncomingMessage | Socket | undefined;
    stream.onAbort(() => {
      req.destroy();
      upstream?.destroy();
    });
    req.on("error", (err) => stream.abort("UPSTREAM_UNREACHABLE", `Jupyter unreachable: ${err.message}`));
    req.on("response", (res) => {
      upstream = res;
      res.on("error", (err) => stream.abort("UPSTREAM_ERROR", err.message));
      res.on("close", () => {
        if (!res.complete) stream.abort("UPSTREAM_ERROR", "Jupyter closed the response early");
      });
      const status = res.statusCode ?? 502;
      link.send({
        type: "response",
        streamId: stream.id,
        status,
        statusMessage: res.statusMessage,
        headers: responseHeaders(res.rawHeaders, status),
      });
      stream.attachSource(res);
    });
    req.on("upgrade", (res, socket, head) => {
      upstream = socket;
      socket.on("error", () => stream.abort("UPSTREAM_ERROR", "Jupyter WebSocket failed"));
      socket.on("close", () => stream.abort("UPSTREAM_ERROR", "Jupyter closed the WebSocket"));
      stream.attachSink(socket);
      link.send({
        type: "response",
        streamId: stream.id,
        status: 101,
        statusMessage: res.statusMessage,
        headers: responseHeaders(res.rawHeaders, 101),
      });
      stream.attachSource(socket, head);
    });
    if (upgrade) req.end();
    else stream.attachSink(req);
  }

  private count(which: "rxBytes" | "txBytes", bytes: number): void {
    this.counters[which] += bytes;
    this.counters.lastActivity = Date.now();
  }
}
