// The stream table of one tunnel WebSocket, used by both ends: the control plane (server side of
// the WebSocket, opens streams) and the agent (client side, connects each stream to Jupyter).
// @runit/protocol holds the frame shapes and the credit arithmetic; this file drives the socket.
import type { Socket } from "node:net";
import {
  DATA_FRAME_HEADER_BYTES,
  MAX_CONTROL_FRAME_BYTES,
  MAX_STREAMS_PER_TUNNEL,
  MAX_TUNNEL_MESSAGE_BYTES,
  decodeControlFrame,
  decodeDataFrameHeader,
  encodeControlFrame,
  encodeDataFrameHeader,
  type HelloFrame,
  type OpenFrame,
  type TunnelControlFrame,
  type TunnelErrorCode,
  type WelcomeFrame,
} from "@runit/protocol";
import { TunnelStream, type StreamCarrier, type StreamMeter } from "./tunnelStream.js";
import { CLOSE_CODE, OPCODE, WebSocketReader, closePayload, encodeFrame, encodeFrameHeader } from "./webSocketFrames.js";

/** What the owner of a link reacts to; stream frames (data, credit, end, abort) are handled here. */
export interface TunnelLinkHandlers {
  /** The peer asks for a stream (agent side). */
  onOpen?(frame: OpenFrame): void;
  /** The agent's hello (control-plane side). */
  onHello?(frame: HelloFrame): void;
  /** The control plane's welcome (agent side). */
  onWelcome?(frame: WelcomeFrame): void;
  /** The peer reported an unusable frame. */
  onPeerError?(code: TunnelErrorCode, message: string): void;
  /** The WebSocket is gone; `code` is the close code the peer sent, if it sent one. */
  onClose?(code: number | undefined, reason: string): void;
}

/** The data message being received: its tunnel header and the stream it feeds. */
interface Incoming {
  binary: boolean;
  header: Buffer;
  headerFill: number;
  stream: TunnelStream | undefined;
  skip: boolean;
  text: Buffer[];
  textBytes: number;
}

const textDecoder = new TextDecoder("utf-8", { fatal: true });

/**
 * Frames of the peer's this end refuses (an `error` or `abort` reply) before it fails the link
 * with 1008. An honest peer sends none: late frames of streams already gone and aborts of streams
 * either end just closed are dropped without a reply and do not count.
 */
export const MAX_REFUSED_FRAMES = 64;

/**
 * One tunnel WebSocket over its raw socket. `role` is "server" on the control plane (frames from
 * the agent must be masked) and "client" on the agent (it masks, with the all-zero key). Every
 * arriving control frame is validated; a bad one aborts the stream it names or is answered with
 * an `error` frame, never a crash. A protocol violation fails the WebSocket with its close code.
 *
 * A peer must not be able to make this end buffer replies it never reads: of pongs at most one
 * is pending (later pings are answered by one pong for the latest, RFC 6455 §5.5.3), and after
 * `MAX_REFUSED_FRAMES` refused frames the link is closed with 1008 (policy violation).
 */
export class TunnelLink implements StreamCarrier {
  private readonly streams = new Map<number, TunnelStream>();
  private readonly reader: WebSocketReader;
  private readonly masked: boolean;
  private nextId = 1;
  private closing = false;
  private dead = false;
  private peerCloseCode: number | undefined;
  private peerCloseReason = "";
  private closeSent: { code: number; reason: string } | undefined;
  private refused = 0;
  /** A pong is in the socket's buffer, not yet handed to the kernel. */
  private pongPending = false;
  /** The latest ping's payload (a copy) that arrived while a pong was pending. */
  private pingToAnswer: Buffer | undefined;
  /** A pong arrived since the last `heartbeat` (a new link counts as alive). */
  private ponged = true;
  private incoming: Incoming = { binary: false, header: Buffer.alloc(DATA_FRAME_HEADER_BYTES), headerFill: 0, stream: undefined, skip: false, text: [], textBytes: 0 };

  constructor(
    readonly socket: Socket,
    role: "server" | "client",
    private readonly handlers: TunnelLinkHandlers,
    head?: Buffer,
  ) {
    this.masked = role === "client";
    this.reader = new WebSocketReader(
      {
        onMessageStart: (binary) => this.messageStart(binary),
        onMessageData: (bytes) => this.messageData(bytes),
        onMessageEnd: () => this.messageEnd(),
        onPing: (payload) => this.pong(payload),
        onPong: () => (this.ponged = true),
        onClose: (code, reason) => this.peerClosed(code, reason),
        onProtocolError: (code, message) => this.close(code, message),
      },
      role === "server",
      MAX_TUNNEL_MESSAGE_BYTES,
    );
    socket.setNoDelay(true);
    socket.setTimeout(0);
    socket.on("data", (chunk: Buffer) => this.reader.push(chunk));
    socket.on("end", () => socket.destroy());
    socket.on("error", () => socket.destroy());
    socket.on("close", () => this.socketClosed());
    socket.resume();
    // Bytes that came with the handshake: parsed once the owner holds the link.
    if (head && head.length > 0) queueMicrotask(() => this.reader.push(head));
  }

  /** Number of live streams. */
  get size(): number {
    return this.streams.size;
  }

  /** True while frames can be sent. */
  get isOpen(): boolean {
    return !this.dead && !this.closing && !this.socket.destroyed;
  }

  /** The close frame this end sent (started or echoed), if any: why the link was failed. */
  get sentClose(): { code: number; reason: string } | undefined {
    return this.closeSent;
  }

  /** Opens a stream with a fresh id and asks the peer to connect it (control-plane side). */
  openStream(window: number, meter?: StreamMeter): TunnelStream | undefined {
    if (!this.isOpen || this.streams.size >= MAX_STREAMS_PER_TUNNEL) return undefined;
    const stream = new TunnelStream(this.nextId++, this, window, meter);
    this.streams.set(stream.id, stream);
    this.sendControl({ type: "open", streamId: stream.id, window });
    return stream;
  }

  /** Takes the stream the peer opened (agent side); undefined when the table is full. */
  acceptStream(frame: OpenFrame, meter?: StreamMeter): TunnelStream | undefined {
    if (!this.isOpen || this.streams.size >= MAX_STREAMS_PER_TUNNEL) return undefined;
    const stream = new TunnelStream(frame.streamId, this, frame.window, meter);
    this.streams.set(stream.id, stream);
    return stream;
  }

  /** Sends a control frame (dropped once the WebSocket is going). */
  sendControl(frame: TunnelControlFrame): void {
    if (!this.isOpen) return;
    this.writeFrame(OPCODE.text, Buffer.from(encodeControlFrame(frame), "utf8"));
  }

  /** @internal Sends data frames: per piece one small header buffer and the piece, in one writev. */
  sendData(streamId: number, pieces: Buffer[]): void {
    if (!this.isOpen) return;
    const socket = this.socket;
    socket.cork();
    for (const piece of pieces) {
      const { header, at } = encodeFrameHeader(OPCODE.binary, DATA_FRAME_HEADER_BYTES + piece.length, this.masked, DATA_FRAME_HEADER_BYTES);
      encodeDataFrameHeader(streamId, header, at);
      socket.write(header);
      socket.write(piece);
    }
    socket.uncork();
  }

  /**
   * One round of liveness, for the owner to call every ping period: a link whose peer has not
   * answered the previous round's ping is dropped (as if the network failed), else it is pinged.
   */
  heartbeat(): void {
    if (!this.ponged) return this.terminate();
    this.ponged = false;
    if (this.isOpen) this.writeFrame(OPCODE.ping, Buffer.alloc(0));
  }

  /** Closes the WebSocket: close frame, streams aborted, socket ended (destroyed after 1 s at most). */
  close(code: number = CLOSE_CODE.normal, reason = ""): void {
    if (this.closing || this.dead) return;
    this.writeFrame(OPCODE.close, closePayload(code, reason));
    this.closeSent = { code, reason };
    this.closing = true;
    this.abortAll("TUNNEL_CLOSED", reason || "tunnel closed");
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }

  /** Drops the connection at once (no close frame). */
  terminate(): void {
    this.socket.destroy();
  }

  /** Kills every stream without telling the peer (the tunnel is gone or going). */
  abortAll(code: TunnelErrorCode, message: string): void {
    for (const stream of [...this.streams.values()]) stream.dieQuietly(code, message);
  }

  /** @internal Removes a finished stream. */
  forget(streamId: number): void {
    this.streams.delete(streamId);
  }

  private writeFrame(opcode: number, payload: Buffer): void {
    if (this.closing || this.socket.destroyed) return;
    this.socket.write(encodeFrame(opcode, payload, this.masked));
  }

  /** Answers a ping, unless a pong is still pending: then the latest ping is answered after it. */
  private pong(payload: Buffer): void {
    if (this.pongPending) {
      this.pingToAnswer = Buffer.from(payload); // a copy: the payload is a view into a read chunk
      return;
    }
    if (this.closing || this.socket.destroyed) return;
    this.pongPending = true;
    this.socket.write(encodeFrame(OPCODE.pong, payload, this.masked), () => {
      this.pongPending = false;
      const next = this.pingToAnswer;
      this.pingToAnswer = undefined;
      if (next) this.pong(next);
    });
  }

  /**
   * Replies to a frame that cannot be used (`error`, or `abort` of a stream this end does not
   * have); a peer that keeps sending them is failed instead of being answered without end.
   */
  private refuse(frame: Extract<TunnelControlFrame, { type: "error" | "abort" }>): void {
    if (this.countRefusal()) this.sendControl({ ...frame, message: frame.message.slice(0, 1024) });
  }

  /** Counts one refused frame; false once the peer has used them all up (the link is closing). */
  private countRefusal(): boolean {
    if (++this.refused <= MAX_REFUSED_FRAMES) return true;
    this.close(CLOSE_CODE.policyViolation, `more than ${MAX_REFUSED_FRAMES} unusable frames`);
    return false;
  }

  private peerClosed(code: number | undefined, reason: string): void {
    this.peerCloseCode = code;
    this.peerCloseReason = reason;
    // Echo the close (RFC 6455 §5.5.1) unless we started it, then let the socket go.
    this.close(code ?? CLOSE_CODE.normal, reason);
  }

  private socketClosed(): void {
    if (this.dead) return;
    this.dead = true;
    this.abortAll("TUNNEL_CLOSED", "tunnel closed");
    this.handlers.onClose?.(this.peerCloseCode, this.peerCloseReason);
  }

  private messageStart(binary: boolean): void {
    const m = this.incoming;
    m.binary = binary;
    m.headerFill = 0;
    m.stream = undefined;
    m.skip = false;
    m.text = [];
    m.textBytes = 0;
  }

  private messageData(bytes: Buffer): void {
    const m = this.incoming;
    if (m.skip) return;
    if (!m.binary) {
      m.textBytes += bytes.length;
      if (m.textBytes > MAX_CONTROL_FRAME_BYTES) {
        m.skip = true;
        return this.close(CLOSE_CODE.tooBig, "control frame too large");
      }
      m.text.push(bytes);
      return;
    }
    let payload = bytes;
    if (m.headerFill < DATA_FRAME_HEADER_BYTES) {
      const n = Math.min(DATA_FRAME_HEADER_BYTES - m.headerFill, bytes.length);
      bytes.copy(m.header, m.headerFill, 0, n);
      m.headerFill += n;
      payload = bytes.subarray(n);
      if (m.headerFill < DATA_FRAME_HEADER_BYTES) return;
      const decoded = decodeDataFrameHeader(m.header, 0);
      if (!decoded.ok) {
        m.skip = true;
        return this.refuse({ type: "error", code: decoded.code, message: decoded.message });
      }
      // Late data of a stream already gone is normal after an abort: dropped.
      m.stream = this.streams.get(decoded.streamId);
      if (!m.stream) m.skip = true;
    }
    if (payload.length > 0) m.stream?.receive(payload);
  }

  private messageEnd(): void {
    const m = this.incoming;
    if (m.skip) return;
    if (m.binary) {
      if (m.headerFill < DATA_FRAME_HEADER_BYTES) {
        this.refuse({ type: "error", code: "BAD_FRAME", message: "data frame shorter than its header" });
      }
      return;
    }
    let text: string;
    try {
      text = textDecoder.decode(m.text.length === 1 ? m.text[0] : Buffer.concat(m.text));
    } catch {
      return this.close(CLOSE_CODE.invalidPayload, "text frame is not UTF-8");
    }
    this.controlFrame(text);
  }

  private controlFrame(text: string): void {
    const decoded = decodeControlFrame(text);
    if (!decoded.ok) {
      // A bad frame naming a stream kills that stream on both ends; one naming none gets an error frame.
      if (decoded.streamId === undefined) return this.refuse({ type: "error", code: decoded.code, message: decoded.message });
      const stream = this.streams.get(decoded.streamId);
      if (!stream) return this.refuse({ type: "abort", streamId: decoded.streamId, code: decoded.code, message: decoded.message });
      if (this.countRefusal()) stream.abort(decoded.code, decoded.message);
      return;
    }
    const frame = decoded.frame;
    switch (frame.type) {
      case "error":
        return this.handlers.onPeerError?.(frame.code, frame.message);
      case "welcome":
        return this.handlers.onWelcome?.(frame);
      case "hello":
        if (!this.handlers.onHello) return this.refuse({ type: "error", code: "BAD_FRAME", message: "hello not accepted here" });
        return this.handlers.onHello(frame);
      case "open":
        if (!this.handlers.onOpen) return this.refuse({ type: "error", code: "BAD_FRAME", message: "open not accepted here" });
        if (this.streams.has(frame.streamId)) {
          return this.refuse({ type: "abort", streamId: frame.streamId, code: "DUPLICATE_STREAM", message: "stream id in use" });
        }
        return this.handlers.onOpen(frame);
    }
    const stream = this.streams.get(frame.streamId);
    if (!stream) return; // late frames of a stream we already dropped
    switch (frame.type) {
      case "credit":
        return stream.grant(frame.bytes);
      case "end":
        return stream.peerEnd();
      case "abort":
        return stream.dieQuietly(frame.code, frame.message);
    }
  }
}
