import assert from "node:assert/strict";
import { formatAddress } from "../../lib/address.ts";
import { ProtocolError } from "../../lib/errors.ts";
import { type ByteStream, transmissionFlags } from "../../lib/nbd/engine.ts";
import {
  answerOption,
  ClientFlag,
  decodeClientFlags,
  decodeInfoRequest,
  decodeOptionHeader,
  decodeOptionReply,
  encodeClientFlags,
  encodeGreeting,
  encodeInfoRequest,
  encodeOption,
  encodeOptionReply,
  type ExportDescription,
  GREETING_BYTES,
  IHAVEOPT,
  MAX_OPTION_BYTES,
  NBD_MAGIC,
  NbdInfo,
  NbdOption,
  NbdReply,
  OPTION_REPLY_MAGIC,
  type OptionReply,
} from "../../lib/nbd/handshake.ts";
import { NbdProxy, negotiate, parseListenAddress } from "../../lib/nbd/proxy.ts";
import {
  decodeSimpleReply,
  encodeRequest,
  NbdCommand,
  SIMPLE_REPLY_BYTES,
  TransmissionFlag,
} from "../../lib/nbd/wire.ts";
import { UsageError } from "../../lib/errors.ts";
import { memoryDuplexPair } from "./support/duplex.ts";
import { MemoryBackend } from "./support/memory_backend.ts";

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function fromHex(text: string): Uint8Array {
  const clean = text.replace(/\s+/g, "");
  return Uint8Array.from(clean.match(/../g)!, (pair) => parseInt(pair, 16));
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    all.set(part, at);
    at += part.length;
  }
  return all;
}

/** Split a byte string of option replies into replies. */
function replies(bytes: Uint8Array[]): OptionReply[] {
  const all = concat(...bytes);
  const out: OptionReply[] = [];
  for (let at = 0; at < all.length;) {
    const { reply, bytes: used } = decodeOptionReply(all.subarray(at));
    out.push(reply);
    at += used;
  }
  return out;
}

const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

const exported: ExportDescription = {
  name: "disk",
  description: "10.0.0.5:/srv/disk.img",
  sizeBytes: 0x1_0000_1000,
  transmissionFlags: TransmissionFlag.hasFlags | TransmissionFlag.readOnly |
    TransmissionFlag.canMultiConn,
  blockSize: { minimumBytes: 1, preferredBytes: 4096, maximumPayloadBytes: 32 * 1024 * 1024 },
};
const unnamed: ExportDescription = { ...exported, name: "" };
const bothFlags = ClientFlag.fixedNewstyle | ClientFlag.noZeroes;

Deno.test("constants match doc/proto.md", () => {
  assert.equal(NBD_MAGIC, 0x4e42444d41474943n);
  assert.equal(IHAVEOPT, 0x49484156454f5054n);
  assert.equal(OPTION_REPLY_MAGIC, 0x3e889045565a9n);
  assert.deepEqual(
    [
      NbdOption.exportName,
      NbdOption.abort,
      NbdOption.list,
      NbdOption.startTls,
      NbdOption.info,
      NbdOption.go,
      NbdOption.structuredReply,
    ],
    [1, 2, 3, 5, 6, 7, 8],
  );
  assert.deepEqual([NbdReply.ack, NbdReply.server, NbdReply.info], [1, 2, 3]);
  assert.deepEqual(
    [
      NbdReply.errUnsup,
      NbdReply.errPolicy,
      NbdReply.errInvalid,
      NbdReply.errPlatform,
      NbdReply.errTlsReqd,
      NbdReply.errUnknown,
    ],
    [0x80000001, 0x80000002, 0x80000003, 0x80000004, 0x80000005, 0x80000006],
  );
  assert.deepEqual(
    [NbdInfo.export, NbdInfo.name, NbdInfo.description, NbdInfo.blockSize],
    [0, 1, 2, 3],
  );
});

Deno.test("the greeting is NBDMAGIC, IHAVEOPT and FIXED_NEWSTYLE | NO_ZEROES", () => {
  const greeting = encodeGreeting();
  assert.equal(greeting.length, GREETING_BYTES);
  assert.equal(hex(greeting), "4e42444d41474943" + "49484156454f5054" + "0003");
  assert.equal(text(greeting.subarray(0, 16)), "NBDMAGICIHAVEOPT");
});

Deno.test("client flags: known bits decode, unknown bits and short input are protocol errors", () => {
  assert.equal(decodeClientFlags(fromHex("00000003")), 3);
  assert.equal(decodeClientFlags(fromHex("00000000")), 0);
  assert.equal(hex(encodeClientFlags(bothFlags)), "00000003");
  assert.throws(() => decodeClientFlags(fromHex("00000004")), ProtocolError);
  assert.throws(() => decodeClientFlags(fromHex("80000001")), ProtocolError);
  assert.throws(() => decodeClientFlags(fromHex("000000")), ProtocolError);
});

Deno.test("option requests: golden bytes, round trip, and bad headers", () => {
  const go = encodeOption(NbdOption.go, encodeInfoRequest({ name: "ab", requests: [3, 1] }));
  assert.equal(
    hex(go),
    "49484156454f5054" + "00000007" + "0000000c" + "00000002" + "6162" + "0002" + "0003" + "0001",
  );
  assert.deepEqual(decodeOptionHeader(go), { option: 7, length: 12 });
  assert.deepEqual(decodeInfoRequest(go.subarray(16)), { name: "ab", requests: [3, 1] });
  // Truncated header, wrong magic, oversized data length.
  assert.throws(() => decodeOptionHeader(go.subarray(0, 15)), ProtocolError);
  const badMagic = go.slice();
  badMagic[0] ^= 1;
  assert.throws(() => decodeOptionHeader(badMagic), /bad NBD option magic/);
  const huge = fromHex("49484156454f5054 00000007 ffffffff");
  assert.throws(() => decodeOptionHeader(huge), /4294967295 bytes, over the 16384-byte limit/);
  const justOver = encodeOption(NbdOption.go);
  new DataView(justOver.buffer).setUint32(12, MAX_OPTION_BYTES + 1);
  assert.throws(() => decodeOptionHeader(justOver), ProtocolError);
  new DataView(justOver.buffer).setUint32(12, MAX_OPTION_BYTES);
  assert.equal(decodeOptionHeader(justOver).length, MAX_OPTION_BYTES);
});

Deno.test("option replies: golden bytes and truncation", () => {
  const reply = encodeOptionReply(NbdOption.list, NbdReply.ack);
  assert.equal(hex(reply), "0003e889045565a9" + "00000003" + "00000001" + "00000000");
  const withData = encodeOptionReply(
    NbdOption.go,
    NbdReply.errUnsup,
    new TextEncoder().encode("x"),
  );
  assert.equal(hex(withData), "0003e889045565a9" + "00000007" + "80000001" + "00000001" + "78");
  assert.throws(() => decodeOptionReply(withData.subarray(0, 20)), /truncated/);
  assert.throws(() => decodeOptionReply(withData.subarray(0, 19)), /truncated/);
});

Deno.test("INFO/GO data that disagrees with its own lengths is invalid, not a crash", () => {
  const valid = encodeInfoRequest({ name: "disk", requests: [NbdInfo.blockSize] });
  assert.deepEqual(decodeInfoRequest(valid), { name: "disk", requests: [3] });
  assert.deepEqual(decodeInfoRequest(encodeInfoRequest({ name: "", requests: [] })), {
    name: "",
    requests: [],
  });
  for (let cut = 0; cut < valid.length; cut++) {
    assert.equal(decodeInfoRequest(valid.subarray(0, cut)), undefined, `cut at ${cut}`);
  }
  assert.equal(decodeInfoRequest(concat(valid, new Uint8Array(1))), undefined);
  const longName = valid.slice();
  new DataView(longName.buffer).setUint32(0, 0xffffffff);
  assert.equal(decodeInfoRequest(longName), undefined);
  const tooMany = valid.slice();
  new DataView(tooMany.buffer).setUint16(8, 0xffff);
  assert.equal(decodeInfoRequest(tooMany), undefined);
  const notUtf8 = fromHex("00000001 ff 0000");
  assert.equal(decodeInfoRequest(notUtf8), undefined);
  const overLimit = encodeInfoRequest({ name: "x".repeat(4097), requests: [] });
  assert.equal(decodeInfoRequest(overLimit), undefined);
});

Deno.test("NBD_OPT_EXPORT_NAME answers size and flags, padded unless NO_ZEROES", () => {
  const name = new TextEncoder().encode("disk");
  const short = answerOption(NbdOption.exportName, name, exported, bothFlags);
  assert.equal(short.next, "transmission");
  assert.equal(hex(concat(...short.reply)), "0000000100001000" + "0103");
  const padded = answerOption(NbdOption.exportName, name, exported, ClientFlag.fixedNewstyle);
  assert.equal(concat(...padded.reply).length, 10 + 124);
  assert.ok(concat(...padded.reply).subarray(10).every((b) => b === 0));
  // The default (empty) name also selects it; an unknown one can only be refused by closing.
  assert.equal(
    answerOption(NbdOption.exportName, new Uint8Array(0), exported, 3).next,
    "transmission",
  );
  const unknown = answerOption(NbdOption.exportName, new TextEncoder().encode("x"), exported, 3);
  assert.deepEqual([unknown.reply, unknown.next], [[], "close"]);
  assert.match(unknown.note!, /unknown export "x"/);
  // With no name configured, any name is the export.
  assert.equal(
    answerOption(NbdOption.exportName, new TextEncoder().encode("x"), unnamed, 3).next,
    "transmission",
  );
});

Deno.test("NBD_OPT_ABORT is acknowledged, then the connection closes", () => {
  const answer = answerOption(NbdOption.abort, new Uint8Array(3), exported, bothFlags);
  assert.equal(answer.next, "close");
  assert.deepEqual(replies(answer.reply), [{
    option: NbdOption.abort,
    type: NbdReply.ack,
    data: new Uint8Array(0),
  }]);
});

Deno.test("NBD_OPT_LIST names the one export, then ACK; data is invalid", () => {
  const answer = answerOption(NbdOption.list, new Uint8Array(0), exported, bothFlags);
  assert.equal(answer.next, "options");
  const [server, ack] = replies(answer.reply);
  assert.equal(server.type, NbdReply.server);
  assert.equal(
    hex(server.data),
    "00000004" + hex(new TextEncoder().encode("disk10.0.0.5:/srv/disk.img")),
  );
  assert.equal(ack.type, NbdReply.ack);
  const bad = replies(answerOption(NbdOption.list, new Uint8Array(1), exported, 3).reply);
  assert.deepEqual(bad.map((r) => r.type), [NbdReply.errInvalid]);
});

Deno.test("NBD_OPT_GO: INFO_EXPORT, INFO_BLOCK_SIZE, NAME and DESCRIPTION when asked, ACK", () => {
  const data = encodeInfoRequest({
    name: "",
    requests: [NbdInfo.name, NbdInfo.description, NbdInfo.blockSize, 77],
  });
  const answer = answerOption(NbdOption.go, data, exported, bothFlags);
  assert.equal(answer.next, "transmission");
  const got = replies(answer.reply);
  assert.ok(got.every((r) => r.option === NbdOption.go));
  assert.deepEqual(got.map((r) => r.type), [
    NbdReply.info,
    NbdReply.info,
    NbdReply.info,
    NbdReply.info,
    NbdReply.ack,
  ]);
  assert.equal(hex(got[0].data), "0000" + "0000000100001000" + "0103");
  assert.equal(hex(got[1].data), "0003" + "00000001" + "00001000" + "02000000");
  assert.equal(hex(got[2].data), "0001" + hex(new TextEncoder().encode("disk")));
  assert.equal(text(got[3].data.subarray(2)), "10.0.0.5:/srv/disk.img");
  assert.equal(got[4].data.length, 0);
});

Deno.test("NBD_OPT_INFO answers like GO but stays in option haggling", () => {
  const data = encodeInfoRequest({ name: "disk", requests: [] });
  const answer = answerOption(NbdOption.info, data, exported, bothFlags);
  assert.equal(answer.next, "options");
  const got = replies(answer.reply);
  assert.deepEqual(got.map((r) => r.type), [NbdReply.info, NbdReply.info, NbdReply.ack]);
  const infoType = (r: OptionReply) => new DataView(r.data.buffer, r.data.byteOffset).getUint16(0);
  assert.deepEqual(got.slice(0, 2).map(infoType), [NbdInfo.export, NbdInfo.blockSize]);
  assert.equal(got[2].data.length, 0);
});

Deno.test("INFO/GO for an unknown name is ERR_UNKNOWN; malformed data is ERR_INVALID", () => {
  for (const option of [NbdOption.info, NbdOption.go]) {
    const unknown = answerOption(
      option,
      encodeInfoRequest({ name: "other", requests: [] }),
      exported,
      bothFlags,
    );
    assert.equal(unknown.next, "options");
    const [reply] = replies(unknown.reply);
    assert.equal(reply.type, NbdReply.errUnknown);
    assert.match(text(reply.data), /no export named "other"/);
    const malformed = answerOption(option, fromHex("00000009 00"), exported, bothFlags);
    assert.equal(malformed.next, "options");
    assert.deepEqual(replies(malformed.reply).map((r) => r.type), [NbdReply.errInvalid]);
  }
  // With no name configured, every name is the export.
  const any = answerOption(
    NbdOption.go,
    encodeInfoRequest({ name: "other", requests: [] }),
    unnamed,
    bothFlags,
  );
  assert.equal(any.next, "transmission");
});

Deno.test("structured replies, TLS, meta contexts and unknown options are ERR_UNSUP", () => {
  for (const option of [NbdOption.structuredReply, NbdOption.startTls, 9, 10, 4, 99, 0xffffffff]) {
    const answer = answerOption(option, new Uint8Array(0), exported, bothFlags);
    assert.equal(answer.next, "options", `option ${option}`);
    const [reply] = replies(answer.reply);
    assert.equal(reply.option, option);
    assert.equal(reply.type, NbdReply.errUnsup);
  }
});

Deno.test("transmissionFlags for a shared backend advertise CAN_MULTI_CONN", () => {
  const ro = transmissionFlags({ readOnly: true }, { canMultiConn: true });
  assert.equal(ro, TransmissionFlag.hasFlags | TransmissionFlag.readOnly | (1 << 8));
});

/**
 * A stream that plays a client script: reads hand out `script` (in small
 * pieces, to exercise partial reads) and then EOF; writes are collected.
 */
class ScriptedStream implements ByteStream {
  readonly written: Uint8Array[] = [];
  #at = 0;
  constructor(readonly script: Uint8Array, readonly pieceBytes = 7) {}
  read(p: Uint8Array): Promise<number | null> {
    if (this.#at >= this.script.length) return Promise.resolve(null);
    const n = Math.min(p.length, this.pieceBytes, this.script.length - this.#at);
    p.set(this.script.subarray(this.#at, this.#at + n));
    this.#at += n;
    return Promise.resolve(n);
  }
  write(p: Uint8Array): Promise<number> {
    this.written.push(p.slice());
    return Promise.resolve(p.length);
  }
  close(): void {}
}

/** Run the server's negotiate() against a client script; what it ended in and wrote. */
async function runNegotiate(
  clientBytes: Uint8Array,
  exportDescription: ExportDescription = exported,
): Promise<{ result: string; written: Uint8Array }> {
  const stream = new ScriptedStream(clientBytes);
  let result: string;
  try {
    result = await negotiate(stream, exportDescription);
  } catch (err) {
    result = err instanceof ProtocolError ? "protocol error" : `other error: ${err}`;
  }
  return { result, written: concat(...stream.written) };
}

/** Reads what the server wrote in reply to a plain memory stream (outgoing side). */
async function drain(stream: ByteStream): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const buffer = new Uint8Array(65536);
  for (;;) {
    const n = await stream.read(buffer).catch(() => null);
    if (n === null) break;
    chunks.push(buffer.slice(0, n));
  }
  return concat(...chunks);
}

const goSession = concat(
  encodeClientFlags(bothFlags),
  encodeOption(NbdOption.structuredReply),
  encodeOption(NbdOption.list),
  encodeOption(NbdOption.info, encodeInfoRequest({ name: "nope", requests: [] })),
  encodeOption(NbdOption.go, encodeInfoRequest({ name: "disk", requests: [NbdInfo.blockSize] })),
);

Deno.test("negotiate: a full session of options ends in transmission", async () => {
  const [server, client] = memoryDuplexPair();
  await client.write(goSession);
  const result = await negotiate(server, exported);
  assert.equal(result, "transmission");
  server.close();
  const out = await drain(client);
  assert.equal(hex(out.subarray(0, GREETING_BYTES)), hex(encodeGreeting()));
  const got = replies([out.subarray(GREETING_BYTES)]);
  assert.deepEqual(got.map((r) => [r.option, r.type]), [
    [NbdOption.structuredReply, NbdReply.errUnsup],
    [NbdOption.list, NbdReply.server],
    [NbdOption.list, NbdReply.ack],
    [NbdOption.info, NbdReply.errUnknown],
    [NbdOption.go, NbdReply.info],
    [NbdOption.go, NbdReply.info],
    [NbdOption.go, NbdReply.ack],
  ]);
});

Deno.test("negotiate: every truncated prefix of a session ends quietly as closed", async () => {
  // Cutting before the GO is complete must never enter transmission, throw or hang.
  for (let cut = 0; cut < goSession.length; cut++) {
    const { result } = await runNegotiate(goSession.subarray(0, cut));
    assert.equal(result, "closed", `cut at ${cut}`);
  }
  assert.equal((await runNegotiate(goSession)).result, "transmission");
});

Deno.test("negotiate: oversized, bad-magic and bad-flag input drops the connection", async () => {
  const flags = encodeClientFlags(bothFlags);
  const oversized = concat(flags, fromHex("49484156454f5054 00000007 7fffffff"));
  assert.equal((await runNegotiate(oversized)).result, "protocol error");
  const unknownOversized = concat(flags, fromHex("49484156454f5054 00001234 00100000"));
  assert.equal((await runNegotiate(unknownOversized)).result, "protocol error");
  const badMagic = concat(flags, fromHex("4948415645000000 00000007 00000000"));
  assert.equal((await runNegotiate(badMagic)).result, "protocol error");
  assert.equal((await runNegotiate(encodeClientFlags(0x10))).result, "protocol error");
});

Deno.test("negotiate: ABORT is acknowledged and closes; plain newstyle may only EXPORT_NAME", async () => {
  const abort = await runNegotiate(
    concat(encodeClientFlags(bothFlags), encodeOption(NbdOption.abort)),
  );
  assert.equal(abort.result, "closed");
  assert.deepEqual(
    replies([abort.written.subarray(GREETING_BYTES)]).map((r) => r.type),
    [NbdReply.ack],
  );
  const plainList = await runNegotiate(concat(encodeClientFlags(0), encodeOption(NbdOption.list)));
  assert.equal(plainList.result, "closed");
  assert.equal(plainList.written.length, GREETING_BYTES);
  const plainExport = await runNegotiate(
    concat(encodeClientFlags(0), encodeOption(NbdOption.exportName)),
  );
  assert.equal(plainExport.result, "transmission");
  assert.equal(plainExport.written.length, GREETING_BYTES + 10 + 124);
});

Deno.test("negotiate: random bytes after the flags never crash it", async () => {
  let seed = 99;
  const next = () => (seed = (seed * 1103515245 + 12345) >>> 0);
  for (let round = 0; round < 200; round++) {
    const junk = Uint8Array.from({ length: next() % 64 }, () => next() & 0xff);
    // Half the rounds start with a valid option magic so the length and option paths are hit.
    const body = round % 2 ? concat(fromHex("49484156454f5054"), junk) : junk;
    const { result } = await runNegotiate(concat(encodeClientFlags(bothFlags), body));
    assert.ok(["closed", "protocol error", "transmission"].includes(result), result);
  }
});

Deno.test("listen addresses parse and format", () => {
  assert.deepEqual(parseListenAddress("unix:/run/x.sock"), { kind: "unix", path: "/run/x.sock" });
  assert.deepEqual(parseListenAddress("127.0.0.1:10809"), {
    kind: "tcp",
    host: "127.0.0.1",
    port: 10809,
  });
  assert.deepEqual(parseListenAddress("[::1]:10809"), { kind: "tcp", host: "::1", port: 10809 });
  assert.deepEqual(parseListenAddress(":10809"), { kind: "tcp", host: "0.0.0.0", port: 10809 });
  assert.equal(formatAddress({ kind: "tcp", host: "::1", port: 5 }), "[::1]:5");
  for (const bad of ["unix:", "10809", "host:0", "host:70000", "a b:1"]) {
    assert.throws(() => parseListenAddress(bad), UsageError, bad);
  }
});

/** A minimal NBD client over a real socket: GO, then READs. */
class TestClient {
  #buffer: Uint8Array = new Uint8Array(0);
  constructor(readonly conn: Deno.Conn) {}

  async readExactly(length: number): Promise<Uint8Array> {
    while (this.#buffer.length < length) {
      const chunk = new Uint8Array(65536);
      const n = await this.conn.read(chunk);
      if (n === null) throw new Error(`EOF with ${this.#buffer.length} of ${length} bytes`);
      this.#buffer = concat(this.#buffer, chunk.subarray(0, n));
    }
    const out = this.#buffer.slice(0, length);
    this.#buffer = this.#buffer.slice(length);
    return out;
  }

  async go(name = ""): Promise<OptionReply[]> {
    await this.readExactly(GREETING_BYTES);
    await this.conn.write(concat(
      encodeClientFlags(bothFlags),
      encodeOption(NbdOption.go, encodeInfoRequest({ name, requests: [] })),
    ));
    const got: OptionReply[] = [];
    for (;;) {
      const header = await this.readExactly(20);
      const length = new DataView(header.buffer).getUint32(16);
      const { reply } = decodeOptionReply(concat(header, await this.readExactly(length)));
      got.push(reply);
      if (reply.type !== NbdReply.info) return got;
    }
  }

  async read(offset: number, length: number, cookie: bigint): Promise<Uint8Array> {
    await this.conn.write(
      encodeRequest({ flags: 0, type: NbdCommand.read, cookie, offset: BigInt(offset), length }),
    );
    const reply = decodeSimpleReply(await this.readExactly(SIMPLE_REPLY_BYTES));
    assert.equal(reply.cookie, cookie);
    assert.equal(reply.error, 0);
    return await this.readExactly(length);
  }
}

Deno.test({
  name: "NbdProxy serves many clients at once from one backend; a bad one is dropped alone",
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "9nbd-proxy-" });
    const data = Uint8Array.from({ length: 1 << 20 }, (_, i) => (i * 7 + (i >> 9)) & 0xff);
    const backend = new MemoryBackend(data.slice(), { readOnly: true });
    const proxy = await NbdProxy.listen({
      backend,
      listen: { kind: "unix", path: `${dir}/nbd.sock` },
      name: "disk",
    });
    const path = `${dir}/nbd.sock`;
    try {
      // A client that sends an absurd option length is dropped...
      const bad = await Deno.connect({ transport: "unix", path });
      const badClient = new TestClient(bad);
      await badClient.readExactly(GREETING_BYTES);
      await bad.write(concat(
        encodeClientFlags(bothFlags),
        fromHex("49484156454f5054 00000007 ffffffff"),
      ));
      const eof = await bad.read(new Uint8Array(16));
      assert.equal(eof, null);
      bad.close();

      // ...while eight others negotiate and read correct bytes concurrently.
      const clients = await Promise.all(
        Array.from(
          { length: 8 },
          async () => new TestClient(await Deno.connect({ transport: "unix", path })),
        ),
      );
      await Promise.all(clients.map(async (client, c) => {
        const got = await client.go(c % 2 ? "disk" : "");
        assert.equal(got.at(-1)!.type, NbdReply.ack);
        for (let i = 0; i < 16; i++) {
          const offset = ((c * 131 + i * 4099) * 17) % (data.length - 8192);
          const bytes = await client.read(offset, 1 + ((i * 997) % 8192), BigInt(c * 100 + i));
          assert.deepEqual(bytes, data.subarray(offset, offset + bytes.length));
        }
      }));
      // A wrong name gets ERR_UNKNOWN and the client may ask again.
      const wrong = new TestClient(await Deno.connect({ transport: "unix", path }));
      assert.equal((await wrong.go("nope")).at(-1)!.type, NbdReply.errUnknown);
      wrong.conn.close();
      assert.equal(proxy.stats.serving, 8);
      assert.equal(proxy.stats.dropped, 1);
      for (const client of clients) client.conn.close();
    } finally {
      await proxy.close();
      await Deno.remove(dir, { recursive: true });
    }
    assert.equal(proxy.stats.serving, 0);
  },
});
