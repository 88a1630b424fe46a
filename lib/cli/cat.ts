/**
 * `9nbd cat SPEC [--offset N] [--length N]`: stream an image to stdout, in
 * order, with several large chunks being fetched while earlier ones are
 * written (each chunk itself split into parallel msize-sized Treads).
 *
 * @module
 */

import { UsageError } from "../errors.ts";
import { Image } from "../image.ts";
import { writeAll } from "../p9/transport.ts";
import { parseSpec } from "../spec.ts";
import { humanBytes } from "./info.ts";
import {
  applyVerbosity,
  commonHelp,
  commonOptions,
  openOptions,
  parse,
  parseSize,
  positionals,
  serverHelp,
  serverOptions,
} from "./options.ts";

export const catHelp = `Usage: 9nbd cat [options] SPEC

Write the image (or a range of it) to standard output. A progress line is
shown on standard error when it is a terminal.

Options:
  --offset BYTES    start here (default 0; suffixes K, M, G)
  --length BYTES    copy this many bytes (default: to the end)
${serverHelp}
${commonHelp}`;

/** Bytes per pipeline stage, and how many stages are fetched ahead. */
const CHUNK_BYTES = 4 * 1024 * 1024;
const AHEAD = 3;

export async function cat(
  args: string[],
  out: (line: string) => void,
  stdout: { write(p: Uint8Array): Promise<number> } = Deno.stdout,
): Promise<number> {
  const { values, positionals: rest } = parse(args, {
    ...commonOptions,
    ...serverOptions,
    offset: { type: "string" },
    length: { type: "string" },
  });
  if (values.help) {
    out(catHelp);
    return 0;
  }
  await applyVerbosity(values);
  const [specText] = positionals(rest, ["SPEC"]);
  const spec = parseSpec(specText);
  const start = values.offset === undefined ? 0 : parseSize("offset", values.offset);
  const image = await Image.open(spec, openOptions(values));
  try {
    if (start > image.sizeBytes) {
      throw new UsageError(`--offset ${start} is beyond the image end (${image.sizeBytes})`);
    }
    const length = values.length === undefined
      ? image.sizeBytes - start
      : Math.min(parseSize("length", values.length), image.sizeBytes - start);
    await copyOut(image, start, length, stdout);
  } finally {
    await image.close();
  }
  return 0;
}

async function copyOut(
  image: Image,
  start: number,
  length: number,
  stdout: { write(p: Uint8Array): Promise<number> },
): Promise<void> {
  const progress = Deno.stderr.isTerminal() ? new Progress(length) : undefined;
  const buffers = Array.from(
    { length: AHEAD + 1 },
    () => new Uint8Array(Math.min(CHUNK_BYTES, Math.max(length, 1))),
  );
  const queue: { promise: Promise<void>; view: Uint8Array }[] = [];
  let next = 0;
  let stage = 0;
  const issue = () => {
    const size = Math.min(CHUNK_BYTES, length - next);
    const view = buffers[stage++ % buffers.length].subarray(0, size);
    const promise = image.read(start + next, view);
    promise.catch(() => {}); // Awaited in order below; avoid an unhandled rejection meanwhile.
    queue.push({ promise, view });
    next += size;
  };
  while (next < length && queue.length < AHEAD) issue();
  let written = 0;
  try {
    while (queue.length > 0) {
      const head = queue.shift()!;
      await head.promise;
      if (next < length) issue();
      try {
        await writeAll(stdout, head.view);
      } catch (err) {
        if (err instanceof Deno.errors.BrokenPipe) return; // The reader stopped (| head).
        throw err;
      }
      written += head.view.length;
      progress?.update(written);
    }
  } finally {
    progress?.done(written);
  }
}

class Progress {
  #lastMs = 0;
  readonly #startMs = performance.now();
  readonly #encoder = new TextEncoder();
  constructor(readonly total: number) {}
  update(done: number): void {
    const now = performance.now();
    if (now - this.#lastMs < 250) return;
    this.#lastMs = now;
    this.#print(done, now);
  }
  done(done: number): void {
    this.#print(done, performance.now());
    Deno.stderr.writeSync(this.#encoder.encode("\n"));
  }
  #print(done: number, now: number): void {
    const seconds = Math.max((now - this.#startMs) / 1000, 1e-3);
    const percent = this.total ? (100 * done / this.total).toFixed(1) : "100.0";
    const line = `\r${humanBytes(done)} of ${humanBytes(this.total)} (${percent}%), ${
      humanBytes(done / seconds)
    }/s   `;
    Deno.stderr.writeSync(this.#encoder.encode(line));
  }
}
