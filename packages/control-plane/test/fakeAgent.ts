// An agent end of the relay tunnel driven by hand in tests, built on the `ws` package (an
// independent WebSocket implementation, so these tests also check the control plane's own
// framing against it). It records control frames and the bytes of each stream, and can play
// Jupyter by answering a stream's HTTP request with raw HTTP bytes.
import { WebSocket, type RawData } from "ws";
import {
  AGENT_TUNNEL_PATH,
  PROTOCOL_VERSION,
  decodeControlFrame,
  decodeDataFrame,
  encodeControlFrame,
  encodeDataFrame,
  type TunnelControlFrame,
} from "@runit/protocol";

/** The Jupyter token fake agents announce in their hello. */
export const FAKE_JUPYTER_TOKEN = "fake-jupyter-token-0123456789";
/** The Jupyter port fake agents announce in their hello. */
export const FAKE_JUPYTER_PORT = 48888;

/** A binary data frame carrying `payload` on stream `streamId`. */
export function dataFrame(streamId: number, payload: Uint8Array): Buffer {
  return Buffer.from(encodeDataFrame(streamId, payload));
}

export class FakeAgent {
  readonly frames: TunnelControlFrame[] = [];
  readonly bytes = new Map<number, Buffer>();
  closeCode: number | undefined;
  /** When set, every stream's first complete HTTP request is answered with this raw response. */
  autoAnswer: ((streamId: number, request: string) => string | Buffer) | undefined;
  private readonly answered = new Set<string>();

  private constructor(readonly ws: WebSocket) {
    ws.on("message", (data: RawData, isBinary: boolean) => this.onMessage(Buffer.from(data as Buffer), isBinary));
    ws.on("close", (code) => (this.closeCode = code));
    ws.on("error", () => undefined);
  }

  /** Dials `/agent/tunnel`; resolves with the agent, or with the HTTP status of a refusal. */
  static dial(baseUrl: string, secret: string): Promise<{ agent?: FakeAgent; status: number }> {
    const ws = new WebSocket(`${baseUrl.replace(/^http/, "ws")}${AGENT_TUNNEL_PATH}`, { headers: { Authorization: `Bearer ${secret}` }, perMessageDeflate: false });
    const agent = new FakeAgent(ws);
    return new Promise((resolve) => {
      ws.once("open", () => resolve({ agent, status: 101 }));
      ws.once("unexpected-response", (_req, res) => resolve({ status: res.statusCode ?? 0 }));
      ws.once("error", () => resolve({ status: -1 }));
    });
  }

  /** Dials and says hello; the tunnel is live once the control plane has read it. */
  static async connect(baseUrl: string, secret: string): Promise<FakeAgent> {
    const { agent, status } = await FakeAgent.dial(baseUrl, secret);
    if (!agent) throw new Error(`tunnel refused with ${status}`);
    agent.hello();
    await agent.barrier();
    return agent;
  }

  hello(protocolVersion = PROTOCOL_VERSION): void {
    this.send({ type: "hello", protocolVersion, jupyterPort: FAKE_JUPYTER_PORT, jupyterToken: FAKE_JUPYTER_TOKEN });
  }

  send(frame: TunnelControlFrame): void {
    this.ws.send(encodeControlFrame(frame));
  }

  sendData(streamId: number, payload: string | Uint8Array): void {
    this.ws.send(dataFrame(streamId, typeof payload === "string" ? Buffer.from(payload) : payload));
  }

  /** Resolves once the control plane has processed everything sent before (ping/pong round trip). */
  barrier(): Promise<void> {
    if (this.ws.readyState !== WebSocket.OPEN) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(done, 5000);
      this.ws.once("pong", done);
      this.ws.once("close", done);
      this.ws.ping();
    });
  }

  /** The next control frame of `type` (removed from the record). */
  async next<T extends TunnelControlFrame["type"]>(type: T, timeoutMs = 3000): Promise<Extract<TunnelControlFrame, { type: T }>> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const index = this.frames.findIndex((f) => f.type === type);
      if (index >= 0) return this.frames.splice(index, 1)[0] as Extract<TunnelControlFrame, { type: T }>;
      await new Promise((r) => setTimeout(r, 5));
    }
    throw new Error(`no ${type} frame within ${timeoutMs} ms`);
  }

  /** The first complete HTTP request head that arrived on stream `streamId`. */
  async requestHead(streamId: number, timeoutMs = 3000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const text = (this.bytes.get(streamId) ?? Buffer.alloc(0)).toString("latin1");
      const end = text.indexOf("\r\n\r\n");
      if (end >= 0) return text.slice(0, end + 4);
      await new Promise((r) => setTimeout(r, 5));
    }
    throw new Error(`no HTTP request on stream ${streamId} within ${timeoutMs} ms`);
  }

  private onMessage(data: Buffer, isBinary: boolean): void {
    if (!isBinary) {
      const decoded = decodeControlFrame(data.toString("utf8"));
      if (decoded.ok) this.frames.push(decoded.frame);
      return;
    }
    const frame = decodeDataFrame(data);
    if (!frame.ok) return;
    const all = Buffer.concat([this.bytes.get(frame.streamId) ?? Buffer.alloc(0), frame.payload]);
    this.bytes.set(frame.streamId, all);
    const text = all.toString("latin1");
    const key = `${frame.streamId}:${text.split("\r\n\r\n").length}`;
    if (this.autoAnswer && text.includes("\r\n\r\n") && !this.answered.has(key)) {
      this.answered.add(key);
      this.sendData(frame.streamId, this.autoAnswer(frame.streamId, text));
    }
  }
}

/** A complete HTTP/1.1 response with a JSON body, as Jupyter would write it. */
export function jsonResponse(body: unknown, extraHeaders = ""): string {
  const json = JSON.stringify(body);
  return `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(json)}\r\n${extraHeaders}\r\n${json}`;
}
