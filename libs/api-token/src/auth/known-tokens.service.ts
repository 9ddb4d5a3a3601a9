import { Inject, Injectable, Logger, type OnApplicationBootstrap, type OnModuleDestroy } from '@nestjs/common';
import { API_TOKEN_OPTIONS } from '../api-token.constants';
import { describeError } from '../api-token.errors';
import type { ResolvedApiTokenOptions } from '../api-token.options';
import { ApiTokenRepository } from '../store/api-token.repository';
import { KnownTokensFilter, fingerprint } from './known-tokens.filter';
import { ApiTokenLookupShedError } from './lookup-budget';

/** Tokens read per statement while the filter is built. */
const LOAD_PAGE = 10_000;
/** Tokens checked per statement by {@link ApiTokenKnownTokens.check}; more wait for the next one. */
const CHECK_BATCH = 500;
/**
 * Tokens that may wait for an answer of {@link ApiTokenKnownTokens.check}; past that a token is shed
 * (503) at once, as a lookup past `maxQueuedLookups` is: when PostgreSQL stalls, waiting requests stay
 * bounded instead of piling up behind the statement under way.
 */
const MAX_WAITING = 2 * CHECK_BATCH;
/**
 * Milliseconds the first unknown token waits for others before its statement is sent. Under a flood
 * the statement would otherwise come back before more than a request or two has arrived, and each
 * statement's client-side cost (a pooled connection, pg's protocol) would be paid by a couple of
 * tokens; 1 ms lets every connection's next request join. Paid once by a token made since the build.
 */
const CHECK_LINGER_MS = 1;
/** The longest the application's start waits for the first build. */
const START_WAIT_MS = 2_000;
/** Milliseconds before a build that failed (PostgreSQL down) is tried again. */
const RETRY_MS = 30_000;

/** Runs a database statement within the request path's lookup budget. */
export type WithinBudget = <T>(lookup: () => Promise<T>) => Promise<T>;

interface PendingCheck {
  readonly token: string;
  /** The token's {@link fingerprint}. */
  readonly print: number;
  /** The budget the statement runs within (a statement holding several tokens: its first token's). */
  readonly within: WithinBudget;
  readonly resolve: (absent: boolean | undefined) => void;
  readonly reject: (error: ApiTokenLookupShedError) => void;
}

/**
 * The membership filter: which stored tokens exist, in the process, so that a flood of unknown tokens
 * costs no Redis command and one PostgreSQL statement per batch rather than per token.
 *
 * Built from the table when the application starts (pages of {@link LOAD_PAGE}; the start waits at
 * most {@link START_WAIT_MS}, and until the build ends every token takes the usual path), rebuilt every
 * `membershipFilterRebuildMs` to forget revoked tokens. It never refuses a token by itself: a token it does not hold (created on
 * another instance, or by Dify, since the build) is checked against the table by {@link check}, in one
 * statement with the other tokens waiting, and a token a row holds goes on the usual path and is added.
 * So it can only make a lookup cheaper, never wrong (the statement reads the primary, as lookups do:
 * a replica behind it could refuse a token just created).
 *
 * @hideconstructor
 */
@Injectable()
export class ApiTokenKnownTokens implements OnApplicationBootstrap, OnModuleDestroy {
  private readonly logger = new Logger(ApiTokenKnownTokens.name);
  private filter: KnownTokensFilter | null = null;
  /** Fingerprints added while a build runs: the new filter gets them too. */
  private addedDuringBuild: Set<number> | null = null;
  private timer: NodeJS.Timeout | undefined;
  private building: Promise<void> | undefined;
  private stopped = false;
  private pending: PendingCheck[] = [];
  private checking = false;
  /** Tokens in the statement under way. */
  private inStatement = 0;

  /** @internal Nest's injection. */
  constructor(
    private readonly repository: ApiTokenRepository,
    @Inject(API_TOKEN_OPTIONS) private readonly options: ResolvedApiTokenOptions,
  ) {}

  async onApplicationBootstrap(): Promise<void> {
    if (this.options.membershipFilterRebuildMs === 0) return;
    // A table of usual size is read before the application serves; a large one does not hold the start
    // past START_WAIT_MS (the build goes on in the background and the usual path serves meanwhile).
    let waited: NodeJS.Timeout | undefined;
    await Promise.race([this.build(), new Promise<void>((resolve) => (waited = setTimeout(resolve, START_WAIT_MS)))]);
    clearTimeout(waited);
  }

  async onModuleDestroy(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.building;
  }

  /** Fingerprints the filter holds (0 before it is built). */
  get size(): number {
    return this.filter?.size ?? 0;
  }

  /** Tokens given to {@link check} and not answered yet (those in the statement under way included). @internal */
  get waiting(): number {
    return this.pending.length + this.inStatement;
  }

  /** Whether the filter is built: until then (and when it is off) every token takes the usual path. */
  get built(): boolean {
    return this.filter !== null;
  }

  /** False when the filter holds no token of this fingerprint ({@link built} only): {@link check} it before refusing. */
  mayHold(print: number): boolean {
    return this.filter === null || this.filter.mayHold(print);
  }

  /** Adds a stored token (created here, or found by a lookup). */
  add(token: string): void {
    if (this.filter !== null || this.addedDuringBuild !== null) this.addPrint(fingerprint(token));
  }

  private addPrint(print: number): void {
    this.filter?.add(print);
    this.addedDuringBuild?.add(print);
  }

  /**
   * Whether no row holds this stored token: true (none does), false (one does; it is added), or
   * undefined when the table could not say (the caller takes the usual path). One statement, within
   * `within`, checks every token waiting at that moment (sent {@link CHECK_LINGER_MS} after the first
   * came); tokens that come meanwhile wait for the next. Rejects with {@link ApiTokenLookupShedError}
   * past {@link MAX_WAITING} waiting tokens, or when the lookup budget shed the statement.
   */
  check(token: string, print: number, within: WithinBudget): Promise<boolean | undefined> {
    if (this.waiting >= MAX_WAITING) return Promise.reject(new ApiTokenLookupShedError());
    return new Promise((resolve, reject) => {
      this.pending.push({ token, print, within, resolve, reject });
      if (this.checking) return;
      this.checking = true;
      setTimeout(() => void this.checkPending(), CHECK_LINGER_MS).unref();
    });
  }

  private async checkPending(): Promise<void> {
    try {
      while (this.pending.length > 0) {
        // A token the last statement found (a stampede on a new token) needs no second one: its waiters
        // take the usual path together, where single flight makes one lookup of them.
        this.pending = this.pending.filter((check) => !this.heldSince(check));
        const batch = this.pending.splice(0, CHECK_BATCH);
        if (batch.length === 0) break;
        this.inStatement = batch.length;
        const found = await batch[0].within(() => this.repository.existing(batch.map((check) => check.token))).catch((error: unknown) => error);
        this.inStatement = 0;
        if (found instanceof ApiTokenLookupShedError) {
          // Shed as their lookups would be: sent the usual way, each would only be shed again, after Redis.
          for (const check of batch) check.reject(found);
          continue;
        }
        // Any other failure: the table could not say, the usual path decides (and answers 503 if it cannot either).
        const rows = found instanceof Set ? (found as Set<string>) : undefined;
        for (const { token, print, resolve } of batch) {
          if (rows?.has(token)) this.addPrint(print);
          resolve(rows && !rows.has(token));
        }
      }
    } finally {
      this.checking = false;
    }
  }

  /** Resolves `check` as held (false) when the filter got its token while it waited. */
  private heldSince(check: PendingCheck): boolean {
    if (this.filter?.mayHold(check.print) !== true) return false;
    check.resolve(false);
    return true;
  }

  private build(): Promise<void> {
    this.building ??= this.load().finally(() => {
      this.building = undefined;
      if (!this.stopped) this.timer = setTimeout(() => void this.build(), this.filter ? this.options.membershipFilterRebuildMs : RETRY_MS).unref();
    });
    return this.building;
  }

  /** Reads every stored token, page by page, into a new filter; keeps the old one if the table does not answer. */
  private async load(): Promise<void> {
    this.addedDuringBuild = new Set();
    try {
      // 4 bytes a token while it loads too: a typed array doubled when full, not an array of numbers.
      let prints = new Uint32Array(LOAD_PAGE);
      let count = 0;
      let after = '';
      for (;;) {
        if (this.stopped) return;
        const page = await this.repository.tokenPage(after, LOAD_PAGE);
        if (count + page.length > prints.length) {
          const grown = new Uint32Array(prints.length * 2);
          grown.set(prints);
          prints = grown;
        }
        for (const token of page) prints[count++] = fingerprint(token);
        if (page.length < LOAD_PAGE) break;
        after = page[page.length - 1];
      }
      const filter = KnownTokensFilter.build(prints.slice(0, count));
      for (const print of this.addedDuringBuild) filter.add(print);
      this.filter = filter;
    } catch (error) {
      this.logger.warn(`Membership filter not built (${describeError(error)}); unknown tokens take the usual path until it is`);
    } finally {
      this.addedDuringBuild = null;
    }
  }
}
