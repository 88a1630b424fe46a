/** Conversion of command-line option values: sizes, seconds, whole numbers and server options. */

import assert from "node:assert/strict";
import { ADDRESS_FORMS } from "../../lib/address.ts";
import { attachHelp } from "../../lib/cli/attach.ts";
import { catHelp } from "../../lib/cli/cat.ts";
import { exportHelp } from "../../lib/cli/export.ts";
import { infoHelp } from "../../lib/cli/info.ts";
import { proxyHelp } from "../../lib/cli/proxy.ts";
import { UsageError } from "../../lib/errors.ts";
import {
  addressHelp,
  openOptions,
  parse,
  parseInteger,
  parseSeconds,
  parseSize,
  positionals,
  READAHEAD_CACHE_BYTES,
  resilientOptions,
  serverOptions,
} from "../../lib/cli/options.ts";

function assertUsageError(fn: () => unknown, pattern: RegExp, what: string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof UsageError, `${what}: got ${err}`);
    assert.match(err.message, pattern, what);
    return true;
  }, what);
}

Deno.test("parseSize accepts plain bytes and binary K/M/G/T suffixes in either case", () => {
  const cases: [string, number][] = [
    ["0", 0],
    ["65536", 65536],
    ["64k", 64 * 1024],
    ["64K", 64 * 1024],
    ["1M", 1 << 20],
    ["1m", 1 << 20],
    ["2G", 2 * 1024 ** 3],
    ["1T", 1024 ** 4],
    ["1MiB", 1 << 20],
    ["4KB", 4096],
    ["512b", 512],
    [" 4k ", 4096],
  ];
  for (const [text, bytes] of cases) assert.equal(parseSize("msize", text), bytes, text);
});

Deno.test("parseSize rejects what is not a whole size, naming the option and examples", () => {
  for (const text of ["", "abc", "-1", "1.5M", "1P", "1 M", "0x10", "1e3", "M", "k64"]) {
    assertUsageError(() => parseSize("msize", text), /^--msize: .*not a size.*64K/, text);
  }
});

Deno.test("parseSize rejects sizes beyond what a number can hold exactly", () => {
  assertUsageError(() => parseSize("size", "99999999999T"), /--size: .*too large/, "huge");
  assertUsageError(() => parseSize("size", "9".repeat(20)), /--size: .*too large/, "20 nines");
});

Deno.test("parseSeconds accepts whole and fractional seconds within the bounds", () => {
  assert.equal(parseSeconds("timeout", "10", 1), 10);
  assert.equal(parseSeconds("timeout", "2.5", 1), 2.5);
  assert.equal(parseSeconds("timeout", "0.1", 0.1), 0.1);
  assert.equal(parseSeconds("timeout", "86400", 1), 86_400);
  assert.equal(parseSeconds("timeout", "30", 1, 30), 30);
});

Deno.test("parseSeconds rejects empty, non-numeric and out-of-range values", () => {
  for (const text of ["", "  ", "abc", "-1", "0", "0.5", "Infinity", "NaN", "86401", "10s"]) {
    assertUsageError(
      () => parseSeconds("timeout", text, 1),
      /^--timeout: .*not a number of seconds from 1 to 86400/,
      text,
    );
  }
  assertUsageError(() => parseSeconds("wait", "31", 1, 30), /from 1 to 30/, "custom max");
});

Deno.test("parseSeconds rejects hexadecimal, as parseInteger and parseSize do", () => {
  // Number("0x10") is 16: without a check of the text's form, "--timeout 0x10" means 16 s.
  assertUsageError(() => parseSeconds("timeout", "0x10", 1), /--timeout/, "0x10");
});

Deno.test("parseInteger accepts whole numbers within the bounds", () => {
  assert.equal(parseInteger("uid", "0", 0, 10), 0);
  assert.equal(parseInteger("uid", "42", 0, 100), 42);
  assert.equal(parseInteger("uid", " 42 ", 0, 100), 42);
  assert.equal(parseInteger("uid", "4294967294", 0, 0xfffffffe), 0xfffffffe);
});

Deno.test("parseInteger rejects signs, fractions, other bases and values out of range", () => {
  for (const text of ["", "-1", "+5", "1.5", "abc", "0x10", "1e3", "4294967295", "1 2"]) {
    assertUsageError(
      () => parseInteger("uid", text, 0, 0xfffffffe),
      /^--uid: .*not a whole number from 0 to 4294967294/,
      text,
    );
  }
  assertUsageError(() => parseInteger("count", "3", 5, 10), /from 5 to 10/, "below min");
});

Deno.test("openOptions without options gives only the default 10 s timeout and --auth auto", () => {
  assert.deepEqual(openOptions({}), { timeoutMs: 10_000, auth: "auto" });
});

Deno.test("openOptions converts every server option", () => {
  assert.deepEqual(openOptions({ uname: "bob", uid: "1000", msize: "64k", timeout: "2.5" }), {
    uname: "bob",
    uid: 1000,
    msize: 65536,
    timeoutMs: 2500,
    auth: "auto",
  });
  assert.deepEqual(
    openOptions({ auth: "none", "munge-socket": "../munge/munge.socket.2", privport: true }),
    {
      timeoutMs: 10_000,
      auth: "none",
      mungeSocket: "../munge/munge.socket.2",
      privilegedPort: true,
    },
  );
  assert.equal(openOptions({ auth: "munge" }).auth, "munge");
  assert.equal(openOptions({ msize: "4096" }).msize, 4096);
  assert.equal(openOptions({ msize: "64M" }).msize, 64 << 20);
  assert.equal(openOptions({ timeout: "1" }).timeoutMs, 1000);
});

Deno.test("openOptions rejects an empty uname, a bad uid, msize outside 4K..64M and short timeouts", () => {
  assertUsageError(() => openOptions({ uname: "" }), /--uname/, "empty uname");
  assertUsageError(() => openOptions({ uid: "root" }), /--uid/, "named uid");
  assertUsageError(() => openOptions({ uid: "-1" }), /--uid/, "negative uid");
  assertUsageError(() => openOptions({ msize: "4095" }), /--msize: .*4K\.\.64M/, "4095");
  assertUsageError(() => openOptions({ msize: "65M" }), /--msize: .*4K\.\.64M/, "65M");
  assertUsageError(() => openOptions({ msize: "lots" }), /--msize/, "lots");
  assertUsageError(() => openOptions({ timeout: "0.5" }), /--timeout/, "0.5 s");
  assertUsageError(() => openOptions({ timeout: "forever" }), /--timeout/, "forever");
  assertUsageError(() => openOptions({ auth: "kerberos" }), /--auth: .*auto, munge, none/, "auth");
  assertUsageError(() => openOptions({ "munge-socket": "" }), /--munge-socket/, "empty socket");
});

Deno.test("parse turns unknown options and missing values into usage errors", () => {
  const { values, positionals: rest } = parse(["--msize", "1M", "host:/img"], serverOptions);
  assert.equal(values.msize, "1M");
  assert.deepEqual(rest, ["host:/img"]);
  assertUsageError(() => parse(["--bogus"], serverOptions), /unknown option --bogus/, "bogus");
  assertUsageError(() => parse(["--msize"], serverOptions), /msize/, "missing value");
});

Deno.test("positionals insists on exactly the named arguments", () => {
  assert.deepEqual(positionals(["a", "b"], ["SPEC", "DEVICE"]), ["a", "b"]);
  assertUsageError(() => positionals(["a"], ["SPEC", "DEVICE"]), /missing DEVICE/, "too few");
  assertUsageError(
    () => positionals(["a", "b", "c"], ["SPEC", "DEVICE"]),
    /unexpected.*"c"/,
    "many",
  );
});

Deno.test("resilience options: --rw takes one SPEC, give-up and sha256 are checked", () => {
  assert.throws(() => resilientOptions({ rw: true }, 2), UsageError);
  assert.equal(resilientOptions({ rw: true }, 1).writable, true);
  assert.equal(resilientOptions({ "give-up-after": "2.5" }, 3).giveUpAfterMs, 2500);
  assert.throws(() => resilientOptions({ "give-up-after": "0" }, 1), UsageError);
  assert.throws(() => resilientOptions({ sha256: "abc" }, 1), UsageError);
  const sha = "AB".repeat(32);
  assert.equal(resilientOptions({ sha256: sha }, 2).sha256, sha.toLowerCase());
  assert.equal(resilientOptions({}, 2).failback, false);
});

Deno.test("--readahead takes 0 or a power of two of KiB from 4 to 4096, read-only only", () => {
  assert.equal(resilientOptions({}, 1).readAhead, undefined);
  assert.equal(resilientOptions({ readahead: "0" }, 1).readAhead, undefined);
  assert.deepEqual(resilientOptions({ readahead: "256" }, 2).readAhead, {
    windowBytes: 256 * 1024,
    cacheBytes: READAHEAD_CACHE_BYTES,
  });
  for (const bad of ["2", "100", "8192", "-4", "x", "4.5"]) {
    assert.throws(() => resilientOptions({ readahead: bad }, 1), UsageError, bad);
  }
  assert.throws(
    () => resilientOptions({ readahead: "256", rw: true }, 1),
    /read-only images/,
  );
});

Deno.test("every command that names a server or listens shows the one ADDRESS table", () => {
  for (const { form, meaning } of ADDRESS_FORMS) {
    assert.match(
      addressHelp,
      new RegExp(`^  ${RegExp.escape(form)} +${RegExp.escape(meaning)}$`, "m"),
    );
  }
  const helps = { attachHelp, catHelp, exportHelp, infoHelp, proxyHelp };
  for (const [name, help] of Object.entries(helps)) {
    assert.ok(help.includes(addressHelp), `${name} shows the address forms`);
    assert.equal(help.split(addressHelp).length, 2, `${name} shows them once`);
  }
  assert.match(
    exportHelp,
    /--listen ADDRESS +where to listen \(ADDRESS below; default 127\.0\.0\.1:564\)/,
  );
  assert.match(proxyHelp, /--listen ADDRESS +where to listen \(ADDRESS below\)/);
});
