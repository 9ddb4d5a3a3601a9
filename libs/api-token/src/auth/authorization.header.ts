/** How the usual `Authorization` value starts: the scheme Dify accepts, as clients send it, and one space. */
export const BEARER_PREFIX = 'Bearer ';

/**
 * Whether a request carried more than one `Authorization` header. Node keeps the first and drops the
 * rest, while a proxy in front may check the last one: the two would disagree about who is calling.
 * Reads Node's `rawHeaders` (name, value, name, value…); cheap: names are compared only when they
 * have the length of "authorization".
 */
export function hasRepeatedAuthorization(rawHeaders: readonly string[] | undefined): boolean {
  if (!rawHeaders) return false;
  let seen = 0;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i];
    if (name.length === 13 && (name === 'authorization' || name === 'Authorization' || name.toLowerCase() === 'authorization')) {
      if (++seen > 1) return true;
    }
  }
  return false;
}
