import { createHash } from 'node:crypto';
import { HASHED_TOKEN_PREFIX } from '../api-token.keys';
import type { ResolvedApiTokenOptions } from '../api-token.options';


/** What the table and Redis hold for a token in hashed mode: `sha256:` and its SHA-256, hex. */
export const hashToken = (token: string): string => `${HASHED_TOKEN_PREFIX}${createHash('sha256').update(token).digest('hex')}`;

/** What the table and Redis hold for a token: the token itself, or its hash when `hashTokens` is on. */
export const storedToken = (token: string, options: Pick<ResolvedApiTokenOptions, 'hashTokens'>): string =>
  options.hashTokens ? hashToken(token) : token;
