import { z } from "zod";

// Frames of the relay tunnel (`GET /agent/tunnel`, issue 4). The agent dials ONE WebSocket per
// session out to the control plane. It carries many *streams*; a stream is one TCP connection
// that the agent opens to the session's Jupyter on 127.0.0.1 when the control plane asks for it.
// The control plane speaks HTTP/1.1 over its streams itself (a keep-alive pool per tunnel), so a
// relayed request on an existing connection costs no control frame at all, and the agent is a
// byte pipe that parses nothing a renter sends.
//
// Control frames are JSON text messages, a discriminated union on `type`. Bytes travel in binary
// data frames:
//
//   byte 0      DATA_FRAME_KIND (0x01)
//   bytes 1..4  streamId, uint32 big-endian
//   bytes 5..   payload (at most MAX_DATA_FRAME_PAYLOAD bytes)
//
// A receiver may hand a data frame's payload on in pieces as they arrive (no frame is ever
// collected whole), so the size of a frame costs no memory on the receiving side.
//
// Flow control is credit-based per stream and per direction: `open.window` is the initial credit
// of both directions. Each receiver returns `credit` frames as it hands bytes on to their consumer;
// a sender never has more than the granted credit in flight, so neither end buffers more than one
// window per stream, whatever the speed of the renter or of Jupyter.

/** Kind byte of a binary data frame. */
export const DATA_FRAME_KIND = 0x01;
/** Bytes before the payload of a binary data frame. */
export const DATA_FRAME_HEADER_BYTES = 5;
/** Largest payload of one data frame; bigger chunks are split. */
export const MAX_DATA_FRAME_PAYLOAD = 256 * 1024;
/** Default receive window of one stream, in bytes. */
export const DEFAULT_STREAM_WINDOW_BYTES = 1024 * 1024;
/** Most streams (upstream connections) one tunnel carries at once; more are refused. */
export const MAX_STREAMS_PER_TUNNEL = 512;
/** Largest JSON control frame accepted. */
export const MAX_CONTROL_FRAME_BYTES = 16 * 1024;
/** Largest WebSocket message either end accepts on the tunnel. */
export const MAX_TUNNEL_MESSAGE_BYTES = DATA_FRAME_HEADER_BYTES + MAX_DATA_FRAME_PAYLOAD;
/** WebSocket close code the control plane uses when a newer tunnel replaces an older one. */
export const TUNNEL_CLOSE_REPLACED = 4000;
/** WebSocket close code the control plane uses when the session ended. */
export const TUNNEL_CLOSE_SESSION_ENDED = 4001;
/** WebSocket close code the control plane uses when the agent's hello is missing or unusable. */
export const TUNNEL_CLOSE_BAD_HELLO = 4002;

/** The reason of a 4002 close when the agent's hello names another protocol version. */
export function versionRequiredReason(version: number): string {
  return `protocol version ${version} required`;
}

/** The version a 4002 close reason requires, or undefined when it is about something else. */
export function versionRequiredBy(reason: string): number | undefined {
  const match = /^protocol version (\d+) required$/.exec(reason);
  return match ? Number(match[1]) : undefined;
}

/** Why a stream was aborted or a frame refused. */
export const TUNNEL_ERROR_CODES = [
  "BAD_FRAME",
  "UNKNOWN_STREAM",
  "DUPLICATE_STREAM",
  "FLOW_CONTROL",
  "TOO_MANY_STREAMS",
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

const windowBytes = z.number().int().min(64 * 1024).max(16 * 1024 * 1024);

/** Control plane → agent, once after the upgrade: the tunnel is bound to this session. */
export const WelcomeFrameSchema = z.strictObject({
  type: z.literal("welcome"),
  sessionId: z.string().min(1).max(128),
  protocolVersion: z.number().int().positive(),
});

/**
 * Agent → control plane, once after the upgrade: where Jupyter listens on the provider host and
 * the token the control plane's HTTP client authenticates to it with. The token stays in the
 * control plane's memory (never stored, logged or sent to a renter); it gives the control plane
 * nothing it could not already do, since every byte of the session passes through it anyway.
 */
export const HelloFrameSchema = z.strictObject({
  type: z.literal("hello"),
  protocolVersion: z.number().int().positive(),
  jupyterPort: z.number().int().min(1).max(65535),
  jupyterToken: z.string().min(16).max(256).regex(/^[A-Za-z0-9_.~-]+$/, "expected a URL-safe token"),
});

/** Control plane → agent: open a new connection to Jupyter as stream `streamId`. */
export const OpenFrameSchema = z.strictObject({
  type: z.literal("open"),
  streamId: StreamIdSchema,
  /** Initial credit of each direction, in bytes; the agent refuses windows above its own limit. */
  window: windowBytes,
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

/** Every JSON control frame of the tunnel. */
export const TunnelControlFrameSchema = z.discriminatedUnion("type", [
  WelcomeFrameSchema,
  HelloFrameSchema,
  OpenFrameSchema,
  EndFrameSchema,
  CreditFrameSchema,
  AbortFrameSchema,
  ErrorFrameSchema,
]);
export type TunnelControlFrame = z.infer<typeof TunnelControlFrameSchema>;
export type WelcomeFrame = z.infer<typeof WelcomeFrameSchema>;
export type HelloFrame = z.infer<typeof HelloFrameSchema>;
export type OpenFrame = z.infer<typeof OpenFrameSchema>;
export type AbortFrame = z.infer<typeof AbortFrameSchema>;

/** Why a received frame is unusable: the typed reason the receiver answers with. */
export type DecodeError = { ok: false; code: TunnelErrorCode; message: string; streamId?: number };

/** What a control frame decode yields: the frame, or why it is unusable. */
export type DecodeResult = { ok: true; frame: TunnelControlFrame } | DecodeError;

/**
 * Serializes a control frame. Not re-validated here (the type already constrains it); every
 * frame IS validated on arrival by `decodeControlFrame`.
 */
export function encodeControlFrame(frame: TunnelControlFrame): string {
  return JSON.stringify(frame);
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

/** The 5-byte header of a data frame carrying `streamId`. */
export function encodeDataFrameHeader(streamId: number, into: Uint8Array = new Uint8Array(DATA_FRAME_HEADER_BYTES), at = 0): Uint8Array {
  into[at] = DATA_FRAME_KIND;
  new DataView(into.buffer, into.byteOffset, into.byteLength).setUint32(at + 1, streamId, false);
  return into;
}

/**
 * Reads the 5-byte header at the start of a data frame (a binary message): the stream id, or why
 * the frame is unusable. The payload that follows is the caller's to hand on.
 */
export function decodeDataFrameHeader(
  header: Uint8Array,
  payloadBytes: number,
): { ok: true; streamId: number } | DecodeError {
  if (header.byteLength < DATA_FRAME_HEADER_BYTES) {
    return { ok: false, code: "BAD_FRAME", message: "data frame shorter than its header" };
  }
  if (header[0] !== DATA_FRAME_KIND) {
    return { ok: false, code: "BAD_FRAME", message: `unknown binary frame kind ${header[0]}` };
  }
  const streamId = new DataView(header.buffer, header.byteOffset, header.byteLength).getUint32(1, false);
  if (streamId === 0) return { ok: false, code: "BAD_FRAME", message: "stream id 0" };
  if (payloadBytes > MAX_DATA_FRAME_PAYLOAD) {
    return { ok: false, code: "BAD_FRAME", message: "data frame payload too large", streamId };
  }
  return { ok: true, streamId };
}

/**
 * One whole data frame (header and payload in one buffer), for senders that hand over whole
 * WebSocket messages. The relay itself sends header and payload as two pieces of one writev.
 */
export function encodeDataFrame(streamId: number, payload: Uint8Array): Uint8Array {
  const frame = new Uint8Array(DATA_FRAME_HEADER_BYTES + payload.byteLength);
  encodeDataFrameHeader(streamId, frame);
  frame.set(payload, DATA_FRAME_HEADER_BYTES);
  return frame;
}

/** Decodes one whole data frame (a binary message received at once); the payload is a view. */
export function decodeDataFrame(
  message: Uint8Array,
): { ok: true; streamId: number; payload: Uint8Array } | DecodeError {
  const header = decodeDataFrameHeader(message.subarray(0, DATA_FRAME_HEADER_BYTES), Math.max(0, message.byteLength - DATA_FRAME_HEADER_BYTES));
  return header.ok ? { ok: true, streamId: header.streamId, payload: message.subarray(DATA_FRAME_HEADER_BYTES) } : header;
}

/**
 * Send-side credit of one stream: how many bytes may still be sent before the peer grants more.
 * Pure accounting; the I/O glue on each side asks it before sending and feeds it `credit` frames.
 * Credit never exceeds the initial window: an honest receiver (`ReceiveWindow`) only grants back
 * bytes it has received, so a grant beyond that is a peer asking to be sent more than it could
 * ever have room for, and is refused.
 */
export class SendCredit {
  private available: number;

  constructor(readonly initialWindow: number) {
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

  /**
   * Adds credit the peer granted; false (and nothing added) when it would lift the credit above
   * the initial window, a protocol violation (FLOW_CONTROL).
   */
  grant(bytes: number): boolean {
    if (this.available + bytes > this.initialWindow) return false;
    this.available += bytes;
    return true;
  }
}

/**
 * Receive-side accounting of one stream: checks the peer never sends beyond the credit granted so
 * far (window + every credit returned) and batches credit returns so a credit frame goes out per
 * half window consumed, not per chunk nor per small response (a keep-alive connection carrying
 * many small requests sends no credit frame at all until half a window has passed). The sender
 * can never stall: it runs out of credit only with a whole window unacknowledged, and once half of
 * that is consumed a grant is due. (Each credit frame may wake the sender's process: two per
 * window measured cheaper than four, bench/.)
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
    if (owed < this.window / 2) return 0;
    this.granted += owed;
    return owed;
  }

  /** Bytes received and not yet handed on. */
  get buffered(): number {
    return this.received - this.consumed;
  }
}
