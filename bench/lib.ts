/**
 * Pieces every benchmark shares: statistics, the machine's description,
 * fio job definitions and result parsing, per-process CPU and memory
 * accounting, and starting `9nbd proxy`.
 *
 * @module
 */

import { v8FlagsArgument } from "../lib/runtime.ts";

export { randomBytes } from "../tools/random.ts";

/** The checkout. */
export const repoDir = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
/** The 9nbd entry point; NBD9_MAIN points elsewhere (a build that wires commands differently). */
export const mainTs = Deno.env.get("NBD9_MAIN") ?? `${repoDir}/main.ts`;
/** The project's config (its import map), so any entry point resolves the project's imports. */
export const configPath = `${repoDir}/deno.json`;

/** Median of `values` (NaN when empty). */
export function median(values: number[]): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** What the results were measured on. */
export interface Machine {
  date: string;
  cpu: string;
  cores: number;
  kernel: string;
  memoryMiB: number;
  loadAverage: string;
}

export async function describeMachine(): Promise<Machine> {
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo").catch(() => "");
  const meminfo = await Deno.readTextFile("/proc/meminfo").catch(() => "");
  return {
    date: new Date().toISOString(),
    cpu: /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1]?.trim() ?? "unknown",
    cores: navigator.hardwareConcurrency,
    kernel: Deno.osRelease(),
    memoryMiB: Math.round(Number(/^MemTotal:\s*(\d+)/m.exec(meminfo)?.[1] ?? 0) / 1024),
    loadAverage: (await Deno.readTextFile("/proc/loadavg").catch(() => "")).split(" ").slice(0, 3)
      .join(" "),
  };
}

/** One fio workload. */
export interface FioJob {
  /** Short key: seqread-1m-qd8, randread-4k-qd1, ... */
  key: string;
  rw: "read" | "randread" | "randwrite";
  blockSize: string;
  iodepth: number;
  /** Needs a writable target. */
  writes: boolean;
}

/** The four jobs the issue asks for. */
export const FIO_JOBS: FioJob[] = [
  { key: "seqread-1m-qd8", rw: "read", blockSize: "1m", iodepth: 8, writes: false },
  { key: "randread-4k-qd1", rw: "randread", blockSize: "4k", iodepth: 1, writes: false },
  { key: "randread-4k-qd32", rw: "randread", blockSize: "4k", iodepth: 32, writes: false },
  { key: "randwrite-4k-qd32", rw: "randwrite", blockSize: "4k", iodepth: 32, writes: true },
];

/** What one fio run measured. */
export interface FioResult {
  iops: number;
  bandwidthBytesPerSecond: number;
  /** Bytes moved (read + written). */
  ioBytes: number;
  /** Median completion latency in microseconds. */
  clatP50Us: number;
  errors: number;
}

/** fio arguments for `job` against a target (engine-specific args come from the caller). */
export function fioArgs(
  job: FioJob,
  target: string[],
  sizeBytes: number,
  runtimeSeconds: number,
  output: string,
): string[] {
  return [
    `--name=${job.key}`,
    ...target,
    `--rw=${job.rw}`,
    `--bs=${job.blockSize}`,
    `--iodepth=${job.iodepth}`,
    `--size=${sizeBytes}`,
    `--runtime=${runtimeSeconds}`,
    "--time_based",
    "--ramp_time=0.5",
    "--randrepeat=0",
    "--norandommap",
    "--output-format=json",
    `--output=${output}`,
  ];
}

/** Read fio's JSON output (it may be preceded by engine chatter on some versions). */
export function parseFio(text: string): FioResult {
  const json = JSON.parse(text.slice(text.indexOf("{")));
  const job = json.jobs[0];
  const side = job.write.io_bytes > 0 ? job.write : job.read;
  return {
    iops: side.iops,
    bandwidthBytesPerSecond: side.bw_bytes,
    ioBytes: job.read.io_bytes + job.write.io_bytes,
    clatP50Us: (side.clat_ns?.percentile?.["50.000000"] ?? 0) / 1000,
    errors: job.error,
  };
}

/** CPU seconds used and peak RSS of a process, from /proc. */
export interface ProcessSample {
  cpuSeconds: number;
  peakRssKiB: number;
}

const CLOCK_TICKS = 100;

export function sampleProcess(pid: number): ProcessSample | undefined {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // Fields after the command: state is index 0, so utime (14th) is 11 and stime 12.
    const cpuSeconds = (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    const peakRssKiB = Number(/^VmHWM:\s*(\d+)/m.exec(status)?.[1] ?? 0);
    return { cpuSeconds, peakRssKiB };
  } catch {
    return undefined;
  }
}

/** A server process the benchmark started. */
export interface BenchServer {
  label: string;
  pid: number;
  /** An NBD URI for fio's nbd engine and libnbd tools. */
  uri: string;
  stop(): Promise<void>;
}

async function waitFor(what: string, check: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!check()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Start a child that serves NBD on `socket`; resolves once the socket exists. */
async function spawnServer(
  label: string,
  cmd: string,
  args: string[],
  socket: string,
): Promise<BenchServer> {
  const child = new Deno.Command(cmd, {
    args,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  try {
    await waitFor(`${label} to listen on ${socket}`, () => exited || exists(socket), 60_000);
  } catch (err) {
    child.kill("SIGKILL");
    await status;
    throw new Error(`${label}: ${err}\n${await stderr}`);
  }
  if (exited) throw new Error(`${label} exited at start: ${await stderr}`);
  return {
    label,
    pid: child.pid,
    uri: `nbd+unix:///?socket=${socket}`,
    async stop() {
      if (!exited) {
        try {
          child.kill("SIGTERM");
        } catch { /* gone */ }
        const timer = setTimeout(() => {
          try {
            child.kill("SIGKILL");
          } catch { /* gone */ }
        }, 5000);
        await status;
        clearTimeout(timer);
      }
      await stderr;
    },
  };
}

/** `9nbd proxy SPEC --listen unix:SOCKET EXTRA...`. */
export function startProxy(
  label: string,
  spec: string,
  socket: string,
  extra: string[],
  checkout?: string,
): Promise<BenchServer> {
  return spawnServer(
    label,
    Deno.execPath(),
    mainArgs(
      ["proxy", "--quiet", spec, "--listen", `unix:${socket}`, ...extra],
      [v8FlagsArgument()],
      checkout,
    ),
    socket,
  );
}

/**
 * `deno` arguments that run 9nbd with `args`, after the extra `denoFlags` for
 * `deno run`; from another `checkout` of 9nbd when given (to compare two
 * commits in one run).
 */
export function mainArgs(args: string[], denoFlags: string[] = [], checkout?: string): string[] {
  const [main, config] = checkout
    ? [`${checkout}/main.ts`, `${checkout}/deno.json`]
    : [mainTs, configPath];
  return ["run", "-A", "--quiet", ...denoFlags, "--config", config, main, ...args];
}

/** `nbdkit file` on `path` (the comparator: a C server reading the file directly). */
export function startNbdkit(
  path: string,
  socket: string,
  readOnly: boolean,
): Promise<BenchServer> {
  return spawnServer("nbdkit file", "nbdkit", [
    "-f",
    "--exit-with-parent",
    "-U",
    socket,
    ...(readOnly ? ["-r"] : []),
    "file",
    `file=${path}`,
  ], socket);
}

/** Is `cmd` runnable? */
export async function haveCommand(cmd: string, args = ["--version"]): Promise<boolean> {
  try {
    await new Deno.Command(cmd, { args, stdin: "null", stdout: "null", stderr: "null" }).output();
    return true;
  } catch {
    return false;
  }
}

/** `1234567` → `1.18 MiB`-style text for tables. */
export function formatRate(bytesPerSecond: number): string {
  if (!Number.isFinite(bytesPerSecond)) return "–";
  return `${(bytesPerSecond / (1024 * 1024)).toFixed(0)} MiB/s`;
}

export function formatIops(iops: number): string {
  if (!Number.isFinite(iops)) return "–";
  return iops >= 10_000 ? `${(iops / 1000).toFixed(1)}k` : iops.toFixed(0);
}
