import assert from "node:assert/strict";
import { P9Error, ProtocolError, TimeoutError } from "../../lib/errors.ts";
import { errnoNumber } from "../../lib/errno.ts";
import {
  CommandFlag,
  commandName,
  decodeRequest,
  decodeSimpleReply,
  encodeRequest,
  encodeSimpleReply,
  NbdCommand,
  NbdError,
  nbdErrorFor,
  type NbdRequest,
  REQUEST_BYTES,
  REQUEST_MAGIC,
  SIMPLE_REPLY_BYTES,
  SIMPLE_REPLY_MAGIC,
  TransmissionFlag,
} from "../../lib/nbd/wire.ts";

/** Hex string of bytes, for readable golden comparisons. */
function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function fromHex(text: string): Uint8Array {
  const clean = text.replace(/\s+/g, "");
  return Uint8Array.from(clean.match(/../g)!, (pair) => parseInt(pair, 16));
}

// A WRITE with FUA, built by hand from doc/proto.md: magic, flags, type, cookie, offset, length.
const goldenWriteRequest = fromHex(`
  25609513
  0001
  0001
  0102030405060708
  0000000123456000
  00001000
`);

Deno.test("constants match the Linux uapi header and the protocol document", () => {
  assert.equal(REQUEST_MAGIC, 0x25609513);
  assert.equal(SIMPLE_REPLY_MAGIC, 0x67446698);
  assert.equal(REQUEST_BYTES, 28);
  assert.equal(SIMPLE_REPLY_BYTES, 16);
  assert.deepEqual(
    [
      NbdCommand.read,
      NbdCommand.write,
      NbdCommand.disc,
      NbdCommand.flush,
      NbdCommand.trim,
      NbdCommand.writeZeroes,
    ],
    [0, 1, 2, 3, 4, 6],
  );
  assert.equal(CommandFlag.fua, 1);
  assert.equal(TransmissionFlag.hasFlags, 1);
  assert.equal(TransmissionFlag.readOnly, 2);
  assert.equal(TransmissionFlag.sendFlush, 4);
  assert.equal(TransmissionFlag.sendFua, 8);
  assert.equal(TransmissionFlag.rotational, 16);
  assert.equal(TransmissionFlag.sendTrim, 32);
  assert.equal(TransmissionFlag.sendWriteZeroes, 64);
  assert.equal(TransmissionFlag.canMultiConn, 256);
});

Deno.test("a hand-built WRITE request decodes field by field", () => {
  assert.equal(goldenWriteRequest.length, REQUEST_BYTES);
  assert.deepEqual(decodeRequest(goldenWriteRequest), {
    flags: CommandFlag.fua,
    type: NbdCommand.write,
    cookie: 0x0102030405060708n,
    offset: 0x123456000n,
    length: 4096,
  });
});

Deno.test("the kernel's 32-bit type word with FUA (1 << 16) decodes as flags FUA, type WRITE", () => {
  const bytes = new Uint8Array(REQUEST_BYTES);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, REQUEST_MAGIC);
  view.setUint32(4, NbdCommand.write | (1 << 16));
  const request = decodeRequest(bytes);
  assert.equal(request.type, NbdCommand.write);
  assert.equal(request.flags, CommandFlag.fua);
});

Deno.test("encodeRequest produces the hand-built golden bytes", () => {
  const bytes = encodeRequest({
    flags: CommandFlag.fua,
    type: NbdCommand.write,
    cookie: 0x0102030405060708n,
    offset: 0x123456000n,
    length: 4096,
  });
  assert.equal(hex(bytes), hex(goldenWriteRequest));
});

Deno.test("a request decodes from the middle of a larger buffer without copying first", () => {
  const frame = new Uint8Array(5 + REQUEST_BYTES + 7).fill(0xee);
  frame.set(goldenWriteRequest, 5);
  assert.equal(decodeRequest(frame.subarray(5)).cookie, 0x0102030405060708n);
});

Deno.test("every 64-bit cookie and offset survives a round trip bit for bit", () => {
  const values = [0n, 1n, 0x7fffffffffffffffn, 0x8000000000000000n, 0xffffffffffffffffn];
  for (const cookie of values) {
    for (const offset of values) {
      const request: NbdRequest = {
        flags: 0xffff,
        type: 0xffff,
        cookie,
        offset,
        length: 0xffffffff,
      };
      assert.deepEqual(decodeRequest(encodeRequest(request)), request);
    }
  }
});

Deno.test("every truncated prefix of a request is rejected as a ProtocolError", () => {
  for (let n = 0; n < REQUEST_BYTES; n++) {
    assert.throws(() => decodeRequest(goldenWriteRequest.subarray(0, n)), ProtocolError, `${n}`);
  }
});

Deno.test("a request with a bad magic is a ProtocolError", () => {
  const bytes = goldenWriteRequest.slice();
  bytes[3] ^= 0x01;
  assert.throws(() => decodeRequest(bytes), (err: unknown) => {
    assert.ok(err instanceof ProtocolError);
    assert.match(err.message, /0x25609512/);
    return true;
  });
  // A reply magic where a request magic belongs is still wrong.
  const swapped = goldenWriteRequest.slice();
  new DataView(swapped.buffer).setUint32(0, SIMPLE_REPLY_MAGIC);
  assert.throws(() => decodeRequest(swapped), ProtocolError);
});

Deno.test("random bytes either decode to a request with the right magic or are rejected", () => {
  const bytes = new Uint8Array(REQUEST_BYTES);
  for (let i = 0; i < 2000; i++) {
    crypto.getRandomValues(bytes);
    if (i % 2 === 0) new DataView(bytes.buffer).setUint32(0, REQUEST_MAGIC);
    try {
      const request = decodeRequest(bytes);
      assert.deepEqual(encodeRequest(request), bytes);
    } catch (err) {
      assert.ok(err instanceof ProtocolError);
    }
  }
});

Deno.test("a simple reply encodes to the golden 16 bytes", () => {
  assert.equal(
    hex(encodeSimpleReply(0, 0x0102030405060708n)),
    "67446698" + "00000000" + "0102030405060708",
  );
  assert.equal(
    hex(encodeSimpleReply(NbdError.EINVAL, 0xffffffffffffffffn)),
    "67446698" + "00000016" + "ffffffffffffffff",
  );
});

Deno.test("a simple reply is written into the head of a READ buffer without touching the data", () => {
  const buffer = new Uint8Array(SIMPLE_REPLY_BYTES + 4).fill(0xaa);
  const out = encodeSimpleReply(0, 7n, buffer);
  assert.equal(out, buffer);
  assert.equal(hex(buffer), "67446698" + "00000000" + "0000000000000007" + "aaaaaaaa");
});

Deno.test("simple replies round-trip and a bad reply magic or short reply is rejected", () => {
  assert.deepEqual(decodeSimpleReply(encodeSimpleReply(28, 99n)), { error: 28, cookie: 99n });
  for (let n = 0; n < SIMPLE_REPLY_BYTES; n++) {
    assert.throws(() => decodeSimpleReply(new Uint8Array(n)), ProtocolError);
  }
  const bad = encodeSimpleReply(0, 1n);
  bad[0] = 0;
  assert.throws(() => decodeSimpleReply(bad), ProtocolError);
});

Deno.test("command names are readable and unknown ones are numbered", () => {
  assert.equal(commandName(NbdCommand.writeZeroes), "writeZeroes");
  assert.equal(commandName(5), "command 5");
});

Deno.test("NBD error values are the Linux errnos", () => {
  assert.equal(NbdError.EPERM, 1);
  assert.equal(NbdError.EIO, 5);
  assert.equal(NbdError.ENOMEM, 12);
  assert.equal(NbdError.EINVAL, 22);
  assert.equal(NbdError.ENOSPC, 28);
  assert.equal(NbdError.EOVERFLOW, 75);
  assert.equal(NbdError.ENOTSUP, 95);
  assert.equal(NbdError.ESHUTDOWN, 108);
});

Deno.test("a server's errno that means something to a block device is passed through", () => {
  const p9 = (name: string) => new P9Error(errnoNumber(name), "read /img");
  assert.equal(nbdErrorFor(p9("ENOSPC")), 28);
  assert.equal(nbdErrorFor(p9("EIO")), 5);
  assert.equal(nbdErrorFor(p9("EPERM")), 1);
  assert.equal(nbdErrorFor(p9("EINVAL")), 22);
  assert.equal(nbdErrorFor(p9("EACCES")), 1);
  assert.equal(nbdErrorFor(p9("EROFS")), 1);
  assert.equal(nbdErrorFor(p9("EDQUOT")), 28);
});

Deno.test("any other error becomes EIO", () => {
  assert.equal(nbdErrorFor(new P9Error(errnoNumber("ENOENT"), "walk")), 5);
  assert.equal(nbdErrorFor(new P9Error(errnoNumber("EBADF"), "read")), 5);
  assert.equal(nbdErrorFor(new TimeoutError("Tread timed out")), 5);
  assert.equal(nbdErrorFor(new ProtocolError("bad frame")), 5);
  assert.equal(nbdErrorFor(new Error("bug")), 5);
  assert.equal(nbdErrorFor("a string"), 5);
  assert.equal(nbdErrorFor(undefined), 5);
});
