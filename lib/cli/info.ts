/**
 * `9nbd info SPEC [--json]`: what the server says about an image.
 *
 * @module
 */

import { Image } from "../image.ts";
import { parseSpec } from "../spec.ts";
import {
  applyVerbosity,
  commonHelp,
  commonOptions,
  openOptions,
  parse,
  positionals,
  serverHelp,
  serverOptions,
} from "./options.ts";

export const infoHelp = `Usage: 9nbd info [options] SPEC

Connect to the server, open the image read-only and print its size, the
negotiated msize, the iounit, the qid and the server, then disconnect.

Options:
  --json            print one JSON object instead of text
${serverHelp}
${commonHelp}`;

/** Human-readable byte count: `64.0 MiB`. */
export function humanBytes(bytes: number): string {
  const units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${bytes} bytes` : `${value.toFixed(1)} ${units[unit]}`;
}

export async function info(args: string[], out: (line: string) => void): Promise<number> {
  const { values, positionals: rest } = parse(args, {
    ...commonOptions,
    ...serverOptions,
    json: { type: "boolean" },
  });
  if (values.help) {
    out(infoHelp);
    return 0;
  }
  await applyVerbosity(values);
  const [specText] = positionals(rest, ["SPEC"]);
  const spec = parseSpec(specText);
  const image = await Image.open(spec, openOptions(values));
  try {
    const facts = {
      spec: spec.text,
      server: image.server,
      sizeBytes: image.sizeBytes,
      msize: image.session.msize,
      iounit: image.iounit,
      chunkBytes: image.chunkBytes,
      qid: {
        type: image.qid.type,
        version: image.qid.version,
        path: image.qid.path.toString(),
      },
    };
    if (values.json) {
      out(JSON.stringify(facts));
    } else {
      out(
        [
          `image   ${facts.spec}`,
          `server  ${facts.server}`,
          `size    ${facts.sizeBytes} bytes (${humanBytes(facts.sizeBytes)})`,
          `msize   ${facts.msize}`,
          `iounit  ${facts.iounit}${
            facts.iounit ? "" : " (none; reads of up to " +
              facts.chunkBytes + " bytes)"
          }`,
          `qid     type 0x${
            facts.qid.type.toString(16).padStart(2, "0")
          } version ${facts.qid.version} path 0x${BigInt(facts.qid.path).toString(16)}`,
        ].join("\n"),
      );
    }
  } finally {
    await image.close();
  }
  return 0;
}
