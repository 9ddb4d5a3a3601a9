/** How the usual `Authorization` value starts: the scheme Dify accepts, as clients send it, and one space. */
export const BEARER_PREFIX = 'Bearer ';

/**
 * Whether the character at `index` can start the token of a usual `Bearer <token>` value: printable
 * ASCII other than a space. The guard reads such a value without its parser, and L1 names a token by
 * that value only when this holds, so the two always agree.
 */
export function startsUsualToken(text: string, index: number): boolean {
  const code = text.charCodeAt(index);
  return code > 0x20 && code < 0x7f;
}

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
