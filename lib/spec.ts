/**
 * The SPEC that names an image on a 9P server.
 *
 * ```text
 * SPEC = ADDRESS ":" ANAME [ "//" PATH ]
 * ```
 *
 * ADDRESS is where the server is, in the one address grammar of
 * `address.ts` (TCP port 564 unless given; `:PORT` alone is for listening
 * only); it ends at the first `:/`.
 *
 * - `host:/srv/img`: attach with aname `/srv/img` on port 564 (diod exports
 *   image files this way; the attach fid is the file itself).
 * - `host:5640:/srv/img`, `[::1]:/srv/img`, `[fe80::1]:5640:/srv/img`.
 * - `unix:/run/9p.sock:/srv/img`: a Unix socket.
 * - `host:/export//dir/img`: attach to the export `/export`, then walk
 *   `dir/img` (servers that export directories, such as nfs-ganesha).
 *
 * @module
 */

import {
  type Address,
  ADDRESS_FORMS,
  addressKindOf,
  type AddressRules,
  formatAddress,
  P9_PORT,
  readAddress,
  splitBeforePath,
} from "./address.ts";
import { UsageError } from "./errors.ts";

/** A parsed SPEC. */
export interface Spec {
  address: Address;
  /** The attach name. */
  aname: string;
  /** Names walked from the attach point to the image; empty when aname is the image. */
  walk: string[];
  /** The SPEC as the user wrote it, for messages. */
  text: string;
}

/** The accepted forms, shown with every SPEC error. */
export const SPEC_FORMS = ADDRESS_FORMS.filter((f) => !f.listeningOnly)
  .map((f) => `${f.form}:/PATH, `).join("") +
  "or ...:/EXPORT//FILE to walk from an exported directory";

/** A SPEC's server: a 9P server, so port 564 by default, and somewhere to connect to. */
const serverRules: AddressRules = { defaultPort: P9_PORT, listening: false };

function specError(text: string, why: string): UsageError {
  return new UsageError(`bad SPEC "${text}": ${why} (expected ${SPEC_FORMS})`);
}

/** Why `text`, which has no `:/`, is not a SPEC. */
function missingPath(text: string): string {
  if (text === "") return "empty SPEC";
  const whole = readAddress(text, serverRules);
  if ("address" in whole) {
    return `missing :/PATH after the ${whole.address.kind === "unix" ? "Unix socket" : "server"}`;
  }
  // A server at the start of the text (cut at its last ":" or its first "/")
  // says what is wrong after it, as long as it is of the kind the whole text
  // names (the "unix" of "unix:" is not a host).
  const isServer = (head: string) =>
    addressKindOf(head) === addressKindOf(text) && "address" in readAddress(head, serverRules);
  const colon = text.lastIndexOf(":");
  if (colon > 0 && isServer(text.slice(0, colon))) return "the image path must be absolute";
  const slash = text.indexOf("/");
  if (slash > 0 && isServer(text.slice(0, slash))) return "missing :/PATH after the server";
  return whole.reason;
}

/** Parse a SPEC; a malformed one raises {@link UsageError} naming the accepted forms. */
export function parseSpec(text: string): Spec {
  const split = splitBeforePath(text);
  if (split === undefined) throw specError(text, missingPath(text));
  const server = readAddress(split.address, serverRules);
  if ("reason" in server) throw specError(text, server.reason);
  const { address } = server;
  const rest = split.path;
  const walkFrom = rest.indexOf("//");
  const aname = walkFrom < 0 ? rest : rest.slice(0, walkFrom) || "/";
  const walk = walkFrom < 0 ? [] : rest.slice(walkFrom + 2).split("/").filter((n) => n !== "");
  if (walkFrom >= 0 && walk.length === 0) throw specError(text, "nothing to walk to after //");
  for (const name of walk) {
    if (name === "." || name === "..") throw specError(text, `"${name}" is not allowed in a path`);
  }
  if (aname.includes("\0") || walk.some((n) => n.includes("\0"))) {
    throw specError(text, "NUL byte in path");
  }
  return { address, aname, walk, text };
}

/** The SPEC written back in its canonical form. */
export function formatSpec(spec: Spec): string {
  const server = formatAddress(spec.address, P9_PORT);
  return `${server}:${spec.aname}${spec.walk.length ? `//${spec.walk.join("/")}` : ""}`;
}
