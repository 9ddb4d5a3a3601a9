import { randomInt } from 'node:crypto';

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
/** Characters after the prefix in a token Dify would generate. */
export const TOKEN_RANDOM_LENGTH = 24;

/** A new token in Dify's format: `{prefix}-` then 24 characters of `[A-Za-z0-9]` from `crypto` (unbiased). */
export function generateApiToken(prefix: string): string {
  let random = '';
  for (let i = 0; i < TOKEN_RANDOM_LENGTH; i++) random += ALPHABET[randomInt(ALPHABET.length)];
  return `${prefix}-${random}`;
}
