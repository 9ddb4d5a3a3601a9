import { createHash } from 'node:crypto';

/**
 * A token's fingerprint: 32 bits of its SHA-1 (`createHash`: `crypto.hash` would spare the hasher
 * object but needs Node 20.12, and the package supports 20.0). Not a secret and not a security
 * boundary: two tokens sharing one only cost a statement the filter could have spared.
 */
export const fingerprint = (stored: string): number => createHash('sha1').update(stored).digest().readUInt32LE(0);

/**
 * The fingerprints of the tokens the table held when it was read, sorted, and those added since.
 * Answers "no row can hold this token" with no I/O, or "one might". It may say "might" for a token no
 * row holds (a revoked token, or one whose fingerprint another shares: about n / 2³² of unknown tokens
 * for n tokens), never "no" for a token it was given.
 *
 * A sorted `Uint32Array` and a binary search rather than a Bloom filter package: 4 bytes a token,
 * exact for what it was given, and a dozen lines.
 */
export class KnownTokensFilter {
  private readonly added = new Set<number>();

  /** @param sorted fingerprints in ascending order (see {@link KnownTokensFilter.build}). */
  private constructor(private readonly sorted: Uint32Array) {}

  /** A filter of these fingerprints (any order, repeats allowed). */
  static build(fingerprints: Uint32Array): KnownTokensFilter {
    return new KnownTokensFilter(fingerprints.sort());
  }

  /** Fingerprints held: those it was built with, then those added. */
  get size(): number {
    return this.sorted.length + this.added.size;
  }

  /** Adds a token's fingerprint (a token created, or found by a lookup, after the filter was built). */
  add(print: number): void {
    this.added.add(print);
  }

  /** False when no token given to the filter has this fingerprint. */
  mayHold(print: number): boolean {
    const sorted = this.sorted;
    let low = 0;
    let high = sorted.length - 1;
    while (low <= high) {
      const middle = (low + high) >>> 1;
      const value = sorted[middle];
      if (value === print) return true;
      if (value < print) low = middle + 1;
      else high = middle - 1;
    }
    return this.added.has(print);
  }
}
