// The stream multiplexer of one relay tunnel WebSocket, used by both ends: the control plane
// (renter side) and the agent (Jupyter side). @runit/protocol holds the wire format and the credit
// arithmetic but no I/O; this package adds the sockets.
import type { Socket } from "node:net";
import type { Readable, Writable } from "node:stream";
import type { WebSocket } from "ws";
import {
  DATA_FRAME_HEADER_BYTES,
  MAX_DATA_FRAME_PAYLOAD,
  MAX_STREAMS_PER_TUNNEL,
  ReceiveWindow,
  SendCredit,
  decodeTunnelFrame,
  encodeControlFrame,
  encodeDataFrame,
  type OpenFrame,
  type ResponseFrame,
  type TunnelControlFrame,
  type TunnelErrorCode,
} from "@runit/protocol";
import { FrameSlabs } from "./frameSlabs.js";

/** What the owner of a link reacts to; data, credit, end and abort are handled by the link. */
export interface TunnelLinkHandlers {
  /** A peer opened a stream (agent side). */
  onOpen?(frame: OpenFrame): void;
  /** The peer reported an unusable frame. */
  onPeerError?(code: TunnelErrorCode, message: string): void;
}

/** Byte counters of a stream, for metering: `onSent` for bytes sent, `onReceived` for bytes delivered. */
export interface StreamMeter {
  onSent?(bytes: number): void;
  onReceived?(bytes: number): void;
}

/** One multiplexed stream: a source pumped out under credit, a sink fed with credit returned. */
export class TunnelStream {
  private sendCredit: SendCredit | undefined;
  private readonly receiveWindow: ReceiveWindow;
  private source: Readable | undefined;
  private pending: Buffer | undefined;
  private sourceEnded = false;
  private sink: Writable | undefined;
  private sinkCorked = false;
  private closed = false;
  private endSent = false;
  private peerEndReceived = false;
  private responseListener: ((frame: ResponseFrame) => void) | undefined;
  private abortListeners: Array<(code: TunnelErrorCode, message: string) => void> = [];
  /** Largest number of received bytes held (written to the sink, not yet flushed). */
  maxBuffered = 0;

  constructor(
    readonly id: number,
    private readonly link: TunnelLink,
    readonly window: number,
    private readonly meter: StreamMeter = {},
  ) {
    this.receiveWindow = new ReceiveWindow(window);
  }

  /** Sets how much the peer lets us send before its first credit frame. */
  setPeerWindow(bytes: number): void {
    this.sendCredit = new SendCredit(bytes);
    this.flush();
  }

  /** Pumps `readable` to the peer under credit and sends `end` when it ends. */
  attachSource(readable: Readable, head?: Buffer): void {
    this.source = readable;
    if (head && head.length > 0) this.pending = head;
    readable.on("data", (chunk: Buffer) => {
      this.pending = this.pending ? Buffer.concat([this.pending, chunk]) : chunk;
      this.flush();
    });
    readable.on("end", () => {
      this.sourceEnded = true;
      this.flush();
    });
    this.flush();
  }

  /** Delivers the peer's bytes into `writable`, returning credit as each write is flushed. */
  attachSink(writable: Writable): void {
    this.sink = writable;
  }

  /** Registers the listener of the peer's `response` frame (control-plane side). */
  onResponse(listener: (frame: ResponseFrame) => void): void {
    this.responseListener = listener;
  }

  /** @internal The peer's response. */
  deliverResponse(frame: ResponseFrame): void {
    if (!this.responseListener) return this.abort("BAD_FRAME", "response not expected");
    const listener = this.responseListener;
    this.responseListener = undefined;
    listener(frame);
  }

  /** Registers a listener for the stream's death (peer abort, tunnel loss, local abort). */
  onAbort(listener: (code: TunnelErrorCode, message: string) => void): void {
    this.abortListeners.push(listener);
  }

  /** True once the stream ended or was aborted. */
  get isClosed(): boolean {
    return this.closed;
  }

  /** Aborts the stream locally and tells the peer unless it was the one that aborted. */
  abort(code: TunnelErrorCode, message: string, tellPeer = true): void {
    if (this.closed) return;
    this.closed = true;
    this.link.forget(this.id);
    if (tellPeer) this.link.send({ type: "abort", streamId: this.id, code, message });
    this.source?.pause();
    for (const listener of this.abortListeners) listener(code, message);
  }

  /** Sends `end` without a source (a request with no body, or a refused upgrade). */
  endLocal(): void {
    if (this.closed || this.endSent) return;
    this.endSent = true;
    this.link.send({ type: "end", streamId: this.id });
    this.finishIfDone();
  }

  private finishIfDone(): void {
    if (this.closed || !this.endSent || !this.peerEndReceived) return;
    this.closed = true;
    this.link.forget(this.id);
  }

  /** @internal Data from the peer. */
  receive(payload: Buffer): void {
    if (!this.receiveWindow.receive(payload.length)) {
      this.abort("FLOW_CONTROL", "peer sent beyond its credit");
      return;
    }
    this.maxBuffered = Math.max(this.maxBuffered, this.receiveWindow.buffered);
    const sink = this.sink;
    if (!sink) {
      this.abort("BAD_FRAME", "data before the stream was ready");
      return;
    }
    if (!this.sinkCorked) {
      // Chunks arriving in one event-loop iteration leave in one write (fewer syscalls).
      this.sinkCorked = true;
      sink.cork();
      setImmediate(() => {
        this.sinkCorked = false;
        sink.uncork();
      });
    }
    sink.write(payload, (err) => {
      if (err) return;
      this.meter.onReceived?.(payload.length);
      // Credit after the peer's `end` is useless (it sends nothing more): one frame less per request.
      if (this.closed || this.peerEndReceived) return;
      const grant = this.receiveWindow.consume(payload.length);
      if (grant > 0) this.link.send({ type: "credit", streamId: this.id, bytes: grant });
    });
  }

  /** @internal Credit from the peer. */
  grant(bytes: number): void {
    this.sendCredit?.grant(bytes);
    this.flush();
  }

  /** @internal The peer will send no more. */
  peerEnded(): void {
    this.peerEndReceived = true;
    this.sink?.end();
    this.finishIfDone();
  }

  private flush(): void {
    const credit = this.sendCredit;
    if (this.closed || !credit) return;
    while (this.pending && credit.bytes > 0) {
      const size = credit.take(Math.min(this.pending.length, MAX_DATA_FRAME_PAYLOAD));
      const piece = this.pending.subarray(0, size);
      this.pending = size < this.pending.length ? this.pending.subarray(size) : undefined;
      this.link.sendData(this.id, piece);
      this.meter.onSent?.(size);
    }
    if (this.pending) {
      this.source?.pause();
      return;
    }
    if (this.sourceEnded) {
      this.sourceEnded = false;
      this.endLocal();
      return;
    }
    if (this.source?.isPaused()) this.source.resume();
  }
}

/** The stream table of one tunnel WebSocket: decodes frames, routes them, answers bad ones. */
export class TunnelLink {
  private readonly streams = new Map<number, TunnelStream>();
  private nextId = 1;
  private dead = false;
  private corked = false;
  private readonly slabs = new FrameSlabs();

  /**
   * `socket` is the WebSocket's TCP socket: frames produced in one event-loop iteration (open +
   * end, response + data + end) are corked into one write instead of one segment each.
   */
  constructor(
    private readonly ws: WebSocket,
    private readonly handlers: TunnelLinkHandlers,
    private readonly socket?: Socket,
  ) {
    ws.on("message", (data: Buffer, isBinary: boolean) => {
      try {
        this.onMessage(isBinary ? data : data.toString("utf8"));
      } catch (err) {
        // Never let one frame take the process down: answer it and carry on.
        this.send({ type: "error", code: "BAD_FRAME", message: `frame could not be handled: ${(err as Error).message}`.slice(0, 1024) });
      }
    });
    ws.on("close", () => this.abortAll("TUNNEL_CLOSED", "tunnel closed"));
  }

  /** Number of live streams. */
  get size(): number {
    return this.streams.size;
  }

  /** True while the WebSocket is open. */
  get isOpen(): boolean {
    return !this.dead && this.ws.readyState === this.ws.OPEN;
  }

  /** Creates a stream with a fresh id (control-plane side) or a peer-chosen id (agent side). */
  createStream(window: number, meter?: StreamMeter, id?: number): TunnelStream | undefined {
    if (this.streams.size >= MAX_STREAMS_PER_TUNNEL) return undefined;
    const streamId = id ?? this.nextId++;
    if (this.streams.has(streamId)) return undefined;
    const stream = new TunnelStream(streamId, this, window, meter);
    this.streams.set(streamId, stream);
    return stream;
  }

  /** Sends a control frame (dropped once the WebSocket is gone). */
  send(frame: TunnelControlFrame): void {
    if (!this.isOpen) return;
    this.corkForThisTick();
    this.ws.send(encodeControlFrame(frame));
  }

  /** Sends one data frame. */
  sendData(streamId: number, payload: Uint8Array): void {
    if (!this.isOpen) return;
    this.corkForThisTick();
    const { buf, release } = this.slabs.take(DATA_FRAME_HEADER_BYTES + payload.byteLength);
    this.ws.send(encodeDataFrame(streamId, payload, () => buf), { binary: true }, release);
  }

  private corkForThisTick(): void {
    const socket = this.socket;
    if (this.corked || !socket) return;
    this.corked = true;
    socket.cork();
    // setImmediate: everything this loop iteration produces (all I/O callbacks) goes in one write.
    setImmediate(() => {
      this.corked = false;
      socket.uncork();
    });
  }

  /** Aborts every stream without telling the peer (the tunnel is gone or going). */
  abortAll(code: TunnelErrorCode, message: string): void {
    this.dead = code === "TUNNEL_CLOSED" || this.dead;
    for (const stream of [...this.streams.values()]) stream.abort(code, message, false);
  }

  /** @internal Removes a finished stream. */
  forget(id: number): void {
    this.streams.delete(id);
  }

  private onMessage(message: string | Buffer): void {
    const decoded = decodeTunnelFrame(message);
    if (!decoded.ok) {
      // A bad frame naming a stream kills that stream on both ends (the peer may be waiting on
      // it, e.g. for the answer to a malformed open); one naming none gets an error frame.
      if (decoded.streamId === undefined) return this.send({ type: "error", code: decoded.code, message: decoded.message });
      const stream = this.streams.get(decoded.streamId);
      if (stream) return stream.abort(decoded.code, decoded.message);
      return this.send({ type: "abort", streamId: decoded.streamId, code: decoded.code, message: decoded.message });
    }
    const frame = decoded.frame;
    if (frame.type === "error") return this.handlers.onPeerError?.(frame.code, frame.message);
    if (frame.type === "welcome") return;
    if (frame.type === "open") {
      if (!this.handlers.onOpen) return this.send({ type: "error", code: "BAD_FRAME", message: "open not accepted here" });
      if (this.streams.has(frame.streamId)) {
        return this.send({ type: "abort", streamId: frame.streamId, code: "DUPLICATE_STREAM", message: "stream id in use" });
      }
      return this.handlers.onOpen(frame);
    }
    const stream = this.streams.get(frame.streamId);
    if (!stream) {
      // Late frames of a stream we already dropped are normal after an abort; answer only opens.
      return;
    }
    switch (frame.type) {
      case "data":
        return stream.receive(Buffer.from(frame.payload.buffer, frame.payload.byteOffset, frame.payload.byteLength));
      case "credit":
        return stream.grant(frame.bytes);
      case "end":
        return stream.peerEnded();
      case "abort":
        return stream.abort(frame.code, frame.message, false);
      case "response":
        return stream.deliverResponse(frame);
    }
  }
}
