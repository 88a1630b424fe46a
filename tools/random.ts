/**
 * Deterministic pseudo-random bytes (xorshift32): incompressible, the same
 * every run, and fast enough for images of hundreds of MiB.
 *
 * @module
 */

/** `length` pseudo-random bytes from `seed`; every byte, including a tail shorter than a word. */
export function randomBytes(length: number, seed = 1): Uint8Array {
  const bytes = new Uint8Array(length);
  const words = new Uint32Array(bytes.buffer, 0, Math.floor(length / 4));
  let x = seed >>> 0 || 1;
  const next = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
  for (let i = 0; i < words.length; i++) words[i] = next();
  for (let i = words.length * 4; i < length; i++) bytes[i] = next() & 0xff;
  return bytes;
}
