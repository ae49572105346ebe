/* global process */
// A bare TCP byte pipe, for the benchmark's floor: it forwards every connection to
// 127.0.0.1:$BENCH_PIPE_TO both ways and parses nothing. Two of them chained cost what any
// two-process path must cost (two loopback hops, two processes to wake), with no HTTP work at all.
import { connect, createServer } from "node:net";

const to = Number(process.env.BENCH_PIPE_TO);
const server = createServer((renter) => {
  const upstream = connect({ host: "127.0.0.1", port: to, noDelay: true });
  renter.setNoDelay(true);
  renter.pipe(upstream);
  upstream.pipe(renter);
  renter.on("error", () => upstream.destroy());
  upstream.on("error", () => renter.destroy());
  renter.on("close", () => upstream.destroy());
  upstream.on("close", () => renter.destroy());
});
server.listen(0, "127.0.0.1", () => process.stdout.write(`listening on ${server.address().port}\n`));
process.on("SIGTERM", () => process.exit(0));
