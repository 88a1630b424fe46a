/**
 * Run the `9nbd` CLI as a child process, as a user would, and collect its
 * exit code, stdout and stderr.
 *
 * @module
 */

import { freePort } from "../../tools/servers.ts";

/** The project's main.ts, whatever the working directory. */
export const mainTs = new URL("../../main.ts", import.meta.url).pathname;

/** What one run of the CLI produced. */
export interface CliResult {
  code: number;
  stdout: Uint8Array;
  stderr: string;
  /** stdout as text. */
  text: string;
}

/** Run `9nbd ARGS...` (through `deno run -A main.ts`) and wait for it. */
export async function runCli(
  args: string[],
  options: { env?: Record<string, string> } = {},
): Promise<CliResult> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", mainTs, ...args],
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
    env: options.env,
  }).output();
  return {
    code: output.code,
    stdout: output.stdout,
    stderr: new TextDecoder().decode(output.stderr),
    text: new TextDecoder().decode(output.stdout),
  };
}

/** Lowercase hex SHA-256 of `bytes`. */
export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A `9nbd export` running as a child process, as a user starts it. */
export interface ExportProcess {
  /** The loopback TCP port it listens on. */
  port: number;
  /** SIGTERM, and wait for it to exit. */
  stop(): Promise<void>;
}

/**
 * Start `9nbd export --listen 127.0.0.1:PORT ARGS...` on a free port and
 * resolve once it accepts connections (polled; fails after 20 s or when it
 * exits first).
 */
export async function startExportCli(args: string[]): Promise<ExportProcess> {
  const port = freePort();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", mainTs, "export", "--listen", `127.0.0.1:${port}`, ...args],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let exited = false;
  const status = child.status.finally(() => exited = true);
  const stderr = new Response(child.stderr).text();
  const stop = async () => {
    if (!exited) child.kill("SIGTERM");
    await status;
    await stderr;
  };
  const deadline = performance.now() + 20_000;
  for (;;) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      return { port, stop };
    } catch (err) {
      if (exited || performance.now() > deadline) {
        await stop();
        throw new Error(`9nbd export did not listen: ${(await stderr).trim()}`, { cause: err });
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
