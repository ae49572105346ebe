import { z } from "zod";

// Frames of the relay tunnel (`GET /agent/tunnel`, issue 4). One WebSocket per session carries
// many streams (one per relayed HTTP request or upgraded WebSocket). Control frames are JSON text
// messages, a discriminated union on `type`; body bytes travel in binary data frames:
//
//   byte 0      DATA_FRAME_KIND (0x01)
//   bytes 1..4  streamId, uint32 big-endian
//   bytes 5..   payload (at most MAX_DATA_FRAME_PAYLOAD bytes)
//
// Flow control is credit-based per stream and per direction: `open.window` is the initial window
// of both directions of the stream (the control plane must be able to send a request body before
// any response exists). Each receiver returns `credit` frames as it hands bytes on to their
// consumer; a sender never has more than the granted credit in flight, so neither end buffers
// more than one window per stream, whatever the speed of the renter or of Jupyter.

/** Kind byte of a binary data frame. */
export const DATA_FRAME_KIND = 0x01;
/** Bytes before the payload of a binary data frame. */
export const DATA_FRAME_HEADER_BYTES = 5;
/** Largest payload of one data frame; bigger chunks are split. */
export const MAX_DATA_FRAME_PAYLOAD = 8 * 1024;
/** Default receive window of one stream, in bytes. */
export const DEFAULT_STREAM_WINDOW_BYTES = 1024 * 1024;
/** Most streams one tunnel carries at once; more are refused with TOO_MANY_STREAMS. */
export const MAX_STREAMS_PER_TUNNEL = 512;
/** Largest JSON control frame accepted (headers included). */
export const MAX_CONTROL_FRAME_BYTES = 256 * 1024;
/** WebSocket close code the control plane uses when a newer tunnel replaces an older one. */
export const TUNNEL_CLOSE_REPLACED = 4000;
/** WebSocket close code the control plane uses when the session ended. */
export const TUNNEL_CLOSE_SESSION_ENDED = 4001;

/** Why a stream was aborted or a frame refused. */
export const TUNNEL_ERROR_CODES = [
  "BAD_FRAME",
  "UNKNOWN_STREAM",
  "DUPLICATE_STREAM",
  "FLOW_CONTROL",
  "TOO_MANY_STREAMS",
  "FORBIDDEN_PATH",
  "UPSTREAM_UNREACHABLE",
  "UPSTREAM_ERROR",
  "CLIENT_GONE",
  "BANDWIDTH_EXCEEDED",
  "TUNNEL_CLOSED",
] as const;
export const TunnelErrorCodeSchema = z.enum(TUNNEL_ERROR_CODES);
/** A tunnel-level error code (carried in `abort` and `error` frames). */
export type TunnelErrorCode = z.infer<typeof TunnelErrorCodeSchema>;

/** A stream id: chosen by the control plane, unique within one tunnel connection. */
export const StreamIdSchema = z.number().int().min(1).max(0xffff_ffff);

/** HTTP headers as ordered name/value pairs (repeated names such as Set-Cookie stay separate). */
export const HeaderListSchema = z
  .array(
    z.tuple([
      z.string().min(1).max(256).regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, "expected an HTTP header name"),
      // Node's own rule for header values (tab, visible ASCII, obs-text): anything else would
      // make setHeader/writeHead throw on the other end.
      z.string().max(16 * 1024).regex(/^[\t\x20-\x7e\x80-\xff]*$/, "header value with a forbidden character"),
    ]),
  )
  .max(256);
export type HeaderList = z.infer<typeof HeaderListSchema>;

const windowBytes = z.number().int().min(MAX_DATA_FRAME_PAYLOAD).max(16 * 1024 * 1024);

/** Control plane → agent: a renter request (or WebSocket upgrade when `upgrade`). */
export const OpenFrameSchema = z.strictObject({
  type: z.literal("open"),
  streamId: StreamIdSchema,
  method: z.string().regex(/^[A-Z]{1,16}$/),
  /** Path and query, unchanged (Jupyter runs with base_url `/s/<id>/`). */
  path: z
    .string()
    .max(16 * 1024)
    .regex(/^\/[\x21-\xff]*$/, "expected a path starting with / without spaces or control characters"),
  headers: HeaderListSchema,
  upgrade: z.boolean(),
  /** Initial credit of each direction, in bytes; the agent refuses windows above its own limit. */
  window: windowBytes,
});

/** Agent → control plane: the upstream answered (101 for an accepted upgrade). */
export const ResponseFrameSchema = z.strictObject({
  type: z.literal("response"),
  streamId: StreamIdSchema,
  status: z.number().int().min(100).max(599),
  statusMessage: z.string().max(256).regex(/^[\t\x20-\x7e\x80-\xff]*$/, "status message with a forbidden character").optional(),
  headers: HeaderListSchema,
});

/** Either side: no more data from me on this stream (half close). */
export const EndFrameSchema = z.strictObject({
  type: z.literal("end"),
  streamId: StreamIdSchema,
});

/** Either side: the receiver consumed `bytes` more of this stream; the sender may send them. */
export const CreditFrameSchema = z.strictObject({
  type: z.literal("credit"),
  streamId: StreamIdSchema,
  bytes: z.number().int().positive().max(64 * 1024 * 1024),
});

/** Either side: the stream is dead; drop its state and release its resources. */
export const AbortFrameSchema = z.strictObject({
  type: z.literal("abort"),
  streamId: StreamIdSchema,
  code: TunnelErrorCodeSchema,
  message: z.string().max(1024),
});

/** Either side: a frame could not be used (no stream to abort). Typed reply, never a crash. */
export const ErrorFrameSchema = z.strictObject({
  type: z.literal("error"),
  code: TunnelErrorCodeSchema,
  message: z.string().max(1024),
});

/** Control plane → agent, once after the upgrade: the tunnel is bound to this session. */
export const WelcomeFrameSchema = z.strictObject({
  type: z.literal("welcome"),
  sessionId: z.string().min(1).max(128),
  protocolVersion: z.number().int().positive(),
});

/** Every JSON control frame of the tunnel. */
export const TunnelControlFrameSchema = z.discriminatedUnion("type", [
  OpenFrameSchema,
  ResponseFrameSchema,
  EndFrameSchema,
  CreditFrameSchema,
  AbortFrameSchema,
  ErrorFrameSchema,
  WelcomeFrameSchema,
]);
export type TunnelControlFrame = z.infer<typeof TunnelControlFrameSchema>;
export type OpenFrame = z.infer<typeof OpenFrameSchema>;
export type ResponseFrame = z.infer<typeof ResponseFrameSchema>;
export type AbortFrame = z.infer<typeof AbortFrameSchema>;

/** A decoded binary data frame. `payload` is a view into the received message (no copy). */
export interface DataFrame {
  type: "data";
  streamId: number;
  payload: Uint8Array;
}

/** Any decoded tunnel frame. */
export type TunnelFrame = TunnelControlFrame | DataFrame;

/** What a frame decode yields: the frame, or a typed reason that the receiver answers with. */
export type DecodeResult =
  | { ok: true; frame: TunnelFrame }
  | { ok: false; code: TunnelErrorCode; message: string; streamId?: number };

/**
 * Serializes a control frame. Not re-validated here (the type already constrains it, and this is
 * on the per-request path); every frame IS validated on arrival by `decodeTunnelFrame`.
 */
export function encodeControlFrame(frame: TunnelControlFrame): string {
  return JSON.stringify(frame);
}

/**
 * Builds one binary data frame. Callers split payloads larger than MAX_DATA_FRAME_PAYLOAD.
 * `alloc` lets Node callers skip zero-filling (Buffer.allocUnsafe): every byte is overwritten.
 */
export function encodeDataFrame(
  streamId: number,
  payload: Uint8Array,
  alloc: (size: number) => Uint8Array = (size) => new Uint8Array(size),
): Uint8Array {
  if (payload.byteLength > MAX_DATA_FRAME_PAYLOAD) throw new RangeError("data frame payload too large");
  const frame = alloc(DATA_FRAME_HEADER_BYTES + payload.byteLength);
  frame[0] = DATA_FRAME_KIND;
  new DataView(frame.buffer, frame.byteOffset, frame.byteLength).setUint32(1, streamId, false);
  frame.set(payload, DATA_FRAME_HEADER_BYTES);
  return frame;
}

/** Decodes the 5-byte header of a data frame; the payload is a view, not a copy. */
export function decodeDataFrame(bytes: Uint8Array): DecodeResult {
  if (bytes.byteLength < DATA_FRAME_HEADER_BYTES) {
    return { ok: false, code: "BAD_FRAME", message: "data frame shorter than its header" };
  }
  if (bytes[0] !== DATA_FRAME_KIND) {
    return { ok: false, code: "BAD_FRAME", message: `unknown binary frame kind ${bytes[0]}` };
  }
  const streamId = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(1, false);
  const payload = bytes.subarray(DATA_FRAME_HEADER_BYTES);
  if (streamId === 0) return { ok: false, code: "BAD_FRAME", message: "stream id 0" };
  if (payload.byteLength > MAX_DATA_FRAME_PAYLOAD) {
    return { ok: false, code: "BAD_FRAME", message: "data frame payload too large", streamId };
  }
  return { ok: true, frame: { type: "data", streamId, payload } };
}

/** Parses and validates a JSON control frame; a bad one names the field path. */
export function decodeControlFrame(text: string): DecodeResult {
  if (text.length > MAX_CONTROL_FRAME_BYTES) {
    return { ok: false, code: "BAD_FRAME", message: "control frame too large" };
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return { ok: false, code: "BAD_FRAME", message: "control frame is not JSON" };
  }
  const parsed = TunnelControlFrameSchema.safeParse(raw);
  if (parsed.success) return { ok: true, frame: parsed.data };
  const issue = parsed.error.issues[0];
  const path = issue ? issue.path.map(String).join(".") : "";
  const reason = issue ? issue.message : "invalid frame";
  const streamId = StreamIdSchema.safeParse((raw as { streamId?: unknown } | null)?.streamId);
  const result: DecodeResult = {
    ok: false,
    code: "BAD_FRAME",
    message: path ? `${path}: ${reason}` : reason,
  };
  if (streamId.success) result.streamId = streamId.data;
  return result;
}

/** Decodes any tunnel message: text → control frame, binary → data frame. */
export function decodeTunnelFrame(message: string | Uint8Array): DecodeResult {
  return typeof message === "string" ? decodeControlFrame(message) : decodeDataFrame(message);
}

/**
 * Send-side credit of one stream: how many bytes may still be sent before the peer grants more.
 * Pure accounting; the I/O glue on each side asks it before sending and feeds it `credit` frames.
 */
export class SendCredit {
  private available: number;

  constructor(initialWindow: number) {
    this.available = initialWindow;
  }

  /** Bytes that may be sent now. */
  get bytes(): number {
    return this.available;
  }

  /** Takes up to `wanted` bytes of credit and returns how many were taken. */
  take(wanted: number): number {
    const taken = Math.min(wanted, this.available);
    this.available -= taken;
    return taken;
  }

  /** Adds credit the peer granted. */
  grant(bytes: number): void {
    this.available += bytes;
  }
}

/**
 * Receive-side accounting of one stream: checks the peer never sends beyond the credit granted so
 * far (window + every credit returned) and batches credit returns so a credit frame goes out per
 * quarter window consumed, not per chunk.
 */
export class ReceiveWindow {
  private received = 0;
  private granted = 0;
  private consumed = 0;

  constructor(readonly window: number) {}

  /** Records `bytes` arriving; false when the peer overran its credit (protocol violation). */
  receive(bytes: number): boolean {
    this.received += bytes;
    return this.received <= this.window + this.granted;
  }

  /** Records `bytes` handed on to the consumer; returns the credit to grant now (0 = wait). */
  consume(bytes: number): number {
    this.consumed += bytes;
    const owed = this.consumed - this.granted;
    // Batch small grants while more bytes are still buffered; grant at once when drained.
    if (owed < this.window / 4 && this.consumed < this.received) return 0;
    this.granted += owed;
    return owed;
  }

  /** Bytes received and not yet handed on. */
  get buffered(): number {
    return this.received - this.consumed;
  }
}
