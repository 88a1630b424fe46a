/**
 * Run the `9nbd` CLI as a child process, as a user would, and collect its
 * exit code, stdout and stderr.
 *
 * @module
 */

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
