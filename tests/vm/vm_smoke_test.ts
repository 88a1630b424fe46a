/**
 * Checks that the VM harness gives later real-kernel tests what they need: NBD and ext4 modules,
 * a 9P server on guest loopback, and the host's Deno with working FFI.
 *
 * @module
 */

import assert from "node:assert/strict";
import { runInVm, vmUnavailable } from "../../tools/vm.ts";

/** Checks run in the guest; each prints one `@@TEST` line named as in `EXPECTED`. */
const GUEST_SCRIPT = String.raw`
set -u
# check NAME CMD...: runs CMD, reports ok or fail with its output folded onto one line.
check() {
  name=$1; shift
  if out=$("$@" 2>&1); then
    echo "@@TEST ok $name"
  else
    echo "@@TEST fail $name: exit $?: $(printf '%s' "$out" | tr '\n' ' ' | cut -c1-400)"
  fi
}

nbd() { modprobe nbd && test -b /dev/nbd0; }
check "modprobe nbd creates /dev/nbd0" nbd

ext4() {
  modprobe ext4 && grep -qw ext4 /proc/filesystems && modprobe loop &&
  truncate -s 32M /tmp/ext4.img && mkfs.ext4 -q -F /tmp/ext4.img &&
  mkdir -p /tmp/ext4 && mount -o loop /tmp/ext4.img /tmp/ext4 &&
  echo hello > /tmp/ext4/f && umount /tmp/ext4
}
check "modprobe ext4 and mount an ext4 image" ext4

diod9p() {
  mkdir -p /tmp/export /tmp/mnt && echo served > /tmp/export/file || return 1
  # Output to a file: check captures stdout, and a daemon holding that pipe would block it.
  diod -f -n -l 127.0.0.1:564 -e /tmp/export > /tmp/diod.log 2>&1 &
  diod_pid=$!
  rc=1
  # diod needs a moment to listen; the mount is the readiness probe.
  for _ in $(seq 50); do
    if mount -t 9p -o trans=tcp,port=564,aname=/tmp/export,version=9p2000.L 127.0.0.1 /tmp/mnt \
      2>/dev/null; then
      test "$(cat /tmp/mnt/file)" = served
      rc=$?
      umount /tmp/mnt
      break
    fi
    sleep 0.2
  done
  kill "$diod_pid"
  wait "$diod_pid"
  [ "$rc" = 0 ] || cat /tmp/diod.log
  return "$rc"
}
check "diod serves 127.0.0.1 to the kernel 9p client" diod9p

denover() { deno --version | grep -q '^deno '; }
check "deno --version runs" denover

ffi() {
  cat > /tmp/ffi.ts <<'EOF'
const libc = Deno.dlopen("libc.so.6", { getpid: { parameters: [], result: "i32" } } as const);
const pid = libc.symbols.getpid();
libc.close();
if (pid !== Deno.pid) throw new Error("getpid() = " + pid + ", Deno.pid = " + Deno.pid);
EOF
  deno run --allow-ffi /tmp/ffi.ts
}
check "deno ffi calls getpid in libc" ffi
`;

const EXPECTED = [
  "modprobe nbd creates /dev/nbd0",
  "modprobe ext4 and mount an ext4 image",
  "diod serves 127.0.0.1 to the kernel 9p client",
  "deno --version runs",
  "deno ffi calls getpid in libc",
];

Deno.test("the test VM boots Debian's kernel with nbd, ext4, diod and Deno FFI", async () => {
  const started = performance.now();
  const reason = await vmUnavailable();
  if (reason) {
    // CI must exercise the real kernel; skipping there would hide a broken image.
    if (Deno.env.get("CI") === "true") assert.fail(`VM unavailable in CI: ${reason}`);
    console.log(`SKIPPED: vm: ${reason}`);
    return;
  }
  const run = await runInVm(GUEST_SCRIPT, { timeoutMs: 240_000 });
  const totalMs = performance.now() - started;
  console.log(
    `vm smoke: boot ${(run.bootMs / 1000).toFixed(1)} s, VM ${(run.totalMs / 1000).toFixed(1)} s,` +
      ` test ${(totalMs / 1000).toFixed(1)} s`,
  );
  const context = `\n--- VM log ---\n${run.log}`;
  assert.equal(run.timedOut, false, `VM timed out${context}`);
  assert.deepEqual(run.results.map((r) => r.name), EXPECTED, `unexpected result set${context}`);
  for (const result of run.results) {
    assert.ok(result.ok, `${result.name}: ${result.detail}${context}`);
  }
  assert.equal(run.exitCode, 0, `guest script exit code${context}`);
});
