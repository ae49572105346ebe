// The tunnel's own RFC 6455 framing: the parser byte by byte and against every rule it enforces,
// and both ends against the `ws` package, an independent implementation, over real sockets.
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { WebSocket, WebSocketServer, type RawData } from "ws";
import {
  CLOSE_CODE,
  OPCODE,
  WebSocketReader,
  WebSocketRefusedError,
  acceptWebSocket,
  checkWebSocketRequest,
  closePayload,
  dialWebSocket,
  encodeFrame,
  encodeFrameHeader,
  webSocketAccept,
  type WebSocketReaderHandlers,
} from "../src/index.js";

type Event =
  | { kind: "message"; binary: boolean; bytes: Buffer }
  | { kind: "ping" | "pong"; bytes: Buffer }
  | { kind: "close"; code: number | undefined; reason: string }
  | { kind: "error"; code: number; message: string };

/** A reader that records whole messages and every other event. */
function recorder(expectMasked: boolean, maxMessageBytes = 1 << 20): { reader: WebSocketReader; events: Event[] } {
  const events: Event[] = [];
  let current: { binary: boolean; parts: Buffer[] } | undefined;
  const handlers: WebSocketReaderHandlers = {
    onMessageStart: (binary) => (current = { binary, parts: [] }),
    onMessageData: (bytes) => current?.parts.push(Buffer.from(bytes)),
    onMessageEnd: () => {
      if (current) events.push({ kind: "message", binary: current.binary, bytes: Buffer.concat(current.parts) });
      current = undefined;
    },
    onPing: (bytes) => events.push({ kind: "ping", bytes: Buffer.from(bytes) }),
    onPong: (bytes) => events.push({ kind: "pong", bytes: Buffer.from(bytes) }),
    onClose: (code, reason) => events.push({ kind: "close", code, reason }),
    onProtocolError: (code, message) => events.push({ kind: "error", code, message }),
  };
  return { reader: new WebSocketReader(handlers, expectMasked, maxMessageBytes), events };
}

/** A frame as a client would send it: masked with `mask`, optionally not final. */
function clientFrame(opcode: number, payload: Buffer, mask = Buffer.from([0x12, 0x34, 0x56, 0x78]), fin = true): Buffer {
  const { header, at } = encodeFrameHeader(opcode, payload.length, true);
  if (!fin) header[0] = (header[0] as number) & 0x7f;
  mask.copy(header, at - 4);
  const masked = Buffer.from(payload);
  for (let i = 0; i < masked.length; i++) masked[i] = (masked[i] as number) ^ (mask[i & 3] as number);
  return Buffer.concat([header, masked]);
}

describe("WebSocketReader", () => {
  it("decodes text, binary, ping and close frames fed one byte at a time, unmasking any key", () => {
    const big = Buffer.alloc(70_000, 7); // 64-bit length
    const medium = Buffer.alloc(300, 3); // 16-bit length
    const stream = Buffer.concat([
      clientFrame(OPCODE.text, Buffer.from("héllo")),
      clientFrame(OPCODE.binary, medium),
      clientFrame(OPCODE.ping, Buffer.from("p")),
      clientFrame(OPCODE.binary, big, Buffer.alloc(4)),
      clientFrame(OPCODE.close, closePayload(1000, "bye")),
    ]);
    const { reader, events } = recorder(true);
    for (let i = 0; i < stream.length; i++) reader.push(stream.subarray(i, i + 1));
    expect(events).toEqual([
      { kind: "message", binary: false, bytes: Buffer.from("héllo") },
      { kind: "message", binary: true, bytes: medium },
      { kind: "ping", bytes: Buffer.from("p") },
      { kind: "message", binary: true, bytes: big },
      { kind: "close", code: 1000, reason: "bye" },
    ]);
  });

  it("reassembles a fragmented message with a control frame between its fragments", () => {
    const { reader, events } = recorder(true);
    reader.push(
      Buffer.concat([
        clientFrame(OPCODE.binary, Buffer.from("ab"), undefined, false),
        clientFrame(OPCODE.ping, Buffer.alloc(0)),
        clientFrame(OPCODE.continuation, Buffer.from("cd"), undefined, false),
        clientFrame(OPCODE.continuation, Buffer.from("e")),
      ]),
    );
    expect(events).toEqual([
      { kind: "ping", bytes: Buffer.alloc(0) },
      { kind: "message", binary: true, bytes: Buffer.from("abcde") },
    ]);
  });

  const violations: Array<[string, Buffer, boolean, number]> = [
    ["an RSV bit", Buffer.from([0xc2, 0x80, 0, 0, 0, 0]), true, CLOSE_CODE.protocolError],
    ["an unknown opcode", Buffer.from([0x83, 0x80, 0, 0, 0, 0]), true, CLOSE_CODE.protocolError],
    ["an unknown control opcode", Buffer.from([0x8b, 0x80, 0, 0, 0, 0]), true, CLOSE_CODE.protocolError],
    ["an unmasked frame from the client", Buffer.from([0x82, 0x00]), true, CLOSE_CODE.protocolError],
    ["a masked frame from the server", Buffer.from([0x82, 0x80, 0, 0, 0, 0]), false, CLOSE_CODE.protocolError],
    ["a fragmented control frame", Buffer.from([0x09, 0x80, 0, 0, 0, 0]), true, CLOSE_CODE.protocolError],
    ["a control frame over 125 bytes", Buffer.concat([Buffer.from([0x89, 0xfe, 0, 126, 0, 0, 0, 0]), Buffer.alloc(126)]), true, CLOSE_CODE.protocolError],
    ["a continuation without a message", Buffer.from([0x80, 0x80, 0, 0, 0, 0]), true, CLOSE_CODE.protocolError],
    ["a new message inside a fragmented one", Buffer.from([0x02, 0x80, 0, 0, 0, 0, 0x82, 0x80, 0, 0, 0, 0]), true, CLOSE_CODE.protocolError],
    ["a 64-bit length beyond 2^53", Buffer.from([0x82, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), true, CLOSE_CODE.tooBig],
    ["a message over the limit", Buffer.from([0x82, 0xfe, 0x04, 0x01, 0, 0, 0, 0]), true, CLOSE_CODE.tooBig],
    ["a close frame with a 1-byte payload", Buffer.from([0x88, 0x81, 0, 0, 0, 0, 0x03]), true, CLOSE_CODE.protocolError],
  ];
  it.each(violations)("fails the connection on %s and ignores what follows", (_name, bytes, expectMasked, code) => {
    const { reader, events } = recorder(expectMasked, 1024);
    reader.push(bytes);
    reader.push(clientFrame(OPCODE.text, Buffer.from("after")));
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ kind: "error", code });
  });

  it("computes the RFC 6455 example accept key", () => {
    expect(webSocketAccept("dGhlIHNhbXBsZSBub25jZQ==")).toBe("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  });
});

const cleanups: Array<() => void | Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** Listens on a free loopback port; cleanup destroys upgraded sockets too (close() waits for them). */
async function listen(server: Server): Promise<number> {
  const upgraded: Socket[] = [];
  server.prependListener("upgrade", (_req: IncomingMessage, socket: Socket) => void upgraded.push(socket));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  cleanups.push(() => {
    for (const socket of upgraded) socket.destroy();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return (server.address() as AddressInfo).port;
}

describe("our server side against the ws client", () => {
  it("refuses requests that are no WebSocket handshake", () => {
    const req = (headers: Record<string, string>, method = "GET") => ({ method, headers }) as unknown as IncomingMessage;
    const good = { upgrade: "websocket", "sec-websocket-version": "13", "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==" };
    expect(checkWebSocketRequest(req(good))).toBeUndefined();
    expect(checkWebSocketRequest(req(good, "POST"))).toMatch(/GET/);
    expect(checkWebSocketRequest(req({ ...good, upgrade: "h2c" }))).toMatch(/Upgrade/);
    expect(checkWebSocketRequest(req({ ...good, "sec-websocket-version": "8" }))).toMatch(/Version/);
    expect(checkWebSocketRequest(req({ ...good, "sec-websocket-key": "short" }))).toMatch(/Key/);
  });

  it("exchanges text, binary (fragmented, 64-bit lengths), ping and close with ws, random masks included", async () => {
    const events: Event[] = [];
    let serverSocket: Socket | undefined;
    const server = createServer();
    server.on("upgrade", (req: IncomingMessage, socket: Socket, head: Buffer) => {
      expect(checkWebSocketRequest(req)).toBeUndefined();
      acceptWebSocket(req, socket);
      serverSocket = socket;
      const { reader, events: seen } = recorder(true);
      socket.on("data", (chunk: Buffer) => {
        reader.push(chunk);
        for (const e of seen.splice(0)) {
          events.push(e);
          if (e.kind === "message") socket.write(encodeFrame(e.binary ? OPCODE.binary : OPCODE.text, e.bytes, false)); // echo
          if (e.kind === "ping") socket.write(encodeFrame(OPCODE.pong, e.bytes, false));
          if (e.kind === "close") socket.end(encodeFrame(OPCODE.close, closePayload(e.code ?? 1000, ""), false));
        }
      });
      if (head.length > 0) reader.push(head);
    });
    const port = await listen(server);
    const client = new WebSocket(`ws://127.0.0.1:${port}/`, { perMessageDeflate: false });
    const received: Array<{ data: Buffer; isBinary: boolean }> = [];
    client.on("message", (data: RawData, isBinary: boolean) => received.push({ data: Buffer.from(data as Buffer), isBinary }));
    await new Promise<void>((resolve, reject) => (client.once("open", resolve), client.once("error", reject)));
    const big = Buffer.alloc(200_000).map((_, i) => i % 251);
    client.send("text ✓");
    client.send(big);
    client.send(Buffer.from("frag-"), { fin: false });
    client.send(Buffer.from("ment"), { fin: true });
    const pong = new Promise<Buffer>((resolve) => client.once("pong", resolve));
    client.ping(Buffer.from("are you there"));
    expect((await pong).toString()).toBe("are you there");
    const closed = new Promise<number>((resolve) => client.once("close", resolve));
    while (received.length < 3) await new Promise((r) => setTimeout(r, 10));
    client.close(4321, "done");
    expect(await closed).toBe(4321);
    expect(received).toEqual([
      { data: Buffer.from("text ✓"), isBinary: false },
      { data: big, isBinary: true },
      { data: Buffer.from("frag-ment"), isBinary: true },
    ]);
    expect(events.at(-1)).toEqual({ kind: "close", code: 4321, reason: "done" });
    serverSocket?.destroy();
  });
});

describe("our client side against the ws server", () => {
  it("completes the handshake with the headers given, sends zero-masked frames ws accepts and reads ws's frames", async () => {
    const wss = new WebSocketServer({ port: 0, host: "127.0.0.1", perMessageDeflate: false });
    cleanups.push(() => new Promise<void>((resolve) => wss.close(() => resolve())));
    await new Promise<void>((resolve) => wss.once("listening", resolve));
    const port = (wss.address() as AddressInfo).port;
    const seenAuth: string[] = [];
    const fromUs: Buffer[] = [];
    wss.on("connection", (ws, req) => {
      seenAuth.push(req.headers.authorization ?? "");
      ws.on("message", (data: RawData) => {
        fromUs.push(Buffer.from(data as Buffer));
        ws.send(Buffer.alloc(70_000, 9)); // 64-bit length from the server
        ws.send("x".repeat(500)); // 16-bit length
      });
    });
    const { socket, head } = await dialWebSocket(`ws://127.0.0.1:${port}/agent/tunnel`, { Authorization: "Bearer abc" }, 3000);
    cleanups.push(() => void socket.destroy());
    const { reader, events } = recorder(false);
    if (head.length > 0) reader.push(head);
    socket.on("data", (chunk: Buffer) => reader.push(chunk));
    socket.write(encodeFrame(OPCODE.binary, Buffer.from([1, 2, 3]), true));
    while (events.length < 2) await new Promise((r) => setTimeout(r, 10));
    expect(seenAuth).toEqual(["Bearer abc"]);
    expect(fromUs).toEqual([Buffer.from([1, 2, 3])]);
    expect(events).toEqual([
      { kind: "message", binary: true, bytes: Buffer.alloc(70_000, 9) },
      { kind: "message", binary: false, bytes: Buffer.from("x".repeat(500)) },
    ]);
  });

  it("reports a refused handshake with its HTTP status, and a wrong accept key as an error", async () => {
    const refusing = createServer();
    refusing.on("upgrade", (_req, socket: Socket) => socket.end("HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"));
    const refusingPort = await listen(refusing);
    const refusal = await dialWebSocket(`ws://127.0.0.1:${refusingPort}/`, {}, 3000).catch((err: Error) => err);
    expect(refusal).toBeInstanceOf(WebSocketRefusedError);
    expect((refusal as WebSocketRefusedError).status).toBe(401);

    const lying = createServer();
    lying.on("upgrade", (_req, socket: Socket) =>
      socket.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bm90IHRoZSByaWdodCBrZXk=\r\n\r\n"),
    );
    const lyingPort = await listen(lying);
    await expect(dialWebSocket(`ws://127.0.0.1:${lyingPort}/`, {}, 3000)).rejects.toThrow(/handshake answer is invalid/);

    const silent = createServer();
    silent.on("upgrade", () => undefined);
    const silentPort = await listen(silent);
    await expect(dialWebSocket(`ws://127.0.0.1:${silentPort}/`, {}, 200)).rejects.toThrow(/no WebSocket handshake within 200 ms/);
  });
});
