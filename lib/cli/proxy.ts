/**
 * `9nbd proxy`: serve a 9P image as a standard NBD export, for clients that
 * speak the NBD protocol themselves (qemu, nbdcopy, nbdinfo, fio's nbd
 * engine, nbd-client on another machine). No kernel driver and no root
 * needed. All clients share one resilient backend.
 *
 * @module
 */

import { formatAddress } from "../address.ts";
import { ExitCode, UsageError } from "../errors.ts";
import { ResilientImage } from "../failover/mod.ts";
import { logger } from "../log.ts";
import { NbdProxy, parseListenAddress } from "../nbd/proxy.ts";
import { withReadAhead } from "../readahead.ts";
import { parseSpec } from "../spec.ts";
import { humanBytes } from "./info.ts";
import {
  applyVerbosity,
  commonHelp,
  commonOptions,
  parse,
  resilienceHelp,
  resilienceOptions,
  resilientOptions,
  serverHelp,
  serverOptions,
} from "./options.ts";

const log = logger("proxy");

export const proxyHelp = `Usage: 9nbd proxy [options] SPEC [SPEC...] --listen ADDRESS

Serve the image SPEC names as an NBD export (fixed newstyle handshake,
simple replies) until interrupted. Any number of clients may connect at once;
they share one 9P backend, so the export advertises multi-connection
consistency. Read-only unless --rw. Several SPECs name replicas of one
image, as for attach.

Examples:
  9nbd proxy 10.0.0.5:/srv/disk.img --listen unix:/run/disk.sock
  nbdinfo 'nbd+unix:///?socket=/run/disk.sock'
  qemu-img convert -O qcow2 nbd:unix:/run/disk.sock disk.qcow2

Options:
  --listen ADDRESS    where to listen (ADDRESS below)
  --name NAME         the export's name; clients must ask for it or for the
                      default (empty) name (default: any name is this export)
${resilienceHelp}
${serverHelp}
${commonHelp}`;

export async function proxy(args: string[], out: (line: string) => void): Promise<number> {
  const { values, positionals: specTexts } = parse(args, {
    ...commonOptions,
    ...serverOptions,
    listen: { type: "string" },
    name: { type: "string" },
    ...resilienceOptions,
  });
  if (values.help) {
    out(proxyHelp);
    return ExitCode.ok;
  }
  if (specTexts.length === 0) throw new UsageError("missing SPEC");
  if (values.listen === undefined) throw new UsageError("missing --listen ADDRESS");
  const listen = parseListenAddress(values.listen);
  const specs = specTexts.map(parseSpec);
  const options = resilientOptions(values, specs.length);
  const name = values.name ?? "";
  if (new TextEncoder().encode(name).length > 4096) {
    throw new UsageError("--name: longer than 4096 bytes");
  }
  await applyVerbosity(values);

  const image = await ResilientImage.open(specs, options);
  let server: NbdProxy;
  try {
    server = await NbdProxy.listen({
      backend: withReadAhead(image, options.readAhead),
      listen,
      name,
      description: specTexts.join(" "),
      maxInflight: options.maxInflight,
    });
  } catch (err) {
    await image.close();
    throw err;
  }
  const stopped = new Promise<string>((resolve) => {
    const onSignal = (signal: Deno.Signal) => () => resolve(signal);
    for (const signal of ["SIGINT", "SIGTERM"] as const) {
      Deno.addSignalListener(signal, onSignal(signal));
    }
  });
  out(
    `serving ${specTexts.join(" ")} (${humanBytes(image.sizeBytes)}, ${
      image.readOnly ? "read-only" : "read-write"
    }) on ${formatAddress(server.address)}`,
  );
  const signal = await stopped;
  log.info(`${signal}: stopping`);
  await server.close();
  // Writes acknowledged to clients go to stable storage before we leave.
  if (!image.readOnly) await image.flush().catch(() => {});
  await image.close();
  return ExitCode.ok;
}
