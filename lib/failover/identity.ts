/**
 * Decides whether a session may serve: it must hold the image that was
 * attached, whichever server it reaches.
 *
 * The first replica that opens at attach defines the image's identity: its
 * size and a fingerprint (SHA-256 over sampled blocks). Every later session,
 * on any replica, must show the same size, and for a read-only image the
 * same fingerprint, before it serves a byte. With an expected SHA-256 of the
 * whole image, each replica is hashed in full once, before its first use.
 * A replica that fails a check throws {@link IdentityError}.
 *
 * @module
 */

import type { BlockBackend } from "../backend.ts";
import type { Spec } from "../spec.ts";

/** Blocks sampled for the fingerprint, and their size. */
const FINGERPRINT_SAMPLES = 16;
const FINGERPRINT_BLOCK_BYTES = 4096;

/** What identifies an image regardless of the server holding it. */
export interface Identity {
  sizeBytes: number;
  fingerprint: string;
}

/**
 * A replica holds a different image (another size, other content, another
 * SHA-256). Found by our own check, not sent by the server, so it carries no
 * errno: the CLI exits with the generic failure code, and a reconnect
 * passes the replica over for another.
 */
export class IdentityError extends Error {
  override name = "IdentityError";
}

function hex(bytes: ArrayBuffer): string {
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Offsets of the fingerprint's sample blocks: spread evenly, first and last included. */
export function sampleOffsets(sizeBytes: number): number[] {
  const block = Math.min(FINGERPRINT_BLOCK_BYTES, sizeBytes);
  if (block === 0) return [];
  const last = sizeBytes - block;
  const count = Math.min(FINGERPRINT_SAMPLES, Math.floor(sizeBytes / block));
  const offsets = new Set<number>();
  for (let i = 0; i < count; i++) {
    offsets.add(count === 1 ? 0 : Math.floor(last * i / (count - 1)));
  }
  return [...offsets].sort((a, b) => a - b);
}

/** The size and sampled-block fingerprint of an open image. */
export async function identityOf(image: BlockBackend): Promise<Identity> {
  const offsets = sampleOffsets(image.sizeBytes);
  const block = Math.min(FINGERPRINT_BLOCK_BYTES, image.sizeBytes);
  const samples = new Uint8Array(8 + offsets.length * block);
  new DataView(samples.buffer).setBigUint64(0, BigInt(image.sizeBytes));
  await Promise.all(
    offsets.map((offset, i) =>
      image.read(offset, samples.subarray(8 + i * block, 8 + (i + 1) * block))
    ),
  );
  return {
    sizeBytes: image.sizeBytes,
    fingerprint: hex(await crypto.subtle.digest("SHA-256", samples)),
  };
}

/** SHA-256 of the whole image, read in large parallel chunks. */
export async function fullSha256(image: BlockBackend): Promise<string> {
  // Web Crypto has no incremental hash; node:crypto's does.
  const { createHash } = await import("node:crypto");
  const hash = createHash("sha256");
  const chunk = 8 * 1024 * 1024;
  for (let offset = 0; offset < image.sizeBytes; offset += chunk) {
    const buffer = new Uint8Array(Math.min(chunk, image.sizeBytes - offset));
    await image.read(offset, buffer);
    hash.update(buffer);
  }
  return hash.digest("hex");
}

/**
 * The identity every session must prove, taken from the first replica that
 * opens, and which replicas have already been hashed in full.
 */
export class ReplicaVerifier {
  readonly #sha256: string | undefined;
  #reference: Identity | undefined;
  /** A writable image's content is ours to change, so only its size identifies it. */
  #compareFingerprint = true;
  readonly #hashedInFull = new Set<Spec>();

  /** `sha256`: the whole image's expected SHA-256 (hex, any case), if asked for. */
  constructor(sha256?: string) {
    this.#sha256 = sha256;
  }

  /** The identity taken at attach; only once {@link verify} has passed. */
  get identity(): Identity {
    if (!this.#reference) throw new Error("no replica was verified yet");
    return this.#reference;
  }

  /**
   * Check that `image`, opened from replica `spec`, holds the attached image;
   * throw an {@link IdentityError} if not. The first call defines the
   * identity; its SHA-256 mismatch names the SPEC, since it goes to the user
   * as the attach's answer rather than to the log beside the replica.
   */
  async verify(image: BlockBackend, spec: Spec): Promise<void> {
    const identity = await identityOf(image);
    const reference = this.#reference;
    if (reference && identity.sizeBytes !== reference.sizeBytes) {
      throw new IdentityError(
        `holds ${identity.sizeBytes} bytes, not ${reference.sizeBytes}: a different image`,
      );
    }
    if (reference && this.#compareFingerprint && identity.fingerprint !== reference.fingerprint) {
      throw new IdentityError("content fingerprint differs: a different image");
    }
    if (this.#sha256 !== undefined && !this.#hashedInFull.has(spec)) {
      const sha = await fullSha256(image);
      if (sha !== this.#sha256.toLowerCase()) {
        const subject = reference ? "" : `verify ${spec.text}: `;
        throw new IdentityError(`${subject}SHA-256 is ${sha}, not ${this.#sha256}`);
      }
      this.#hashedInFull.add(spec);
    }
    if (!reference) {
      this.#reference = identity;
      this.#compareFingerprint = image.readOnly;
    }
  }
}
