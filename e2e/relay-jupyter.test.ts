// The relay against a real Jupyter (runit-jupyter container, base_url /s/<id>/): the real control
// plane with its SQLite session store, the agent's relay tunnel, real sockets and a real kernel.
import { createHash, randomBytes } from "node:crypto";
import { writeFileSync, chownSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { fetchRaw, waitFor } from "./relay-harness.js";
import {
  onePlusOneThroughRelay,
  requireDocker,
  startJupyter,
  startRelayStack,
  type JupyterContainer,
  type RelayStack,
} from "./relay-jupyter-harness.js";

const MB = 1024 * 1024;

describe("relay to a real Jupyter", () => {
  let jupyter: JupyterContainer;
  let stack: RelayStack;
  let base: string;
  let bigSha = "";
  const bigSize = 50 * MB;

  beforeAll(async () => {
    await requireDocker();
    jupyter = await startJupyter();
    base = `/s/${jupyter.sessionId}/`;
    const big = randomBytes(bigSize);
    bigSha = createHash("sha256").update(big).digest("hex");
    const file = join(jupyter.workspace, "big.bin");
    writeFileSync(file, big, { mode: 0o644 });
    chownSync(file, 1000, 1000);
    stack = await startRelayStack(jupyter, { reconnectMinMs: 1500 });
  }, 120_000);
  afterAll(async () => {
    await stack?.close();
    await jupyter?.stop();
  });

  it("hands the renter in with a scoped httpOnly SameSite=Strict cookie", () => {
    expect(stack.setCookie).toBe(`runit_access=${stack.accessToken}; Path=${base}; HttpOnly; SameSite=Strict`);
  });

  it("GET api/status with the cookie is answered by Jupyter", async () => {
    const res = await fetchRaw(stack.cp.port, `${base}api/status`, { headers: { Cookie: stack.cookie } });
    expect(res.status).toBe(200);
    const body = JSON.parse(res.body.toString()) as Record<string, unknown>;
    expect(Object.keys(body).sort()).toEqual(["connections", "kernels", "last_activity", "started"]);
    expect(res.body.toString()).not.toContain(jupyter.token);
  });

  it("GET api/status without the cookie is 403, and 403 from 127.0.0.2 with it", async () => {
    const none = await fetchRaw(stack.cp.port, `${base}api/status`);
    expect(none.status).toBe(403);
    expect(JSON.parse(none.body.toString())).toEqual({ error: "Invalid or expired token", code: "INVALID_ACCESS_TOKEN" });
    const other = await fetchRaw(stack.cp.port, `${base}api/status`, { headers: { Cookie: stack.cookie }, localAddress: "127.0.0.2" });
    expect(other.status).toBe(403);
    expect(JSON.parse(other.body.toString())).toEqual({ error: "IP mismatch - access denied", code: "IP_MISMATCH" });
    const log = stack.out.join("");
    expect(log).toMatch(/RELAY_ACCESS_DENIED: \{"sessionId":"[0-9a-f-]+","ip":"127\.0\.0\.1"/);
    expect(log).toMatch(/SESSION_HIJACK_ATTEMPT: \{"sessionId":"[0-9a-f-]+","ip":"127\.0\.0\.2"/);
  });

  it("serves Jupyter's pages without setting a cookie on the control plane's origin, and its POSTs need none", async () => {
    // Unrelayed, Jupyter sets a login cookie and `_xsrf` at Path=/ on this page.
    const page = await fetchRaw(stack.cp.port, `${base}tree`, { headers: { Cookie: stack.cookie } });
    expect(page.status).toBe(200);
    expect(page.body.toString()).toContain("<html");
    expect(page.headers["set-cookie"]).toBeUndefined();
    // No `_xsrf` cookie or header: the relay's token authentication is what Jupyter checks.
    const created = await fetchRaw(stack.cp.port, `${base}api/contents`, {
      method: "POST",
      headers: { Cookie: stack.cookie, "Content-Type": "application/json" },
      body: Buffer.from(JSON.stringify({ type: "notebook" })),
    });
    expect(created.status).toBe(201);
    expect((JSON.parse(created.body.toString()) as { type: string }).type).toBe("notebook");
  });

  it("runs 1+1 on a kernel started through the relay, over Jupyter's WebSocket protocol", async () => {
    expect(await onePlusOneThroughRelay(stack.cp.port, base, stack.cookie)).toBe("2");
  });

  it("relays a Jupyter terminal's WebSocket (stdin in, stdout out)", async () => {
    const created = await fetchRaw(stack.cp.port, `${base}api/terminals`, { method: "POST", headers: { Cookie: stack.cookie } });
    expect(created.status).toBe(200);
    const name = (JSON.parse(created.body.toString()) as { name: string }).name;
    const ws = new WebSocket(`ws://127.0.0.1:${stack.cp.port}${base}terminals/websocket/${name}`, {
      headers: { Cookie: stack.cookie, Origin: `http://127.0.0.1:${stack.cp.port}` },
    });
    let output = "";
    ws.on("message", (data: Buffer) => {
      const [kind, text] = JSON.parse(data.toString()) as [string, string];
      if (kind === "stdout") output += text;
    });
    await new Promise<void>((resolve, reject) => (ws.once("open", () => resolve()), ws.once("error", reject)));
    ws.send(JSON.stringify(["stdin", "expr 20 + 22\r"]));
    await waitFor(() => /\b42\b/.test(output), 15_000, "the terminal's answer");
    ws.close();
  });

  it("downloads a 50 MB workspace file intact and meters its bytes", async () => {
    const res = await fetchRaw(stack.cp.port, `${base}files/big.bin`, { headers: { Cookie: stack.cookie } });
    expect(res.status).toBe(200);
    expect(res.body.length).toBe(bigSize);
    expect(createHash("sha256").update(res.body).digest("hex")).toBe(bigSha);
    await new Promise((r) => setTimeout(r, 400)); // the relay reports bytes every 250 ms
    stack.cp.sessions.flushMeters();
    const row = stack.cp.store.db.prepare("SELECT bw_bytes FROM sessions WHERE id = ?").get(jupyter.sessionId) as { bw_bytes: number };
    expect(row.bw_bytes).toBeGreaterThanOrEqual(bigSize);
    expect(row.bw_bytes).toBeLessThan(bigSize + MB);
  });

  it("survives a tunnel drop: 502 TUNNEL_UNAVAILABLE during the gap, unavailable in the listing, then back", async () => {
    stack.tunnel.dropConnection();
    await waitFor(() => stack.out.join("").includes("TUNNEL_DISCONNECTED"), 5000, "TUNNEL_DISCONNECTED");
    const during = await fetchRaw(stack.cp.port, `${base}api/status`, { headers: { Cookie: stack.cookie } });
    expect(during.status).toBe(502);
    expect(JSON.parse(during.body.toString())).toEqual({ error: "The provider is not reachable right now", code: "TUNNEL_UNAVAILABLE" });
    const listing = await fetchRaw(stack.cp.port, "/renter/sessions");
    const row = (JSON.parse(listing.body.toString()) as Array<{ sessionId: string; status: string; available?: boolean }>).find(
      (s) => s.sessionId === jupyter.sessionId,
    );
    expect(row).toMatchObject({ status: "LOCKED", available: false });
    await stack.tunnel.waitConnected(10_000);
    const after = await fetchRaw(stack.cp.port, `${base}api/status`, { headers: { Cookie: stack.cookie } });
    expect(after.status).toBe(200);
  });

  it("ends the session with BANDWIDTH_EXCEEDED once a small cap is passed", async () => {
    // A second control plane with a 5 MiB cap, relaying to the same Jupyter.
    const capped = await startRelayStack(jupyter, { bandwidthCapBytes: 5 * MB });
    try {
      const res = await fetchRaw(capped.cp.port, `${base}files/big.bin`, { headers: { Cookie: capped.cookie } }).then(
        (r) => `status ${r.status}, ${r.body.length} bytes`,
        (err: Error) => err.message,
      );
      expect(res).toBe("aborted");
      await waitFor(() => capped.out.join("").includes("BANDWIDTH_EXCEEDED"), 5000, "BANDWIDTH_EXCEEDED");
      const status = await fetchRaw(capped.cp.port, `/provider/session/${jupyter.sessionId}`, {
        headers: { Authorization: `Bearer ${capped.sessionSecret}` },
      });
      expect(JSON.parse(status.body.toString())).toMatchObject({ status: "ENDED", endReason: "BANDWIDTH_EXCEEDED" });
      const after = await fetchRaw(capped.cp.port, `${base}api/status`, { headers: { Cookie: capped.cookie } });
      expect(after.status).toBe(403);
    } finally {
      await capped.close();
    }
  });
});
