/**
 * How long I/O stalls when a 9P server fails, measured on ResilientImage
 * (the backend the NBD daemon serves from) against real diod processes on
 * loopback, with four readers looping over random 64 KiB blocks and
 * checking every byte.
 *
 * - recovery: one server; it fails, comes back, and we time "server back"
 *   → first read completed. Crashed: SIGKILL, restart on the same port after
 *   the outage, "back" = listening again. Hung: SIGSTOP for the outage, then
 *   SIGCONT, "back" = SIGCONT.
 * - failover: two servers; the serving one fails and we time "failure" →
 *   first read served by the second. Crashed: SIGKILL (connections reset).
 *   Hung: SIGSTOP (nothing answers; the per-request timeout decides).
 *
 * Each is the median of `--runs` runs (default 7, at least 5). The
 * per-request timeout is `--timeout` (default 1 s). Prints a markdown table,
 * then one line of JSON.
 *
 * Usage: deno run -A bench/failover.ts [--runs N] [--outage SECONDS] [--timeout SECONDS]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { ResilientImage } from "../lib/failover/mod.ts";
import { parseSpec } from "../lib/spec.ts";
import {
  diodUnavailable,
  type RestartableDiod,
  startRestartableDiod,
} from "../tools/restartable_diod.ts";

const IMAGE_BYTES = 32 * 1024 * 1024;
const READ_BYTES = 65536;
const READERS = 4;

const { values } = parseArgs({
  args: Deno.args,
  options: {
    runs: { type: "string", default: "7" },
    outage: { type: "string", default: "3" },
    timeout: { type: "string", default: "1" },
  },
});
const runs = Number(values.runs);
const outageMs = Number(values.outage) * 1000;
const timeoutMs = Number(values.timeout) * 1000;
if (!Number.isInteger(runs) || runs < 5) throw new Error("--runs must be an integer ≥ 5");
if (!(outageMs > 0) || !(timeoutMs > 0)) throw new Error("--outage and --timeout must be > 0");

const unavailable = diodUnavailable();
if (unavailable) {
  console.error(`bench/failover.ts: ${unavailable}`);
  Deno.exit(2);
}

function randomImage(length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  const words = new Uint32Array(bytes.buffer);
  let x = 0x9e3779b9;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
  return bytes;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A completed read: when, and which server the attachment was using. */
interface Completion {
  atMs: number;
  server: string;
}

/** Readers looping over random blocks, recording completions, errors and wrong bytes. */
function startReaders(image: ResilientImage, file: Uint8Array) {
  const completions: Completion[] = [];
  const counts = { reads: 0, errors: 0, mismatches: 0 };
  const waiters: (() => void)[] = [];
  let stopping = false;
  let x = 1;
  const loops = Array.from({ length: READERS }, async () => {
    const dest = new Uint8Array(READ_BYTES);
    while (!stopping) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      const offset = (x % (file.length / READ_BYTES)) * READ_BYTES;
      try {
        await image.read(offset, dest);
        completions.push({ atMs: performance.now(), server: image.server });
        counts.reads++;
        for (let i = 0; i < dest.length; i++) {
          if (dest[i] !== file[offset + i]) {
            counts.mismatches++;
            break;
          }
        }
      } catch {
        counts.errors++;
      }
      for (const wake of waiters.splice(0)) wake();
    }
  });
  return {
    counts,
    /** The first completion after `sinceMs` that `accept` takes; waits up to 60 s for it. */
    async firstAfter(sinceMs: number, accept: (c: Completion) => boolean): Promise<Completion> {
      const deadline = performance.now() + 60_000;
      while (true) {
        const found = completions.find((c) => c.atMs > sinceMs && accept(c));
        if (found) return found;
        if (performance.now() > deadline) throw new Error("no read completed within 60 s");
        await new Promise<void>((resolve) => {
          waiters.push(resolve);
          setTimeout(resolve, 1000);
        });
      }
    },
    async stop(): Promise<void> {
      stopping = true;
      await Promise.all(loops);
    },
  };
}

type Scenario = "recovery, crashed" | "recovery, hung" | "failover, crashed" | "failover, hung";

interface Result {
  scenario: Scenario;
  what: string;
  samplesMs: number[];
  medianMs: number;
  minMs: number;
  maxMs: number;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

const totals = { reads: 0, errors: 0, mismatches: 0 };

/** One timed run of `scenario`; returns milliseconds. */
async function runOnce(
  scenario: Scenario,
  primary: RestartableDiod,
  secondary: RestartableDiod,
  file: Uint8Array,
): Promise<number> {
  const failover = scenario.startsWith("failover");
  const specs = [primary, ...(failover ? [secondary] : [])].map((d) =>
    parseSpec(d.specFor("image.img"))
  );
  const image = await ResilientImage.open(specs, { timeoutMs });
  const readers = startReaders(image, file);
  try {
    // Steady state: a session younger than 1 s counts as flapping and is backed off before its
    // replacement (lib/failover/replicas.ts FLAP_MS), which is not what a long-lived attachment sees.
    await sleep(1500);
    if (image.server !== `127.0.0.1:${primary.port}`) {
      throw new Error(`run started on ${image.server}, not on the primary`);
    }
    const secondaryLabel = `127.0.0.1:${secondary.port}`;
    let startMs: number;
    let accept: (c: Completion) => boolean = () => true;
    if (scenario === "recovery, crashed") {
      await primary.crash();
      await sleep(outageMs);
      startMs = await primary.restart();
    } else if (scenario === "recovery, hung") {
      primary.hang();
      await sleep(outageMs);
      startMs = performance.now();
      primary.resume();
    } else {
      startMs = performance.now();
      if (scenario === "failover, crashed") await primary.crash();
      else primary.hang();
      accept = (c) => c.server === secondaryLabel;
    }
    const first = await readers.firstAfter(startMs, accept);
    return first.atMs - startMs;
  } finally {
    await readers.stop();
    await image.close();
    for (const key of ["reads", "errors", "mismatches"] as const) {
      totals[key] += readers.counts[key];
    }
    // Put the primary back for the next run.
    primary.resume();
    if (!primary.alive) await primary.restart();
  }
}

const WHAT: Record<Scenario, string> = {
  "recovery, crashed": `SIGKILL, restart after ${outageMs / 1000} s; listening → first read`,
  "recovery, hung": `SIGSTOP for ${outageMs / 1000} s; SIGCONT → first read`,
  "failover, crashed": "SIGKILL of the primary → first read from the secondary",
  "failover, hung": "SIGSTOP of the primary → first read from the secondary",
};

const file = randomImage(IMAGE_BYTES);
const dirs: string[] = [];
const diods: RestartableDiod[] = [];
const results: Result[] = [];
const cleanUp = async () => {
  await Promise.all(diods.map((d) => d.stop()));
  await Promise.all(dirs.map((d) => Deno.remove(d, { recursive: true }).catch(() => {})));
};
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, () => void cleanUp().finally(() => Deno.exit(130)));
}
try {
  for (let i = 0; i < 2; i++) {
    const dir = await Deno.makeTempDir({ prefix: "9nbd-bench-failover-" });
    dirs.push(dir);
    await Deno.writeFile(`${dir}/image.img`, file);
    diods.push(await startRestartableDiod(dir));
  }
  const [primary, secondary] = diods;
  for (const scenario of Object.keys(WHAT) as Scenario[]) {
    const samplesMs: number[] = [];
    for (let run = 0; run < runs; run++) {
      samplesMs.push(await runOnce(scenario, primary, secondary, file));
      console.error(`${scenario} run ${run + 1}/${runs}: ${samplesMs.at(-1)!.toFixed(1)} ms`);
    }
    results.push({
      scenario,
      what: WHAT[scenario],
      samplesMs: samplesMs.map((v) => Math.round(v * 10) / 10),
      medianMs: Math.round(median(samplesMs) * 10) / 10,
      minMs: Math.round(Math.min(...samplesMs) * 10) / 10,
      maxMs: Math.round(Math.max(...samplesMs) * 10) / 10,
    });
  }
} finally {
  await cleanUp();
}

console.log(
  `\nFailover timing: ResilientImage against diod on loopback, ${READERS} readers of ` +
    `${READ_BYTES / 1024} KiB, timeout ${
      timeoutMs / 1000
    } s, default backoff, ${runs} runs each.\n`,
);
console.log("| scenario | what is timed | median ms | min ms | max ms |");
console.log("|---|---|---:|---:|---:|");
for (const r of results) {
  console.log(`| ${r.scenario} | ${r.what} | ${r.medianMs} | ${r.minMs} | ${r.maxMs} |`);
}
console.log(
  `\nReads: ${totals.reads}, errors: ${totals.errors}, wrong bytes: ${totals.mismatches}.\n`,
);
console.log(JSON.stringify({
  runs,
  outageMs,
  timeoutMs,
  readers: READERS,
  readBytes: READ_BYTES,
  ...totals,
  results,
}));
if (totals.errors > 0 || totals.mismatches > 0) Deno.exit(1);
