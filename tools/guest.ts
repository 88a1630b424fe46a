/**
 * Guest-script pieces shared by the VM tests and the VM benchmarks: a shell
 * prelude (a `check` that turns a command into a `@@TEST` line, `9nbd`
 * running this checkout, diod starters, port waits) and a seeded file tree.
 *
 * @module
 */

import { v8FlagsArgument } from "../lib/runtime.ts";
import { shellQuote } from "./initramfs.ts";

/** The checkout, as the guest sees it (the host root is shared read-only). */
export const repoDir = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

/** Shell functions every guest script starts with. */
export const guestPrelude = String.raw`
set -u
REPO=${shellQuote(repoDir)}
export NBD9_RUN_DIR=/run/9nbd
# Commands as scripts on PATH (not shell functions), so that "sh -c" sees them too.
mkdir -p /tmp/bin
export PATH=/tmp/bin:$PATH
printf '#!/bin/sh\nexec deno run -A --quiet ${v8FlagsArgument()} "%s/main.ts" "$@"\n' "$REPO" > /tmp/bin/9nbd
# expect_exit CODE PATTERN CMD...: CMD must exit with CODE and print one line matching
# PATTERN (grep -E) on stderr.
cat > /tmp/bin/expect_exit <<'EOF'
#!/bin/sh
want=$1; pattern=$2; shift 2
err=$("$@" 2>&1 >/dev/null); got=$?
if [ "$got" != "$want" ]; then echo "exit $got, wanted $want: $err"; exit 1; fi
if ! printf '%s' "$err" | grep -Eq "$pattern"; then echo "stderr does not match /$pattern/: $err"; exit 1; fi
if [ "$(printf '%s\n' "$err" | wc -l)" != 1 ]; then echo "not one line: $err"; exit 1; fi
EOF
# wait_port PORT: wait until something listens on 127.0.0.1:PORT.
cat > /tmp/bin/wait_port <<'EOF'
#!/bin/sh
hex=$(printf '%04X' "$1")
for _ in $(seq 100); do
  grep -q ":$hex 00000000:0000 0A" /proc/net/tcp && exit 0
  sleep 0.1
done
echo "nothing listens on port $1"; exit 1
EOF
# serve PORT DIR: diod on 127.0.0.1:PORT exporting DIR, in the background; pid in
# /tmp/diod-PORT.pid, output in /tmp/diod-PORT.log. SIGPIPE is ignored, as systemd starts
# services: diod 1.0.24 dies of it when, resumed after SIGSTOP, it answers on a connection the
# client has closed meanwhile.
cat > /tmp/bin/serve <<'EOF'
#!/bin/sh
trap '' PIPE
diod -f -n -N -S -U root -l 127.0.0.1:$1 -e "$2" > /tmp/diod-$1.log 2>&1 < /dev/null &
echo $! > /tmp/diod-$1.pid
wait_port $1 || { cat /tmp/diod-$1.log; exit 1; }
EOF
# crash PORT: SIGKILL the diod on PORT and wait until its port is closed.
cat > /tmp/bin/crash <<'EOF'
#!/bin/sh
kill -9 "$(cat /tmp/diod-$1.pid)"
hex=$(printf '%04X' "$1")
for _ in $(seq 100); do
  grep -q ":$hex 00000000:0000 0A" /proc/net/tcp || exit 0
  sleep 0.1
done
echo "port $1 still listening after SIGKILL"; exit 1
EOF
# waitfor SECONDS CMD...: run CMD every 0.1 s until it succeeds; fail after SECONDS.
cat > /tmp/bin/waitfor <<'EOF'
#!/bin/sh
deadline=$(($(date +%s) + $1)); shift
until "$@" > /dev/null 2>&1; do
  if [ "$(date +%s)" -ge $deadline ]; then echo "timed out waiting for: $*"; exit 1; fi
  sleep 0.1
done
EOF
chmod +x /tmp/bin/*
# check NAME CMD...: run CMD; report ok, or fail with its output folded onto one line.
check() {
  name=$1; shift
  if out=$("$@" 2>&1); then
    echo "@@TEST ok $name"
  else
    rc=$?
    echo "@@TEST fail $name: exit $rc: $(printf '%s' "$out" | tr '\n' ' ' | cut -c1-600)"
  fi
}
# start_diod PORT DIR: serve, with the pid in DIOD_PID.
start_diod() {
  serve "$1" "$2" || return 1
  DIOD_PID=$(cat /tmp/diod-$1.pid)
}
modprobe nbd nbds_max=8
modprobe ext4
modprobe loop
`;

/**
 * Guest shell lines that fill `dir` with about 2,000 files of assorted sizes
 * in 40 directories, from a seeded generator (the same tree every run).
 */
export function makeTree(dir: string): string {
  return String.raw`deno eval '
  const dir = ${JSON.stringify(dir)};
  let x = 2463534242;
  const rnd = () => { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; return x >>> 0; };
  for (let d = 0; d < 40; d++) {
    Deno.mkdirSync(dir + "/d" + d, { recursive: true });
    for (let f = 0; f < 50; f++) {
      const bytes = new Uint8Array(rnd() % 24000);
      for (let i = 0; i < bytes.length; i++) bytes[i] = rnd() & 255;
      Deno.writeFileSync(dir + "/d" + d + "/f" + f, bytes);
    }
  }'`;
}
