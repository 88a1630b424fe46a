/**
 * Real-kernel tier for failover: the block layer must never see an error
 * while any replica lives. Readers read /dev/nbdN with O_DIRECT (`dd
 * iflag=direct`, so the page cache cannot hide an outage) and compare every
 * block with the image file, while diod servers inside the guest are killed
 * (SIGKILL), frozen (SIGSTOP), swapped for replicas holding other bytes,
 * all taken down for 20 s, or put behind a proxy that sends garbage, a wrong
 * tag or half a frame. A writable attachment loses its server mid-write;
 * `--give-up-after` turns a long outage into EIO and back.
 *
 * Measurements the guest makes (outage recovery, give-up delay) are printed
 * to the VM console as `@@METRIC` lines; run with `NBD9_VM_VERBOSE=1` to
 * see them.
 *
 * @module
 */

import { runGuestTests } from "./guest.ts";

const SCRIPT = String.raw`
MiB=1048576
IMAGE_BYTES=$((8 * MiB))
mkdir -p /tmp/a /tmp/b /tmp/c /tmp/d /tmp/w /tmp/out
head -c $IMAGE_BYTES /dev/urandom > /tmp/a/ro.img
cp /tmp/a/ro.img /tmp/b/ro.img
# Same size, other bytes; and the right bytes, 64 KiB short.
head -c $IMAGE_BYTES /dev/urandom > /tmp/c/ro.img
head -c $((IMAGE_BYTES - 65536)) /tmp/a/ro.img > /tmp/d/ro.img
head -c $IMAGE_BYTES /dev/urandom > /tmp/w/rw.img
head -c $((4 * MiB)) /dev/urandom > /tmp/out/written
: > /tmp/metrics

# reads_done OUT N: reader OUT has finished at least N reads.
cat > /tmp/bin/reads_done <<'EOF'
#!/bin/sh
test "$(cut -d' ' -f1 "$1" 2>/dev/null || echo 0)" -ge "$2"
EOF
# reader DEVICE IMAGE OUT: read random 64 KiB blocks of DEVICE with O_DIRECT and compare each
# with IMAGE until OUT.stop exists; OUT holds "reads errors mismatches", OUT.err the details,
# and OUT.done appears when it has stopped.
cat > /tmp/bin/reader <<'EOF'
#!/bin/sh
dev=$1; img=$2; out=$3
blocks=$(($(stat -c %s "$img") / 65536))
n=0; errors=0; wrong=0; x=$$
: > "$out.err"
while [ ! -e "$out.stop" ]; do
  x=$(((x * 1103515245 + 12345) % 2147483648))
  k=$((x / 65536 % blocks))
  if dd if="$dev" of="$out.blk" iflag=direct bs=65536 skip=$k count=1 status=none 2>> "$out.err"
  then
    cmp -s -n 65536 "$out.blk" "$img" 0 $((k * 65536)) ||
      { wrong=$((wrong + 1)); echo "block $k differs" >> "$out.err"; }
  else
    errors=$((errors + 1))
  fi
  n=$((n + 1))
  echo "$n $errors $wrong" > "$out"
done
touch "$out.done"
EOF
# stop_reader OUT: stop reader OUT and fail unless it saw no error and no wrong byte.
cat > /tmp/bin/stop_reader <<'EOF'
#!/bin/sh
touch "$1.stop"
waitfor 60 test -e "$1.done" || { echo "reader $1 stuck: $(cat "$1")"; exit 1; }
read -r n errors wrong < "$1"
echo "reader $1: $n reads, $errors errors, $wrong wrong"
test "$errors" = 0 && test "$wrong" = 0 || { head -c 400 "$1.err"; exit 1; }
EOF
# block_ok DEVICE IMAGE K OUT: read 64 KiB block K of DEVICE (O_DIRECT) and compare with IMAGE.
cat > /tmp/bin/block_ok <<'EOF'
#!/bin/sh
dd if="$1" of="$4" iflag=direct bs=65536 skip=$3 count=1 status=none &&
  cmp -n 65536 "$4" "$2" 0 $(($3 * 65536))
EOF
# writer DEVICE SOURCE OUT: write the 64 KiB blocks of SOURCE to DEVICE one by one (O_DIRECT);
# OUT holds "writes-acknowledged errors" after each, and OUT.done appears at the end.
cat > /tmp/bin/writer <<'EOF'
#!/bin/sh
errors=0
blocks=$(($(stat -c %s "$2") / 65536))
for i in $(seq 0 $((blocks - 1))); do
  dd if="$2" of="$1" bs=65536 skip=$i seek=$i count=1 oflag=direct conv=notrunc status=none \
    2>> "$3.err" || errors=$((errors + 1))
  echo "$((i + 1)) $errors" > "$3"
done
touch "$3.done"
EOF
# in_background RCFILE CMD...: run CMD, then write its exit code to RCFILE. Start it with its
# output redirected and "&": an external command, so that no shell keeps the check's pipe open
# while CMD hangs.
cat > /tmp/bin/in_background <<'EOF'
#!/bin/sh
rc=$1; shift
"$@"
echo $? > "$rc"
EOF
# now_ms: milliseconds since the epoch.
cat > /tmp/bin/now_ms <<'EOF'
#!/bin/sh
echo $(($(date +%s%N) / 1000000))
EOF
# state DEVICE FIELD: a number or plain string from DEVICE's state file, which "9nbd list" shows.
cat > /tmp/bin/state <<'EOF'
#!/bin/sh
sed -n "s/^  \"$2\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" "/run/9nbd/$(basename "$1").json"
EOF
# finished RCFILE: a command run by in_background has ended.
cat > /tmp/bin/finished <<'EOF'
#!/bin/sh
test -s "$1"
EOF
# A proxy in front of a diod that spoils the next Rread on its way to the client when the file
# /tmp/out/spoil appears: "garbage" puts garbage before it, "tag" gives it a tag nobody asked
# for, "cut" sends half of it and hangs up. Frames are cut by their size field, so the spoiling
# lands between frames. (Files, not signals: SIGUSR1 would start Deno's inspector.)
cat > /tmp/hostile_proxy.ts <<'EOF'
const [listenPort, upstreamPort] = Deno.args.map(Number);
function nextSpoil(): string {
  try {
    const mode = Deno.readTextFileSync("/tmp/out/spoil").trim();
    Deno.removeSync("/tmp/out/spoil");
    return mode;
  } catch {
    return "";
  }
}
const listener = Deno.listen({ hostname: "127.0.0.1", port: listenPort });
for await (const client of listener) void relay(client);
async function relay(client: Deno.Conn) {
  let upstream: Deno.Conn;
  try {
    upstream = await Deno.connect({ hostname: "127.0.0.1", port: upstreamPort });
  } catch {
    client.close();
    return;
  }
  const hangUp = () => {
    try { client.close(); } catch { /* closed */ }
    try { upstream.close(); } catch { /* closed */ }
  };
  client.readable.pipeTo(upstream.writable).catch(hangUp);
  const out = client.writable.getWriter();
  let pending = new Uint8Array(0);
  try {
    for await (const chunk of upstream.readable) {
      const joined = new Uint8Array(pending.length + chunk.length);
      joined.set(pending);
      joined.set(chunk, pending.length);
      pending = joined;
      while (pending.length >= 4) {
        const size = new DataView(pending.buffer, pending.byteOffset).getUint32(0, true);
        if (pending.length < size) break;
        const frame = pending.slice(0, size);
        pending = pending.slice(size);
        const spoil = frame[4] === 117 ? nextSpoil() : "";
        if (spoil === "garbage") await out.write(new Uint8Array(64).fill(0xff));
        if (spoil === "tag") frame[6] ^= 0x40;
        if (spoil === "cut") {
          await out.write(frame.subarray(0, frame.length >> 1));
          hangUp();
          return;
        }
        await out.write(frame);
      }
    }
  } catch { /* either side went away */ }
  hangUp();
}
EOF
chmod +x /tmp/bin/*

A=127.0.0.1:5641:/tmp/a/ro.img
P=127.0.0.1:5651:/tmp/a/ro.img
S=127.0.0.1:5652:/tmp/b/ro.img
GOOD=127.0.0.1:5661:/tmp/a/ro.img
OTHER_BYTES=127.0.0.1:5662:/tmp/c/ro.img
OTHER_SIZE=127.0.0.1:5663:/tmp/d/ro.img
W=127.0.0.1:5671:/tmp/w/rw.img
G=127.0.0.1:5681:/tmp/a/ro.img
H=127.0.0.1:5691:/tmp/a/ro.img
for port in 5641 5651 5661 5681 5690; do serve $port /tmp/a; done
serve 5652 /tmp/b
serve 5662 /tmp/c
serve 5663 /tmp/d
serve 5671 /tmp/w

# 1. kill -9 while a reader loops; restart 3 s later.
crash_and_restart() {
  9nbd attach "$A" /dev/nbd0 || return 1
  reader /dev/nbd0 /tmp/a/ro.img /tmp/out/r0 > /dev/null 2>&1 &
  waitfor 60 reads_done /tmp/out/r0 5 || return 1
  crash 5641 || return 1
  sleep 3
  serve 5641 /tmp/a || return 1
  read -r n _ < /tmp/out/r0
  waitfor 60 reads_done /tmp/out/r0 $((n + 10)) || return 1
  stop_reader /tmp/out/r0 && test "$(state /dev/nbd0 reconnects)" -ge 1
}
check "a kill -9 of the server and a restart 3 s later leave the reader error-free, bytes right" \
  crash_and_restart

# 2. SIGSTOP the server longer than the timeout; a second server is listed.
stop_primary() {
  9nbd attach --timeout 2 "$P" "$S" /dev/nbd1 || return 1
  reader /dev/nbd1 /tmp/a/ro.img /tmp/out/r1 > /dev/null 2>&1 &
  waitfor 60 reads_done /tmp/out/r1 5 || return 1
  kill -STOP "$(cat /tmp/diod-5651.pid)"
  read -r n _ < /tmp/out/r1
  waitfor 60 reads_done /tmp/out/r1 $((n + 10)); rc=$?
  kill -CONT "$(cat /tmp/diod-5651.pid)"
  test $rc = 0 && stop_reader /tmp/out/r1
}
check "SIGSTOP of the server past the timeout moves I/O to the second server with no error" \
  stop_primary
list_after_failover() {
  out=$(9nbd list) || return 1
  echo "$out"
  echo "$out" | grep -Eq '^/dev/nbd1 .* 127[.]0[.]0[.]1:5652 +ro .* 0 +1 +ok$' &&
    echo "$out" | grep -A1 '^/dev/nbd1 ' |
    grep -Eq '^  last error: .*127[.]0[.]0[.]1:5651.*no reply' &&
    test "$(state /dev/nbd1 server)" = 127.0.0.1:5652 &&
    test "$(state /dev/nbd1 failovers)" = 1 && test "$(state /dev/nbd1 reconnects)" = 0
}
check "list shows the second server, 1 failover, 0 reconnects and the last error" \
  list_after_failover

# 3. Replicas with the same size but other bytes, or another size, are refused.
refuse_wrong_replicas() {
  9nbd attach "$GOOD" "$OTHER_BYTES" "$OTHER_SIZE" /dev/nbd2 || return 1
  crash 5661 || return 1
  in_background /tmp/out/b2.rc block_ok /dev/nbd2 /tmp/a/ro.img 77 /tmp/out/b2 \
    > /tmp/out/b2.log 2>&1 &
  sleep 4
  ! finished /tmp/out/b2.rc || { echo "the read ended with only wrong replicas up"; return 1; }
  log=/run/9nbd/nbd2.log
  test "$(grep -c 'replica 127.0.0.1:5662 refused: content fingerprint differs' $log)" = 1 ||
    { echo "no single refusal of the other bytes:"; tail -5 $log; return 1; }
  test "$(grep -c 'replica 127.0.0.1:5663 refused: holds 8323072 bytes, not 8388608' $log)" = 1 ||
    { echo "no single refusal of the other size:"; tail -5 $log; return 1; }
  serve 5661 /tmp/a || return 1
  waitfor 60 finished /tmp/out/b2.rc || return 1
  test "$(cat /tmp/out/b2.rc)" = 0 || { cat /tmp/out/b2.log; return 1; }
  test "$(state /dev/nbd2 server)" = 127.0.0.1:5661
}
check "replicas with other bytes or size are refused in the log; the read waits for the right one" \
  refuse_wrong_replicas

# 4. Every server down for 20 s, then one back.
outage_20s() {
  crash 5651 && crash 5652 || return 1
  in_background /tmp/out/b4.rc block_ok /dev/nbd1 /tmp/a/ro.img 99 /tmp/out/b4 \
    > /tmp/out/b4.log 2>&1 &
  sleep 20
  ! finished /tmp/out/b4.rc || { echo "the read ended: $(cat /tmp/out/b4.log)"; return 1; }
  started=$(now_ms)
  serve 5652 /tmp/b || return 1
  listening=$(now_ms)
  i=0
  until finished /tmp/out/b4.rc; do
    i=$((i + 1))
    test $i -lt 3000 || { echo "the read never completed"; return 1; }
    sleep 0.02
  done
  done=$(now_ms)
  test "$(cat /tmp/out/b4.rc)" = 0 || { cat /tmp/out/b4.log; return 1; }
  echo "@@METRIC 20 s outage: first I/O done $((done - listening)) ms after the server listened" \
    "($((done - started)) ms after it was started)" >> /tmp/metrics
}
check "with all servers down for 20 s and then one back, the waiting read gets the right bytes" \
  outage_20s

# 5. A writable attachment whose server is killed mid-write.
write_through_crash() {
  9nbd attach --rw "$W" /dev/nbd3 || return 1
  writer /dev/nbd3 /tmp/out/written /tmp/out/w > /dev/null 2>&1 &
  waitfor 60 reads_done /tmp/out/w 8 || return 1
  crash 5671 || return 1
  sleep 3
  serve 5671 /tmp/w || return 1
  waitfor 60 test -e /tmp/out/w.done ||
    { echo "the writer is stuck at $(cat /tmp/out/w)"; tail -3 /run/9nbd/nbd3.log; return 1; }
  read -r n errors < /tmp/out/w
  test "$n" = 64 && test "$errors" = 0 || { echo "$n writes, $errors errors"; return 1; }
  grep -q 'unflushed writes replayed' /run/9nbd/nbd3.log ||
    { echo "no write replay in the log"; tail -3 /run/9nbd/nbd3.log; return 1; }
  9nbd detach /dev/nbd3 &&
    cmp -n $((4 * MiB)) /tmp/out/written /tmp/w/rw.img &&
    9nbd attach --rw "$W" /dev/nbd3 &&
    dd if=/dev/nbd3 iflag=direct bs=$MiB count=4 status=none | cmp - /tmp/out/written &&
    9nbd detach /dev/nbd3
}
check "every acknowledged write survives a kill -9 of the server mid-write, detach and re-attach" \
  write_through_crash

# 6. A server that sends garbage, a wrong tag, or half a frame.
hostile_frames() {
  deno run -A --quiet /tmp/hostile_proxy.ts 5691 5690 > /tmp/out/proxy.log 2>&1 &
  echo $! > /tmp/out/proxy.pid
  wait_port 5691 || return 1
  9nbd attach "$H" /dev/nbd5 || return 1
  daemon=$(state /dev/nbd5 pid)
  reader /dev/nbd5 /tmp/a/ro.img /tmp/out/r5 > /dev/null 2>&1 &
  waitfor 60 reads_done /tmp/out/r5 5 || return 1
  want=1
  for spoil in garbage tag cut; do
    echo $spoil > /tmp/out/spoil
    waitfor 60 sh -c "test \$(state /dev/nbd5 reconnects) -ge $want" ||
      { echo "no reconnect after the $spoil"; tail -3 /run/9nbd/nbd5.log; return 1; }
    read -r n _ < /tmp/out/r5
    waitfor 60 reads_done /tmp/out/r5 $((n + 5)) || return 1
    want=$((want + 1))
  done
  stop_reader /tmp/out/r5 && kill -0 "$daemon" && test "$(state /dev/nbd5 pid)" = "$daemon" &&
    grep -q 'frame size 4294967295 exceeds msize' /run/9nbd/nbd5.log &&
    grep -q 'unknown tag' /run/9nbd/nbd5.log &&
    grep -q 'middle of a 9P frame' /run/9nbd/nbd5.log
}
check "garbage, a wrong tag or a cut frame resets the session; the daemon lives, bytes stay right" \
  hostile_frames

# 7. --give-up-after: soft mode.
give_up() {
  9nbd attach --give-up-after 3 "$G" /dev/nbd4 || return 1
  crash 5681 || return 1
  started=$(now_ms)
  if block_ok /dev/nbd4 /tmp/a/ro.img 5 /tmp/out/b7 2> /tmp/out/b7.err; then
    echo "the read succeeded with every server down"; return 1
  fi
  failed=$(now_ms)
  grep -q 'Input/output error' /tmp/out/b7.err || { cat /tmp/out/b7.err; return 1; }
  # The kernel logs it too: the check on the other devices below looks for exactly this line.
  dmesg | grep -q 'I/O error, dev nbd4' || { echo "no kernel I/O error logged for nbd4"; return 1; }
  echo "@@METRIC give-up-after 3 s: EIO after $((failed - started)) ms" >> /tmp/metrics
  grep -E 'lost|answered' /run/9nbd/nbd4.log | sed 's/^/@@METRIC   /' >> /tmp/metrics
  test $((failed - started)) -ge 2900 || { echo "EIO after $((failed - started)) ms"; return 1; }
  serve 5681 /tmp/a && block_ok /dev/nbd4 /tmp/a/ro.img 5 /tmp/out/b7
}
check "with --give-up-after 3 and all servers down a read fails with EIO after 3 s, then works" \
  give_up

check "the kernel logged no I/O error on the devices that always had a replica" sh -c '
  ! dmesg | grep -E "I/O error, dev nbd[0-35]"'
check "every read-only device detaches after its failures, leaving no daemon and no state" sh -c '
  for d in 0 1 2 4 5; do 9nbd detach --wait 10 /dev/nbd$d || exit 1; done
  sleep 0.5; ! pgrep -f "main[.]ts attach .*/dev/nbd[01245]$" &&
  test -z "$(ls /run/9nbd/nbd[01245].json 2>/dev/null)"'
cat /tmp/metrics
kill "$(cat /tmp/out/proxy.pid)" 2>/dev/null
for f in /tmp/diod-*.pid; do kill -9 "$(cat "$f")" 2>/dev/null; done
`;

const EXPECTED = [...SCRIPT.matchAll(/^check "([^"]+)"/gm)].map((m) => m[1]);

Deno.test({
  name: "9nbd survives server crashes, hangs, wrong replicas and hostile frames on a real kernel",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: (t) => runGuestTests(t, "vm (failover)", SCRIPT, EXPECTED),
});
