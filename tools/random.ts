/**
 * Deterministic pseudo-random numbers and bytes (xorshift32): the same every
 * run, incompressible, and fast enough for images of hundreds of MiB.
 *
 * @module
 */

/** A generator of pseudo-random 32-bit unsigned integers from `seed` (0 counts as 1). */
export function xorshift32(seed = 1): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
}

/** `length` pseudo-random bytes from `seed`; every byte, including a tail shorter than a word. */
export function randomBytes(length: number, seed = 1): Uint8Array {
  const bytes = new Uint8Array(length);
  const words = new Uint32Array(bytes.buffer, 0, Math.floor(length / 4));
  const next = xorshift32(seed);
  for (let i = 0; i < words.length; i++) words[i] = next();
  for (let i = words.length * 4; i < length; i++) bytes[i] = next() & 0xff;
  return bytes;
}

/** A seeded stand-in for `Math.random`: `below(n)` is an integer in [0, n). */
export function seededRandom(seed: number): { below(n: number): number } {
  const next = xorshift32(seed);
  return { below: (n) => next() % n };
}
