// RFC 6455 framing for the relay tunnel, written for one job: hand a data message's payload on
// piece by piece as it arrives from the socket, without collecting the message first. The `ws`
// package (used before) emits a message only once it is complete and copies every message that
// straddles two socket reads into a fresh buffer; on the relay's byte path that cost more CPU
// than the rest of the hop (bench/, "Relay design" in the control-plane README).
//
// What is implemented: text, binary and continuation frames (fragmented messages are accepted),
// ping/pong/close, 7/16/64-bit lengths, masking both ways. No extension is ever negotiated, so
// any RSV bit is a protocol error.

/** Frame opcodes (RFC 6455 §5.2). */
export const OPCODE = {
  continuation: 0x0,
  text: 0x1,
  binary: 0x2,
  close: 0x8,
  ping: 0x9,
  pong: 0xa,
} as const;

/** Close codes this implementation sends (RFC 6455 §7.4.1). */
export const CLOSE_CODE = {
  normal: 1000,
  goingAway: 1001,
  protocolError: 1002,
  invalidPayload: 1007,
  policyViolation: 1008,
  tooBig: 1009,
} as const;

const MAX_CONTROL_PAYLOAD = 125;

/**
 * The header of one unfragmented frame carrying `payloadBytes`, optionally followed by `extra`
 * bytes reserved for the caller (the tunnel's 5-byte data header, so that one small buffer and
 * the payload go out in one writev). A client must mask; it sends the all-zero key, which leaves
 * the payload unchanged (see `WebSocketReader` on why that is acceptable here).
 */
export function encodeFrameHeader(opcode: number, payloadBytes: number, masked: boolean, extra = 0): { header: Buffer; at: number } {
  const lengthBytes = payloadBytes < 126 ? 0 : payloadBytes <= 0xffff ? 2 : 8;
  const size = 2 + lengthBytes + (masked ? 4 : 0);
  const header = Buffer.allocUnsafe(size + extra);
  header[0] = 0x80 | opcode;
  const maskBit = masked ? 0x80 : 0;
  if (lengthBytes === 0) header[1] = maskBit | payloadBytes;
  else if (lengthBytes === 2) {
    header[1] = maskBit | 126;
    header.writeUInt16BE(payloadBytes, 2);
  } else {
    header[1] = maskBit | 127;
    header.writeUInt32BE(Math.floor(payloadBytes / 2 ** 32), 2);
    header.writeUInt32BE(payloadBytes >>> 0, 6);
  }
  if (masked) header.fill(0, 2 + lengthBytes, size);
  return { header, at: size };
}

/** One whole frame (control frames and small text messages). */
export function encodeFrame(opcode: number, payload: Buffer, masked: boolean): Buffer {
  const { header } = encodeFrameHeader(opcode, payload.length, masked);
  return Buffer.concat([header, payload]);
}

/** The payload of a close frame: the code, then a UTF-8 reason cut to fit 125 bytes. */
export function closePayload(code: number, reason: string): Buffer {
  const text = Buffer.from(reason, "utf8").subarray(0, MAX_CONTROL_PAYLOAD - 2);
  const payload = Buffer.allocUnsafe(2 + text.length);
  payload.writeUInt16BE(code, 0);
  text.copy(payload, 2);
  return payload;
}

/** What a `WebSocketReader` reports. Payload views point into the socket's read chunks. */
export interface WebSocketReaderHandlers {
  /** A data message starts; `binary` false for a text message. */
  onMessageStart(binary: boolean): void;
  /** The next bytes of the current data message, in order (already unmasked). */
  onMessageData(bytes: Buffer): void;
  /** The current data message is complete. */
  onMessageEnd(): void;
  onPing(payload: Buffer): void;
  onPong(payload: Buffer): void;
  /** The peer sent a close frame (code absent when its payload was empty). */
  onClose(code: number | undefined, reason: string): void;
  /** The peer broke the protocol: the connection must be failed with `closeCode`. */
  onProtocolError(closeCode: number, message: string): void;
}

const enum State {
  Header,
  Payload,
  Failed,
}

/**
 * Incremental frame parser: feed it every chunk read from the socket. Enforces the RFC's rules
 * (RSV bits, opcodes, control frames short and unfragmented, continuation order, masking by
 * direction, 64-bit lengths below 2^53) and `maxMessageBytes`; after a protocol error it ignores
 * everything.
 *
 * `expectMasked` is true on the server side: a client must mask every frame (RFC 6455 §5.1).
 * Masks protect browsers' intermediaries from script-chosen bytes; the tunnel's client is the
 * agent, never a browser, and production tunnels run over TLS, so the agent sends the all-zero key
 * and the unmasking pass is skipped for it. Any other key is honoured.
 */
export class WebSocketReader {
  private state = State.Header;
  private readonly head = Buffer.alloc(14);
  private headFill = 0;
  private opcode = 0;
  private fin = false;
  private remaining = 0;
  private mask: Buffer | undefined;
  private maskOffset = 0;
  private control: Buffer[] = [];
  private inMessage = false;
  private messageBytes = 0;

  constructor(
    private readonly handlers: WebSocketReaderHandlers,
    private readonly expectMasked: boolean,
    private readonly maxMessageBytes: number,
  ) {}

  /** Parses one chunk read from the socket. */
  push(chunk: Buffer): void {
    let offset = 0;
    while (offset < chunk.length && this.state !== State.Failed) {
      if (this.state === State.Header) {
        offset = this.readHeader(chunk, offset);
        continue;
      }
      const take = Math.min(this.remaining, chunk.length - offset);
      const piece = chunk.subarray(offset, offset + take);
      offset += take;
      this.remaining -= take;
      this.payload(piece);
      if (this.remaining === 0) this.frameDone();
    }
  }

  private fail(closeCode: number, message: string): void {
    this.state = State.Failed;
    this.handlers.onProtocolError(closeCode, message);
  }

  /** Collects header bytes (they may span chunks); returns the new offset. */
  private readHeader(chunk: Buffer, offset: number): number {
    const need = (bytes: number): boolean => {
      if (this.headFill >= bytes) return true;
      const n = Math.min(bytes - this.headFill, chunk.length - offset);
      chunk.copy(this.head, this.headFill, offset, offset + n);
      this.headFill += n;
      offset += n;
      return this.headFill >= bytes;
    };
    if (!need(2)) return offset;
    const b0 = this.head[0] as number;
    const b1 = this.head[1] as number;
    const lengthCode = b1 & 0x7f;
    const lengthBytes = lengthCode === 126 ? 2 : lengthCode === 127 ? 8 : 0;
    const masked = (b1 & 0x80) !== 0;
    if (!need(2 + lengthBytes + (masked ? 4 : 0))) return offset;
    this.headFill = 0;
    let length = lengthCode;
    if (lengthBytes === 2) length = this.head.readUInt16BE(2);
    else if (lengthBytes === 8) {
      const high = this.head.readUInt32BE(2);
      if (high > 0x1fffff) return (this.fail(CLOSE_CODE.tooBig, "frame length beyond 2^53"), offset);
      length = high * 2 ** 32 + this.head.readUInt32BE(6);
    }
    const error = this.checkHeader(b0, masked, length);
    if (error) return (this.fail(error[0], error[1]), offset);
    this.fin = (b0 & 0x80) !== 0;
    this.opcode = b0 & 0x0f;
    this.remaining = length;
    this.mask = masked && this.head.readUInt32BE(2 + lengthBytes) !== 0 ? Buffer.from(this.head.subarray(2 + lengthBytes, 6 + lengthBytes)) : undefined;
    this.maskOffset = 0;
    if (this.opcode === OPCODE.text || this.opcode === OPCODE.binary) {
      this.inMessage = true;
      this.messageBytes = 0;
      this.handlers.onMessageStart(this.opcode === OPCODE.binary);
    }
    this.messageBytes += this.opcode < 0x8 ? length : 0;
    this.state = State.Payload;
    if (length === 0) this.frameDone();
    return offset;
  }

  /** Why a frame header is unacceptable, as [close code, message], or undefined. */
  private checkHeader(b0: number, masked: boolean, length: number): [number, string] | undefined {
    const opcode = b0 & 0x0f;
    if ((b0 & 0x70) !== 0) return [CLOSE_CODE.protocolError, "RSV bit set without an extension"];
    if (masked !== this.expectMasked) return [CLOSE_CODE.protocolError, masked ? "masked frame from the server" : "unmasked frame from the client"];
    if (opcode >= 0x8) {
      if (opcode > OPCODE.pong) return [CLOSE_CODE.protocolError, `unknown opcode ${opcode}`];
      if ((b0 & 0x80) === 0) return [CLOSE_CODE.protocolError, "fragmented control frame"];
      if (length > MAX_CONTROL_PAYLOAD) return [CLOSE_CODE.protocolError, "control frame longer than 125 bytes"];
      return undefined;
    }
    if (opcode > OPCODE.binary) return [CLOSE_CODE.protocolError, `unknown opcode ${opcode}`];
    if (opcode === OPCODE.continuation && !this.inMessage) return [CLOSE_CODE.protocolError, "continuation frame without a message"];
    if (opcode !== OPCODE.continuation && this.inMessage) return [CLOSE_CODE.protocolError, "new message inside a fragmented one"];
    const total = (opcode === OPCODE.continuation ? this.messageBytes : 0) + length;
    if (total > this.maxMessageBytes) return [CLOSE_CODE.tooBig, `message longer than ${this.maxMessageBytes} bytes`];
    return undefined;
  }

  private payload(piece: Buffer): void {
    if (this.mask) this.unmask(piece);
    if (this.opcode >= 0x8) this.control.push(piece);
    else if (piece.length > 0) this.handlers.onMessageData(piece);
  }

  private unmask(piece: Buffer): void {
    const mask = this.mask as Buffer;
    for (let i = 0; i < piece.length; i++) piece[i] = (piece[i] as number) ^ (mask[(this.maskOffset + i) & 3] as number);
    this.maskOffset = (this.maskOffset + piece.length) & 3;
  }

  private frameDone(): void {
    this.state = State.Header;
    const opcode = this.opcode;
    if (opcode < 0x8) {
      if (this.fin) {
        this.inMessage = false;
        this.handlers.onMessageEnd();
      }
      return;
    }
    const payload = this.control.length === 1 ? (this.control[0] as Buffer) : Buffer.concat(this.control);
    this.control = [];
    if (opcode === OPCODE.ping) return this.handlers.onPing(payload);
    if (opcode === OPCODE.pong) return this.handlers.onPong(payload);
    if (payload.length === 1) return this.fail(CLOSE_CODE.protocolError, "close frame with a 1-byte payload");
    const code = payload.length >= 2 ? payload.readUInt16BE(0) : undefined;
    this.state = State.Failed; // nothing after a close frame is read
    this.handlers.onClose(code, payload.subarray(2).toString("utf8"));
  }
}
