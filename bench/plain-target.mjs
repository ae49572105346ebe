/* global process */
// A plain Node HTTP server standing in for Jupyter (BENCH_TARGET=plain): isolates the cost of the
// proxies from Jupyter's own. Serves `<base>api/status` (small JSON) and `<base>files/1mib.bin`.
import { randomBytes } from "node:crypto";
import { createServer } from "node:http";

const base = process.env.BENCH_BASE;
const big = randomBytes(1024 * 1024);
const server = createServer((req, res) => {
  if (req.url === `${base}api/status`) {
    res.writeHead(200, { "Content-Type": "application/json" }).end('{"started":"2026-01-01T00:00:00Z","kernels":0}');
  } else if (req.url === `${base}files/1mib.bin`) {
    res.writeHead(200, { "Content-Type": "application/octet-stream", "Content-Length": String(big.length) }).end(big);
  } else res.writeHead(404).end();
});
server.listen(0, "127.0.0.1", () => process.stdout.write(`listening on ${server.address().port}\n`));
process.on("SIGTERM", () => process.exit(0));
