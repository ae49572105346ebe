/** Anything a line can be written to (process.stdout, a test buffer). */
export interface LineWriter {
  write(chunk: string): unknown;
}

/** The operational logger: plain lines, streams passed in so tests can read them. */
export interface Logger {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

/** A logger writing info to `stdout` and warnings/errors to `stderr`. */
export function createLogger(streams: { stdout: LineWriter; stderr: LineWriter }): Logger {
  return {
    info: (message) => void streams.stdout.write(`${message}\n`),
    warn: (message) => void streams.stderr.write(`[warn] ${message}\n`),
    error: (message) => void streams.stderr.write(`[error] ${message}\n`),
  };
}
