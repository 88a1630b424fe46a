/**
 * ReplicaVerifier: the first replica verified defines the identity; later
 * ones must match its size, and for a read-only image its fingerprint; a
 * whole-image SHA-256 is checked once per replica; a mismatch is an
 * IdentityError, named after the SPEC only at attach.
 *
 * @module
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { IdentityError, identityOf, ReplicaVerifier } from "../../lib/failover/identity.ts";
import { parseSpec } from "../../lib/spec.ts";
import { randomBytes } from "../../tools/random.ts";
import { MemoryBackend } from "./support/memory_backend.ts";

const IMAGE_BYTES = 256 * 1024;
const first = parseSpec("10.0.0.1:/img");
const second = parseSpec("10.0.0.2:/img");

function replica(bytes: Uint8Array, readOnly = true): MemoryBackend {
  return new MemoryBackend(bytes.slice(), { readOnly });
}

Deno.test("the first replica verified defines the identity; others must hold the same size and content", async () => {
  const file = randomBytes(IMAGE_BYTES, 61);
  const verifier = new ReplicaVerifier();
  assert.throws(() => verifier.identity, /no replica was verified yet/);
  await verifier.verify(replica(file), first);
  assert.deepEqual(verifier.identity, await identityOf(replica(file)));
  await verifier.verify(replica(file), second);
  await assert.rejects(
    verifier.verify(replica(file.subarray(0, IMAGE_BYTES - 4096)), second),
    IdentityError,
    `holds ${IMAGE_BYTES - 4096} bytes, not ${IMAGE_BYTES}: a different image`,
  );
  await assert.rejects(
    verifier.verify(replica(randomBytes(IMAGE_BYTES, 62)), second),
    IdentityError,
    "content fingerprint differs: a different image",
  );
});

Deno.test("a writable image is identified by its size alone: its content is ours to change", async () => {
  const verifier = new ReplicaVerifier();
  await verifier.verify(replica(randomBytes(IMAGE_BYTES, 63), false), first);
  await verifier.verify(replica(randomBytes(IMAGE_BYTES, 64), false), first);
  await assert.rejects(
    verifier.verify(replica(randomBytes(IMAGE_BYTES - 512, 64), false), first),
    IdentityError,
  );
});

Deno.test("a whole-image SHA-256 is checked once per replica; a mismatch names the SPEC only at attach", async () => {
  const file = randomBytes(IMAGE_BYTES, 65);
  const sha256 = createHash("sha256").update(file).digest("hex");
  const wrong = "f".repeat(64);
  await assert.rejects(
    new ReplicaVerifier(wrong).verify(replica(file), first),
    IdentityError,
    `verify ${first.text}: SHA-256 is ${sha256}, not ${wrong}`,
  );

  const verifier = new ReplicaVerifier(sha256.toUpperCase());
  const backend = replica(file);
  await verifier.verify(backend, first);
  const readsOnce = backend.entries("start read").length;
  await verifier.verify(backend, first);
  const readsAgain = backend.entries("start read").length - readsOnce;
  assert.ok(readsAgain < readsOnce, "the second session on that replica only reads the samples");
  // Another replica with the fingerprint's samples intact but one other byte changed.
  const subtle = file.slice();
  subtle[IMAGE_BYTES / 2 + 4096 * 3 + 7] ^= 1;
  assert.deepEqual(await identityOf(replica(subtle)), verifier.identity);
  await assert.rejects(
    verifier.verify(replica(subtle), second),
    (err) => {
      assert.ok(err instanceof IdentityError);
      assert.match(err.message, /^SHA-256 is [0-9a-f]{64}, not [0-9A-F]{64}$/);
      return true;
    },
  );
});
