/**
 * The `9nbd` command: dispatch to a subcommand, and turn every error into one
 * line on stderr and a documented exit code (never a stack trace).
 *
 * @module
 */

import denoJson from "../../deno.json" with { type: "json" };
import { describeError, ExitCode, exitCodeFor, UsageError } from "../errors.ts";
import { attach, detach, list } from "./attach.ts";
import { cat } from "./cat.ts";
import { exportCommand } from "./export.ts";
import { proxy } from "./proxy.ts";
import { info } from "./info.ts";

/** The program's version, from deno.json. */
export const VERSION: string = denoJson.version;

export const mainHelp = `Usage: 9nbd COMMAND [options] ...

A network block device whose transport is 9P2000.L.

Commands:
  info SPEC             show an image's size and the server's parameters
  cat SPEC              write an image (or part of it) to standard output
  attach SPEC DEVICE    make /dev/nbdN (or "auto") a block device backed by the image
  detach DEVICE         flush, disconnect and stop the device's daemon
  list                  show attached devices
  export PATH...        serve image files (and directories of them) over 9P2000.L
  proxy SPEC --listen A serve the image as a standard NBD export (nbd-client, qemu, fio)

Run "9nbd COMMAND --help" for a command's options.
Options: --version, --help.

Exit codes:
  0 success         1 runtime failure (server, network, protocol, I/O)
  2 usage error     3 permission denied (not root, access refused by the server)
  4 not found (no such image, path or device)     5 device busy`;

type Command = (args: string[], out: (line: string) => void) => Promise<number>;

const commands: Record<string, Command> = {
  info,
  cat,
  attach,
  detach,
  list,
  export: exportCommand,
  proxy,
};

/** Run the CLI with `args`; returns the exit code. */
export async function main(args: string[]): Promise<number> {
  const out = (line: string) => console.log(line);
  try {
    const [name, ...rest] = args;
    if (name === undefined || name === "--help" || name === "-h" || name === "help") {
      out(mainHelp);
      return name === undefined ? ExitCode.usage : ExitCode.ok;
    }
    if (name === "--version" || name === "-V") {
      out(`9nbd ${VERSION}`);
      return ExitCode.ok;
    }
    const command = commands[name];
    if (!command) throw new UsageError(`unknown command "${name}" (try 9nbd --help)`);
    return await command(rest, out);
  } catch (err) {
    const code = exitCodeFor(err);
    const hint = code === ExitCode.usage ? " (see 9nbd --help)" : "";
    console.error(
      `9nbd: ${describeError(err)}${
        err instanceof UsageError && !describeError(err).includes("--help") ? hint : ""
      }`,
    );
    return code;
  }
}
