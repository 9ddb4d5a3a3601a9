import { ApiTokenStoreError } from '../api-token.errors';

/**
 * A lookup the budget refused: `maxConcurrentLookups` were running and `maxQueuedLookups` waiting. A
 * {@link ApiTokenStoreError}, so the guard answers it as it answers a database that does not answer:
 * 503 with `Retry-After`, nothing cached.
 */
export class ApiTokenLookupShedError extends ApiTokenStoreError {
  constructor() {
    super('lookup (over maxConcurrentLookups and maxQueuedLookups)', undefined);
  }
}

/**
 * The PostgreSQL lookup budget of one instance: at most `max` lookups at once, at most `queue` more
 * waiting (first come, first served); past that a lookup is refused at once, with no I/O. Only database
 * lookups pass through it: in-process and Redis hits never wait for it.
 */
export class LookupBudget {
  private active = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(
    private readonly max: number,
    private readonly queue: number,
  ) {}

  /** Lookups running now. */
  get running(): number {
    return this.active;
  }

  /** Lookups waiting for a place now. */
  get queued(): number {
    return this.waiting.length;
  }

  /**
   * Runs `lookup` within the budget. `onQueued` is called when it has to wait; past the queue it throws
   * {@link ApiTokenLookupShedError} without calling `lookup`.
   */
  async run<T>(lookup: () => Promise<T>, onQueued: () => void): Promise<T> {
    if (this.active >= this.max) {
      if (this.waiting.length >= this.queue) throw new ApiTokenLookupShedError();
      onQueued();
      // The place is handed over by the lookup that ends (`active` is not decremented then), so a newcomer can never jump the queue.
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    } else this.active++;
    try {
      return await lookup();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.active--;
    }
  }
}
