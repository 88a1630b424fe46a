/**
 * Real-kernel tier: `9nbd attach/detach/list` on Debian's kernel in a VM,
 * against diod inside the guest.
 *
 * @module
 */

import { makeTree } from "../../tools/guest.ts";
import { runGuestTests } from "./guest.ts";

const SCRIPT = String.raw`
mkdir -p /tmp/export /tmp/tree /mnt/ro /mnt/rw
${makeTree("/tmp/tree")}
(cd /tmp/tree && find . -type f -print0 | xargs -0 sha256sum) > /tmp/tree.sha256
mkfs.ext4 -q -b 4096 -d /tmp/tree /tmp/export/ro.img 96M
cp /tmp/export/ro.img /tmp/export/rw.img
# An image whose size is not a multiple of 512: the device is rounded down.
head -c 1049111 /dev/urandom > /tmp/export/odd.img
start_diod 564 /tmp/export

check "attach of a read-only image exits 0" 9nbd attach 127.0.0.1:/tmp/export/ro.img /dev/nbd0
check "blockdev --getsize64 is the image size" \
  test "$(blockdev --getsize64 /dev/nbd0)" = "$(stat -c %s /tmp/export/ro.img)"
check "blockdev --getro is 1" test "$(blockdev --getro /dev/nbd0)" = 1
check "the ext4 file system mounts read-only" mount -o ro /dev/nbd0 /mnt/ro
check "all 2,000 files match their sha256" sh -c '
  test "$(find /mnt/ro -type f | wc -l)" = 2000 && cd /mnt/ro && sha256sum -c --quiet /tmp/tree.sha256'
check "a write to the read-only device fails" sh -c '
  ! dd if=/dev/zero of=/dev/nbd0 bs=4096 count=1 seek=100 oflag=direct 2>/dev/null'
check "attach of a writable image on a second device exits 0" \
  9nbd attach --rw 127.0.0.1:/tmp/export/rw.img /dev/nbd1
check "list shows both devices with mode and status" sh -c '
  out=$(9nbd list) && echo "$out" &&
  echo "$out" | grep -Eq "^/dev/nbd0 .* ro .* ok$" && echo "$out" | grep -Eq "^/dev/nbd1 .* rw .* ok$"'
check "list --json reports the daemon pid the kernel names" sh -c '
  9nbd list --json | deno eval "
    const rows = JSON.parse(await new Response(Deno.stdin.readable).text());
    if (rows.length !== 2) throw new Error(rows.length + \" rows\");
    for (const r of rows) if (r.status !== \"ok\" || !(r.pid > 0)) throw new Error(JSON.stringify(r));"'
check "a writable mount takes writes" sh -c '
  mount /dev/nbd1 /mnt/rw && head -c 300000 /dev/urandom > /tmp/written &&
  cp /tmp/written /mnt/rw/written && sync && umount /mnt/rw'
check "detach with the device mounted is refused as busy" sh -c '
  mount -o ro /dev/nbd1 /mnt/rw && expect_exit 5 "busy|mounted" 9nbd detach /dev/nbd1; rc=$?; umount /mnt/rw; exit $rc'
check "detach of the writable device exits 0" 9nbd detach /dev/nbd1
check "the writes survive detach and re-attach" sh -c '
  9nbd attach --rw 127.0.0.1:/tmp/export/rw.img /dev/nbd1 && mount /dev/nbd1 /mnt/rw &&
  cmp /tmp/written /mnt/rw/written && umount /mnt/rw && 9nbd detach /dev/nbd1'
check "an image of an odd size attaches with its size rounded down to 512" sh -c '
  9nbd attach 127.0.0.1:/tmp/export/odd.img /dev/nbd2 &&
  test "$(blockdev --getsize64 /dev/nbd2)" = $((1049111 / 512 * 512)) &&
  head -c $((1049111 / 512 * 512)) /tmp/export/odd.img | cmp - /dev/nbd2 &&
  9nbd detach /dev/nbd2'
check "--connections 2 serves the device over two kernel sockets and 9P sessions" sh -c '
  9nbd attach --connections 2 127.0.0.1:/tmp/export/ro.img /dev/nbd2 &&
  test "$(cat /sys/block/nbd2/queue/max_sectors_kb)" = 1024 &&
  test "$(grep -c "0100007F:0234 01" /proc/net/tcp)" -ge 3 &&
  dd if=/dev/nbd2 bs=1M iflag=direct 2>/dev/null | cmp - /tmp/export/ro.img &&
  9nbd detach /dev/nbd2'
check "attach auto takes the first free device" sh -c '
  out=$(9nbd attach 127.0.0.1:/tmp/export/odd.img auto) && echo "$out" | grep -q "^/dev/nbd1 attached" &&
  9nbd detach /dev/nbd1'
check "a killed daemon fails the device cleanly, list says so, detach cleans up" sh -c '
  9nbd attach 127.0.0.1:/tmp/export/odd.img /dev/nbd2 || exit 1
  pid=$(grep -o "\"pid\": [0-9]*" /run/9nbd/nbd2.json | grep -o "[0-9]*$")
  kill -9 "$pid"; sleep 0.5
  timeout 30 dd if=/dev/nbd2 of=/dev/null bs=4096 count=1 skip=7 iflag=direct; rc=$?
  if [ $rc = 0 ] || [ $rc = 124 ]; then echo "read after the daemon died: exit $rc"; exit 1; fi
  9nbd list | grep -q "daemon dead" || { 9nbd list; exit 1; }
  9nbd detach /dev/nbd2 && ! test -e /run/9nbd/nbd2.json'
check "attach to a device in use is busy (exit 5)" \
  expect_exit 5 "busy" 9nbd attach 127.0.0.1:/tmp/export/ro.img /dev/nbd0
check "attach to no such device is not found (exit 4)" \
  expect_exit 4 "nbd99.*modprobe nbd" 9nbd attach 127.0.0.1:/tmp/export/ro.img /dev/nbd99
check "attach to an unknown server fails (exit 1)" \
  expect_exit 1 "no-such-host.invalid" 9nbd attach --timeout 2 no-such-host.invalid:/x.img /dev/nbd3
check "attach of no such path is not found (exit 4)" \
  expect_exit 4 "No such file or directory \(ENOENT\)" 9nbd attach 127.0.0.1:/tmp/export/none.img /dev/nbd3
# The unprivileged user needs a Deno cache of its own (root's home is closed to it).
cp -r "$(printenv DENO_DIR || echo "$HOME/.cache/deno")" /tmp/nobody-deno && chown -R 65534 /tmp/nobody-deno
check "attach as a non-root user is refused (exit 3)" \
  expect_exit 3 "needs root" setpriv --reuid=65534 --regid=65534 --clear-groups \
    env HOME=/tmp DENO_DIR=/tmp/nobody-deno deno run -A --quiet "$REPO/main.ts" \
    attach 127.0.0.1:/tmp/export/ro.img /dev/nbd3
check "a bad SPEC is a usage error (exit 2)" expect_exit 2 "bad SPEC" 9nbd attach nonsense /dev/nbd3
umount /mnt/ro
check "detach of the read-only device exits 0" 9nbd detach /dev/nbd0
check "detach leaves no daemon and no state" sh -c '
  sleep 0.5; ! pgrep -f "main[.]ts attach" && test -z "$(ls /run/9nbd/*.json 2>/dev/null)" &&
  ! test -e /sys/block/nbd0/pid && ! test -e /sys/block/nbd1/pid'
check "list is empty again" sh -c 'test "$(9nbd list)" = "no devices attached"'
check "with --readahead 128, a cold read of every file matches and the whole device compares equal" sh -c '
  9nbd attach --readahead 128 127.0.0.1:/tmp/export/ro.img /dev/nbd0 &&
  mount -o ro /dev/nbd0 /mnt/ro && sync && echo 3 > /proc/sys/vm/drop_caches &&
  (cd /mnt/ro && sha256sum -c --quiet /tmp/tree.sha256) && umount /mnt/ro &&
  cmp /dev/nbd0 /tmp/export/ro.img && 9nbd detach /dev/nbd0'
check "--readahead with --rw is a usage error (exit 2)" \
  expect_exit 2 "read-only images" 9nbd attach --rw --readahead 128 127.0.0.1:/tmp/export/rw.img /dev/nbd1
kill $DIOD_PID
`;

const EXPECTED = [...SCRIPT.matchAll(/^check "([^"]+)"/gm)].map((m) => m[1]);

Deno.test({
  name: "9nbd attach, detach and list work on a real kernel",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: (t) => runGuestTests(t, "vm (attach)", SCRIPT, EXPECTED),
});
