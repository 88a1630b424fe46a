/**
 * The one address grammar: --listen of export and proxy, a SPEC's server,
 * the formatter, the README's table, and dialing and listening per kind.
 */

import assert from "node:assert/strict";
import {
  type Address,
  ADDRESS_FORMS,
  dial,
  formatAddress,
  listen,
  LISTEN_FORMS,
  NBD_PORT,
  P9_PORT,
  readAddress,
} from "../../lib/address.ts";
import { exportCommand } from "../../lib/cli/export.ts";
import { proxy } from "../../lib/cli/proxy.ts";
import { ConnectionError, UsageError } from "../../lib/errors.ts";
import { parseListenAddress as parseProxyListen } from "../../lib/nbd/proxy.ts";
import { parseListenAddress as parseExportListen } from "../../lib/server/export.ts";
import { parseSpec } from "../../lib/spec.ts";

/** `--listen` text → the address, with `PORT` standing for the command's default port. */
const listenForms: [string, (port: number) => Address][] = [
  ["127.0.0.1:5640", () => ({ kind: "tcp", host: "127.0.0.1", port: 5640 })],
  ["127.0.0.1", (port) => ({ kind: "tcp", host: "127.0.0.1", port })],
  ["localhost", (port) => ({ kind: "tcp", host: "localhost", port })],
  ["files.example.com:1", () => ({ kind: "tcp", host: "files.example.com", port: 1 })],
  ["host:65535", () => ({ kind: "tcp", host: "host", port: 65535 })],
  [":5640", () => ({ kind: "tcp", host: "0.0.0.0", port: 5640 })],
  ["[::1]:5640", () => ({ kind: "tcp", host: "::1", port: 5640 })],
  ["[::1]", (port) => ({ kind: "tcp", host: "::1", port })],
  ["[::]:9", () => ({ kind: "tcp", host: "::", port: 9 })],
  ["[fe80::1%eth0]", (port) => ({ kind: "tcp", host: "fe80::1%eth0", port })],
  ["[::ffff:10.0.0.1]:7", () => ({ kind: "tcp", host: "::ffff:10.0.0.1", port: 7 })],
  ["unix:/run/9p.sock", () => ({ kind: "unix", path: "/run/9p.sock" })],
  ["unix:./9p.sock", () => ({ kind: "unix", path: "./9p.sock" })],
  ["unix:../run/x.sock", () => ({ kind: "unix", path: "../run/x.sock" })],
];

/** Malformed --listen text → what the error must say. */
const badListens: [string, RegExp][] = [
  ["", /no address given/],
  [":", /port ""/],
  ["host:", /port ""/],
  ["host:0", /port "0"/],
  ["host:65536", /port "65536"/],
  ["host:70000", /port "70000"/],
  ["host:-1", /port "-1"/],
  ["host:http", /port "http"/],
  ["10809", /"10809" is not a host name \(a port alone is written :10809\)/],
  ["::1", /brackets/],
  ["::1:564", /brackets/],
  ["fe80::1:10809", /brackets/],
  ["host:1:2", /brackets/],
  ["[::1", /unclosed \[/],
  ["[::1]x", /"x" after the IPv6 address/],
  ["[::1]:", /port ""/],
  ["[host]:5", /"host" is not an IPv6 address/],
  ["[10.0.0.1]:5", /not an IPv6 address/],
  ["a b:1", /"a b" is not a host name/],
  ["-host:1", /"-host" is not a host name/],
  ["host-:1", /"host-" is not a host name/],
  ["unix:", /Unix socket needs a path/],
  ["unix:run/9p.sock", /absolute or start with \.\//],
  ["unix:/run/\0x", /NUL/],
  [`unix:/${"x".repeat(107)}`, /at most 107 bytes/],
];

const commands = [
  { name: "export", parse: parseExportListen, defaultPort: P9_PORT },
  { name: "proxy", parse: parseProxyListen, defaultPort: NBD_PORT },
];

for (const { name, parse, defaultPort } of commands) {
  Deno.test(`${name} --listen accepts every form of the grammar (default port ${defaultPort})`, () => {
    for (const [text, expected] of listenForms) {
      assert.deepEqual(parse(text), expected(defaultPort), text);
    }
  });

  Deno.test(`${name} --listen refuses malformed addresses, naming the fault and the forms`, () => {
    for (const [text, why] of badListens) {
      assert.throws(() => parse(text), (err: unknown) => {
        assert.ok(err instanceof UsageError, `${JSON.stringify(text)}: got ${err}`);
        assert.ok(err.message.startsWith(`bad --listen "${text}": `), err.message);
        assert.match(err.message, why);
        assert.ok(err.message.endsWith(`(expected ${LISTEN_FORMS})`), err.message);
        return true;
      }, text);
    }
  });
}

Deno.test("export and proxy accept the same --listen forms and refuse the same others", () => {
  const texts = [...listenForms.map(([t]) => t), ...badListens.map(([t]) => t)];
  for (const text of texts) {
    const outcome = (parse: (t: string) => Address, port: number) => {
      try {
        const address = parse(text);
        // The one allowed difference: the default port.
        return address.kind === "tcp" && address.port === port
          ? { ...address, port: "default" }
          : address;
      } catch (err) {
        assert.ok(err instanceof UsageError);
        return `refused: ${err.message.replaceAll(`[::1]:${port}`, "[::1]:PORT")}`;
      }
    };
    assert.deepEqual(
      outcome(parseExportListen, P9_PORT),
      outcome(parseProxyListen, NBD_PORT),
      text,
    );
  }
});

Deno.test("the export and proxy commands refuse a bad --listen with the same usage error", async () => {
  const out = () => {};
  for (const [text] of badListens) {
    const errors: string[] = [];
    for (
      const run of [
        () => exportCommand(["--listen", text, "/nonexistent.img"], out),
        () => proxy(["127.0.0.1:/img", "--listen", text], out),
      ]
    ) {
      await assert.rejects(run(), (err: unknown) => {
        assert.ok(err instanceof UsageError, `${JSON.stringify(text)}: got ${err}`);
        errors.push(
          err.message.replaceAll(String(P9_PORT), "PORT").replaceAll(
            String(NBD_PORT),
            "PORT",
          ),
        );
        return true;
      });
    }
    assert.equal(errors[0], errors[1], text);
  }
});

Deno.test("a SPEC's server is read by the same grammar as --listen", () => {
  for (const [text, expected] of listenForms) {
    if (text.startsWith(":")) continue; // Listening only.
    assert.deepEqual(parseSpec(`${text}:/img`).address, expected(P9_PORT), text);
    assert.deepEqual(parseSpec(`${text}:/img`).address, parseExportListen(text), text);
  }
  for (const [text] of badListens) {
    assert.throws(() => parseSpec(`${text}:/img`), UsageError, text);
  }
  assert.throws(() => parseSpec(":5640:/img"), /no server given/, ":PORT is for listening only");
  assert.deepEqual(readAddress(":5640", { defaultPort: P9_PORT, listening: false }), {
    reason: "no server given",
  });
});

Deno.test("formatAddress writes what reads back, leaving out only a default port", () => {
  for (const [text, expected] of listenForms) {
    for (const port of [P9_PORT, NBD_PORT]) {
      const address = expected(port);
      const rules = { defaultPort: port, listening: true };
      for (const written of [formatAddress(address), formatAddress(address, port)]) {
        assert.deepEqual(readAddress(written, rules), { address }, `${text} as ${written}`);
      }
    }
  }
  assert.equal(formatAddress({ kind: "tcp", host: "::1", port: 564 }), "[::1]:564");
  assert.equal(formatAddress({ kind: "tcp", host: "::1", port: 564 }, P9_PORT), "[::1]");
  assert.equal(formatAddress({ kind: "tcp", host: "h", port: 564 }, NBD_PORT), "h:564");
  assert.equal(formatAddress({ kind: "unix", path: "/s" }, P9_PORT), "unix:/s");
});

Deno.test("the README's address table is ADDRESS_FORMS, word for word", async () => {
  const readme = await Deno.readTextFile(new URL("../../README.md", import.meta.url));
  const rows = [...readme.matchAll(/^\| `([^`]+)` +\| (.+?) +\|$/gm)]
    .map(([, form, meaning]) => ({ form, meaning }))
    .filter((row) => ADDRESS_FORMS.some((f) => f.form === row.form));
  assert.deepEqual(rows, ADDRESS_FORMS.map(({ form, meaning }) => ({ form, meaning })));
  assert.ok(LISTEN_FORMS.includes(":PORT") && LISTEN_FORMS.includes("unix:SOCKET"));
});

Deno.test("listen on TCP port 0 binds a free port, and dial reaches it with Nagle off", async () => {
  const listening = await listen({ kind: "tcp", host: "127.0.0.1", port: 0 });
  try {
    assert.equal(listening.address.kind, "tcp");
    const port = (listening.address as { port: number }).port;
    assert.ok(port > 0, "the real port");
    const [client, server] = await Promise.all([
      dial(listening.address, 5_000),
      listening.accept(),
    ]);
    await client.write(new Uint8Array([7]));
    const byte = new Uint8Array(1);
    assert.equal(await server.read(byte), 1);
    assert.equal(byte[0], 7);
    client.close();
    server.close();
    await assert.rejects(
      listen(listening.address),
      Deno.errors.AddrInUse,
      "a bind failure rejects",
    );
  } finally {
    await listening.close();
    await listening.close(); // Twice is fine.
  }
});

Deno.test("a Unix listener refuses a path held by another file and removes its socket on close", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const taken = `${dir}/file`;
    await Deno.writeTextFile(taken, "mine");
    await assert.rejects(listen({ kind: "unix", path: taken }));
    assert.equal(await Deno.readTextFile(taken), "mine", "a file that is not a socket is kept");

    const path = `${dir}/9p.sock`;
    const listening = await listen({ kind: "unix", path });
    assert.deepEqual(listening.address, { kind: "unix", path });
    const [client, server] = await Promise.all([
      dial(listening.address, 5_000),
      listening.accept(),
    ]);
    client.close();
    server.close();
    await listening.close();
    assert.equal(await Deno.lstat(path).catch(() => undefined), undefined);

    await assert.rejects(dial({ kind: "unix", path }, 5_000), (err: unknown) => {
      assert.ok(err instanceof ConnectionError, `got ${err}`);
      assert.match(err.message, /^connect: no such socket or host/);
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
