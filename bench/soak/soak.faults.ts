import type { FaultKind } from './soak.checker';

/** A small seeded generator (mulberry32): the same seed gives the same schedule, traffic mix and choices. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const between = (random: () => number, min: number, max: number) => min + Math.floor(random() * (max - min + 1));

/** One fault to inject, `at` ms after the load starts, held `holdMs`. */
export interface PlannedFault {
  kind: FaultKind;
  at: number;
  holdMs: number;
  instance?: number;
}

/**
 * The fault schedule of a run: from `firstMs` until `lastMs`, one fault every 12–25 s, the kinds taken
 * in seeded rounds (every kind once per round, in a seeded order), so that a short run meets each kind
 * and a long one meets each many times. Faults never overlap: each is healed before the next starts,
 * so each invariant's bound can name the one fault it is widened for.
 */
export function planFaults(random: () => number, kinds: FaultKind[], firstMs: number, lastMs: number, instances: number): PlannedFault[] {
  const plan: PlannedFault[] = [];
  let at = firstMs;
  let round: FaultKind[] = [];
  while (at < lastMs) {
    if (!round.length) round = [...kinds].sort(() => random() - 0.5);
    const kind = round.shift()!;
    const holdMs = kind === 'redis-kill' || kind === 'redis-stop' ? between(random, 1000, 3000) : kind === 'pg-cut' ? between(random, 2000, 5000) : 0;
    // Only the last instance is killed: the first lives the whole run, so that its memory can be judged over a long life.
    plan.push({ kind, at, holdMs, instance: kind === 'instance-kill' ? instances - 1 : undefined });
    at += holdMs + between(random, 12_000, 25_000);
  }
  return plan;
}
