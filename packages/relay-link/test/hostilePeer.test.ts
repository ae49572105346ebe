// A control-plane-side TunnelLink against a hostile agent: a raw socket after a real handshake
// that writes frames of its choosing and reads only when the test says so. Whatever it sends, the
// control plane's memory for it must stay bounded: replies, and bytes buffered for a stream.
import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { decodeControlFrame, type TunnelControlFrame } from "@runit/protocol";
import { CLOSE_CODE, MAX_REFUSED_FRAMES, OPCODE, TunnelLink, WebSocketReader, acceptWebSocket, dialWebSocket, type TunnelStream } from "../src/index.js";

const cleanups: Array<() => void | Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

type Received = { kind: "control"; frame: TunnelControlFrame } | { kind: "pong"; payload: Buffer } | { kind: "close"; code: number | undefined };

interface Hostile {
  link: TunnelLink;
  serverSocket: Socket;
  /** The agent's end; paused (it reads nothing) until `read()`. */
  peer: Socket;
  /** What the peer has read so far, decoded. */
  received: Received[];
  /** Starts reading the peer's socket. */
  read(): void;
  /** Writes `bytes` and waits until the link has read all of it. */
  send(bytes: Buffer): Promise<void>;
  /** Resolves when the server link reports its close. */
  closed: Promise<void>;
}

async function hostilePeer(): Promise<Hostile> {
  const http = createServer();
  let resolveServer: (value: { link: TunnelLink; socket: Socket; closed: Promise<void> }) => void = () => undefined;
  const serverSide = new Promise<{ link: TunnelLink; socket: Socket; closed: Promise<void> }>((resolve) => (resolveServer = resolve));
  http.on("upgrade", (req: IncomingMessage, socket: Socket, head: Buffer) => {
    acceptWebSocket(req, socket);
    let onClose: () => void = () => undefined;
    const closed = new Promise<void>((resolve) => (onClose = resolve));
    resolveServer({ link: new TunnelLink(socket, "server", { onHello: () => undefined, onClose }, head), socket, closed });
  });
  await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve));
  const { socket: peer } = await dialWebSocket(`ws://127.0.0.1:${(http.address() as AddressInfo).port}/`, {}, 3000);
  peer.pause();
  peer.on("error", () => undefined);
  const { link, socket: serverSocket, closed } = await serverSide;
  cleanups.push(() => {
    peer.destroy();
    serverSocket.destroy();
    return new Promise<void>((resolve) => http.close(() => resolve()));
  });
  const received: Received[] = [];
  let text: Buffer[] = [];
  const reader = new WebSocketReader(
    {
      onMessageStart: () => (text = []),
      onMessageData: (bytes) => text.push(Buffer.from(bytes)),
      onMessageEnd: () => {
        const decoded = decodeControlFrame(Buffer.concat(text).toString("utf8"));
        if (decoded.ok) received.push({ kind: "control", frame: decoded.frame });
      },
      onPing: () => undefined,
      onPong: (payload) => received.push({ kind: "pong", payload: Buffer.from(payload) }),
      onClose: (code) => received.push({ kind: "close", code }),
      onProtocolError: (code, message) => {
        throw new Error(`the link sent a bad frame: ${code} ${message}`);
      },
    },
    false,
    1 << 20,
  );
  peer.on("data", (chunk: Buffer) => reader.push(chunk));
  let sent = serverSocket.bytesRead;
  const send = async (bytes: Buffer): Promise<void> => {
    sent += bytes.length;
    peer.write(bytes);
    while (serverSocket.bytesRead < sent) await new Promise((r) => setImmediate(r));
  };
  return { link, serverSocket, peer, received, read: () => peer.resume(), send, closed };
}

/** One frame as the agent sends it: masked with the all-zero key. */
function agentFrame(opcode: number, payload: Buffer): Buffer {
  const length = payload.length < 126 ? Buffer.from([0x80 | payload.length]) : Buffer.from([0x80 | 126, payload.length >> 8, payload.length & 0xff]);
  return Buffer.concat([Buffer.from([0x80 | opcode]), length, Buffer.alloc(4), payload]);
}

function dataFrame(streamId: number, payload: Buffer): Buffer {
  const header = Buffer.alloc(5);
  header[0] = 1;
  header.writeUInt32BE(streamId, 1);
  return agentFrame(OPCODE.binary, Buffer.concat([header, payload]));
}

const controlFrame = (frame: object): Buffer => agentFrame(OPCODE.text, Buffer.from(JSON.stringify(frame)));

async function until(check: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** The pieces in a stream's readable buffer and the memory they pin (their distinct ArrayBuffers). */
function retained(stream: TunnelStream): { pieces: number; pinnedBytes: number } {
  const backings = new Set<ArrayBufferLike>();
  let pieces = 0;
  for (const piece of stream.readableBuffer as unknown as Iterable<Buffer>) {
    pieces++;
    backings.add(piece.buffer);
  }
  return { pieces, pinnedBytes: [...backings].reduce((sum, b) => sum + b.byteLength, 0) };
}

/** A stream the control plane opened to the hostile peer, once the peer has its `open`. */
async function openedStream(hostile: Hostile, window: number, paused = false): Promise<TunnelStream> {
  const stream = hostile.link.openStream(window) as TunnelStream;
  stream.on("error", () => undefined);
  if (paused) stream.pause(); // the renter's response is full
  await until(() => hostile.received.some((r) => r.kind === "control" && r.frame.type === "open"), "the open");
  return stream;
}

describe("TunnelLink against a hostile peer", () => {
  it("closes with 1008 a peer that keeps sending unusable frames, after 64 replies, without buffering more", async () => {
    const hostile = await hostilePeer();
    // 20 000 text frames "x" (not JSON), 140 kB, from a peer that reads nothing.
    const notJson = agentFrame(OPCODE.text, Buffer.from("x"));
    await hostile.send(Buffer.concat(Array<Buffer>(20_000).fill(notJson)));
    expect(hostile.link.sentClose).toEqual({ code: CLOSE_CODE.policyViolation, reason: `more than ${MAX_REFUSED_FRAMES} unusable frames` });
    expect(hostile.link.isOpen).toBe(false);
    // 64 error frames of ~75 bytes and the close: everything the control plane wrote.
    expect(hostile.serverSocket.bytesWritten).toBeLessThan(MAX_REFUSED_FRAMES * 80 + 130);
    await hostile.closed;
    hostile.read();
    await until(() => hostile.received.some((r) => r.kind === "close"), "the close frame");
    const errors = hostile.received.filter((r) => r.kind === "control" && r.frame.type === "error");
    expect(errors).toHaveLength(MAX_REFUSED_FRAMES);
    expect(hostile.received.at(-1)).toEqual({ kind: "close", code: 1008 });
  });

  it("counts no frame an honest peer sends towards that limit: pings, late frames of forgotten streams, aborts of closed streams", async () => {
    const hostile = await hostilePeer();
    hostile.read();
    const stream = await openedStream(hostile, 64 * 1024);
    // The agent closes the stream; the control plane closes it too, at the same time.
    await hostile.send(controlFrame({ type: "abort", streamId: stream.id, code: "UPSTREAM_ERROR", message: "Jupyter went away" }));
    stream.abort("CLIENT_GONE", "renter left");
    const late: Buffer[] = [];
    for (let i = 0; i < 4 * MAX_REFUSED_FRAMES; i++) {
      for (const streamId of [stream.id, stream.id + 1]) {
        late.push(dataFrame(streamId, Buffer.from("late")));
        late.push(controlFrame({ type: "credit", streamId, bytes: 32 * 1024 }));
        late.push(controlFrame({ type: "end", streamId }));
        late.push(controlFrame({ type: "abort", streamId, code: "CLIENT_GONE", message: "gone" }));
      }
      late.push(agentFrame(OPCODE.ping, Buffer.from(`ping ${i}`)));
    }
    await hostile.send(Buffer.concat(late));
    await until(() => hostile.received.some((r) => r.kind === "pong" && r.payload.toString() === `ping ${4 * MAX_REFUSED_FRAMES - 1}`), "the last pong");
    expect(hostile.link.isOpen).toBe(true);
    expect(hostile.link.sentClose).toBeUndefined();
    expect(hostile.received.filter((r) => r.kind === "control" && (r.frame.type === "error" || r.frame.type === "abort"))).toEqual([]);
  });

  it("keeps at most one pong pending for a peer that floods pings and never reads, and answers the latest", async () => {
    const hostile = await hostilePeer();
    const ping = agentFrame(OPCODE.ping, Buffer.alloc(125, 0x61));
    const batch = Buffer.concat(Array<Buffer>(8192).fill(ping)); // 1 MiB of pings
    for (let i = 0; i < 32; i++) await hostile.send(batch); // 32 MiB: far more than the kernel's buffers
    await hostile.send(agentFrame(OPCODE.ping, Buffer.from("the latest")));
    // Before the fix every ping queued its pong here: tens of MB.
    expect(hostile.serverSocket.writableLength).toBeLessThanOrEqual(127);
    expect(hostile.link.isOpen).toBe(true);
    hostile.read();
    await until(() => hostile.received.at(-1)?.kind === "pong" && (hostile.received.at(-1) as { payload: Buffer }).payload.toString() === "the latest", "the pong of the latest ping");
    expect(hostile.received.length).toBeLessThan(32 * 8192);
  });

  it("keeps a lagging stream's 1-byte frames in a few coalesced buffers, not one read chunk each, and returns credit exactly", async () => {
    const hostile = await hostilePeer();
    hostile.read();
    const window = 64 * 1024;
    const stream = await openedStream(hostile, window, true);
    const expected: number[] = [];
    const one = (): Buffer => {
      const byte = expected.length % 251;
      expected.push(byte);
      return dataFrame(stream.id, Buffer.from([byte]));
    };
    // 1000 frames of 1 byte, each sharing its socket read with 60 kB for a stream that is gone.
    const junk = dataFrame(999, Buffer.alloc(60_000));
    for (let i = 0; i < 1000; i++) await hostile.send(Buffer.concat([junk, one()]));
    expect(stream.bufferedBytes).toBe(1000);
    // Before the fix: 1000 pieces pinning ~60 MB. Now the first piece (a view) and the coalescer.
    expect(retained(stream).pieces).toBeLessThanOrEqual(2);
    expect(retained(stream).pinnedBytes).toBeLessThan(64 * 1024 + 16 * 1024);

    // The rest of the window densely packed, with one large piece (kept as a view) in the middle.
    const dense = (n: number): Buffer => Buffer.concat(Array.from({ length: n }, one));
    const large = Buffer.from(Array.from({ length: 40_000 }, (_, i) => (expected.length + i) % 251));
    await hostile.send(dense(20_000));
    for (const byte of large) expected.push(byte);
    await hostile.send(dataFrame(stream.id, large));
    await hostile.send(dense(window - expected.length));
    expect(stream.bufferedBytes).toBe(window);
    // Before the fix: ~25 000 pieces (about 110 bytes of heap each). Now about one per 16 KiB.
    const { pieces, pinnedBytes } = retained(stream);
    expect(pieces).toBeLessThanOrEqual(window / (16 * 1024) + 4);
    expect(pinnedBytes).toBeLessThan(2 * window + 64 * 1024);

    const got: Buffer[] = [];
    stream.on("data", (chunk: Buffer) => got.push(chunk));
    stream.resume();
    await until(() => Buffer.concat(got).length === window, "the whole window to be read");
    expect(Buffer.concat(got).equals(Buffer.from(expected))).toBe(true);
    const credit = (): number => hostile.received.reduce((sum, r) => sum + (r.kind === "control" && r.frame.type === "credit" ? r.frame.bytes : 0), 0);
    await until(() => credit() === window, `credit for the whole window (got ${credit()})`);
    expect(stream.errored).toBeNull();
  });

  it("hands a consumer that keeps up no piece that pins a read chunk many times its size, so a sink's buffer stays bounded", async () => {
    const hostile = await hostilePeer();
    hostile.read();
    const stream = await openedStream(hostile, 1024 * 1024);
    // What the relay does with a body: write each piece into the renter's response, pausing on
    // false. This renter never reads, so every piece waits in the sink.
    const sink: Buffer[] = [];
    stream.on("data", (chunk: Buffer) => sink.push(chunk));
    const junk = dataFrame(999, Buffer.alloc(60_000));
    for (let i = 0; i < 500; i++) await hostile.send(Buffer.concat([junk, dataFrame(stream.id, Buffer.from([i & 0xff]))]));
    await until(() => sink.length === 500, "500 pieces handed on");
    const pinned = new Set(sink.map((piece) => piece.buffer));
    // Before: 500 views, each pinning its 60 kB read (30 MB). Now copies of one byte each.
    expect([...pinned].reduce((sum, b) => sum + b.byteLength, 0)).toBeLessThan(64 * 1024);
    expect(Buffer.concat(sink).equals(Buffer.from(Array.from({ length: 500 }, (_, i) => i & 0xff)))).toBe(true);
    // Bulk pieces stay views of their read chunks (no copy on the byte path).
    sink.length = 0;
    for (let i = 0; i < 3; i++) await hostile.send(dataFrame(stream.id, Buffer.alloc(60_000, 7)));
    await until(() => sink.reduce((n, p) => n + p.length, 0) === 180_000, "the bulk frames");
    expect(sink.every((piece) => piece.length * 8 >= piece.buffer.byteLength)).toBe(true);
    expect(sink.some((piece) => piece.buffer.byteLength > piece.length || piece.byteOffset > 0)).toBe(true);
  });
});
