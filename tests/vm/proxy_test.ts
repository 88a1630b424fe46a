/**
 * Real-kernel tier for `9nbd proxy`: the stock `nbd-client` (Debian's
 * nbd-client package) turns the proxy's NBD export of an image diod serves
 * into /dev/nbdN. Over a Unix socket and over TCP, by export name and by the
 * old NBD_OPT_EXPORT_NAME, with one connection and with two; a writable
 * export takes O_DIRECT and buffered writes that land in the image file
 * exactly where they were aimed; a wrong export name is refused; and when
 * the diod serving the proxy is killed mid-read, the proxy moves to a
 * replica and nbd-client's device sees no error.
 *
 * @module
 */

import { runGuestTests } from "./guest.ts";

const SCRIPT = String.raw`
MiB=1048576
IMAGE_BYTES=$((16 * MiB))
RW_BYTES=$((8 * MiB))
mkdir -p /tmp/px/a /tmp/px/b /tmp/px/w
head -c $IMAGE_BYTES /dev/urandom > /tmp/px/a/disk.img
cp /tmp/px/a/disk.img /tmp/px/b/disk.img
head -c $RW_BYTES /dev/urandom > /tmp/px/w/rw.img
cp /tmp/px/w/rw.img /tmp/px/rw.orig

# start_proxy NAME ARGS...: "9nbd proxy -v ARGS" in the background, its output in
# /tmp/px/NAME.log, its pid in NAME.pid and, once it has ended, its exit code in NAME.rc.
# Returns when the proxy says it serves.
cat > /tmp/bin/start_proxy <<'EOF'
#!/bin/sh
name=$1; shift
(
  9nbd proxy -v "$@" > /tmp/px/$name.log 2>&1 < /dev/null &
  echo $! > /tmp/px/$name.pid
  wait $!
  echo $? > /tmp/px/$name.rc
) > /dev/null 2>&1 &
for _ in $(seq 600); do
  grep -q '^serving ' /tmp/px/$name.log 2>/dev/null && exit 0
  test -e /tmp/px/$name.rc && break
  sleep 0.1
done
echo "proxy $name does not serve:"; cat /tmp/px/$name.log; exit 1
EOF
# stop_proxy NAME: SIGTERM the proxy; it must exit 0.
cat > /tmp/bin/stop_proxy <<'EOF'
#!/bin/sh
kill -TERM "$(cat /tmp/px/$1.pid)"
waitfor 60 test -e /tmp/px/$1.rc || { echo "proxy $1 still runs after SIGTERM"; exit 1; }
test "$(cat /tmp/px/$1.rc)" = 0 || { echo "proxy $1 exit $(cat /tmp/px/$1.rc)"; tail -5 /tmp/px/$1.log; exit 1; }
EOF
# detach DEVICE: nbd-client -d, then wait until the kernel says it is no longer connected.
cat > /tmp/bin/detach <<'EOF'
#!/bin/sh
nbd-client -d "$1" || exit 1
waitfor 30 sh -c "! nbd-client -c $1" || { echo "$1 still connected after -d"; exit 1; }
EOF
# connections NAME: how many NBD connections proxy NAME has taken into transmission.
cat > /tmp/bin/connections <<'EOF'
#!/bin/sh
grep -c ': transmission phase$' /tmp/px/$1.log
EOF
# whole DEVICE IMAGE: read all of DEVICE with O_DIRECT and compare it with IMAGE.
cat > /tmp/bin/whole <<'EOF'
#!/bin/sh
test "$(blockdev --getsize64 "$1")" = "$(stat -c %s "$2")" || { echo "size differs"; exit 1; }
dd if="$1" bs=256k iflag=direct status=none | cmp - "$2"
EOF
# reader DEVICE IMAGE OUT: read all of DEVICE (O_DIRECT) over and over, comparing it with IMAGE,
# until OUT.stop exists; OUT holds "passes errors mismatches" after each pass, OUT.err the
# details, and OUT.done appears when it has stopped.
cat > /tmp/bin/reader <<'EOF'
#!/bin/sh
dev=$1; img=$2; out=$3
n=0; errors=0; wrong=0
: > "$out.err"
while [ ! -e "$out.stop" ]; do
  if dd if="$dev" of="$out.copy" bs=256k iflag=direct status=none 2>> "$out.err"; then
    cmp "$out.copy" "$img" >> "$out.err" 2>&1 || wrong=$((wrong + 1))
  else
    errors=$((errors + 1))
  fi
  n=$((n + 1))
  echo "$n $errors $wrong" > "$out"
done
touch "$out.done"
EOF
# passes_done OUT N: reader OUT has finished at least N passes.
cat > /tmp/bin/passes_done <<'EOF'
#!/bin/sh
test "$(cut -d' ' -f1 "$1" 2>/dev/null || echo 0)" -ge "$2"
EOF
chmod +x /tmp/bin/*

serve 5641 /tmp/px/a
serve 5643 /tmp/px/w

# 1. A Unix socket, no export name.
start_proxy unix 127.0.0.1:5641:/tmp/px/a/disk.img --listen unix:/tmp/px/nbd.sock
check "nbd-client -unix attaches /dev/nbd0 to the proxy's Unix socket" \
  nbd-client -unix /tmp/px/nbd.sock /dev/nbd0
check "nbd-client -c says /dev/nbd0 is connected" nbd-client -c /dev/nbd0
check "blockdev --getsize64 of the device is the image size" \
  test "$(blockdev --getsize64 /dev/nbd0)" = $IMAGE_BYTES
check "reading the whole device with O_DIRECT gives the image's bytes" \
  whole /dev/nbd0 /tmp/px/a/disk.img
check "the read-only export makes a read-only device that refuses a write" sh -c '
  test "$(blockdev --getro /dev/nbd0)" = 1 &&
  ! dd if=/dev/zero of=/dev/nbd0 bs=4096 count=1 seek=3 oflag=direct status=none 2>/dev/null &&
  cmp /tmp/px/a/disk.img /tmp/px/b/disk.img'
check "nbd-client -d disconnects the device" detach /dev/nbd0
check "after -d the proxy still serves: nbd-client attaches again and reads the image" sh -c '
  kill -0 "$(cat /tmp/px/unix.pid)" && ! test -e /tmp/px/unix.rc &&
  nbd-client -unix /tmp/px/nbd.sock /dev/nbd0 && whole /dev/nbd0 /tmp/px/a/disk.img &&
  detach /dev/nbd0 && test "$(connections unix)" = 2'
two_clean_ends() {
  waitfor 30 sh -c 'test "$(grep -c ": disconnected$" /tmp/px/unix.log)" = 2' ||
    { cat /tmp/px/unix.log; return 1; }
  ! grep -E "^9nbd: (warning|error):" /tmp/px/unix.log
}
check "the proxy logged a clean end of both connections and no warning" two_clean_ends
check "SIGTERM stops the Unix-socket proxy with exit 0 and removes its socket" sh -c '
  stop_proxy unix && ! test -e /tmp/px/nbd.sock'

# 2. TCP, with an export name.
start_proxy tcp 127.0.0.1:5641:/tmp/px/a/disk.img --listen 127.0.0.1:10809 --name disk
check "nbd-client -l lists the export by its name" sh -c '
  nbd-client -l 127.0.0.1 10809 | grep -q "disk: 127.0.0.1:5641:/tmp/px/a/disk.img$"'
check "nbd-client -N disk over TCP attaches /dev/nbd1 and reads the image" sh -c '
  nbd-client 127.0.0.1 10809 /dev/nbd1 -N disk && whole /dev/nbd1 /tmp/px/a/disk.img'
check "nbd-client -N with a wrong name is refused with the proxy's message, no device attached" sh -c '
  if out=$(nbd-client 127.0.0.1 10809 /dev/nbd4 -N wrong 2>&1); then echo "attached: $out"; exit 1; fi
  echo "$out" | grep -q "no export named \"wrong\"" || { echo "$out"; exit 1; }
  ! nbd-client -c /dev/nbd4'
check "nbd-client -g (NBD_OPT_EXPORT_NAME, not OPT_GO) attaches /dev/nbd4 and reads the image" sh -c '
  nbd-client 127.0.0.1 10809 /dev/nbd4 -N disk -g && whole /dev/nbd4 /tmp/px/a/disk.img &&
  detach /dev/nbd4'

# 3. Two connections for one device.
check "nbd-client -C 2 opens two connections for /dev/nbd3 and reads the image" sh -c '
  before=$(connections tcp)
  nbd-client 127.0.0.1 10809 /dev/nbd3 -N disk -C 2 || exit 1
  test "$(connections tcp)" = $((before + 2)) || { echo "$(connections tcp) after $before"; exit 1; }
  whole /dev/nbd3 /tmp/px/a/disk.img'
check "both TCP devices disconnect; the TCP proxy logged no warning and stops with exit 0" sh -c '
  detach /dev/nbd1 && detach /dev/nbd3 && ! grep -E "^9nbd: (warning|error):" /tmp/px/tcp.log && stop_proxy tcp'

# 4. A writable export: an O_DIRECT write at sector 12345 (37 sectors) and a buffered one of
# 777 bytes at byte 1000003, which the kernel turns into a read-modify-write of its page.
start_proxy rw 127.0.0.1:5643:/tmp/px/w/rw.img --rw --listen 127.0.0.1:10810 --name scratch
head -c $((37 * 512)) /dev/urandom > /tmp/px/data1
head -c 777 /dev/urandom > /tmp/px/data2
cp /tmp/px/rw.orig /tmp/px/rw.expected
dd if=/tmp/px/data1 of=/tmp/px/rw.expected bs=512 seek=12345 conv=notrunc status=none
dd if=/tmp/px/data2 of=/tmp/px/rw.expected bs=777 seek=1000003 oflag=seek_bytes conv=notrunc \
  status=none
check "nbd-client -N scratch attaches the writable export as a writable /dev/nbd2" sh -c '
  nbd-client 127.0.0.1 10810 /dev/nbd2 -N scratch -b 512 &&
  test "$(blockdev --getro /dev/nbd2)" = 0 && whole /dev/nbd2 /tmp/px/rw.orig'
check "an O_DIRECT write and a buffered write at odd offsets, then sync, succeed" sh -c '
  dd if=/tmp/px/data1 of=/dev/nbd2 bs=512 seek=12345 oflag=direct conv=notrunc status=none &&
  dd if=/tmp/px/data2 of=/dev/nbd2 bs=777 seek=1000003 oflag=seek_bytes conv=notrunc status=none &&
  sync /dev/nbd2'
check "after sync the image file on the server changed there and nowhere else" \
  cmp /tmp/px/rw.expected /tmp/px/w/rw.img
check "the device reads back the written bytes" whole /dev/nbd2 /tmp/px/rw.expected
check "after nbd-client -d and SIGTERM to the proxy, the image still holds exactly the writes" sh -c '
  detach /dev/nbd2 && stop_proxy rw && cmp /tmp/px/rw.expected /tmp/px/w/rw.img &&
  ! grep -E "^9nbd: (warning|error):" /tmp/px/rw.log'

# 5. Two replicas behind the proxy; each is killed in turn while a reader loops on the device.
serve 5651 /tmp/px/a
serve 5652 /tmp/px/b
start_proxy replicas 127.0.0.1:5651:/tmp/px/a/disk.img 127.0.0.1:5652:/tmp/px/b/disk.img \
  --listen unix:/tmp/px/replicas.sock
check "nbd-client attaches /dev/nbd5 to a proxy with two replicas" \
  nbd-client -unix /tmp/px/replicas.sock /dev/nbd5
survive_kills() {
  dmesg -c > /dev/null
  reader /dev/nbd5 /tmp/px/a/disk.img /tmp/px/r > /dev/null 2>&1 &
  waitfor 60 passes_done /tmp/px/r 1 || return 1
  crash 5651 || return 1
  read -r n _ < /tmp/px/r
  waitfor 60 passes_done /tmp/px/r $((n + 2)) || { echo "reader stuck: $(cat /tmp/px/r)"; return 1; }
  grep -q "serving from 127.0.0.1:5652 after" /tmp/px/replicas.log ||
    { echo "no failover logged:"; tail -5 /tmp/px/replicas.log; return 1; }
  serve 5651 /tmp/px/a || return 1
  crash 5652 || return 1
  read -r n _ < /tmp/px/r
  waitfor 60 passes_done /tmp/px/r $((n + 2)) || { echo "reader stuck: $(cat /tmp/px/r)"; return 1; }
  grep -q "5652 lost .*serving from 127.0.0.1:5651 after" /tmp/px/replicas.log ||
    { echo "no move back logged:"; tail -5 /tmp/px/replicas.log; return 1; }
  touch /tmp/px/r.stop
  waitfor 60 test -e /tmp/px/r.done || return 1
  read -r n errors wrong < /tmp/px/r
  echo "@@METRIC reader through nbd-client: $n passes, $errors errors, $wrong mismatches" \
    >> /tmp/px/metrics
  grep "lost" /tmp/px/replicas.log | sed 's/^/@@METRIC   /' >> /tmp/px/metrics
  test "$errors" = 0 && test "$wrong" = 0 || { head -c 400 /tmp/px/r.err; return 1; }
  if dmesg | grep -Ei "I/O error|blk_update_request|timed out|Receive control failed"; then
    return 1
  fi
}
check "killing each replica in turn mid-read: nbd-client's device sees no error and no wrong byte" \
  survive_kills
touch /tmp/px/r.stop
check "the replica proxy keeps serving after the kills; -d and SIGTERM end it with exit 0" sh -c '
  whole /dev/nbd5 /tmp/px/a/disk.img && detach /dev/nbd5 && stop_proxy replicas &&
  ! test -e /tmp/px/replicas.sock'

check "no nbd device is left connected" sh -c '
  for d in 0 1 2 3 4 5; do nbd-client -c /dev/nbd$d > /dev/null && { echo "nbd$d connected"; exit 1; }; done; true'
cat /tmp/px/metrics 2>/dev/null
for f in /tmp/diod-*.pid; do kill -9 "$(cat "$f")" 2>/dev/null || true; done
`;

const EXPECTED = [...SCRIPT.matchAll(/^check "([^"]+)"/gm)].map((m) => m[1]);

Deno.test({
  name: "the stock nbd-client works against 9nbd proxy on a real kernel",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: (t) => runGuestTests(t, "vm (proxy)", SCRIPT, EXPECTED),
});
