import { STATUS_CODES } from "node:http";
import type { Duplex } from "node:stream";

/** Writes a JSON error response on a raw socket (an upgrade we refuse) and closes it. */
export function writeRawError(socket: Duplex, status: number, body: unknown): void {
  const json = JSON.stringify(body);
  if (socket.writable) {
    const headers = ["Content-Type", "application/json; charset=utf-8", "Content-Length", String(Buffer.byteLength(json)), "Connection", "close"];
    socket.end(rawResponseHead(status, STATUS_CODES[status] ?? "Error", headers) + json);
  }
  // Give the peer a moment to read the answer, then free the socket whatever it does.
  setTimeout(() => socket.destroy(), 1000).unref();
}

/**
 * The status line and headers (a flat name/value list, as parsed by llhttp) of a
 * response written on a raw socket (upgrades). CR and LF cannot occur in parsed values; they are
 * removed anyway so no value can ever start a header of its own.
 */
export function rawResponseHead(status: number, statusMessage: string | undefined, headers: string[]): string {
  const lines = [`HTTP/1.1 ${status} ${(statusMessage ?? STATUS_CODES[status] ?? "").replace(/[\r\n]/g, "")}`];
  for (let i = 0; i + 1 < headers.length; i += 2) lines.push(`${headers[i]}: ${(headers[i + 1] as string).replace(/[\r\n]/g, "")}`);
  return `${lines.join("\r\n")}\r\n\r\n`;
}
