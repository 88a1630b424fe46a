/**
 * Real-kernel tier for `9nbd export`: the Linux kernel's own 9P client
 * (v9fs over TCP) mounts a directory we serve and reads its files; and
 * `9nbd attach` with two replicas, our export and a diod serving the same
 * image, fails over from the export to diod when the export is killed,
 * with no read error reaching the block layer.
 *
 * @module
 */

import { runGuestTests } from "./guest.ts";

const SCRIPT = String.raw`
# "9nbd export" once main.ts knows the command; until then, the command module directly.
if 9nbd --help 2>/dev/null | grep -q "^  export"; then
  printf '#!/bin/sh\nexec 9nbd export "$@"\n' > /tmp/bin/9nbd-export
else
  cat > /tmp/export-main.ts <<EOF
import { exportCommand } from "$REPO/lib/cli/export.ts";
Deno.exit(await exportCommand(Deno.args, (line) => console.log(line)));
EOF
  printf '#!/bin/sh\nexec deno run -A --quiet --config "%s/deno.json" /tmp/export-main.ts "$@"\n' \
    "$REPO" > /tmp/bin/9nbd-export
fi
chmod +x /tmp/bin/9nbd-export
modprobe 9pnet_fd 2>/dev/null

mkdir -p /tmp/exp9/sub /mnt/v9
head -c 5000011 /dev/urandom > /tmp/exp9/a.img
head -c 123457 /dev/urandom > /tmp/exp9/sub/b.img
head -c $((32 * 1024 * 1024)) /dev/urandom > /tmp/exp9/disk.img
9nbd-export --listen 127.0.0.1:5640 /tmp/exp9 > /tmp/export.log 2>&1 &
EXPORT_PID=$!
wait_port 5640 || cat /tmp/export.log

check "export logs one line saying what it serves, where, read-only" \
  grep -qx "9nbd: serving /tmp/exp9 on 127.0.0.1:5640 (read-only)" /tmp/export.log
check "the kernel mounts a directory served by 9nbd export" \
  mount -t 9p -o trans=tcp,port=5640,aname=/tmp/exp9,version=9p2000.L,ro 127.0.0.1 /mnt/v9
check "ls lists the exported files" sh -c 'test "$(ls /mnt/v9 | tr "\n" " ")" = "a.img disk.img sub "'
check "ls -l shows their sizes" sh -c 'ls -l /mnt/v9/a.img | grep -q " 5000011 "'
check "cat of an exported file matches it" sh -c 'cat /mnt/v9/a.img | cmp - /tmp/exp9/a.img'
check "cat of a file in a subdirectory matches it" sh -c 'cat /mnt/v9/sub/b.img | cmp - /tmp/exp9/sub/b.img'
check "a write through the mount is refused" sh -c '! sh -c "echo x >> /mnt/v9/a.img" 2>/dev/null'
umount /mnt/v9

start_diod 5641 /tmp/exp9
check "attach with two replicas, the export first and diod second" \
  9nbd attach 127.0.0.1:5640:/tmp/exp9/disk.img 127.0.0.1:5641:/tmp/exp9/disk.img /dev/nbd0
check "the device reads the image through the export" cmp /dev/nbd0 /tmp/exp9/disk.img
check "list names the export as the serving replica" sh -c '9nbd list | grep -q "5640"'
check "killing the export mid-read fails over to diod with zero read errors" sh -c '
  dmesg -c > /dev/null
  (sleep 1; kill -9 '"$EXPORT_PID"') &
  for pass in 1 2 3 4 5 6; do
    dd if=/dev/nbd0 bs=256k iflag=direct 2>/dev/null | cmp - /tmp/exp9/disk.img || exit 1
    dd if=/dev/nbd0 bs=4k count=2000 skip=$((pass * 500)) iflag=direct 2>/dev/null |
      cmp -i 0:$((pass * 500 * 4096)) -n $((2000 * 4096)) - /tmp/exp9/disk.img || exit 1
  done
  # Killed (a zombie of this shell still answers kill -0): nothing listens on 5640 any more.
  if grep -q ":$(printf %04X 5640) 00000000:0000 0A" /proc/net/tcp; then echo "export alive"; exit 1; fi
  if dmesg | grep -Ei "I/O error|blk_update_request"; then exit 1; fi'
check "list names diod as the serving replica" sh -c '9nbd list | tee /dev/stderr | grep -q "5641"'
check "detach after failover exits 0" 9nbd detach /dev/nbd0
kill $DIOD_PID
`;

const EXPECTED = [...SCRIPT.matchAll(/^check "([^"]+)"/gm)].map((m) => m[1]);

Deno.test({
  name: "9nbd export serves the kernel's 9P client and a failover pair on a real kernel",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: (t) => runGuestTests(t, "vm (export)", SCRIPT, EXPECTED),
});
