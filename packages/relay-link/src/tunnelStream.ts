import { Duplex } from "node:stream";
import {
  MAX_DATA_FRAME_PAYLOAD,
  ReceiveWindow,
  SendCredit,
  type TunnelControlFrame,
  type TunnelErrorCode,
} from "@runit/protocol";
import { PieceCoalescer, forConsumer, worthKeepingAsView } from "./pieceCoalescer.js";

/** Why a stream died: its tunnel error code and message (peer abort, tunnel loss, local abort). */
export class TunnelStreamError extends Error {
  constructor(
    readonly code: TunnelErrorCode,
    message: string,
  ) {
    super(message);
    this.name = "TunnelStreamError";
  }
}

/** Byte counters of a stream, for metering: `onSent` for bytes sent, `onReceived` for bytes received. */
export interface StreamMeter {
  onSent?(bytes: number): void;
  onReceived?(bytes: number): void;
}

/** What a stream needs from the link that carries it. */
export interface StreamCarrier {
  /** Sends `pieces` as data frames of stream `streamId`, in one socket write. */
  sendData(streamId: number, pieces: Buffer[]): void;
  sendControl(frame: TunnelControlFrame): void;
  /** The stream is finished; drop it from the stream table. */
  forget(streamId: number): void;
}

/**
 * One multiplexed stream of a tunnel, as a Node Duplex: what is written to it travels to the peer
 * under credit, what the peer sends comes out of its readable side, and credit goes back as the
 * consumer reads. On the control plane it is one pooled HTTP/1.1 connection to Jupyter; on the
 * agent it is piped to one TCP connection to Jupyter. `setTimeout` works as a socket's does (an
 * idle timer that emits 'timeout'), so an idle pooled stream can be closed.
 *
 * Memory: the peer can make a stream hold at most one window of received bytes; while the
 * consumer lags they are kept so as to pin at most about twice that (see `pieceCoalescer.ts`),
 * of which up to `COALESCE_BUFFER_BYTES` wait in a coalescing buffer, counted in `bufferedBytes`
 * but not yet in `readableLength`.
 * A peer granting credit beyond the window is refused, so this end never sends more than one
 * window ahead of what the peer has read.
 */
export class TunnelStream extends Duplex {
  private readonly credit: SendCredit;
  private readonly receiveWindow: ReceiveWindow;
  private readonly coalescer = new PieceCoalescer();
  private pendingWrite: { chunks: Buffer[]; callback: (err?: Error | null) => void } | undefined;
  private pushed = 0;
  private accounted = 0;
  private settleQueued = false;
  private endSent = false;
  private peerEnded = false;
  private silent = false;
  private idleMs = 0;
  private idleTimer: NodeJS.Timeout | undefined;
  /** Set by an agent that throttles its source on credit (see `sendNow`). */
  onCredit: (() => void) | undefined;

  constructor(
    readonly id: number,
    private readonly carrier: StreamCarrier,
    window: number,
    private readonly meter: StreamMeter = {},
  ) {
    super({ allowHalfOpen: true, readableHighWaterMark: 64 * 1024, writableHighWaterMark: 64 * 1024 });
    this.credit = new SendCredit(window);
    this.receiveWindow = new ReceiveWindow(window);
  }

  /** Kills the stream and tells the peer why. */
  abort(code: TunnelErrorCode, message: string): void {
    this.destroy(new TunnelStreamError(code, message));
  }

  /**
   * Sends as much of `bytes` as credit allows right now, in one frame, and returns how many bytes
   * went out (0 while earlier writes still wait for credit: order is kept). The bytes are in the
   * socket's hands when this returns; the caller keeps the rest.
   */
  sendNow(bytes: Buffer): number {
    if (this.pendingWrite || this.destroyed || this.endSent) return 0;
    const n = this.credit.take(Math.min(bytes.length, MAX_DATA_FRAME_PAYLOAD));
    if (n > 0) this.transmit([n === bytes.length ? bytes : bytes.subarray(0, n)], n);
    return n;
  }

  /** Bytes that `sendNow` could send at once. */
  get sendableBytes(): number {
    return this.pendingWrite || this.destroyed ? 0 : this.credit.bytes;
  }

  /** Bytes received and not yet taken by the consumer: `readableLength` plus those being coalesced. */
  get bufferedBytes(): number {
    return this.readableLength + this.coalescer.bytes;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.pendingWrite = { chunks: [chunk], callback };
    this.flushWrites();
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, callback: (err?: Error | null) => void): void {
    this.pendingWrite = { chunks: chunks.map((c) => c.chunk), callback };
    this.flushWrites();
  }

  override _final(callback: (err?: Error | null) => void): void {
    this.endSent = true;
    this.carrier.sendControl({ type: "end", streamId: this.id });
    callback();
  }

  override _read(): void {
    this.settleCredit();
  }

  // Credit follows consumption. Data pushed while someone reads is handed over at once (receive
  // settles then); data that waited in the buffer leaves through read(), so credit is settled
  // after each read (once per tick). _read alone would not do: it runs before the bytes leave the
  // buffer, and not again until the next push, which would never come with the sender out of credit.
  // Coalesced bytes exist only behind buffered ones; they are pushed once the consumer has taken
  // the rest, or asks for more than is buffered (read(0) only pokes _read: they keep waiting).
  override read(size?: number): Buffer | null {
    const chunk = super.read(size) as Buffer | null;
    const catchUp = this.coalescer.bytes > 0 && !this.destroyed && (this.readableLength === 0 || (chunk === null && size !== 0));
    if (catchUp) this.pushCoalesced();
    if ((chunk !== null || catchUp) && !this.settleQueued) {
      this.settleQueued = true;
      process.nextTick(() => {
        this.settleQueued = false;
        this.settleCredit();
      });
    }
    return chunk;
  }

  override _destroy(err: Error | null, callback: (err: Error | null) => void): void {
    clearTimeout(this.idleTimer);
    this.coalescer.clear();
    const clean = !err && this.endSent && this.peerEnded;
    if (!clean && !this.silent) {
      const code = err instanceof TunnelStreamError ? err.code : "CLIENT_GONE";
      this.carrier.sendControl({ type: "abort", streamId: this.id, code, message: (err?.message ?? "stream closed").slice(0, 1024) });
    }
    this.carrier.forget(this.id);
    callback(err);
  }

  /** @internal Data from the peer. */
  receive(payload: Buffer): void {
    if (this.destroyed) return;
    if (!this.receiveWindow.receive(payload.length)) return this.abort("FLOW_CONTROL", "peer sent beyond its credit");
    this.meter.onReceived?.(payload.length);
    this.touch();
    this.hold(payload);
    this.settleCredit();
  }

  /** @internal Credit from the peer; more than the window can hold is a violation. */
  grant(bytes: number): void {
    if (this.destroyed) return;
    if (!this.credit.grant(bytes)) return this.abort("FLOW_CONTROL", "peer granted credit beyond the window");
    this.flushWrites();
    if (!this.pendingWrite) this.onCredit?.();
  }

  /** @internal The peer will send no more. */
  peerEnd(): void {
    if (this.peerEnded || this.destroyed) return;
    this.peerEnded = true;
    this.pushCoalesced();
    this.push(null);
  }

  /** @internal The peer aborted the stream, or the tunnel is gone: die without telling the peer. */
  dieQuietly(code: TunnelErrorCode, message: string): void {
    this.silent = true;
    this.destroy(new TunnelStreamError(code, message));
  }

  /** As `net.Socket#setTimeout`: 'timeout' after `ms` without traffic either way (0: off). */
  setTimeout(ms: number, listener?: () => void): this {
    this.idleMs = ms;
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    // As net.Socket does: a listener is added with a timeout and removed with setTimeout(0, listener).
    if (listener) {
      if (ms > 0) this.once("timeout", listener);
      else this.removeListener("timeout", listener);
    }
    if (ms > 0) {
      this.idleTimer = setTimeout(() => this.emit("timeout"), ms);
      this.idleTimer.unref();
    }
    return this;
  }

  /**
   * Hands a received piece (a view into a socket read) to the readable side: while the consumer
   * keeps up (the buffer is empty) as it is, or copied when tiny next to its read chunk
   * (`forConsumer`); while it lags, as it is when large next to its read chunk, else copied into
   * the coalescer, in order.
   */
  private hold(piece: Buffer): void {
    if (this.coalescer.bytes === 0 && this.readableLength === 0) return this.pushPiece(forConsumer(piece));
    if (!worthKeepingAsView(piece)) return this.coalescer.add(piece, (full) => this.pushPiece(full));
    this.pushCoalesced();
    this.pushPiece(piece);
  }

  private pushCoalesced(): void {
    const bytes = this.coalescer.take();
    if (bytes) this.pushPiece(bytes);
  }

  private pushPiece(bytes: Buffer): void {
    this.pushed += bytes.length;
    this.push(bytes);
  }

  /** Hands `pieces` (`bytes` in all, already covered by credit) to the link as data frames. */
  private transmit(pieces: Buffer[], bytes: number): void {
    this.carrier.sendData(this.id, pieces);
    this.meter.onSent?.(bytes);
    this.touch();
  }

  private touch(): void {
    if (this.idleTimer && this.idleMs > 0) this.idleTimer.refresh();
  }

  private flushWrites(): void {
    const pending = this.pendingWrite;
    if (!pending || this.destroyed) return;
    const pieces: Buffer[] = [];
    let sent = 0;
    while (pending.chunks.length > 0) {
      const chunk = pending.chunks[0] as Buffer;
      if (chunk.length === 0) {
        pending.chunks.shift();
        continue;
      }
      const n = this.credit.take(Math.min(chunk.length, MAX_DATA_FRAME_PAYLOAD));
      if (n === 0) break;
      if (n === chunk.length) {
        pieces.push(chunk);
        pending.chunks.shift();
      } else {
        pieces.push(chunk.subarray(0, n));
        pending.chunks[0] = chunk.subarray(n);
      }
      sent += n;
    }
    if (pieces.length > 0) this.transmit(pieces, sent);
    if (pending.chunks.length > 0) return;
    this.pendingWrite = undefined;
    pending.callback();
  }

  /** Returns credit for what the consumer has taken out of the readable side. */
  private settleCredit(): void {
    if (this.peerEnded || this.destroyed) return;
    const consumed = this.pushed - this.readableLength;
    const delta = consumed - this.accounted;
    if (delta <= 0) return;
    this.accounted = consumed;
    const grant = this.receiveWindow.consume(delta);
    if (grant > 0) this.carrier.sendControl({ type: "credit", streamId: this.id, bytes: grant });
  }
}
