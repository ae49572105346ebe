import { maskSecret } from "@runit/protocol";

/** Where the agent writes: streams are passed in so tests can read every line. */
export interface AgentLogger {
  /** One line on the output stream, e.g. `[agent] session registered: <uuid>`. */
  info(line: string): void;
  /** One line on the error stream. */
  error(line: string): void;
}

/** A writable the logger can print to (process.stdout, a PassThrough in tests). */
export interface LineSink {
  write(chunk: string): unknown;
}

/** Builds a logger over two sinks; `secrets` are masked wherever they appear in a line. */
export function createLogger(out: LineSink, err: LineSink = out, secrets: () => string[] = () => []): AgentLogger {
  const scrub = (line: string): string => {
    let text = line;
    for (const secret of secrets()) {
      if (secret.length >= 8) text = text.split(secret).join(maskSecret(secret));
    }
    return text;
  };
  return {
    info: (line) => void out.write(`${scrub(line)}\n`),
    error: (line) => void err.write(`${scrub(line)}\n`),
  };
}

/**
 * The secrets the agent's logger masks: the provider key for the agent's lifetime, and those of
 * the last `recentLimit` session secrets and tokens. A long-running agent offers session after
 * session; an unbounded set would grow by two per session and make every log line slower. A
 * session's lines are all written by the time its teardown ends, so the few latest suffice.
 */
export class MaskedSecrets {
  private readonly recent: string[] = [];

  constructor(
    private readonly permanent: readonly string[],
    private readonly recentLimit = 8,
  ) {}

  add(secret: string): void {
    if (this.recent.includes(secret) || this.permanent.includes(secret)) return;
    this.recent.push(secret);
    if (this.recent.length > this.recentLimit) this.recent.shift();
  }

  list(): string[] {
    return [...this.permanent, ...this.recent];
  }
}

/** A logger that drops everything (for library callers that want silence). */
export const silentLogger: AgentLogger = { info: () => undefined, error: () => undefined };
