/**
 * VM benchmarks: the real kernel path, in Debian's kernel under QEMU TCG
 * (tools/vm.ts `runInVm`). Inside the guest, four block devices hold
 * identical copies of one ext4 image:
 *
 * - `9nbd`: /dev/nbd0 attached by `9nbd attach --rw` → diod (TCP, loopback);
 * - `nbd-server`: /dev/nbd1 by `nbd-client` → `nbd-server` (the C reference);
 * - `v9fs-loop`: a kernel v9fs mount of the same diod, `losetup` on the image
 *   file (the kernel's own 9P client);
 * - `loop`: `losetup` on the image in the guest's tmpfs (the limit).
 *
 * For each: an ext4 tree walk (find + read every file) cold and warm, with
 * the bytes the 9P clients sent to diod during the warm pass (from `ss`'s
 * per-socket counters on port 564: 0 means not one 9P request); then the fio
 * jobs (libaio, direct=1) interleaved across devices; and the daemons' CPU
 * time and peak RSS from /proc.
 *
 * The guest reports with `@@BENCH` lines on the serial console; this module
 * parses them.
 *
 * @module
 */

import { guestPrelude, makeTree } from "../tools/guest.ts";
import { runInVm, vmUnavailable } from "../tools/vm.ts";
import { FIO_JOBS, type FioResult, median, parseFio } from "./lib.ts";

export interface VmBenchOptions {
  runs: number;
  runtimeSeconds: number;
  log: (line: string) => void;
}

export interface VmFioCell {
  job: string;
  comparator: string;
  label: string;
  runs: FioResult[];
  medianIops: number;
  medianBandwidthBytesPerSecond: number;
}

export interface TreeWalk {
  comparator: string;
  label: string;
  files: number;
  coldSeconds: number;
  warmSeconds: number;
  /** Bytes sent to port 564 during the warm pass; null when not measurable for this device. */
  warm9pRequestBytes: number | null;
}

export interface DaemonCost {
  label: string;
  cpuSeconds: number;
  bytesServed: number;
  cpuSecondsPerGiB: number;
  peakRssMiB: number;
}

export interface VmResults {
  kernel: string;
  imageBytes: number;
  runs: number;
  runtimeSeconds: number;
  bootSeconds: number;
  totalSeconds: number;
  fio: VmFioCell[];
  treeWalk: TreeWalk[];
  costs: DaemonCost[];
  /** Set when the VM could not run, with why. */
  skipped?: string;
}

const IMAGE_MIB = 128;

const labels: Record<string, string> = {
  "9nbd": "9nbd attach → diod",
  "nbd-server": "nbd-client → nbd-server",
  "v9fs-loop": "v9fs mount + losetup",
  loop: "local loop (limit)",
};

function script(runs: number, runtimeSeconds: number): string {
  const jobs = FIO_JOBS.map((j) => `${j.key}:${j.rw}:${j.blockSize}:${j.iodepth}`).join(" ");
  return String.raw`
RUNS=${runs}
RUNTIME=${runtimeSeconds}
JOBS="${jobs}"
bench() { echo "@@BENCH $*"; }
now() { date +%s.%N; }
mkdir -p /tmp/export /tmp/tree /mnt/walk /mnt/9p
${makeTree("/tmp/tree")}
mkfs.ext4 -q -b 4096 -d /tmp/tree /tmp/export/img-9nbd.img ${IMAGE_MIB}M || bench error mkfs
rm -rf /tmp/tree
for c in nbd-server v9fs-loop loop; do cp /tmp/export/img-9nbd.img /tmp/export/img-$c.img; done
bench kernel $(uname -r)

start_diod 564 /tmp/export || bench error diod
9nbd attach --rw 127.0.0.1:/tmp/export/img-9nbd.img /dev/nbd0 || bench error attach
NBD9_PID=$(sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' /run/9nbd/nbd0.json)
printf '[generic]\n  user = root\n  group = root\n[img]\n  exportname = /tmp/export/img-nbd-server.img\n' > /tmp/nbd-server.conf
nbd-server -C /tmp/nbd-server.conf -p /tmp/nbd-server.pid || bench error nbd-server
sleep 0.5
nbd-client -N img 127.0.0.1 10809 /dev/nbd1 >/dev/null 2>&1 || bench error nbd-client
NBDSRV_PID=$(pgrep -P "$(cat /tmp/nbd-server.pid)" | head -1)
# The kernel's 9P TCP transport is its own module (9pnet_fd) in Debian's 6.1.
modprobe 9pnet_fd 2>/dev/null
out=$(mount -t 9p -o trans=tcp,port=564,version=9p2000.L,aname=/tmp/export,msize=65536,uname=root,access=any 127.0.0.1 /mnt/9p 2>&1) ||
  bench error v9fs $(echo $out; dmesg | tail -3 | tr '\n' ' ')
V9FS_DEV=$(losetup --show -f /mnt/9p/img-v9fs-loop.img) || bench error v9fs-losetup
LOOP_DEV=$(losetup --show -f /tmp/export/img-loop.img) || bench error losetup
dev_of() {
  case $1 in
    9nbd) echo /dev/nbd0 ;; nbd-server) echo /dev/nbd1 ;; v9fs-loop) echo $V9FS_DEV ;; loop) echo $LOOP_DEV ;;
  esac
}
# Bytes the 9P clients have sent to port 564 so far (sum of every socket's bytes_sent).
sent564() {
  ss -tinH state established '( dport = :564 )' | grep -o 'bytes_sent:[0-9]*' | cut -d: -f2 |
    awk '{ s += $1 } END { print s + 0 }'
}
proc() { # LABEL PID: one line of CPU ticks and peak RSS
  [ -n "$2" ] && [ -r /proc/$2/stat ] || { bench proc $1 none; return; }
  bench proc $1 $(cut -d')' -f2 /proc/$2/stat | awk '{ print $12 + $13 }') $(awk '/^VmHWM/ { print $2 }' /proc/$2/status)
}

for c in 9nbd nbd-server v9fs-loop loop; do
  dev=$(dev_of $c)
  sync; echo 3 > /proc/sys/vm/drop_caches
  mount -o ro $dev /mnt/walk || { bench error mount-$c; continue; }
  files=$(find /mnt/walk -type f | wc -l)
  t0=$(now); find /mnt/walk -type f -exec cat {} + > /dev/null; t1=$(now)
  s0=$(sent564)
  t2=$(now); find /mnt/walk -type f -exec cat {} + > /dev/null; t3=$(now)
  s1=$(sent564)
  bench walk $c $files $(awk "BEGIN { print $t1 - $t0 }") $(awk "BEGIN { print $t3 - $t2 }") $((s1 - s0))
  umount /mnt/walk
done

proc 9nbd-before $NBD9_PID; proc nbd-server-before $NBDSRV_PID; proc diod-before $DIOD_PID
for job in $JOBS; do
  set -- $(echo "$job" | tr : ' '); key=$1; rw=$2; bs=$3; qd=$4
  run=1
  while [ $run -le $RUNS ]; do
    for c in 9nbd nbd-server v9fs-loop loop; do
      rm -f /tmp/fio.json
      fio --name=$key --ioengine=libaio --direct=1 --filename=$(dev_of $c) --rw=$rw --bs=$bs \
        --iodepth=$qd --size=${IMAGE_MIB}M --runtime=$RUNTIME --time_based --ramp_time=0.5 \
        --randrepeat=0 --norandommap --output-format=json --output=/tmp/fio.json >/dev/null 2>&1 ||
        { bench error fio-$c-$key; continue; }
      bench fio $c $key $run $(tr -d '\n' < /tmp/fio.json)
    done
    run=$((run + 1))
  done
done
proc 9nbd-after $NBD9_PID; proc nbd-server-after $NBDSRV_PID; proc diod-after $DIOD_PID

losetup -d $V9FS_DEV $LOOP_DEV; umount /mnt/9p
nbd-client -d /dev/nbd1 >/dev/null 2>&1
9nbd detach /dev/nbd0 >/dev/null 2>&1
kill $DIOD_PID
bench done
`;
}

/** Parse the guest's `@@BENCH` lines into results. */
export function parseVmLog(
  log: string,
  runs: number,
  runtimeSeconds: number,
): Omit<VmResults, "bootSeconds" | "totalSeconds"> & { errors: string[]; done: boolean } {
  const fioRuns = new Map<string, FioResult[]>();
  const treeWalk: TreeWalk[] = [];
  const procs = new Map<string, { ticks: number; hwmKiB: number }>();
  const errors: string[] = [];
  let kernel = "unknown";
  let done = false;
  for (const raw of log.split("\n")) {
    const line = raw.replace(/\r$/, "");
    const at = line.indexOf("@@BENCH ");
    if (at < 0) continue;
    const [kind, ...rest] = line.slice(at + "@@BENCH ".length).split(" ");
    if (kind === "kernel") kernel = rest[0];
    else if (kind === "error") errors.push(rest.join(" "));
    else if (kind === "done") done = true;
    else if (kind === "walk") {
      const [comparator, files, cold, warm, bytes] = rest;
      treeWalk.push({
        comparator,
        label: labels[comparator] ?? comparator,
        files: Number(files),
        coldSeconds: Number(cold),
        warmSeconds: Number(warm),
        // Only the devices that talk 9P have a 9P count.
        warm9pRequestBytes: comparator === "9nbd" || comparator === "v9fs-loop"
          ? Number(bytes)
          : null,
      });
    } else if (kind === "proc" && rest[1] !== "none") {
      procs.set(rest[0], { ticks: Number(rest[1]), hwmKiB: Number(rest[2]) });
    } else if (kind === "fio") {
      const [comparator, job, , ...json] = rest;
      try {
        const result = parseFio(json.join(" "));
        const key = `${comparator} ${job}`;
        (fioRuns.get(key) ?? fioRuns.set(key, []).get(key)!).push(result);
      } catch (err) {
        errors.push(`fio ${comparator} ${job}: unreadable output (${err})`);
      }
    }
  }
  const fio: VmFioCell[] = [];
  for (const job of FIO_JOBS) {
    for (const comparator of Object.keys(labels)) {
      const list = fioRuns.get(`${comparator} ${job.key}`);
      if (!list) continue;
      fio.push({
        job: job.key,
        comparator,
        label: labels[comparator],
        runs: list,
        medianIops: median(list.map((r) => r.iops)),
        medianBandwidthBytesPerSecond: median(list.map((r) => r.bandwidthBytesPerSecond)),
      });
    }
  }
  const served = (comparators: string[]) =>
    fio.filter((c) => comparators.includes(c.comparator)).reduce(
      (n, c) => n + c.runs.reduce((m, r) => m + r.ioBytes, 0),
      0,
    );
  const costs: DaemonCost[] = [];
  for (
    const [name, label, comparators] of [
      ["9nbd", "9nbd daemon", ["9nbd"]],
      ["nbd-server", "nbd-server (per-client child)", ["nbd-server"]],
      ["diod", "diod (serves 9nbd and v9fs)", ["9nbd", "v9fs-loop"]],
    ] as const
  ) {
    const before = procs.get(`${name}-before`);
    const after = procs.get(`${name}-after`);
    if (!before || !after) continue;
    const cpuSeconds = (after.ticks - before.ticks) / 100;
    const bytesServed = served([...comparators]);
    costs.push({
      label,
      cpuSeconds,
      bytesServed,
      cpuSecondsPerGiB: cpuSeconds / (bytesServed / 2 ** 30),
      peakRssMiB: after.hwmKiB / 1024,
    });
  }
  return {
    kernel,
    imageBytes: IMAGE_MIB * 2 ** 20,
    runs,
    runtimeSeconds,
    fio,
    treeWalk,
    costs,
    errors,
    done,
  };
}

export async function runVmBench(options: VmBenchOptions): Promise<VmResults | undefined> {
  const reason = await vmUnavailable();
  if (reason) {
    options.log(`  VM skipped: ${reason}`);
    return undefined;
  }
  // Setup (~1 min under TCG) plus every fio run with its start-up.
  const fioRuns = FIO_JOBS.length * Object.keys(labels).length * options.runs;
  const timeoutMs = 240_000 + fioRuns * (options.runtimeSeconds + 6) * 1000;
  options.log(`  booting the VM (${fioRuns} fio runs; timeout ${Math.round(timeoutMs / 1000)} s)`);
  const run = await runInVm(guestPrelude + script(options.runs, options.runtimeSeconds), {
    timeoutMs,
    memoryMiB: 3072,
  });
  const parsed = parseVmLog(run.log, options.runs, options.runtimeSeconds);
  for (const error of parsed.errors) options.log(`  VM error: ${error}`);
  if (!parsed.done) {
    options.log(
      `  VM did not finish (timed out: ${run.timedOut}); log tail:\n${run.log.slice(-3000)}`,
    );
  }
  const { errors: _errors, done: _done, ...results } = parsed;
  return { ...results, bootSeconds: run.bootMs / 1000, totalSeconds: run.totalMs / 1000 };
}
