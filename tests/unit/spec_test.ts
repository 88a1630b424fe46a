/** parseSpec and formatSpec: every accepted form, and every rejection naming the accepted forms. */

import assert from "node:assert/strict";
import { UsageError } from "../../lib/errors.ts";
import { formatSpec, parseSpec, type Spec, SPEC_FORMS } from "../../lib/spec.ts";

const accepted: [string, Omit<Spec, "text">, string][] = [
  [
    "host:/srv/img",
    { address: { kind: "tcp", host: "host", port: 564 }, aname: "/srv/img", walk: [] },
    "host:/srv/img",
  ],
  [
    "files.example.com:5640:/srv/img",
    {
      address: { kind: "tcp", host: "files.example.com", port: 5640 },
      aname: "/srv/img",
      walk: [],
    },
    "files.example.com:5640:/srv/img",
  ],
  [
    "10.0.0.1:/img",
    { address: { kind: "tcp", host: "10.0.0.1", port: 564 }, aname: "/img", walk: [] },
    "10.0.0.1:/img",
  ],
  [
    "127.0.0.1:1:/img",
    { address: { kind: "tcp", host: "127.0.0.1", port: 1 }, aname: "/img", walk: [] },
    "127.0.0.1:1:/img",
  ],
  [
    "host:65535:/img",
    { address: { kind: "tcp", host: "host", port: 65535 }, aname: "/img", walk: [] },
    "host:65535:/img",
  ],
  [
    "host:564:/img",
    { address: { kind: "tcp", host: "host", port: 564 }, aname: "/img", walk: [] },
    "host:/img",
  ],
  [
    "[::1]:/srv/img",
    { address: { kind: "tcp", host: "::1", port: 564 }, aname: "/srv/img", walk: [] },
    "[::1]:/srv/img",
  ],
  [
    "[fe80::1]:5640:/srv/img",
    { address: { kind: "tcp", host: "fe80::1", port: 5640 }, aname: "/srv/img", walk: [] },
    "[fe80::1]:5640:/srv/img",
  ],
  [
    "[fe80::1%eth0]:/img",
    { address: { kind: "tcp", host: "fe80::1%eth0", port: 564 }, aname: "/img", walk: [] },
    "[fe80::1%eth0]:/img",
  ],
  [
    "[::ffff:10.0.0.1]:/img",
    { address: { kind: "tcp", host: "::ffff:10.0.0.1", port: 564 }, aname: "/img", walk: [] },
    "[::ffff:10.0.0.1]:/img",
  ],
  [
    "unix:/run/9p.sock:/srv/img",
    { address: { kind: "unix", path: "/run/9p.sock" }, aname: "/srv/img", walk: [] },
    "unix:/run/9p.sock:/srv/img",
  ],
  [
    "host:/export//dir/img",
    {
      address: { kind: "tcp", host: "host", port: 564 },
      aname: "/export",
      walk: ["dir", "img"],
    },
    "host:/export//dir/img",
  ],
  [
    "[::1]:5640:/export//a//b/",
    { address: { kind: "tcp", host: "::1", port: 5640 }, aname: "/export", walk: ["a", "b"] },
    "[::1]:5640:/export//a/b",
  ],
  [
    "unix:/tmp/s:/export//img",
    { address: { kind: "unix", path: "/tmp/s" }, aname: "/export", walk: ["img"] },
    "unix:/tmp/s:/export//img",
  ],
  [
    "host://img",
    { address: { kind: "tcp", host: "host", port: 564 }, aname: "/", walk: ["img"] },
    "host:///img",
  ],
];

for (const [text, expected, canonical] of accepted) {
  Deno.test(`"${text}" is accepted and written back as "${canonical}"`, () => {
    const spec = parseSpec(text);
    assert.deepEqual(spec, { ...expected, text });
    assert.equal(formatSpec(spec), canonical);
    const again = parseSpec(canonical);
    assert.deepEqual({ ...again, text: "" }, { ...spec, text: "" }, "canonical form re-parses");
  });
}

const rejected: [string, RegExp][] = [
  ["", /empty SPEC/],
  ["host", /missing :\/PATH/],
  ["host:", /absolute/],
  ["host:srv/img", /absolute/],
  ["host:5640:srv/img", /absolute/],
  ["host:0:/img", /port "0"/],
  ["host:65536:/img", /port "65536"/],
  ["host:abc:/img", /port "abc"/],
  ["host:-1:/img", /port "-1"/],
  ["[::1]:0:/img", /port "0"/],
  ["[::1]:99999:/img", /port "99999"/],
  ["::1:/img", /brackets/],
  ["fe80::1:/img", /brackets/],
  ["2001:db8::1:564:/img", /brackets/],
  ["[::1", /unclosed/],
  ["[::1]", /PATH/],
  ["[::1]/img", /PATH/],
  ["[::1]:img", /./],
  ["[host]:/img", /not an IPv6 address/],
  ["[10.0.0.1]:/img", /not an IPv6 address/],
  ["unix:", /Unix socket/],
  ["unix:/run/9p.sock", /Unix socket/],
  ["unix:run/9p.sock:/img", /Unix socket/],
  ["-host:/img", /not a host name/],
  ["ho st:/img", /not a host name/],
  ["host:/export//", /nothing to walk/],
  ["host:/export////", /nothing to walk/],
  ["host:/export//..", /"\.\." is not allowed/],
  ["host:/export//a/../b", /"\.\." is not allowed/],
  ["host:/export//./img", /"\." is not allowed/],
  ["host:/img\0x", /NUL/],
  ["host:/export//a\0b", /NUL/],
];

for (const [text, why] of rejected) {
  Deno.test(`${JSON.stringify(text)} is rejected with a usage error showing the accepted forms`, () => {
    assert.throws(() => parseSpec(text), (err: unknown) => {
      assert.ok(err instanceof UsageError, `got ${err}`);
      assert.ok(err.message.includes(SPEC_FORMS), err.message);
      assert.ok(err.message.includes(`"${text}"`), "the message quotes the SPEC");
      assert.match(err.message, why);
      return true;
    });
  });
}

Deno.test("the accepted forms name every kind of server address", () => {
  for (const form of ["HOST[:PORT]:/PATH", "[IPV6][:PORT]:/PATH", "unix:SOCKET:/PATH", "//"]) {
    assert.ok(SPEC_FORMS.includes(form), form);
  }
});
