/**
 * `deno task bench`: every benchmark in one run, comparators side by side,
 * medians over several runs, ratios against the project's targets, and two
 * result files: `bench/results/latest.json` (everything, every run) and
 * `bench/results/latest.md` (the tables, with date and machine).
 *
 * Usage: deno task bench [--runs N] [--runtime SECONDS] [--quick] [--host-only | --vm-only]
 *
 *   --runs N         runs per cell (default 5 on the host, 3 in the VM)
 *   --runtime S      seconds per fio run (default 3)
 *   --quick          --runs 2 --runtime 1 (to check the harness, not to measure)
 *   --host-only      skip the VM benchmarks; --vm-only skips the host ones
 *   --against DIR    also run DIR's proxy (another checkout of 9nbd, e.g. an
 *                    older commit) beside this one's in the host table
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type HostResults, runHostBench } from "./host.ts";
import { describeMachine, formatIops, formatRate, haveCommand, type Machine } from "./lib.ts";
import { runVmBench, type VmResults } from "./vm.ts";

const usage =
  "usage: deno task bench [--runs N] [--vm-runs N] [--runtime SECONDS] [--quick] [--host-only | --vm-only] [--against DIR]";

function parseOptions() {
  try {
    return parseArgs({
      args: Deno.args,
      options: {
        runs: { type: "string" },
        "vm-runs": { type: "string" },
        runtime: { type: "string" },
        quick: { type: "boolean" },
        "host-only": { type: "boolean" },
        "vm-only": { type: "boolean" },
        against: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (err) {
    console.error(`bench: ${(err as Error).message.split("\n")[0]}\n${usage}`);
    Deno.exit(2);
  }
}

const { values } = parseOptions();

/** `--against DIR` as the checkout and how the table names it (its commit). */
async function againstCheckout(dir: string | undefined) {
  if (dir === undefined) return undefined;
  try {
    await Deno.stat(`${dir}/main.ts`);
  } catch {
    console.error(`bench: --against ${dir}: no main.ts there (expected a checkout of 9nbd)`);
    Deno.exit(2);
  }
  const out = await new Deno.Command("git", {
    args: ["-C", dir, "rev-parse", "--short", "HEAD"],
    stdout: "piped",
    stderr: "null",
  }).output().catch(() => undefined);
  const commit = out?.success ? new TextDecoder().decode(out.stdout).trim() : "";
  return { dir, label: commit || dir };
}
if (values.help) {
  console.log(usage);
  Deno.exit(0);
}
for (const name of ["runs", "vm-runs", "runtime"] as const) {
  const text = values[name];
  if (text !== undefined && !(Number(text) > 0)) {
    console.error(`bench: --${name} takes a positive number, not "${text}"\n${usage}`);
    Deno.exit(2);
  }
}

const quick = values.quick ?? false;
const hostRuns = Number(values.runs ?? (quick ? 2 : 5));
const vmRuns = Number(values["vm-runs"] ?? values.runs ?? (quick ? 1 : 3));
const runtimeSeconds = Number(values.runtime ?? (quick ? 1 : 3));
const log = (line: string) => console.error(line);

const resultsDir = new URL("./results/", import.meta.url).pathname;

/** One target from the issue, and whether this run met it. */
interface Target {
  name: string;
  wanted: string;
  measured: number | null;
  met: boolean | null;
  note?: string;
}

function ratio(a: number | undefined, b: number | undefined): number | null {
  if (a === undefined || b === undefined || !(b > 0)) return null;
  return a / b;
}

function targets(host: HostResults | undefined, vm: VmResults | undefined): Target[] {
  const list: Target[] = [];
  const cell = (job: string, comparator: string) =>
    host?.fio.find((c) => c.job === job && c.comparator === comparator)?.medianIops;
  const atLeast = (name: string, wanted: number, measured: number | null, note?: string) =>
    list.push({
      name,
      wanted: `≥ ${wanted}`,
      measured,
      met: measured === null ? null : measured >= wanted,
      note,
    });
  if (host) {
    atLeast(
      "proxy / nbdkit file, sequential read 1M QD8",
      0.5,
      ratio(cell("seqread-1m-qd8", "proxy"), cell("seqread-1m-qd8", "nbdkit")),
    );
    atLeast(
      "proxy / nbdkit file, random read 4K QD32",
      0.5,
      ratio(cell("randread-4k-qd32", "proxy"), cell("randread-4k-qd32", "nbdkit")),
    );
    atLeast(
      "proxy / proxy one-in-flight, random read 4K QD32",
      5,
      ratio(cell("randread-4k-qd32", "proxy"), cell("randread-4k-qd32", "proxy-1")),
    );
    const cat = host.cat.find((c) => c.tool === "9nbd cat")?.bytesPerSecond;
    const diodcat = host.cat.find((c) => c.tool.startsWith("diodcat"))?.bytesPerSecond;
    atLeast("9nbd cat / diodcat", 1.5, ratio(cat, diodcat), "wall clock, Deno start-up included");
  }
  if (vm) {
    const seq = (c: string) =>
      vm.fio.find((x) => x.job === "seqread-1m-qd8" && x.comparator === c)
        ?.medianBandwidthBytesPerSecond;
    atLeast(
      "kernel /dev/nbd0 (9nbd) / v9fs + losetup, sequential read",
      1.0,
      ratio(seq("9nbd"), seq("v9fs-loop")),
    );
    const warm = vm.treeWalk.find((w) => w.comparator === "9nbd");
    list.push({
      name: "warm tree walk: 9P reads",
      wanted: "= 0",
      measured: warm?.warm9pRequestBytes ?? null,
      met: warm ? warm.warm9pRequestBytes === 0 : null,
      note: "bytes diod received on :564 during the warm pass (0 means no 9P request at all)",
    });
  }
  return list;
}

function markdown(
  machine: Machine,
  host: HostResults | undefined,
  vm: VmResults | undefined,
  goals: Target[],
): string {
  const lines: string[] = [];
  lines.push(`# 9nbd benchmarks`, "");
  lines.push(
    `- date: ${machine.date}`,
    `- machine: ${machine.cpu}, ${machine.cores} cores, ${machine.memoryMiB} MiB, Linux ${machine.kernel}`,
    `- load average at start: ${machine.loadAverage}`,
    `- command: \`deno task bench ${Deno.args.join(" ")}\``,
    "",
  );
  if (host) {
    lines.push(
      `## Host: fio nbd engine over a Unix socket (${host.imageBytes / 2 ** 20} MiB image, ` +
        `median of ${host.runs} runs × ${host.runtimeSeconds} s)`,
      "",
    );
    const labels = [...new Map(host.fio.map((c) => [c.comparator, c.label])).entries()];
    lines.push(
      `| job | ${labels.map(([, l]) => l).join(" | ")} | proxy / nbdkit |`,
      `|---|${labels.map(() => "---:").join("|")}|---:|`,
    );
    for (const job of [...new Set(host.fio.map((c) => c.job))]) {
      const cells = labels.map(([key]) =>
        host.fio.find((c) => c.job === job && c.comparator === key)
      );
      const sequential = job.startsWith("seq");
      const fmt = (c: typeof cells[number]) =>
        !c
          ? "–"
          : sequential
          ? formatRate(c.medianBandwidthBytesPerSecond)
          : `${formatIops(c.medianIops)} IOPS`;
      const r = ratio(
        cells.find((c) => c?.comparator === "proxy")?.medianIops,
        cells.find((c) => c?.comparator === "nbdkit")?.medianIops,
      );
      lines.push(`| ${job} | ${cells.map(fmt).join(" | ")} | ${r?.toFixed(2) ?? "–"} |`);
    }
    lines.push(
      "",
      "Server cost over the whole fio series (diod's CPU is what it spent while that " +
        "comparator's runs ran; the machine's 2 cores are shared by fio, the server and diod):",
      "",
    );
    lines.push(
      "| server | CPU s | GiB served | CPU s / GiB | peak RSS | diod CPU s / GiB |",
      "|---|---:|---:|---:|---:|---:|",
    );
    for (const c of host.costs) {
      lines.push(
        `| ${c.label} | ${c.cpuSeconds.toFixed(1)} | ${(c.bytesServed / 2 ** 30).toFixed(2)} | ` +
          `${c.cpuSecondsPerGiB.toFixed(2)} | ${c.peakRssMiB.toFixed(0)} MiB | ` +
          `${c.diodCpuSecondsPerGiB?.toFixed(2) ?? "–"} |`,
      );
    }
    lines.push("", `Whole-image copy to /dev/null (wall clock incl. process start):`, "");
    lines.push("| tool | median s | throughput |", "|---|---:|---:|");
    for (const c of host.cat) {
      lines.push(`| ${c.tool} | ${c.medianSeconds.toFixed(3)} | ${formatRate(c.bytesPerSecond)} |`);
    }
    lines.push("");
  }
  if (vm) {
    lines.push(
      `## VM (Debian kernel ${vm.kernel}, QEMU TCG, ${vm.imageBytes / 2 ** 20} MiB image, ` +
        `libaio direct=1, median of ${vm.runs} runs × ${vm.runtimeSeconds} s)`,
      "",
      "TCG emulates every guest instruction: absolute numbers are far below real hardware; " +
        "compare columns, not machines.",
      "",
    );
    const labels = [...new Map(vm.fio.map((c) => [c.comparator, c.label])).entries()];
    lines.push(
      `| job | ${labels.map(([, l]) => l).join(" | ")} |`,
      `|---|${labels.map(() => "---:").join("|")}|`,
    );
    for (const job of [...new Set(vm.fio.map((c) => c.job))]) {
      const cells = labels.map(([key]) =>
        vm.fio.find((c) => c.job === job && c.comparator === key)
      );
      const sequential = job.startsWith("seq");
      lines.push(
        `| ${job} | ${
          cells.map((c) =>
            !c
              ? "–"
              : sequential
              ? formatRate(c.medianBandwidthBytesPerSecond)
              : `${formatIops(c.medianIops)} IOPS`
          ).join(" | ")
        } |`,
      );
    }
    lines.push("", "ext4 tree walk (find + read every file):", "");
    lines.push(
      "| device | files | cold s | warm s | 9P bytes to the server on the warm pass |",
      "|---|---:|---:|---:|---:|",
    );
    for (const w of vm.treeWalk) {
      lines.push(
        `| ${w.label} | ${w.files} | ${w.coldSeconds.toFixed(2)} | ${w.warmSeconds.toFixed(2)} | ${
          w.warm9pRequestBytes ?? "n/a"
        } |`,
      );
    }
    lines.push("", "Daemons over the fio series:", "");
    lines.push(
      "| daemon | CPU s | GiB served | CPU s / GiB | peak RSS |",
      "|---|---:|---:|---:|---:|",
    );
    for (const c of vm.costs) {
      lines.push(
        `| ${c.label} | ${c.cpuSeconds.toFixed(1)} | ${(c.bytesServed / 2 ** 30).toFixed(2)} | ` +
          `${c.cpuSecondsPerGiB.toFixed(2)} | ${c.peakRssMiB.toFixed(0)} MiB |`,
      );
    }
    lines.push("");
  }
  lines.push("## Targets", "", "| target | wanted | measured | met |", "|---|---|---:|---|");
  for (const g of goals) {
    lines.push(
      `| ${g.name}${g.note ? ` (${g.note})` : ""} | ${g.wanted} | ${
        g.measured === null
          ? "–"
          : Number.isInteger(g.measured)
          ? g.measured
          : g.measured.toFixed(2)
      } | ${g.met === null ? "not measured" : g.met ? "yes" : "**no**"} |`,
    );
  }
  lines.push("");
  return lines.join("\n");
}

async function main(): Promise<number> {
  for (const tool of ["fio", "diod", "nbdkit", "diodcat"]) {
    if (!await haveCommand(tool, tool === "diod" || tool === "diodcat" ? ["--help"] : undefined)) {
      // diod's binary lives in /usr/sbin: the servers module searches there too.
      if (tool !== "diod" && tool !== "diodcat") {
        console.error(`bench: ${tool} is not installed`);
        return 1;
      }
    }
  }
  const machine = await describeMachine();
  log(
    `bench: ${machine.cpu}, ${machine.cores} cores, Linux ${machine.kernel}, load ${machine.loadAverage}`,
  );
  let host: HostResults | undefined;
  let vm: VmResults | undefined;
  if (!values["vm-only"]) {
    log(`bench: host (${hostRuns} runs × ${runtimeSeconds} s per cell)`);
    host = await runHostBench({
      runs: hostRuns,
      runtimeSeconds,
      imageBytes: 256 * 1024 * 1024,
      against: await againstCheckout(values.against),
      log,
    });
  }
  if (!values["host-only"]) {
    log(`bench: VM (${vmRuns} runs × ${runtimeSeconds} s per cell)`);
    vm = await runVmBench({ runs: vmRuns, runtimeSeconds, log });
  }
  const goals = targets(host, vm);
  await Deno.mkdir(resultsDir, { recursive: true });
  await Deno.writeTextFile(
    `${resultsDir}latest.json`,
    JSON.stringify({ machine, args: Deno.args, host, vm, targets: goals }, null, 2) + "\n",
  );
  const md = markdown(machine, host, vm, goals);
  await Deno.writeTextFile(`${resultsDir}latest.md`, md);
  // Keep the generated files as `deno fmt` wants them, so the repository's fmt check stays clean.
  await new Deno.Command(Deno.execPath(), {
    args: ["fmt", "--quiet", `${resultsDir}latest.md`, `${resultsDir}latest.json`],
    stdout: "null",
    stderr: "null",
  }).output();
  console.log(md);
  for (const g of goals) {
    console.log(
      `target ${
        g.met === null ? "NOT MEASURED" : g.met ? "met   " : "MISSED"
      }: ${g.name} ${g.wanted} (measured ${g.measured === null ? "–" : g.measured.toFixed(2)})`,
    );
  }
  return 0;
}

Deno.exit(await main());
