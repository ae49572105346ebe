import { createRequire } from "node:module";
import { maxHeaderSize } from "node:http";
import type { Writable } from "node:stream";
import { TunnelStreamError, type StreamMeter, type TunnelLink, type TunnelStream } from "@runit/relay-link";
import type { UpstreamRequest } from "./relayHeaders.js";

/** Upstream connections one session may have open at once (renters' WebSockets not counted). */
export const MAX_POOLED_CONNECTIONS = 32;
/** An idle pooled connection is closed after this long (Jupyter's own idle limit is an hour). */
const POOLED_IDLE_MS = 30_000;

// Node's own HTTP parser (llhttp, the one behind node:http), used without Node's HTTP client.
// `_http_common` is what `node:http` itself is built on: not in Node's documentation, so its
// shape is checked once at start (`checkResponseParser`) instead of trusted.
interface ResponseParser {
  initialize(type: number, resource: object, maxHeaderSize: number, lenient: number): void;
  execute(chunk: Buffer): number | (Error & { code?: string });
  finish(): (Error & { code?: string }) | undefined;
  [callback: number]: unknown;
}
export interface ResponseParserClass {
  new (): ResponseParser;
  RESPONSE: number;
  kOnMessageBegin: number;
  kOnHeaders: number;
  kOnHeadersComplete: number;
  kOnBody: number;
  kOnMessageComplete: number;
  kLenientNone: number;
}
const HTTPParser = (createRequire(import.meta.url)("_http_common") as { HTTPParser: ResponseParserClass }).HTTPParser;

/** llhttp's answer to on_headers_complete: the response has no body (HEAD, or a 1xx). */
const SKIP_BODY = 1;

/**
 * What one request does with Jupyter's answer. After `head`, the body is written to `sink` and
 * `sink` is ended when the answer is complete; or `upgraded` is called; or `fail`, once.
 */
export interface JupyterExchange {
  /** The request's method (a HEAD answer has no body). */
  readonly method: string;
  /** Where the body goes: while it is full the connection stops reading, and its 'drain' resumes it. */
  readonly sink: Writable;
  /** Jupyter's final status line and headers (1xx answers other than 101 are skipped). False: give up. */
  head(status: number, statusMessage: string, rawHeaders: string[]): boolean;
  /**
   * Set for an upgrade request, which is never pooled again. Called on Jupyter's 101: `stream` is
   * the caller's now, `rest` its first bytes.
   */
  readonly upgraded?: (statusMessage: string, rawHeaders: string[], stream: TunnelStream, rest: Buffer) => void;
  /** The exchange failed before its answer was complete (connection lost, malformed answer, timeout). */
  fail(err: Error): void;
}

/** Jupyter did not start its answer within the answer timeout. */
export class ResponseTimeoutError extends Error {
  constructor(readonly ms: number) {
    super(`Jupyter did not answer within ${ms} ms`);
    this.name = "ResponseTimeoutError";
  }
}

/** Jupyter's answer broke HTTP/1.1 (llhttp refused it); the renter gets a 502. */
export class MalformedResponseError extends Error {
  constructor(code: string | undefined) {
    super(`Jupyter sent a malformed response (${code ?? "parse error"})`);
    this.name = "MalformedResponseError";
  }
}

/**
 * One keep-alive HTTP/1.1 connection to a session's Jupyter: a tunnel stream and a response
 * parser. It carries one exchange at a time; requests are written by the relay, answers are parsed
 * by llhttp and handed to the exchange piece by piece, with backpressure from the exchange's sink.
 */
export class JupyterConnection {
  private readonly parser = new HTTPParser();
  private exchange: JupyterExchange | undefined;
  private headerParts: string[] = [];
  private interim = false;
  private keepAlive = false;
  /** The whole request went out; a connection is only reused once it has (Jupyter may answer early). */
  private requestSent = false;
  private switched: { statusMessage: string; rawHeaders: string[] } | undefined;
  private paused = false;
  private closed = false;
  /** Set from `send` until Jupyter's final (or 101) head arrives; the answer timeout runs meanwhile. */
  private awaitingHead = false;
  private answerTimer: NodeJS.Timeout | undefined;
  /** The answer is complete: back to the pool once the bytes that carried it are all parsed. */
  private reusable = false;
  /** Jupyter began an answer nobody asked for: the connection is closed. */
  private unsolicited = false;
  private readonly resume = (): void => {
    if (!this.paused) return;
    this.paused = false;
    this.stream.resume();
  };

  constructor(
    readonly stream: TunnelStream,
    private readonly pool: JupyterPool,
  ) {
    const parser = this.parser;
    parser.initialize(HTTPParser.RESPONSE, {}, maxHeaderSize, HTTPParser.kLenientNone);
    parser[HTTPParser.kOnMessageBegin] = () => {
      if (!this.exchange) this.unsolicited = true;
    };
    parser[HTTPParser.kOnHeaders] = (headers: string[]) => void this.headerParts.push(...headers);
    parser[HTTPParser.kOnHeadersComplete] = this.onHeadersComplete.bind(this);
    parser[HTTPParser.kOnBody] = this.onBody.bind(this);
    parser[HTTPParser.kOnMessageComplete] = this.onMessageComplete.bind(this);
    stream.on("data", (chunk: Buffer) => this.onData(chunk));
    stream.on("end", () => {
      const err = this.parser.finish(); // ends a body delimited by the connection's close
      this.abort(err ? new MalformedResponseError(err.code) : new Error("Jupyter closed the connection"));
    });
    stream.on("timeout", () => {
      if (!this.exchange) this.close(); // idle in the pool for too long
    });
    stream.on("error", (err) => this.abort(err));
    stream.on("close", () => {
      this.abort(new Error("connection to Jupyter lost"));
      this.pool.gone(this);
    });
  }

  /**
   * Sends a request on this connection: its head now, then `body` (the renter's request) as it
   * comes. Once the whole request is sent, Jupyter has `answerTimeoutMs` to start its answer;
   * past that the exchange fails with `ResponseTimeoutError` and the connection is closed, so it
   * never carries another request. Once the head has arrived the body may take any time.
   */
  send(exchange: JupyterExchange, request: UpstreamRequest, body: NodeJS.ReadableStream, answerTimeoutMs: number): void {
    this.exchange = exchange;
    this.requestSent = false;
    this.awaitingHead = true;
    this.stream.setTimeout(0);
    this.stream.write(request.head);
    const done = (): void => {
      this.requestSent = true;
      if (this.exchange !== exchange || !this.awaitingHead) return; // answered before the body was out
      this.answerTimer = setTimeout(() => this.abort(new ResponseTimeoutError(answerTimeoutMs)), answerTimeoutMs);
    };
    const framing = request.body;
    if (framing === "none") return done();
    const stream = this.stream;
    body.on("data", (chunk: Buffer) => {
      if (chunk.length === 0 || this.exchange !== exchange) return; // discarded: the exchange is over
      if (framing === "chunked") {
        stream.write(`${chunk.length.toString(16)}\r\n`);
        stream.write(chunk);
      }
      if (!stream.write(framing === "chunked" ? "\r\n" : chunk)) {
        body.pause();
        // Resumed on 'drain', or when the connection closes (the exchange failed or was answered
        // early): the rest of the body is then discarded here, so the renter's upload completes and
        // its keep-alive connection carries the next request instead of stalling mid-upload.
        const resume = (): void => {
          stream.off("drain", resume).off("close", resume);
          body.resume();
        };
        stream.on("drain", resume).on("close", resume);
      }
    });
    body.on("end", () => {
      if (this.exchange !== exchange) return;
      if (framing === "chunked") stream.write("0\r\n\r\n");
      done();
    });
  }

  /** Fails the current exchange (if any) with `err` and closes the connection. */
  abort(err: Error): void {
    const exchange = this.exchange;
    this.exchange = undefined;
    exchange?.fail(err);
    this.close();
  }

  /**
   * The renter of `exchange` is gone: if the connection still carries it, it is dropped without
   * being told and the connection closed (Jupyter's answer is not read to its end).
   */
  cancel(exchange: JupyterExchange): void {
    if (this.exchange !== exchange) return;
    this.exchange = undefined;
    this.close();
  }

  /** Closes the connection: the agent drops its connection to Jupyter. */
  close(): void {
    clearTimeout(this.answerTimer);
    if (this.closed) return;
    this.closed = true;
    this.stream.destroy();
  }

  private onData(chunk: Buffer): void {
    if (!this.exchange) return this.close(); // Jupyter spoke without being asked
    let parsed: ReturnType<ResponseParser["execute"]>;
    try {
      parsed = this.parser.execute(chunk);
    } catch (err) {
      return this.abort(err as Error); // a sink that threw: never the control plane's crash
    }
    if (parsed instanceof Error) return this.abort(new MalformedResponseError(parsed.code));
    if (this.switched && this.exchange) return this.handOver(chunk.subarray(parsed));
    if (!this.reusable) return;
    this.reusable = false;
    if (this.unsolicited) this.close();
    else this.pool.release(this);
  }

  private onHeadersComplete(
    _major: number,
    _minor: number,
    headers: string[] | undefined,
    _method: unknown,
    _url: unknown,
    status: number,
    statusMessage: string,
    upgrade: boolean,
    keepAlive: boolean,
  ): number {
    const rawHeaders = headers ?? this.headerParts;
    this.headerParts = [];
    const exchange = this.exchange;
    if (!exchange) return SKIP_BODY;
    if (status >= 200 || status === 101) {
      this.awaitingHead = false;
      clearTimeout(this.answerTimer);
    }
    if (status === 101) {
      if (!exchange.upgraded || !upgrade) {
        this.abort(new MalformedResponseError("HPE_UNEXPECTED_101"));
        return SKIP_BODY;
      }
      this.switched = { statusMessage, rawHeaders };
      return SKIP_BODY;
    }
    if (status < 200) {
      this.interim = true; // 100, 102, 103: no body, the final answer follows
      return SKIP_BODY;
    }
    this.keepAlive = keepAlive && !exchange.upgraded;
    if (!exchange.head(status, statusMessage, rawHeaders)) {
      this.exchange = undefined;
      this.close();
      return SKIP_BODY;
    }
    return exchange.method === "HEAD" ? SKIP_BODY : 0;
  }

  private onBody(chunk: Buffer): void {
    const exchange = this.exchange;
    if (!exchange || exchange.sink.write(chunk) || this.paused) return;
    this.paused = true;
    this.stream.pause();
    exchange.sink.once("drain", this.resume);
  }

  private onMessageComplete(): void {
    this.headerParts = []; // trailers of a chunked body are not relayed
    if (this.interim) {
      this.interim = false;
      return;
    }
    if (this.switched) return; // handed over once execute returns (it knows where the head ended)
    const exchange = this.exchange;
    if (!exchange) return;
    this.exchange = undefined;
    exchange.sink.off("drain", this.resume);
    this.resume();
    exchange.sink.end();
    // Released by onData once this chunk is parsed, so that bytes after the answer are seen first.
    if (this.keepAlive && this.requestSent) this.reusable = true;
    else this.close();
  }

  /** A 101: the stream leaves the pool and belongs to the exchange from here on. */
  private handOver(rest: Buffer): void {
    const exchange = this.exchange as JupyterExchange;
    const { statusMessage, rawHeaders } = this.switched as { statusMessage: string; rawHeaders: string[] };
    this.exchange = undefined;
    this.closed = true; // no longer ours to close
    const stream = this.stream;
    stream.pause();
    stream.removeAllListeners("data").removeAllListeners("end").removeAllListeners("timeout");
    stream.removeAllListeners("error").removeAllListeners("close");
    this.pool.gone(this);
    exchange.upgraded?.(statusMessage, rawHeaders, stream, rest);
  }
}

/**
 * A session's keep-alive pool of connections to its Jupyter, over its tunnel: idle connections
 * are reused newest first, at most `MAX_POOLED_CONNECTIONS` are open, and requests beyond that
 * wait in order for one to come free.
 */
export class JupyterPool {
  private readonly idle: JupyterConnection[] = [];
  private readonly open = new Set<JupyterConnection>();
  private readonly waiting: Array<(connection: JupyterConnection | Error) => void> = [];
  private destroyed = false;

  constructor(
    private readonly link: TunnelLink,
    private readonly windowBytes: number,
    private readonly meter: StreamMeter,
  ) {}

  /**
   * Sends `request` to Jupyter for `exchange` (see `JupyterConnection.send`) on a free connection,
   * at once or when one comes free; a tunnel that cannot open one fails the exchange. Returns what
   * to call when the renter goes away: it withdraws the wait, or drops the exchange and closes its
   * connection if the answer is not complete (a no-op once it is, or once the stream is handed over).
   */
  send(exchange: JupyterExchange, request: UpstreamRequest, body: NodeJS.ReadableStream, answerTimeoutMs: number): () => void {
    let connection: JupyterConnection | undefined;
    const withdraw = this.acquire((acquired) => {
      if (acquired instanceof Error) return exchange.fail(acquired);
      connection = acquired;
      acquired.send(exchange, request, body, answerTimeoutMs);
    });
    return () => {
      withdraw();
      connection?.cancel(exchange);
    };
  }

  /**
   * Calls `use` with a connection, at once when one is idle or may be opened, else when one comes
   * free; with an error when the tunnel cannot open one. Returns a function that withdraws the wait.
   */
  private acquire(use: (connection: JupyterConnection | Error) => void): () => void {
    const idle = this.idle.pop();
    if (idle) {
      use(idle);
      return () => undefined;
    }
    if (this.destroyed || this.open.size < MAX_POOLED_CONNECTIONS) {
      use(this.connect());
      return () => undefined;
    }
    this.waiting.push(use);
    return () => {
      const at = this.waiting.indexOf(use);
      if (at >= 0) this.waiting.splice(at, 1);
    };
  }

  /** @internal A connection finished its exchange and may carry another. */
  release(connection: JupyterConnection): void {
    const next = this.waiting.shift();
    if (next) return next(connection);
    connection.stream.setTimeout(POOLED_IDLE_MS);
    this.idle.push(connection);
  }

  /** @internal A connection closed or was handed over to an upgrade. */
  gone(connection: JupyterConnection): void {
    if (!this.open.delete(connection)) return;
    const at = this.idle.indexOf(connection);
    if (at >= 0) this.idle.splice(at, 1);
    const next = this.waiting.shift();
    if (next) next(this.connect());
  }

  /** Closes every connection; requests still waiting for one fail. */
  destroy(): void {
    this.destroyed = true;
    for (const waiter of this.waiting.splice(0)) waiter(new TunnelStreamError("TUNNEL_CLOSED", "tunnel closed"));
    for (const connection of [...this.open]) connection.close();
  }

  private connect(): JupyterConnection | Error {
    const stream = this.destroyed ? undefined : this.link.openStream(this.windowBytes, this.meter);
    if (!stream) {
      return this.destroyed || !this.link.isOpen
        ? new TunnelStreamError("TUNNEL_CLOSED", "tunnel closed")
        : new TunnelStreamError("TOO_MANY_STREAMS", "too many open connections on this session");
    }
    const connection = new JupyterConnection(stream, this);
    this.open.add(connection);
    return connection;
  }
}

/**
 * Checks once that Node's parser binding behaves as this module expects (callback order and
 * arguments), so that a Node whose internals changed fails at start with a clear message instead
 * of mis-relaying. Throws when it does not.
 */
export function checkResponseParser(Parser: ResponseParserClass = HTTPParser): void {
  const problem = (why: string): Error => new Error(`The relay cannot use this Node's HTTP parser (${process.version}): ${why}. Use Node 20.`);
  for (const slot of ["RESPONSE", "kOnMessageBegin", "kOnHeaders", "kOnHeadersComplete", "kOnBody", "kOnMessageComplete", "kLenientNone"] as const) {
    if (typeof Parser?.[slot] !== "number") throw problem(`no ${slot}`);
  }
  const seen: string[] = [];
  const sample = Buffer.from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi");
  let parsed: unknown;
  try {
    const parser = new Parser();
    parser.initialize(Parser.RESPONSE, {}, maxHeaderSize, Parser.kLenientNone);
    parser[Parser.kOnMessageBegin] = () => void seen.push("begin");
    parser[Parser.kOnHeadersComplete] = (_a: number, _b: number, headers: string[], _m: unknown, _u: unknown, status: number, message: string, _up: boolean, keepAlive: boolean) =>
      void seen.push(`head ${status} ${message} ${headers.join(",")} ${keepAlive}`);
    parser[Parser.kOnBody] = (chunk: Buffer) => void seen.push(`body ${Buffer.isBuffer(chunk) ? chunk.toString() : typeof chunk}`);
    parser[Parser.kOnMessageComplete] = () => void seen.push("end");
    parsed = parser.execute(sample);
  } catch (err) {
    throw problem(`parsing a sample answer threw ${(err as Error).message}`);
  }
  const expected = "begin|head 200 OK Content-Length,2 true|body hi|end";
  if (parsed !== sample.length || seen.join("|") !== expected) throw problem(`parsed ${String(parsed)} bytes as "${seen.join("|")}"`);
}
