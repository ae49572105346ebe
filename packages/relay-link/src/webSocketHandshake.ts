// The opening handshake of the tunnel WebSocket (RFC 6455 §4), both sides.
import { createHash, randomBytes } from "node:crypto";
import { request as httpRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/** `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`. */
export function webSocketAccept(key: string): string {
  return createHash("sha1").update(key + GUID).digest("base64");
}

/** Why an upgrade request is not a WebSocket handshake this server accepts, or undefined. */
export function checkWebSocketRequest(req: IncomingMessage): string | undefined {
  if (req.method !== "GET") return "a WebSocket handshake is a GET";
  if ((req.headers.upgrade ?? "").toLowerCase() !== "websocket") return "Upgrade: websocket expected";
  if (req.headers["sec-websocket-version"] !== "13") return "Sec-WebSocket-Version: 13 expected";
  const key = req.headers["sec-websocket-key"] ?? "";
  if (!/^[A-Za-z0-9+/]{22}==$/.test(key)) return "Sec-WebSocket-Key must be 16 bytes in base64";
  return undefined;
}

/** Completes a checked handshake: writes the 101 answer. No subprotocol or extension is agreed. */
export function acceptWebSocket(req: IncomingMessage, socket: Duplex): void {
  const key = req.headers["sec-websocket-key"] as string;
  socket.write(
    "HTTP/1.1 101 Switching Protocols\r\n" +
      "Upgrade: websocket\r\n" +
      "Connection: Upgrade\r\n" +
      `Sec-WebSocket-Accept: ${webSocketAccept(key)}\r\n\r\n`,
  );
}

/** A dialled WebSocket: its socket and any bytes that arrived with the 101. */
export interface DialledWebSocket {
  socket: Socket;
  head: Buffer;
}

/** The server answered the handshake with something other than 101. */
export class WebSocketRefusedError extends Error {
  constructor(readonly status: number) {
    super(`WebSocket handshake refused with HTTP ${status}`);
  }
}

/**
 * Dials `url` (ws: or wss:) and performs the client handshake. Rejects with
 * `WebSocketRefusedError` when the server answers without upgrading, with a plain Error on
 * network failure, a bad `Sec-WebSocket-Accept`, or no answer within `timeoutMs`.
 */
export function dialWebSocket(url: string, headers: Record<string, string>, timeoutMs: number): Promise<DialledWebSocket> {
  const target = new URL(url);
  const secure = target.protocol === "wss:";
  if (!secure && target.protocol !== "ws:") return Promise.reject(new Error(`not a WebSocket URL: ${target.protocol}`));
  const key = randomBytes(16).toString("base64");
  return new Promise((resolve, reject) => {
    const req = (secure ? httpsRequest : httpRequest)({
      host: target.hostname.replace(/^\[|\]$/g, ""),
      port: target.port || (secure ? 443 : 80),
      path: `${target.pathname}${target.search}`,
      headers: { ...headers, Connection: "Upgrade", Upgrade: "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": key },
      agent: false,
    });
    const timer = setTimeout(() => req.destroy(new Error(`no WebSocket handshake within ${timeoutMs} ms`)), timeoutMs);
    const settle = (err: Error | undefined, value?: DialledWebSocket): void => {
      clearTimeout(timer);
      if (err) reject(err);
      else resolve(value as DialledWebSocket);
    };
    req.on("error", (err) => settle(err));
    req.on("response", (res) => {
      res.resume();
      req.destroy();
      settle(new WebSocketRefusedError(res.statusCode ?? 0));
    });
    req.on("upgrade", (res, socket, head) => {
      if (res.headers["sec-websocket-accept"] !== webSocketAccept(key) || (res.headers.upgrade ?? "").toLowerCase() !== "websocket") {
        socket.destroy();
        return settle(new Error("the server's WebSocket handshake answer is invalid"));
      }
      if (res.headers["sec-websocket-extensions"] || res.headers["sec-websocket-protocol"]) {
        socket.destroy();
        return settle(new Error("the server agreed to an extension or subprotocol nobody asked for"));
      }
      settle(undefined, { socket, head });
    });
    req.end();
  });
}
