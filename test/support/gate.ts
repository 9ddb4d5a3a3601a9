import type { ApiTokenRecord } from '../../libs/api-token/src/store/api-token.record';
import type { ApiTokenRepository } from '../../libs/api-token/src/store/api-token.repository';

/** A promise the test settles by hand. */
export function gate<T = void>(): { promise: Promise<T>; open: (value: T) => void } {
  let open!: (value: T) => void;
  const promise = new Promise<T>((resolve) => (open = resolve));
  return { promise, open };
}

/**
 * Holds every `findByToken()` of the repository at one gate until `open()`: the way tests fill the
 * lookup budget without timing. `started()` counts the lookups that reached the gate. A spy:
 * `jest.restoreAllMocks()` removes it (open the gate too, or held requests keep their app from closing).
 */
export function holdLookups(repository: ApiTokenRepository): { started: () => number; open: () => void } {
  const findByToken = repository.findByToken.bind(repository);
  const held = gate();
  let started = 0;
  jest.spyOn(repository, 'findByToken').mockImplementation(async (...args) => {
    started++;
    await held.promise;
    return findByToken(...args);
  });
  return { started: () => started, open: () => held.open() };
}

/**
 * Holds the repository's next `findByToken()` after it has read the row: `read` settles with the row
 * once it is read, and the lookup answers only after `release()`. The way tests put a revocation (or
 * an eviction) between a fill's read from PostgreSQL and its write to the caches, without a sleep.
 * A spy: `jest.restoreAllMocks()` removes it.
 */
export function holdNextFind(repository: ApiTokenRepository): { read: Promise<ApiTokenRecord | null>; release: () => void } {
  const findByToken = repository.findByToken.bind(repository);
  const read = gate<ApiTokenRecord | null>();
  const released = gate();
  jest.spyOn(repository, 'findByToken').mockImplementationOnce(async (...args) => {
    const row = await findByToken(...args);
    read.open(row);
    await released.promise;
    return row;
  });
  return { read: read.promise, release: () => released.open() };
}
