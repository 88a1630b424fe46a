/**
 * Leveled logging to stderr through LogTape. Library modules call
 * {@link logger}; only the CLI calls {@link setupLogging}. Until it is
 * called, nothing is printed (so tests and library users stay quiet).
 *
 * @module
 */

import { configure, getLogger, type Logger, type LogRecord } from "@logtape/logtape";

/** How much to say. */
export type Verbosity = "quiet" | "normal" | "verbose" | "debug";

const encoder = new TextEncoder();

function formatRecord(record: LogRecord, withTime: boolean): string {
  const message = record.message.map((part) => typeof part === "string" ? part : String(part))
    .join("");
  const level = record.level === "info" ? "" : `${record.level}: `;
  const time = withTime ? `${new Date(record.timestamp).toISOString()} ` : "";
  return `${time}9nbd: ${level}${message}\n`;
}

/**
 * Send log records at or above the level `verbosity` implies to stderr.
 * `timestamps` prefixes each line with an ISO time (for daemons whose
 * stderr is a log file).
 */
export async function setupLogging(verbosity: Verbosity, timestamps = false): Promise<void> {
  const lowestLevel = verbosity === "quiet"
    ? "error"
    : verbosity === "normal"
    ? "info"
    : verbosity === "verbose"
    ? "debug"
    : "trace";
  await configure({
    reset: true,
    sinks: {
      stderr: (record: LogRecord) => {
        try {
          Deno.stderr.writeSync(encoder.encode(formatRecord(record, timestamps)));
        } catch {
          // stderr closed (a detached daemon): a log line is not worth dying for.
        }
      },
    },
    loggers: [
      { category: ["9nbd"], lowestLevel, sinks: ["stderr"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["stderr"] },
    ],
  });
}

/** The logger for one part of the program, for example `logger("session")`. */
export function logger(...category: string[]): Logger {
  return getLogger(["9nbd", ...category]);
}
