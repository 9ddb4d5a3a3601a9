import { randomBytes } from 'node:crypto';
import { KnownTokensFilter, fingerprint } from './known-tokens.filter';

const tokens = (count: number): string[] => Array.from({ length: count }, () => `app-${randomBytes(18).toString('base64url')}`);

describe('KnownTokensFilter', () => {
  it('holds every token it was built with or given, whatever their order', () => {
    const built = tokens(5_000);
    const filter = KnownTokensFilter.build(Uint32Array.from(built, fingerprint));
    for (const token of built) expect(filter.mayHold(fingerprint(token))).toBe(true);
    const added = tokens(50);
    for (const token of added) filter.add(fingerprint(token));
    for (const token of added) expect(filter.mayHold(fingerprint(token))).toBe(true);
    expect(filter.size).toBe(5_050);
  });

  it('says "no" for fingerprints it does not hold, below, between and above those it holds', () => {
    const filter = KnownTokensFilter.build(Uint32Array.of(30, 10, 20, 20));
    for (const print of [10, 20, 30]) expect(filter.mayHold(print)).toBe(true);
    for (const print of [0, 9, 11, 19, 21, 29, 31, 0xffff_ffff]) expect(filter.mayHold(print)).toBe(false);
    expect(KnownTokensFilter.build(new Uint32Array(0)).mayHold(0)).toBe(false);
  });

  it('keeps fingerprints above 2³¹ in unsigned order (a signed comparison would lose them)', () => {
    const filter = KnownTokensFilter.build(Uint32Array.of(0xffff_fff0, 1, 0x8000_0000));
    expect(filter.mayHold(0x8000_0000)).toBe(true);
    expect(filter.mayHold(0xffff_fff0)).toBe(true);
    expect(filter.mayHold(1)).toBe(true);
  });

  it('answers "no" for nearly every unknown token', () => {
    const filter = KnownTokensFilter.build(Uint32Array.from(tokens(10_000), fingerprint));
    const held = tokens(10_000).filter((token) => filter.mayHold(fingerprint(token))).length;
    // About 10,000² / 2³² ≈ 0.02 expected.
    expect(held).toBeLessThanOrEqual(2);
  });
});

describe('fingerprint', () => {
  it('is a 32-bit unsigned integer that depends on the whole token', () => {
    const print = fingerprint('app-abc');
    expect(Number.isInteger(print) && print >= 0 && print < 2 ** 32).toBe(true);
    expect(fingerprint('app-abc')).toBe(print);
    expect(fingerprint('app-abd')).not.toBe(print);
  });
});
