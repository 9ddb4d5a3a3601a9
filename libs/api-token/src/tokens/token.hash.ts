import { createHash } from 'node:crypto';
import type { ResolvedApiTokenOptions } from '../api-token.options';

/** SHA-256 of a token, hex: what the table and Redis hold in hashed mode. */
export const hashToken = (token: string): string => createHash('sha256').update(token).digest('hex');

/** What the table and Redis hold for a token: the token itself, or its hash when `hashTokens` is on. */
export const storedToken = (token: string, options: Pick<ResolvedApiTokenOptions, 'hashTokens'>): string =>
  options.hashTokens ? hashToken(token) : token;
