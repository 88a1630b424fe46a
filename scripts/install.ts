/**
 * `deno task install`: put a `9nbd` command on PATH that runs this checkout,
 * for where no compiled binary can be built (no denort runtime). It is
 * `deno install --global` with what 9nbd needs: every permission (FFI for
 * the NBD ioctls, the network, files, starting its own daemon), the V8 flags
 * of lib/runtime.ts, and the project's config (its import map). The daemon
 * `attach` starts is this program again (lib/runtime.ts `selfCommand`), so it
 * gets the same flags.
 *
 * The command runs the checkout in place: moving or deleting the checkout
 * breaks it; run this again after moving it.
 *
 * Usage: deno task install [ROOT]
 *   ROOT defaults to $DENO_INSTALL_ROOT, else /usr/local as root (the command
 *   lands in /usr/local/bin, on every PATH), else Deno's own default, ~/.deno.
 *
 * Exit status: 0 installed and `9nbd --version` runs; 1 deno install failed
 * or the installed command does not run (one line says why).
 *
 * @module
 */

import { v8FlagsArgument } from "../lib/runtime.ts";

const repo = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const home = Deno.env.get("HOME") ?? "/root";
const installRoot = Deno.args[0] ?? Deno.env.get("DENO_INSTALL_ROOT") ??
  (Deno.uid() === 0 ? "/usr/local" : `${home}/.deno`);
const binDir = `${installRoot}/bin`;
const decoder = new TextDecoder();

/** The last line of `text` that says something, without colours. */
function lastLine(text: string): string {
  // deno-lint-ignore no-control-regex
  const lines = text.replace(/\x1b\[[0-9;]*m/g, "").split("\n").map((l) => l.trim());
  return lines.filter((l) => l !== "").at(-1) ?? "no output";
}

function fail(line: string): never {
  console.error(`install: ${line}`);
  Deno.exit(1);
}

const installed = await new Deno.Command(Deno.execPath(), {
  args: [
    "install",
    "--global",
    "--force",
    "--allow-all",
    v8FlagsArgument(),
    "--config",
    `${repo}/deno.json`,
    "--name",
    "9nbd",
    "--root",
    installRoot,
    `${repo}/main.ts`,
  ],
  stdin: "null",
  stdout: "piped",
  stderr: "piped",
}).output();
if (!installed.success) {
  fail(
    `deno install failed (exit ${installed.code}): ${lastLine(decoder.decode(installed.stderr))}`,
  );
}

const command = `${binDir}/9nbd`;
let version: Deno.CommandOutput;
try {
  version = await new Deno.Command(command, { args: ["--version"], stdin: "null" }).output();
} catch (err) {
  fail(`${command} does not run: ${err instanceof Error ? err.message : err}`);
}
if (!version.success) {
  fail(
    `${command} --version failed (exit ${version.code}): ${
      lastLine(decoder.decode(version.stderr))
    }`,
  );
}
console.log(`install: ${command} runs this checkout (${decoder.decode(version.stdout).trim()})`);
const onPath = (Deno.env.get("PATH") ?? "").split(":").includes(binDir);
if (!onPath) console.log(`install: ${binDir} is not on PATH: export PATH="${binDir}:$PATH"`);
