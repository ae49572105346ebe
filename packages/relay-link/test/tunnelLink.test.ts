// Two TunnelLinks over a real TCP connection after a real handshake: streams, credit flow
// control (and a peer that breaks it), half close, aborts, and the loss of the socket.
import { createHash } from "node:crypto";
import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import type { OpenFrame } from "@runit/protocol";
import { TunnelLink, TunnelStream, TunnelStreamError, acceptWebSocket, dialWebSocket, type StreamMeter } from "../src/index.js";

interface Pair {
  server: TunnelLink;
  client: TunnelLink;
  /** Streams the client side accepted, in order. */
  accepted: TunnelStream[];
  serverSocket: Socket;
}

const cleanups: Array<() => void | Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A control-plane-like server link and an agent-like client link that accepts every open. */
async function linkPair(): Promise<Pair> {
  const http = createServer();
  let resolveServer: (value: { link: TunnelLink; socket: Socket }) => void = () => undefined;
  const serverSide = new Promise<{ link: TunnelLink; socket: Socket }>((resolve) => (resolveServer = resolve));
  http.on("upgrade", (req: IncomingMessage, socket: Socket, head: Buffer) => {
    acceptWebSocket(req, socket);
    resolveServer({ link: new TunnelLink(socket, "server", {}, head), socket });
  });
  await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve));
  const port = (http.address() as AddressInfo).port;
  const accepted: TunnelStream[] = [];
  const { socket, head } = await dialWebSocket(`ws://127.0.0.1:${port}/`, {}, 3000);
  const client: TunnelLink = new TunnelLink(
    socket,
    "client",
    {
      onOpen: (frame: OpenFrame) => {
        const stream = client.acceptStream(frame);
        stream?.on("error", () => undefined); // tests read errors with once("error") where they care
        if (stream) accepted.push(stream);
      },
    },
    head,
  );
  const { link: server, socket: serverSocket } = await serverSide;
  const openStream = server.openStream.bind(server);
  server.openStream = (...args) => {
    const stream = openStream(...args);
    stream?.on("error", () => undefined);
    return stream;
  };
  cleanups.push(() => {
    socket.destroy();
    serverSocket.destroy();
    return new Promise<void>((resolve) => http.close(() => resolve()));
  });
  return { server, client, accepted, serverSocket };
}

async function until(check: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Opens one stream on the server link and waits for the client's end of it. */
async function openOne(pair: Pair, window = 64 * 1024, meter?: StreamMeter): Promise<{ stream: TunnelStream; peer: TunnelStream }> {
  const stream = pair.server.openStream(window, meter) as TunnelStream;
  const index = pair.accepted.length;
  await until(() => pair.accepted.length > index, "the open");
  return { stream, peer: pair.accepted[index] as TunnelStream };
}

function collect(stream: TunnelStream): { bytes: () => Buffer; ended: Promise<void> } {
  const parts: Buffer[] = [];
  stream.on("data", (chunk: Buffer) => parts.push(chunk));
  return { bytes: () => Buffer.concat(parts), ended: new Promise((resolve) => stream.once("end", resolve)) };
}

describe("TunnelLink and TunnelStream", () => {
  it("carries 8 MiB each way through a 64 KiB window intact, then closes the stream cleanly on both ends", async () => {
    const pair = await linkPair();
    const { server, client } = pair;
    const sent = { server: 0, client: 0 };
    const { stream, peer } = await openOne(pair, 64 * 1024, { onSent: (n) => (sent.server += n) });
    const atClient = collect(peer);
    const atServer = collect(stream);
    const payload = Buffer.from(Buffer.alloc(8 * 1024 * 1024).map((_, i) => (i * 31) % 251));
    stream.end(payload);
    peer.end(payload);
    await Promise.all([atClient.ended, atServer.ended]);
    const digest = (b: Buffer) => createHash("sha256").update(b).digest("hex");
    expect(digest(atClient.bytes())).toBe(digest(payload));
    expect(digest(atServer.bytes())).toBe(digest(payload));
    expect(sent.server).toBe(payload.length);
    await until(() => server.size === 0 && client.size === 0, "both stream tables to empty");
    expect(stream.errored).toBeNull();
    expect(peer.errored).toBeNull();
  });

  it("stops a sender at its credit while the receiver does not read, and resumes when it does", async () => {
    const { stream, peer } = await openOne(await linkPair());
    peer.pause();
    let written = 0;
    const chunk = Buffer.alloc(16 * 1024, 1);
    const pump = (): void => {
      while (written < 4 * 1024 * 1024 && stream.write(chunk)) written += chunk.length;
      if (written < 4 * 1024 * 1024) stream.once("drain", () => ((written += chunk.length), pump()));
    };
    pump();
    await new Promise((r) => setTimeout(r, 300));
    // One window in flight plus the writable's own buffer: nowhere near the 4 MiB offered.
    expect(peer.readableLength).toBeLessThanOrEqual(64 * 1024);
    expect(written).toBeLessThan(256 * 1024);
    const got = collect(peer);
    peer.resume();
    await until(() => written >= 4 * 1024 * 1024 && got.bytes().length + 64 * 1024 >= written, `the rest to flow (written ${written}, received ${got.bytes().length})`);
  });

  it("aborts a stream whose peer sends beyond its credit (FLOW_CONTROL), on both ends", async () => {
    const pair = await linkPair();
    const { stream, peer } = await openOne(pair);
    const peerError = new Promise<Error>((resolve) => peer.once("error", resolve));
    // Bypass the stream's own credit accounting: raw data frames past the window.
    for (let i = 0; i < 5; i++) pair.client.sendData(peer.id, [Buffer.alloc(16 * 1024)]);
    const localError = await new Promise<Error>((resolve) => stream.once("error", resolve));
    expect(localError).toBeInstanceOf(TunnelStreamError);
    expect(localError).toMatchObject({ code: "FLOW_CONTROL", message: "peer sent beyond its credit" });
    expect(await peerError).toMatchObject({ code: "FLOW_CONTROL" });
  });

  it("aborts a stream whose peer grants credit beyond the window (FLOW_CONTROL), and sends nothing past the window", async () => {
    const pair = await linkPair();
    let sent = 0;
    const { stream, peer } = await openOne(pair, 64 * 1024, { onSent: (n) => (sent += n) });
    peer.pause(); // grants nothing itself
    stream.write(Buffer.alloc(1024 * 1024, 3));
    await until(() => peer.bufferedBytes === 64 * 1024, "the first window");
    const peerError = new Promise<Error>((resolve) => peer.once("error", resolve));
    const localError = new Promise<Error>((resolve) => stream.once("error", resolve));
    // Bypass the peer's own accounting: 64 MiB of credit for 64 KiB received, twice.
    for (let i = 0; i < 2; i++) pair.client.sendControl({ type: "credit", streamId: stream.id, bytes: 64 * 1024 * 1024 });
    expect(await localError).toMatchObject({ code: "FLOW_CONTROL", message: "peer granted credit beyond the window" });
    expect(await peerError).toMatchObject({ code: "FLOW_CONTROL" });
    expect(sent).toBe(64 * 1024);
    expect(pair.serverSocket.writableLength).toBe(0);
  });

  it("tells the peer why a stream was aborted, and kills every stream when the socket goes", async () => {
    const { server, accepted, serverSocket } = await linkPair();
    const first = server.openStream(64 * 1024) as TunnelStream;
    const second = server.openStream(64 * 1024) as TunnelStream;
    await until(() => accepted.length === 2, "two opens");
    const peerOfFirst = new Promise<Error>((resolve) => (accepted[0] as TunnelStream).once("error", resolve));
    first.on("error", () => undefined);
    first.abort("UPSTREAM_ERROR", "Jupyter went away");
    expect(await peerOfFirst).toMatchObject({ code: "UPSTREAM_ERROR", message: "Jupyter went away" });
    const secondDied = new Promise<Error>((resolve) => second.once("error", resolve));
    const peerOfSecond = new Promise<Error>((resolve) => (accepted[1] as TunnelStream).once("error", resolve));
    serverSocket.destroy();
    expect(await secondDied).toMatchObject({ code: "TUNNEL_CLOSED" });
    expect(await peerOfSecond).toMatchObject({ code: "TUNNEL_CLOSED" });
    expect(server.isOpen).toBe(false);
    expect(server.openStream(64 * 1024)).toBeUndefined();
  });

  it("sendNow sends only what credit covers and never overtakes queued writes", async () => {
    const { stream, peer } = await openOne(await linkPair());
    peer.pause();
    expect(peer.sendNow(Buffer.alloc(100 * 1024, 2))).toBe(64 * 1024);
    expect(peer.sendableBytes).toBe(0);
    expect(peer.sendNow(Buffer.alloc(10))).toBe(0);
    const got = collect(stream);
    await until(() => got.bytes().length === 64 * 1024, "the first window");
    await until(() => peer.sendableBytes > 0, "credit back");
  });

  it("emits 'timeout' after the idle time set with setTimeout, as a socket does", async () => {
    const { server } = await linkPair();
    const stream = server.openStream(64 * 1024) as TunnelStream;
    const started = Date.now();
    await new Promise<void>((resolve) => stream.setTimeout(100, resolve));
    expect(Date.now() - started).toBeGreaterThanOrEqual(95);
  });
});
