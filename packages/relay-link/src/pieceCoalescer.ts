// What a stream keeps of the bytes its consumer has not taken yet. A received payload is a view
// into the socket's read chunk (no copy on the byte path), and a view pins its whole chunk — up
// to 64 KiB — plus about a hundred bytes of heap for as long as it is buffered, whatever its size.
// Credit counts payload bytes only, so a peer sending 1-byte frames to a stream whose consumer
// lags could make one window of credit pin thousands of times its size. While the consumer lags,
// pieces that are small next to the memory they pin are therefore copied into coalescing buffers.

/** Bytes of one coalescing buffer. */
export const COALESCE_BUFFER_BYTES = 16 * 1024;
/** Smallest piece kept as a view while the consumer lags (smaller ones cost more in heap than a copy). */
const MIN_VIEW_BYTES = 4 * 1024;

/**
 * What a consumer that keeps up gets: the piece itself, or a copy when it is under an eighth of
 * the read chunk it would pin. A consumer hands pieces on (to the renter's response, to Jupyter's
 * socket), and what it hands on may wait in that sink's buffer, which counts bytes, not chunks:
 * a piece that pinned a 64 KiB chunk per byte there would make a slow renter of a hostile
 * provider's own session pin a gigabyte on the control plane. Bulk data comes in whole read
 * chunks and stays a view; only the odd small piece at a frame boundary is copied.
 */
export function forConsumer(piece: Buffer): Buffer {
  return piece.length * 8 >= piece.buffer.byteLength ? piece : Buffer.from(piece);
}

/** True when keeping `piece` as a view pins at most twice its size, and it is not tiny. */
export function worthKeepingAsView(piece: Buffer): boolean {
  return piece.length >= MIN_VIEW_BYTES && piece.length * 2 >= piece.buffer.byteLength;
}

/**
 * Copies small pieces, in order, into buffers of `COALESCE_BUFFER_BYTES`: a full one is handed
 * on, the last one is taken when the consumer catches up (or before a piece kept as a view, to
 * keep the order). Whatever it hands on pins at most twice its length.
 */
export class PieceCoalescer {
  private buffer: Buffer | undefined;
  private fill = 0;

  /** Bytes copied in and not yet handed on. */
  get bytes(): number {
    return this.fill;
  }

  /** Copies `piece` in; `full` receives each buffer that fills up. */
  add(piece: Buffer, full: (buffer: Buffer) => void): void {
    let at = 0;
    while (at < piece.length) {
      this.buffer ??= Buffer.allocUnsafeSlow(COALESCE_BUFFER_BYTES);
      const n = piece.copy(this.buffer, this.fill, at);
      this.fill += n;
      at += n;
      if (this.fill < COALESCE_BUFFER_BYTES) continue;
      const buffer = this.buffer;
      this.buffer = undefined;
      this.fill = 0;
      full(buffer);
    }
  }

  /** The bytes copied in so far as one buffer (undefined when none). */
  take(): Buffer | undefined {
    const buffer = this.buffer;
    const fill = this.fill;
    if (!buffer || fill === 0) return undefined;
    this.fill = 0;
    if (fill * 2 >= buffer.length) {
      this.buffer = undefined;
      return buffer.subarray(0, fill);
    }
    // Mostly empty: hand on an exact copy and keep the buffer for the next pieces.
    const copy = Buffer.allocUnsafeSlow(fill);
    buffer.copy(copy, 0, 0, fill);
    return copy;
  }

  /** Drops everything (the stream is gone). */
  clear(): void {
    this.buffer = undefined;
    this.fill = 0;
  }
}
