/**
 * Host benchmarks (no kernel driver needed): fio's `nbd` engine against
 * `9nbd proxy` → diod in several settings and against `nbdkit file` on the
 * same image, plus `9nbd cat` against `diodcat`. Runs are interleaved (run 1
 * of every comparator, then run 2, ...) so drift in machine load hits every
 * comparator alike; each cell reports the median.
 *
 * @module
 */

import { startDiod } from "../tools/servers.ts";
import {
  type BenchServer,
  FIO_JOBS,
  fioArgs,
  type FioJob,
  type FioResult,
  mainArgs,
  median,
  parseFio,
  randomBytes,
  sampleProcess,
  startNbdkit,
  startProxy,
} from "./lib.ts";

/** How hard to run. */
export interface HostBenchOptions {
  runs: number;
  runtimeSeconds: number;
  imageBytes: number;
  /**
   * Another checkout of 9nbd whose proxy runs beside this one's (same
   * options, same diod, alternating runs): a before-and-after in one run.
   */
  against?: { dir: string; label: string };
  /** Progress lines. */
  log: (line: string) => void;
}

/** One comparator of the fio table. */
interface Comparator {
  key: string;
  label: string;
  start(paths: { image: string; scratch: string }, socket: string, readOnly: boolean, spec: {
    image: string;
    scratch: string;
  }): Promise<BenchServer>;
}

const comparators: Comparator[] = [
  {
    key: "proxy",
    label: "9nbd proxy",
    start: (_p, socket, ro, spec) =>
      startProxy("9nbd proxy", ro ? spec.image : spec.scratch, socket, ro ? [] : ["--rw"]),
  },
  {
    key: "proxy-c4",
    label: "9nbd proxy --connections 4",
    start: (_p, socket, ro, spec) =>
      startProxy("9nbd proxy c4", ro ? spec.image : spec.scratch, socket, [
        "--connections",
        "4",
        ...(ro ? [] : ["--rw"]),
      ]),
  },
  {
    key: "proxy-1",
    label: "9nbd proxy --max-inflight 1 --connections 1",
    start: (_p, socket, ro, spec) =>
      startProxy("9nbd proxy 1", ro ? spec.image : spec.scratch, socket, [
        "--max-inflight",
        "1",
        "--connections",
        "1",
        ...(ro ? [] : ["--rw"]),
      ]),
  },
  {
    key: "nbdkit",
    label: "nbdkit file",
    start: (paths, socket, ro) => startNbdkit(ro ? paths.image : paths.scratch, socket, ro),
  },
];

/** The comparators of one run: with `against`, that checkout's proxy goes second. */
function comparatorsFor(options: HostBenchOptions): Comparator[] {
  const against = options.against;
  if (!against) return comparators;
  return [comparators[0], {
    key: "proxy-against",
    label: `9nbd proxy at ${against.label}`,
    start: (_p, socket, ro, spec) =>
      startProxy(
        `9nbd proxy at ${against.label}`,
        ro ? spec.image : spec.scratch,
        socket,
        ro ? [] : ["--rw"],
        against.dir,
      ),
  }, ...comparators.slice(1)];
}

/** One cell of the fio table. */
export interface FioCell {
  job: string;
  comparator: string;
  label: string;
  runs: FioResult[];
  medianIops: number;
  medianBandwidthBytesPerSecond: number;
  medianClatP50Us: number;
  errors: number;
}

/** CPU and memory of a server over the whole fio series. */
export interface ServerCost {
  comparator: string;
  label: string;
  cpuSeconds: number;
  bytesServed: number;
  cpuSecondsPerGiB: number;
  peakRssMiB: number;
  /** CPU seconds diod spent while this comparator's fio runs ran (about 0 for nbdkit). */
  diodCpuSeconds: number;
  diodCpuSecondsPerGiB: number;
}

export interface CatResult {
  tool: string;
  runsSeconds: number[];
  medianSeconds: number;
  bytesPerSecond: number;
}

export interface HostResults {
  imageBytes: number;
  runs: number;
  runtimeSeconds: number;
  fio: FioCell[];
  costs: ServerCost[];
  cat: CatResult[];
}

async function runFio(job: FioJob, server: BenchServer, options: HostBenchOptions, dir: string) {
  const output = `${dir}/fio-${job.key}.json`;
  const args = fioArgs(
    job,
    ["--ioengine=nbd", `--uri=${server.uri}`],
    options.imageBytes,
    options.runtimeSeconds,
    output,
  );
  const out = await new Deno.Command("fio", { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(
      `fio ${job.key} against ${server.label} failed: ${new TextDecoder().decode(out.stderr)}`,
    );
  }
  return parseFio(await Deno.readTextFile(output));
}

/** Time a command that writes the image to /dev/null; seconds of wall clock. */
async function timeCommand(cmd: string, args: string[]): Promise<number> {
  const started = performance.now();
  const out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).output();
  const seconds = (performance.now() - started) / 1000;
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
  return seconds;
}

export async function runHostBench(options: HostBenchOptions): Promise<HostResults> {
  const { log } = options;
  const dir = await Deno.makeTempDir({ prefix: "9nbd-bench-" });
  const exportDir = `${dir}/export`;
  await Deno.mkdir(exportDir);
  const imagePath = `${exportDir}/image.img`;
  await Deno.writeFile(imagePath, randomBytes(options.imageBytes, 42));
  const diod = await startDiod({ dir: exportDir });
  const servers: BenchServer[] = [];
  try {
    const fio: FioCell[] = [];
    const costs = new Map<string, { cpu: number; bytes: number; rss: number; diodCpu: number }>();
    const spec = { image: diod.specFor("image.img"), scratch: "" };

    for (const readOnly of [true, false]) {
      const jobs = FIO_JOBS.filter((j) => j.writes === !readOnly);
      if (jobs.length === 0) continue;
      // Each writable comparator gets its own scratch copy of the image.
      const started: { comparator: Comparator; server: BenchServer; before: number }[] = [];
      for (const comparator of comparatorsFor(options)) {
        const scratchName = `scratch-${comparator.key}.img`;
        if (!readOnly) await Deno.copyFile(imagePath, `${exportDir}/${scratchName}`);
        const paths = { image: imagePath, scratch: `${exportDir}/${scratchName}` };
        const server = await comparator.start(
          paths,
          `${dir}/${comparator.key}-${readOnly ? "ro" : "rw"}.sock`,
          readOnly,
          { ...spec, scratch: diod.specFor(scratchName) },
        );
        servers.push(server);
        started.push({ comparator, server, before: sampleProcess(server.pid)?.cpuSeconds ?? 0 });
      }
      for (const job of jobs) {
        const results = new Map<string, FioResult[]>();
        for (let run = 0; run < options.runs; run++) {
          for (const { comparator, server } of started) {
            const diodBefore = sampleProcess(diod.pid)?.cpuSeconds ?? 0;
            const result = await runFio(job, server, options, dir);
            const diodAfter = sampleProcess(diod.pid)?.cpuSeconds ?? diodBefore;
            (results.get(comparator.key) ?? results.set(comparator.key, []).get(comparator.key)!)
              .push(result);
            const cost = costs.get(comparator.key) ?? { cpu: 0, bytes: 0, rss: 0, diodCpu: 0 };
            cost.bytes += result.ioBytes;
            cost.diodCpu += diodAfter - diodBefore;
            costs.set(comparator.key, cost);
          }
          log(
            `  ${job.key} run ${run + 1}/${options.runs}: ${
              started.map(({ comparator }) =>
                `${comparator.key} ${results.get(comparator.key)!.at(-1)!.iops.toFixed(0)} IOPS`
              ).join(", ")
            }`,
          );
        }
        for (const { comparator } of started) {
          const runs = results.get(comparator.key)!;
          fio.push({
            job: job.key,
            comparator: comparator.key,
            label: comparator.label,
            runs,
            medianIops: median(runs.map((r) => r.iops)),
            medianBandwidthBytesPerSecond: median(runs.map((r) => r.bandwidthBytesPerSecond)),
            medianClatP50Us: median(runs.map((r) => r.clatP50Us)),
            errors: runs.reduce((n, r) => n + r.errors, 0),
          });
        }
      }
      for (const { comparator, server, before } of started) {
        const sample = sampleProcess(server.pid);
        const cost = costs.get(comparator.key) ?? { cpu: 0, bytes: 0, rss: 0, diodCpu: 0 };
        cost.cpu += (sample?.cpuSeconds ?? before) - before;
        cost.rss = Math.max(cost.rss, sample?.peakRssKiB ?? 0);
        costs.set(comparator.key, cost);
        await server.stop();
      }
    }

    // 9nbd cat against diodcat, one cached image, the whole of it to /dev/null.
    log("  cat: 9nbd cat vs diodcat -m 65536");
    await timeCommand("cat", [imagePath]); // make sure the image is in the page cache
    const catRuns: Record<string, number[]> = {
      "9nbd cat": [],
      "diodcat -m 65536": [],
      "9nbd --version (start-up only)": [],
    };
    for (let run = 0; run < options.runs; run++) {
      catRuns["9nbd --version (start-up only)"].push(
        await timeCommand(Deno.execPath(), mainArgs(["--version"])),
      );
      catRuns["9nbd cat"].push(
        await timeCommand(Deno.execPath(), mainArgs(["cat", diod.specFor("image.img")])),
      );
      catRuns["diodcat -m 65536"].push(
        await timeCommand("diodcat", [
          "-m",
          "65536",
          "-s",
          `${diod.host}:${diod.port}`,
          "-a",
          diod.exportDir,
          "image.img",
        ]),
      );
    }
    const cat: CatResult[] = Object.entries(catRuns).map(([tool, runsSeconds]) => ({
      tool,
      runsSeconds,
      medianSeconds: median(runsSeconds),
      bytesPerSecond: tool.includes("start-up") ? NaN : options.imageBytes / median(runsSeconds),
    }));

    return {
      imageBytes: options.imageBytes,
      runs: options.runs,
      runtimeSeconds: options.runtimeSeconds,
      fio,
      costs: comparators.map((c) => {
        const cost = costs.get(c.key)!;
        return {
          comparator: c.key,
          label: c.label,
          cpuSeconds: cost.cpu,
          bytesServed: cost.bytes,
          cpuSecondsPerGiB: cost.cpu / (cost.bytes / 2 ** 30),
          peakRssMiB: cost.rss / 1024,
          diodCpuSeconds: cost.diodCpu,
          diodCpuSecondsPerGiB: cost.diodCpu / (cost.bytes / 2 ** 30),
        };
      }),
      cat,
    };
  } finally {
    for (const server of servers) await server.stop().catch(() => {});
    await diod.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
