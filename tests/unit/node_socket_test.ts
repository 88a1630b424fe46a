/**
 * NodeSocketStream, the ByteStream over a node:net socket (what `--privport`
 * dials with): a real 9P session over it reads an image byte for byte, and,
 * driven by hand through a stand-in socket, it hands chunks to a waiting
 * read, queues the rest, stops the socket past 1 MiB queued and restarts it
 * once drained, and ends and fails reads as the socket does.
 */

import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { connect, type Socket } from "node:net";
import { NodeSocketStream, type OnRead } from "../../lib/node_socket.ts";
import { Session } from "../../lib/p9/session.ts";
import { OpenFlags } from "../../lib/p9/wire.ts";
import { startExportServer } from "../../lib/server/export.ts";
import { randomBytes } from "../../tools/random.ts";

Deno.test({
  name: "a 9P session over a node:net socket reads an image from the export server byte for byte",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.realPath(await Deno.makeTempDir({ prefix: "9nbd-node-socket-" }));
    const image = randomBytes(6 * 1024 * 1024 + 99, 21);
    await Deno.writeFile(`${dir}/disk.img`, image);
    const server = await startExportServer({
      paths: [dir],
      listen: { kind: "tcp", host: "127.0.0.1", port: 0 },
    });
    const port = server.address.kind === "tcp" ? server.address.port : 0;
    const stream = new NodeSocketStream((onread) => connect({ host: "127.0.0.1", port, onread }));
    try {
      await new Promise((resolve) => stream.socket.once("connect", resolve));
      const session = await Session.start(stream, { msize: 256 * 1024 + 24 });
      const { fid } = await session.attach("root", `${dir}/disk.img`, 0);
      await session.lopen(fid, OpenFlags.RDONLY);
      const back = new Uint8Array(image.length);
      const chunk = session.maxPayload;
      const reads = [];
      for (let offset = 0; offset < image.length; offset += chunk) {
        const dest = back.subarray(offset, Math.min(image.length, offset + chunk));
        reads.push(session.read(fid, offset, dest).then((n) => assert.equal(n, dest.length)));
      }
      await Promise.all(reads);
      assert.ok(back.every((b, i) => b === image[i]), "every byte as served");
      session.close();
    } finally {
      stream.close();
      await server.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** What NodeSocketStream uses of a socket, driven by the test. */
class StandInSocket extends EventEmitter {
  onread!: OnRead;
  paused = false;
  resumes = 0;
  pause() {
    this.paused = true;
    return this;
  }
  resume() {
    this.paused = false;
    this.resumes++;
    return this;
  }
  destroy() {
    this.emit("close");
    return this;
  }
  /** Deliver `bytes` as node would: copied into the reused buffer, then the callback. */
  deliver(bytes: Uint8Array): boolean {
    const buffer = this.onread.buffer as Uint8Array;
    buffer.set(bytes);
    const carryOn = this.onread.callback(bytes.length, buffer) !== false;
    buffer.fill(0xee, 0, bytes.length); // the buffer is reused: nothing may keep a view of it
    return carryOn && !this.paused;
  }
}

function standIn(): { stream: NodeSocketStream; socket: StandInSocket } {
  const socket = new StandInSocket();
  const stream = new NodeSocketStream((onread) => {
    socket.onread = onread;
    return socket as unknown as Socket;
  });
  return { stream, socket };
}

Deno.test("a chunk goes straight to a waiting read; what does not fit is queued for the next", async () => {
  const { stream, socket } = standIn();
  const dest = new Uint8Array(4);
  const reading = stream.read(dest);
  socket.deliver(Uint8Array.of(1, 2, 3, 4, 5, 6));
  assert.equal(await reading, 4);
  assert.deepEqual(dest, Uint8Array.of(1, 2, 3, 4));
  const rest = new Uint8Array(10);
  assert.equal(await stream.read(rest), 2);
  assert.deepEqual(rest.subarray(0, 2), Uint8Array.of(5, 6));
});

Deno.test("past 1 MiB queued the socket stops reading, and starts again once the reader drained half", async () => {
  const { stream, socket } = standIn();
  const piece = randomBytes(256 * 1024, 3);
  let delivered = 0;
  while (socket.deliver(piece)) delivered++;
  assert.equal(delivered, 3, "the fourth 256 KiB chunk reaches 1 MiB and stops the socket");
  assert.equal(socket.paused, true);
  const dest = new Uint8Array(256 * 1024);
  assert.equal(await stream.read(dest), dest.length);
  assert.deepEqual(dest, piece, "queued bytes are copies, not views of the reused buffer");
  assert.equal(socket.resumes, 0, "still 768 KiB queued");
  await stream.read(dest);
  assert.equal(socket.resumes, 1, "512 KiB queued: read on");
  assert.equal(socket.paused, false);
});

Deno.test("the end of the stream comes after every queued byte; an error fails a waiting read", async () => {
  const { stream, socket } = standIn();
  socket.deliver(Uint8Array.of(9, 8, 7));
  socket.emit("end");
  const dest = new Uint8Array(8);
  assert.equal(await stream.read(dest), 3);
  assert.equal(await stream.read(dest), null);

  const other = standIn();
  const waiting = other.stream.read(dest);
  other.socket.emit("error", Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET" }));
  await assert.rejects(waiting, /ECONNRESET/);
  await assert.rejects(other.stream.read(dest), /ECONNRESET/);
});
