import { connect, type Socket } from "node:net";
import { MAX_DATA_FRAME_PAYLOAD, type OpenFrame } from "@runit/protocol";
import type { TunnelLink, TunnelStream } from "@runit/relay-link";
import { connectOptions, type JupyterEndpoint } from "../jupyter/jupyterEndpoint.js";

/** Where relayed connections go: the session's Jupyter (its pinned socket), and nowhere else. */
export interface UpstreamTarget {
  jupyter: JupyterEndpoint;
  /** Largest stream window the agent accepts from the control plane. */
  maxWindowBytes: number;
}

/** Byte counters of the relayed traffic (rx: renter → Jupyter, tx: Jupyter → renter). */
export interface UpstreamCounters {
  rxBytes: number;
  txBytes: number;
  lastActivity: number;
}

/**
 * Connects the streams the control plane opens to Jupyter: one connection to its Unix socket
 * (127.0.0.1:<port> in tests and for a TCP endpoint) per stream, bytes piped both ways under the
 * stream's credit. The agent parses nothing here: the control plane speaks HTTP to Jupyter over
 * these connections (it adds Jupyter's token, which the agent handed it in its hello), and a
 * connection can only ever reach that one endpoint.
 */
export class RelayUpstream {
  readonly counters: UpstreamCounters = { rxBytes: 0, txBytes: 0, lastActivity: 0 };
  private readonly sockets = new Set<Socket>();
  private tunnelSocket: { writableLength: number } | undefined;

  constructor(private readonly target: UpstreamTarget) {}

  /** Handles an `open` frame arriving on `link`. */
  open(link: TunnelLink, frame: OpenFrame): void {
    const refuse = (code: "FLOW_CONTROL" | "TOO_MANY_STREAMS", message: string): void =>
      link.sendControl({ type: "abort", streamId: frame.streamId, code, message });
    if (frame.window > this.target.maxWindowBytes) return refuse("FLOW_CONTROL", "window too large");
    const stream = link.acceptStream(frame, {
      onReceived: (bytes) => this.count("rxBytes", bytes),
      onSent: (bytes) => this.count("txBytes", bytes),
    });
    if (!stream) return refuse("TOO_MANY_STREAMS", "too many streams");
    this.counters.lastActivity = Date.now();
    this.tunnelSocket = link.socket;
    let paused = false;
    let readInto: Buffer | undefined;
    const socket: Socket = connect({
      ...connectOptions(this.target.jupyter),
      noDelay: true,
      onread: {
        buffer: () => (readInto = this.readBuffer(readInto)),
        callback: (bytes: number, buffer: Uint8Array) => {
          paused = !this.forward(stream, Buffer.from(buffer.buffer, buffer.byteOffset, bytes));
          return !paused;
        },
      },
    });
    stream.onCredit = () => {
      if (!paused) return;
      paused = false;
      socket.resume();
    };
    this.pipe(stream, socket);
  }

  /** Closes every upstream connection. */
  close(): void {
    for (const socket of this.sockets) socket.destroy();
  }

  private pipe(stream: TunnelStream, socket: Socket): void {
    this.sockets.add(socket);
    let connected = false;
    socket.once("connect", () => (connected = true));
    socket.on("error", (err) => {
      if (connected) stream.abort("UPSTREAM_ERROR", `Jupyter connection failed: ${err.message}`);
      else stream.abort("UPSTREAM_UNREACHABLE", `Jupyter unreachable: ${err.message}`);
    });
    socket.on("close", () => this.sockets.delete(socket));
    // Jupyter closed its side: once its last bytes are sent, so is the stream (a reset is an error).
    socket.on("end", () => stream.end());
    stream.on("error", () => socket.destroy());
    stream.on("close", () => socket.destroy());
    stream.pipe(socket);
  }

  /**
   * The buffer a connection's next read from Jupyter goes into. Node asks for it right after each
   * read (and once at connect), and the kernel fills it whenever the next bytes arrive. Reads go
   * into the connection's previous buffer instead of a fresh one per read (Node's default): a
   * relayed MiB then allocates nothing, which keeps V8 from running a full garbage collection
   * every few MiB for the external memory churn (measured in bench/). The previous buffer is kept
   * only when the tunnel socket has handed every byte written from it to the kernel; otherwise the
   * socket still holds views into it and a new one is taken. Each connection has buffers of its
   * own: a buffer shared between connections could be handed to one of them while the tunnel
   * still held another's unsent views into it, and its next read would overwrite those bytes
   * (it did, until 2026-12-02, whenever two downloads ran at once over a busy tunnel).
   */
  private readBuffer(previous: Buffer | undefined): Buffer {
    if (previous && (this.tunnelSocket?.writableLength ?? 0) === 0) return previous;
    return Buffer.allocUnsafe(MAX_DATA_FRAME_PAYLOAD);
  }

  /**
   * Sends bytes just read from Jupyter (a view into the read buffer) to the control plane; what
   * credit does not cover yet is copied and queued. Returns false when reading must pause.
   */
  private forward(stream: TunnelStream, bytes: Buffer): boolean {
    let sent = 0;
    while (sent < bytes.length) {
      const n = stream.sendNow(sent === 0 ? bytes : bytes.subarray(sent));
      if (n === 0) break;
      sent += n;
    }
    if (sent === bytes.length) return true;
    if (!stream.destroyed) stream.write(Buffer.from(bytes.subarray(sent)));
    return false;
  }

  private count(which: "rxBytes" | "txBytes", bytes: number): void {
    this.counters[which] += bytes;
    this.counters.lastActivity = Date.now();
  }
}
