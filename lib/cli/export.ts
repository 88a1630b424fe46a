/**
 * `9nbd export [options] PATH...`: serve image files, and directories of
 * image files, over 9P2000.L until SIGINT or SIGTERM.
 *
 * @module
 */

import { formatAddress } from "../address.ts";
import { AuthError, UsageError } from "../errors.ts";
import { DEFAULT_MUNGE_SOCKET, libmungeClient } from "../kernel/munge.ts";
import { DEFAULT_EXPORT_ADDRESS, parseListenAddress, startExportServer } from "../server/export.ts";
import { parseCidr } from "../server/access.ts";
import {
  addressHelp,
  applyVerbosity,
  commonHelp,
  commonOptions,
  parse,
  parseAuthMode,
  parseMungeSocket,
  parseSize,
} from "./options.ts";

const defaultListen = formatAddress(DEFAULT_EXPORT_ADDRESS);

export const exportHelp = `Usage: 9nbd export [options] PATH...

Serve image files, and directories of image files, over 9P2000.L, so that
"9nbd attach", the Linux kernel (mount -t 9p) or any 9P client can use them.
A client attaches with aname = an exported PATH (as written here, or its
absolute path) or a path below an exported directory. Read-only unless --rw.
Runs in the foreground until interrupted (SIGINT or SIGTERM).

Options:
  --listen ADDRESS  where to listen (ADDRESS below; default ${defaultListen})
  --rw              allow writes (default: read-only; writes get EROFS)
  --allow CIDR      only clients from this address range (repeatable; IPv4 or
                    IPv6, e.g. 10.0.0.0/8, fd00::/8; default: every address)
  --privport        only clients whose source port is below 1024 (as diod)
  --auth MODE       munge: every attach must carry a MUNGE credential for the
                    uid it names (as diod by default; "9nbd attach" and diodcat
                    send one); none (default): no authentication
  --munge-socket PATH
                    munged's socket (default ${DEFAULT_MUNGE_SOCKET})
  --msize BYTES     largest 9P message to grant (default 1M + 24)

An export that listens beyond loopback with neither --auth munge nor --allow
says so in a warning at start-up.

${addressHelp}
${commonHelp}`;

/** Run `9nbd export`; returns the exit code once the server has stopped. */
export async function exportCommand(args: string[], out: (line: string) => void): Promise<number> {
  const { values, positionals } = parse(args, {
    ...commonOptions,
    listen: { type: "string" },
    rw: { type: "boolean" },
    allow: { type: "string", multiple: true },
    privport: { type: "boolean" },
    auth: { type: "string" },
    "munge-socket": { type: "string" },
    msize: { type: "string" },
  });
  if (values.help) {
    out(exportHelp);
    return 0;
  }
  if (positionals.length === 0) throw new UsageError("missing PATH");
  const listen = values.listen === undefined
    ? DEFAULT_EXPORT_ADDRESS
    : parseListenAddress(values.listen);
  const allow = (values.allow ?? []).map(parseCidr);
  let maxMsize: number | undefined;
  if (values.msize !== undefined) {
    maxMsize = parseSize("msize", values.msize);
    if (maxMsize < 4096 || maxMsize > 64 * 1024 * 1024) {
      throw new UsageError(`--msize: ${maxMsize} is outside 4K..64M`);
    }
  }
  const auth = parseAuthMode(values.auth ?? "none", ["munge", "none"] as const);
  const socket = values["munge-socket"] === undefined
    ? DEFAULT_MUNGE_SOCKET
    : parseMungeSocket(values["munge-socket"]);
  await applyVerbosity(values);
  const munge = auth === "munge" ? libmungeClient(socket) : undefined;
  // Minting one credential proves libmunge and munged are there before any
  // client is refused for want of them.
  await munge?.encode().catch((err) => {
    throw err instanceof AuthError ? new AuthError(`--auth munge: ${err.message}`) : err;
  });
  const server = await startExportServer({
    paths: positionals,
    listen,
    readWrite: values.rw ?? false,
    allow,
    privilegedPortOnly: values.privport ?? false,
    maxMsize,
    munge,
  });
  const { promise: stopped, resolve: stop } = Promise.withResolvers<void>();
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  for (const signal of signals) Deno.addSignalListener(signal, stop);
  try {
    await stopped;
  } finally {
    for (const signal of signals) Deno.removeSignalListener(signal, stop);
    await server.close();
  }
  return 0;
}
