/**
 * Waiting for a condition in a test: poll it, and fail (never hang) once a
 * bound has passed.
 *
 * @module
 */

/** Resolve once `condition()` holds; throw `timed out waiting for <what>` after `timeoutMs`. */
export async function waitFor(
  condition: () => boolean,
  what: string,
  timeoutMs = 2000,
): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
