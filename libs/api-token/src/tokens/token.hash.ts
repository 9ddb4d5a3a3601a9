import { createHash } from 'node:crypto';
import type { ResolvedApiTokenOptions } from '../api-token.options';

/**
 * What starts a stored hashed token. `:` is not a b64token character, so a stored hash can never
 * pass the shape check of a plain-mode instance: a leaked hashed table is no use as tokens.
 */
export const HASHED_TOKEN_PREFIX = 'sha256:';

/** What the table and Redis hold for a token in hashed mode: `sha256:` and its SHA-256, hex. */
export const hashToken = (token: string): string => `${HASHED_TOKEN_PREFIX}${createHash('sha256').update(token).digest('hex')}`;

/** What the table and Redis hold for a token: the token itself, or its hash when `hashTokens` is on. */
export const storedToken = (token: string, options: Pick<ResolvedApiTokenOptions, 'hashTokens'>): string =>
  options.hashTokens ? hashToken(token) : token;
