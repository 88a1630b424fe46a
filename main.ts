/**
 * 9nbd: a network block device whose transport is 9P2000.L.
 *
 * @module
 */

import { main } from "./lib/cli/main.ts";

if (import.meta.main) Deno.exit(await main(Deno.args));
