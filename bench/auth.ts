/**
 * What MUNGE authentication and a privileged source port cost, on loopback.
 *
 * - Session set-up: `Image.open` of one image (dial, Tversion, the attach
 *   with or without authentication, Tgetattr, Tlopen), closed after, timed
 *   `--runs` times (default 30, at least 20) against a server that requires
 *   MUNGE (`--auth auto`: Tauth, a fresh credential from munged, Twrite,
 *   Tattach, Tclunk) and the same server software started without
 *   authentication (`--auth auto` too: Tauth answered ENOENT, Tattach).
 *   Runs alternate between the two so load drifts hit both alike. Servers:
 *   diod (`-n` or not) and `9nbd export` (`--auth munge` or not), each with
 *   a munged started for the bench.
 * - Data path with `--privport` (a node:net socket) against the ordinary
 *   `Deno.connect` one, against `9nbd export`: sequential 1 MiB reads, 8 in
 *   flight, and 4 KiB reads one at a time. Needs root.
 *
 * Prints a markdown table, then one line of JSON.
 *
 * Usage: deno run -A bench/auth.ts [--runs N]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { Image, type OpenOptions } from "../lib/image.ts";
import { libmungeClient } from "../lib/kernel/munge.ts";
import { startExportServer } from "../lib/server/export.ts";
import { parseSpec, type Spec } from "../lib/spec.ts";
import {
  mungeUnavailable,
  type RunningServer,
  serverUnavailable,
  startDiod,
  startMunged,
} from "../tools/servers.ts";
import { describeMachine, median, randomBytes } from "./lib.ts";

const { values } = parseArgs({ args: Deno.args, options: { runs: { type: "string" } } });
const runs = Math.max(20, Number(values.runs ?? 30));
const unavailable = mungeUnavailable() ?? serverUnavailable("diod");
if (unavailable) {
  console.error(`bench/auth.ts: ${unavailable}`);
  Deno.exit(3);
}

const IMAGE_BYTES = 64 * 1024 * 1024;
const dir = await Deno.realPath(await Deno.makeTempDir({ prefix: "9nbd-bench-auth-" }));
await Deno.writeFile(`${dir}/disk.img`, randomBytes(IMAGE_BYTES, 61));
const munged = await startMunged();
const stops: (() => Promise<void>)[] = [() => munged.stop()];

/** Milliseconds one `Image.open` takes, `runs` times, alternating between `specs`. */
async function setUpTimes(specs: Spec[], options: OpenOptions): Promise<number[][]> {
  const times = specs.map((): number[] => []);
  for (let run = 0; run < runs; run++) {
    for (const [i, spec] of specs.entries()) {
      const start = performance.now();
      const image = await Image.open(spec, options);
      times[i].push(performance.now() - start);
      await image.close();
    }
  }
  return times;
}

const rows: { what: string; medianMs: number; minMs: number }[] = [];
const clientOptions: OpenOptions = { auth: "auto", mungeSocket: munged.socket };
try {
  const withAuth: RunningServer = await startDiod({ dir, auth: munged });
  stops.push(() => withAuth.stop());
  const without: RunningServer = await startDiod({ dir });
  stops.push(() => without.stop());
  const exportWith = await startExportServer({
    paths: [dir],
    listen: { kind: "tcp", host: "127.0.0.1", port: 0 },
    munge: libmungeClient(munged.socket),
  });
  stops.push(() => exportWith.close());
  const exportWithout = await startExportServer({
    paths: [dir],
    listen: { kind: "tcp", host: "127.0.0.1", port: 0 },
  });
  stops.push(() => exportWithout.close());
  const exportSpec = (server: typeof exportWith) =>
    parseSpec(
      `127.0.0.1:${server.address.kind === "tcp" ? server.address.port : 0}:${dir}/disk.img`,
    );

  // One open each first: loads libmunge and warms both servers.
  const specs = [
    parseSpec(withAuth.specFor("disk.img")),
    parseSpec(without.specFor("disk.img")),
    exportSpec(exportWith),
    exportSpec(exportWithout),
  ];
  await setUpTimes(specs, clientOptions).catch((err) => {
    throw new Error(`warm-up: ${err}`);
  });
  const [diodAuth, diodNone, exportAuth, exportNone] = await setUpTimes(specs, clientOptions);
  for (
    const [what, times] of [
      ["diod, MUNGE required", diodAuth],
      ["diod -n (no authentication)", diodNone],
      ["9nbd export --auth munge", exportAuth],
      ["9nbd export (no authentication)", exportNone],
    ] as const
  ) {
    rows.push({
      what: `session set-up, ${what}`,
      medianMs: median(times),
      minMs: Math.min(...times),
    });
  }

  if (Deno.uid() === 0) {
    const spec = exportSpec(exportWithout);
    const measured = new Map<string, number[]>();
    const note = (what: string, value: number) =>
      measured.set(what, [...measured.get(what) ?? [], value]);
    for (let round = 0; round < 5; round++) {
      for (const privilegedPort of [false, true]) {
        const image = await Image.open(spec, { privilegedPort });
        const label = privilegedPort ? "--privport (node:net)" : "Deno.connect";
        note(
          `${label}: 1 MiB reads, 8 in flight (GB/s)`,
          IMAGE_BYTES / await sequentialSeconds(image) / 1e9,
        );
        note(`${label}: 4 KiB reads, 1 in flight (µs each)`, await qd1Seconds(image, 2000) * 1e6);
        await image.close();
      }
    }
    for (const [what, values] of measured) {
      rows.push({
        what: `${what}, median of ${values.length}`,
        medianMs: median(values),
        minMs: NaN,
      });
    }
  }
} finally {
  for (const stop of stops.reverse()) await stop().catch(() => {});
  await Deno.remove(dir, { recursive: true });
}

/** Seconds to read the whole image in 1 MiB reads, 8 in flight. */
async function sequentialSeconds(image: Image): Promise<number> {
  const start = performance.now();
  await Promise.all(Array.from({ length: 8 }, async (_, lane) => {
    const dest = new Uint8Array(1 << 20);
    for (let offset = lane << 20; offset < IMAGE_BYTES; offset += 8 << 20) {
      await image.read(offset, dest);
    }
  }));
  return (performance.now() - start) / 1000;
}

/** Seconds per 4 KiB read, one at a time, `count` reads spread over the image. */
async function qd1Seconds(image: Image, count: number): Promise<number> {
  const dest = new Uint8Array(4096);
  const start = performance.now();
  for (let i = 0; i < count; i++) await image.read(((i * 7919) % 16_000) * 4096, dest);
  return (performance.now() - start) / 1000 / count;
}

const machine = await describeMachine();
console.log(`| measured (set-up: ${runs} runs each, ms, median (min)) | value |\n|---|---|`);
for (const row of rows) {
  const min = Number.isNaN(row.minMs) ? "" : ` (${row.minMs.toFixed(2)})`;
  console.log(`| ${row.what} | ${row.medianMs.toFixed(2)}${min} |`);
}
console.log(JSON.stringify({ machine, runs, rows }));
