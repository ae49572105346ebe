import { STATUS_CODES } from "node:http";
import type { Duplex } from "node:stream";
import type { HeaderList } from "@runit/protocol";

/** Writes a JSON error response on a raw socket (an upgrade we refuse) and closes it. */
export function writeRawError(socket: Duplex, status: number, body: unknown): void {
  const json = JSON.stringify(body);
  if (socket.writable) {
    socket.end(
      `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? "Error"}\r\n` +
        "Content-Type: application/json; charset=utf-8\r\n" +
        `Content-Length: ${Buffer.byteLength(json)}\r\n` +
        "Connection: close\r\n\r\n" +
        json,
    );
  }
  // Give the peer a moment to read the answer, then free the socket whatever it does.
  setTimeout(() => socket.destroy(), 1000).unref();
}

/** The status line and headers of a response written on a raw socket (upgrades). */
export function rawResponseHead(status: number, statusMessage: string | undefined, headers: HeaderList): string {
  const lines = [`HTTP/1.1 ${status} ${statusMessage ?? STATUS_CODES[status] ?? ""}`];
  for (const [name, value] of headers) lines.push(`${name}: ${value.replace(/[\r\n]/g, "")}`);
  return `${lines.join("\r\n")}\r\n\r\n`;
}
