import { Command, Option } from "commander";
import { systemClock } from "./clock.js";
import { ConfigError, loadConfig } from "./config.js";
import { revokeProviderKey } from "./keyRevocation.js";
import { createSecurityLog, type SecurityLog } from "./securityLog.js";
import { createRelay } from "./relay/index.js"; // relay (issue 4): the built-in relay is always on
import { startServer } from "./server.js";
import { tuneGcForRelay } from "@runit/relay-link";
import { RunitDatabase } from "./store/database.js";
import { ProviderKeyStore } from "./store/providerKeys.js";

function withStore<T>(dbOption: string | undefined, fn: (keys: ProviderKeyStore, log: SecurityLog, db: RunitDatabase) => T): T {
  const dbPath = dbOption ?? loadConfig(process.env).dbPath;
  const store = RunitDatabase.open(dbPath);
  try {
    const log = createSecurityLog({ writer: process.stdout, store, clock: systemClock });
    return fn(new ProviderKeyStore(store), log, store);
  } finally {
    store.close();
  }
}

function buildProgram(): Command {
  const program = new Command("runit-control-plane").description("RUNIT control plane").showHelpAfterError();
  const dbOption = () => new Option("--db <path>", "SQLite database (default $RUNIT_DB or ./data/runit.db)");

  program
    .command("serve", { isDefault: true })
    .description("run the HTTP server (the default command)")
    .addOption(new Option("--port <port>", "port to listen on (default $PORT or 10000)").argParser((v) => Number(v)))
    .addOption(dbOption())
    .action(async (opts: { port?: number; db?: string }) => {
      const config: Record<string, unknown> = {};
      if (opts.port !== undefined) {
        if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) throw new ConfigError("--port must be 0..65535");
        config.port = opts.port;
      }
      if (opts.db) config.dbPath = opts.db;
      tuneGcForRelay();
      const responseTimeoutMs = loadConfig(process.env).relayResponseTimeoutMs;
      await startServer({ config, handleSignals: true, relay: (ctx) => createRelay(ctx, { responseTimeoutMs }) });
    });

  const keys = program.command("keys").description("manage provider API keys");
  keys
    .command("create")
    .description("create a provider key; it is printed once, alone on the last line")
    .requiredOption("--name <name>", "who the key is for")
    .addOption(dbOption())
    .action((opts: { name: string; db?: string }) => {
      withStore(opts.db, (store, log) => {
        const { record, key } = store.create(opts.name, Date.now());
        log("PROVIDER_KEY_CREATED", { keyId: record.id, name: record.name, key });
        process.stdout.write(`created provider key ${record.id} (${record.name}); it is shown once:\n${key}\n`);
      });
    });
  keys
    .command("list")
    .description("list provider keys (never the keys themselves)")
    .addOption(dbOption())
    .action((opts: { db?: string }) => {
      withStore(opts.db, (store) => {
        const rows = store.list();
        process.stdout.write("id\tname\tkey\tcreated\trevoked\n");
        for (const r of rows) {
          const revoked = r.revokedAt ? new Date(r.revokedAt).toISOString() : "-";
          process.stdout.write(`${r.id}\t${r.name}\t${r.keyPrefix}\t${new Date(r.createdAt).toISOString()}\t${revoked}\n`);
        }
      });
    });
  keys
    .command("revoke <id>")
    .description("revoke a provider key: it can no longer register sessions, and its live sessions end (OPERATOR)")
    .addOption(dbOption())
    .action((id: string, opts: { db?: string }) => {
      withStore(opts.db, (_keys, log, store) => {
        const result = revokeProviderKey({ store, securityLog: log, clock: systemClock }, id);
        if (!result.revoked) {
          process.stderr.write(`no live provider key with id ${id}\n`);
          process.exitCode = 1;
          return;
        }
        const n = result.endedSessions.length;
        process.stdout.write(`revoked provider key ${id}; ended ${n} live session${n === 1 ? "" : "s"}\n`);
      });
    });
  return program;
}

/** Runs the CLI with `argv` (process.argv form); sets process.exitCode on failure. */
export async function runCli(argv: string[] = process.argv): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (err) {
    process.stderr.write(`runit-control-plane: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  }
}

await runCli();
