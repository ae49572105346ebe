// The relay's HTTP/1.1 towards Jupyter (`jupyterConnections.ts`) against a scripted stand-in that
// answers byte for byte: every way a response can be framed, answers the relay must refuse, and
// when a pooled connection may carry the next request. Real sockets, the real agent tunnel.
import { createHash } from "node:crypto";
import { request } from "node:http";
import { connect, createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BASE, COOKIE, fetchRaw, startAgentTunnel, startControlPlane, waitFor, type ControlPlane } from "./relay-harness.js";
import type { RelayTunnel } from "../packages/agent/src/tunnel/relay.js";
import { MAX_POOLED_CONNECTIONS } from "../packages/control-plane/src/relay/jupyterConnections.js";

/** What the scripted Jupyter saw. */
interface Seen {
  connections: number;
  /** Request heads in arrival order (request line + headers), with the connection number. */
  requests: Array<{ connection: number; head: string }>;
  /** Bytes received after the head of each request, keyed by path. */
  bodies: Map<string, Buffer[]>;
}

/** Writes the answer; "echo" turns the connection into a byte echo (a switched protocol). */
type Script = (socket: Socket, head: string, seen: Seen) => void | "echo";

const ok = (body: string, extra = ""): string => `HTTP/1.1 200 OK\r\nContent-Length: ${Buffer.byteLength(body)}\r\n${extra}\r\n${body}`;

// Responses by path (after BASE). Each writes raw bytes to the relay's connection.
const SCRIPTS: Record<string, Script> = {
  length: (s) => s.write(ok("sized body", "Content-Type: text/plain\r\n")),
  chunked: (s) => s.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n"),
  "close-delimited": (s) => {
    s.write("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the ");
    setTimeout(() => s.end("connection closes"), 20);
  },
  "one-byte-at-a-time": (s) => {
    const bytes = Buffer.from(ok("dribbled", "X-Long: " + "v".repeat(300) + "\r\n"));
    let i = 0;
    const next = (): void => {
      if (i < bytes.length) s.write(bytes.subarray(i, ++i), () => setImmediate(next));
    };
    next();
  },
  head: (s) => s.write("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/plain\r\n\r\n"),
  "no-content": (s) => s.write("HTTP/1.1 204 No Content\r\nX-Kind: 204\r\n\r\n"),
  "not-modified": (s) => s.write("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n"),
  "early-hints": (s) => s.write("HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + ok("after the hints")),
  malformed: (s) => s.write("HTTP/1.1 200 OK\r\nBad Header Line\r\n\r\n"),
  "two-lengths": (s) => s.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 9\r\n\r\nhi"),
  "huge-head": (s) => s.write(`HTTP/1.1 200 OK\r\nX-Huge: ${"h".repeat(64 * 1024)}\r\nContent-Length: 0\r\n\r\n`),
  "unasked-101": (s) => s.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
  "cut-body": (s) => s.end("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part of it"),
  // The start of a second answer in the same packet: kept, it would be read as the next request's.
  "trailing-bytes": (s) => s.write(ok("the answer") + "HTTP/1.1 200 OK\r\nX-Spoofed: 1\r\n"),
  // Starts its answer as soon as the head is in; the rest follows 400 ms after the upload ends.
  "answer-while-uploading": (s) => s.write("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst"),
  "early-answer": (s) => s.write("HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n\r\ntoo much"),
  "forbidden-headers": (s) => s.write(ok("cookies?", "Set-Cookie: _xsrf=1; Path=/\r\nStrict-Transport-Security: max-age=1\r\nKeep-Alive: timeout=5\r\n")),
  slow: (s) => setTimeout(() => s.write(ok("slow")), 150),
  // More header lines than llhttp hands over at once (32): they arrive in parts.
  "ws-echo": (s) => {
    s.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: scripted\r\n\r\nfirst bytes|");
    return "echo";
  },
  "ws-refused": (s) => s.write("HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\r\nno kernel here"),
  "many-headers": (s) => s.write(ok("many", Array.from({ length: 40 }, (_, i) => `X-H-${i}: ${i}\r\n`).join(""))),
};

/** The payload of a chunked body (sizes in hex, no extensions, no trailers: what the relay sends). */
function decodeChunked(raw: Buffer): Buffer {
  const pieces: Buffer[] = [];
  let at = 0;
  for (;;) {
    const eol = raw.indexOf("\r\n", at);
    const size = Number.parseInt(raw.subarray(at, eol).toString("latin1"), 16);
    if (size === 0) return Buffer.concat(pieces);
    pieces.push(raw.subarray(eol + 2, eol + 2 + size));
    if (raw.subarray(eol + 2 + size, eol + 4 + size).toString("latin1") !== "\r\n") throw new Error("bad chunk framing");
    at = eol + 4 + size;
  }
}

async function startScriptedJupyter(): Promise<{ port: number; seen: Seen; server: Server }> {
  const seen: Seen = { connections: 0, requests: [], bodies: new Map() };
  const server = createServer((socket) => {
    const connection = ++seen.connections;
    let buffered = Buffer.alloc(0);
    // The body still expected on this connection: a byte count, or "chunked" (up to 0 CRLF CRLF).
    let body: { path: string; left: number | "chunked" } | undefined;
    let echo = false;
    let tail = Buffer.alloc(0);
    socket.on("error", () => undefined);
    socket.on("data", (data: Buffer) => {
      if (echo) return void socket.write(data);
      buffered = Buffer.concat([buffered, data]);
      for (;;) {
        if (body) {
          const { path, left } = body;
          const take = left === "chunked" ? buffered.length : Math.min(left, buffered.length);
          const pieces = seen.bodies.get(path) as Buffer[];
          pieces.push(buffered.subarray(0, take));
          buffered = buffered.subarray(take);
          tail = Buffer.concat([tail, pieces[pieces.length - 1] as Buffer]).subarray(-5);
          const done = left === "chunked" ? tail.toString("latin1") === "0\r\n\r\n" : left === take;
          body = done ? undefined : { path, left: left === "chunked" ? left : left - take };
          if (done && path === "upload") {
            const received = Buffer.concat(seen.bodies.get(path) as Buffer[]);
            const decoded = left === "chunked" ? decodeChunked(received) : received;
            socket.write(ok(JSON.stringify({ length: decoded.length, sha256: createHash("sha256").update(decoded).digest("hex") })));
          }
          if (done && path === "answer-while-uploading") setTimeout(() => socket.write("-last"), 400);
          if (!done || buffered.length === 0) return;
        }
        const end = buffered.indexOf("\r\n\r\n");
        if (end < 0) return;
        const head = buffered.subarray(0, end).toString("latin1");
        buffered = buffered.subarray(end + 4);
        seen.requests.push({ connection, head });
        const path = (head.split(" ")[1] ?? "").slice(BASE.length).split("?")[0] as string;
        const length = /\r\ncontent-length: *(\d+)/i.exec(head);
        if (/\r\ntransfer-encoding: *chunked/i.test(head)) body = { path, left: "chunked" };
        else if (length && Number(length[1]) > 0) body = { path, left: Number(length[1]) };
        if (body) seen.bodies.set(path, []);
        tail = Buffer.alloc(0);
        // An upload Jupyter is slow to read: the relay's writes wait for credit.
        if (path === "upload") {
          socket.pause();
          setTimeout(() => socket.resume(), 300);
        }
        const script = SCRIPTS[path];
        if (path === "upload") continue; // answered once its body is in
        if (script?.(socket, head, seen) === "echo") {
          echo = true;
          if (buffered.length > 0) socket.write(buffered);
          return;
        }
        if (!script) socket.write("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { port: (server.address() as AddressInfo).port, seen, server };
}

describe("relay HTTP/1.1 to Jupyter, byte for byte", () => {
  let cp: ControlPlane;
  let tunnel: RelayTunnel;
  let jupyter: Awaited<ReturnType<typeof startScriptedJupyter>>;

  beforeAll(async () => {
    jupyter = await startScriptedJupyter();
    cp = await startControlPlane();
    tunnel = await startAgentTunnel(cp, jupyter);
  });
  afterAll(async () => {
    await tunnel?.close();
    await cp?.close();
    jupyter?.server.close();
  });

  const get = (path: string, opts: Parameters<typeof fetchRaw>[2] = {}) =>
    fetchRaw(cp.port, `${BASE}${path}`, { ...opts, headers: { ...COOKIE, ...opts.headers } });
  const lastRequest = () => jupyter.seen.requests[jupyter.seen.requests.length - 1] as { connection: number; head: string };

  it("relays a Content-Length body and carries the next request on the same pooled connection", async () => {
    const first = await get("length");
    expect([first.status, first.body.toString(), first.headers["content-type"]]).toEqual([200, "sized body", "text/plain"]);
    const connection = lastRequest().connection;
    const second = await get("length");
    expect(second.body.toString()).toBe("sized body");
    expect(lastRequest().connection).toBe(connection);
  });

  it("writes the request head Jupyter expects: its token, its Host, none of the renter's credentials", async () => {
    await get("length?q=1", { headers: { Authorization: "Bearer renter", "X-Custom": "kept" } });
    const lines = lastRequest().head.split("\r\n");
    expect(lines[0]).toBe(`GET ${BASE}length?q=1 HTTP/1.1`);
    expect(lines).toContain(`Host: 127.0.0.1:${jupyter.port}`);
    expect(lines.filter((l) => /^authorization:/i.test(l))).toEqual([expect.stringMatching(/^Authorization: token /)]);
    expect(lines).toContain("X-Custom: kept");
    expect(lines.some((l) => /^cookie:/i.test(l))).toBe(false);
  });

  it("relays a chunked body whole, without its trailers, not even into the next answer", async () => {
    const res = await get("chunked");
    expect([res.status, res.body.toString(), res.headers["x-sum"], res.headers.trailer]).toEqual([200, "hello world", undefined, undefined]);
    const connection = lastRequest().connection;
    const next = await get("many-headers");
    expect(lastRequest().connection).toBe(connection);
    expect(next.headers["x-sum"]).toBeUndefined();
    expect(Object.keys(next.headers).filter((h) => h.startsWith("x-h-"))).toEqual(Array.from({ length: 40 }, (_, i) => `x-h-${i}`));
  });

  it("relays a body delimited by the connection's close, and never reuses that connection", async () => {
    const res = await get("close-delimited");
    expect([res.status, res.body.toString()]).toEqual([200, "until the connection closes"]);
    const closed = lastRequest().connection;
    await get("length");
    expect(lastRequest().connection).not.toBe(closed);
  });

  it("parses an answer that arrives one byte at a time", async () => {
    const res = await get("one-byte-at-a-time");
    expect([res.status, res.body.toString(), res.headers["x-long"]]).toEqual([200, "dribbled", "v".repeat(300)]);
  });

  it("reads no body after HEAD, 204 and 304, and the connection stays usable", async () => {
    const head = await get("head", { method: "HEAD" });
    expect([head.status, head.headers["content-length"], head.body.length]).toEqual([200, "1234", 0]);
    const used = lastRequest().connection;
    expect((await get("no-content")).status).toBe(204);
    expect((await get("not-modified")).headers.etag).toBe('"v1"');
    const after = await get("length");
    expect(after.body.toString()).toBe("sized body");
    expect(lastRequest().connection).toBe(used);
  });

  it("skips a 103 and relays the final answer", async () => {
    const res = await get("early-hints");
    expect([res.status, res.body.toString()]).toEqual([200, "after the hints"]);
  });

  it.each([
    ["malformed", "HPE_INVALID_HEADER_TOKEN"],
    ["two-lengths", "HPE_UNEXPECTED_CONTENT_LENGTH"],
    ["huge-head", "HPE_HEADER_OVERFLOW"],
    ["unasked-101", "HPE_UNEXPECTED_101"],
  ])("answers 502 when Jupyter's answer is unusable (%s) and drops that connection", async (path, code) => {
    const res = await get(path);
    expect(res.status).toBe(502);
    expect(JSON.parse(res.body.toString())).toEqual({
      error: `The provider is not reachable right now (Jupyter sent a malformed response (${code}))`,
      code: "TUNNEL_UNAVAILABLE",
    });
    const bad = lastRequest().connection;
    expect((await get("length")).status).toBe(200);
    expect(lastRequest().connection).not.toBe(bad);
  });

  it("cuts the renter's response when Jupyter's body ends early (never a truncated success)", async () => {
    await expect(get("cut-body")).rejects.toThrow(/aborted|socket hang up|ECONNRESET/);
  });

  it("never relays origin-wide or hop-by-hop response headers", async () => {
    const res = await get("forbidden-headers");
    expect(res.body.toString()).toBe("cookies?");
    expect([res.headers["set-cookie"], res.headers["strict-transport-security"], res.headers["keep-alive"]]).toEqual([undefined, undefined, undefined]);
  });

  it("sends a body without Content-Length chunked, and a Content-Length body as is", async () => {
    const status = await new Promise<number>((resolve, reject) => {
      const req = request({ host: "127.0.0.1", port: cp.port, path: `${BASE}early-answer`, method: "POST", headers: COOKIE, agent: false }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on("error", reject);
      req.write("part one;");
      req.end("part two");
    });
    expect(status).toBe(413);
    expect(lastRequest().head).toMatch(/\r\nTransfer-Encoding: chunked$/);
    const uploaded = () => Buffer.concat(jupyter.seen.bodies.get("early-answer") ?? []).toString();
    await waitFor(() => uploaded().endsWith("0\r\n\r\n"), 2000, "the chunked body");
    expect(uploaded()).toBe("9\r\npart one;\r\n8\r\npart two\r\n0\r\n\r\n");
    const sized = await get("early-answer", { method: "PUT", body: Buffer.from("0123456789") });
    expect(sized.status).toBe(413);
    expect(lastRequest().head).toMatch(/\r\nContent-Length: 10$/);
  });

  it("streams a large body without Content-Length chunked and intact, under the tunnel's flow control", async () => {
    const piece = Buffer.alloc(64 * 1024);
    const hash = createHash("sha256");
    const pieces = 256; // 16 MiB, more than the window and the sockets' buffers hold while Jupyter waits
    const answer = await new Promise<string>((resolve, reject) => {
      const req = request({ host: "127.0.0.1", port: cp.port, path: `${BASE}upload`, method: "POST", headers: COOKIE, agent: false }, (res) => {
        let text = "";
        res.on("data", (d: Buffer) => (text += d.toString()));
        res.on("end", () => resolve(text));
      });
      req.on("error", reject);
      let i = 0;
      const pump = (): void => {
        while (i < pieces) {
          piece.fill(97 + (i % 26)); // letters only: no CR LF inside the payload
          hash.update(piece);
          i++;
          if (!req.write(Buffer.from(piece))) return void req.once("drain", pump);
        }
        req.end();
      };
      pump();
    });
    expect(JSON.parse(answer)).toEqual({ length: pieces * piece.length, sha256: hash.digest("hex") });
  });

  it("closes a connection on which Jupyter sent more than its answer, so the extra bytes answer nobody", async () => {
    const res = await get("trailing-bytes");
    expect(res.body.toString()).toBe("the answer");
    const used = lastRequest().connection;
    const next = await get("length");
    expect(next.body.toString()).toBe("sized body");
    expect(lastRequest().connection).not.toBe(used);
  });

  it("does not reuse a connection whose request body was still going out when Jupyter answered", async () => {
    let finish: () => void = () => undefined;
    const status = await new Promise<number>((resolve, reject) => {
      const req = request({ host: "127.0.0.1", port: cp.port, path: `${BASE}early-answer`, method: "POST", headers: { ...COOKIE, "Content-Length": "20" }, agent: false }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.write("ten bytes.");
      finish = () => req.destroy();
      req.on("error", reject);
    });
    expect(status).toBe(413);
    const early = lastRequest().connection;
    finish();
    expect((await get("length")).status).toBe(200);
    expect(lastRequest().connection).not.toBe(early);
  });

  /** Sends a WebSocket upgrade of `path` on a raw socket and collects what comes back. */
  function upgrade(path: string): Promise<{ socket: import("node:net").Socket; received: () => string; closed: Promise<void> }> {
    return new Promise((resolve, reject) => {
      const socket = connect(cp.port, "127.0.0.1", () => {
        socket.write(
          `GET ${BASE}${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: ${COOKIE.Cookie}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nearly renter bytes|",
        );
        resolve({ socket, received: () => Buffer.concat(chunks).toString("latin1"), closed });
      });
      const chunks: Buffer[] = [];
      socket.on("data", (d: Buffer) => chunks.push(d));
      const closed = new Promise<void>((done) => socket.on("close", () => done()));
      socket.on("error", reject);
    });
  }

  it("hands a 101 over as a byte stream: Jupyter's first bytes, the renter's early bytes, then both ways", async () => {
    const { socket, received } = await upgrade("ws-echo");
    await waitFor(() => received().includes("early renter bytes|"), 2000, "the echo of the renter's early bytes");
    expect(received()).toMatch(/^HTTP\/1\.1 101 Switching Protocols\r\n/);
    expect(received()).toContain("\r\nSec-WebSocket-Accept: scripted\r\n");
    expect(received().split("\r\n\r\n")[1]).toBe("first bytes|early renter bytes|");
    expect(lastRequest().head).toMatch(/\r\nConnection: Upgrade\r\nUpgrade: websocket$/);
    socket.write("later");
    await waitFor(() => received().endsWith("later"), 2000, "the echo of later bytes");
    socket.destroy();
  });

  it("relays a refused upgrade as Jupyter's status and body, then closes", async () => {
    const { received, closed } = await upgrade("ws-refused");
    await closed;
    const [head, body] = received().split("\r\n\r\n");
    expect(head?.split("\r\n")[0]).toBe("HTTP/1.1 403 Forbidden");
    expect(head).toContain("\r\nConnection: close");
    expect(head?.toLowerCase()).not.toContain("content-length");
    expect(body).toBe("no kernel here");
  });

  it(`opens at most ${MAX_POOLED_CONNECTIONS} connections to Jupyter; further requests wait their turn`, async () => {
    const before = jupyter.seen.connections;
    const n = MAX_POOLED_CONNECTIONS + 8;
    const results = await Promise.all(Array.from({ length: n }, () => get("slow")));
    expect(results.map((r) => r.status)).toEqual(Array(n).fill(200));
    expect(jupyter.seen.connections - before).toBeLessThanOrEqual(MAX_POOLED_CONNECTIONS);
    const slowOnes = jupyter.seen.requests.slice(-n);
    expect(new Set(slowOnes.map((r) => r.connection)).size).toBeLessThanOrEqual(MAX_POOLED_CONNECTIONS);
  });
});

describe("relay HTTP/1.1 to Jupyter: the answer timeout", () => {
  it("limits only the wait for the head: an answer that began before the upload was out is not cut", async () => {
    const jupyter = await startScriptedJupyter();
    const cp = await startControlPlane({ responseTimeoutMs: 200 });
    const tunnel = await startAgentTunnel(cp, jupyter);
    try {
      const body = await new Promise<string>((resolve, reject) => {
        const req = request(
          { host: "127.0.0.1", port: cp.port, path: `${BASE}answer-while-uploading`, method: "POST", headers: { ...COOKIE, "Content-Length": "6" }, agent: false },
          (res) => {
            let text = "";
            res.on("data", (d: Buffer) => (text += d.toString()));
            res.on("end", () => resolve(text));
            res.on("error", reject);
          },
        );
        req.on("error", reject);
        req.write("up");
        setTimeout(() => req.end("load"), 100);
      });
      expect(body).toBe("first-last");
    } finally {
      await tunnel.close();
      await cp.close();
      jupyter.server.close();
    }
  });
});
