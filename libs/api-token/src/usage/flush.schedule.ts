import { CronTime } from 'cron';
import { ApiTokenInputError } from '../api-token.errors';
import { ACTIVE_KEY_TTL_SECONDS } from '../api-token.keys';

/** The flush schedule when the `flushCron` option is not given: every minute, at second 0. */
export const DEFAULT_FLUSH_CRON = '0 * * * * *';
/** The longest gap between two scheduled flushes `flushCron` may leave: a quarter of an active key's life. */
export const MAX_FLUSH_GAP_SECONDS = ACTIVE_KEY_TTL_SECONDS / 4;
/**
 * The longest gap, in seconds, between two runs of a cron schedule; Infinity when it skips an hour,
 * a day or a month. Uses the `cron` package's parser (the one `@nestjs/schedule` runs the job with).
 * Throws the parser's error for an invalid expression.
 */
export function longestCronGapSeconds(expression: string): number {
  const [seconds, minutes, hours, daysOfMonth, months, daysOfWeek] = new CronTime(expression).toJSON();
  if ([hours, daysOfMonth, months, daysOfWeek].some((field) => field !== '*')) return Infinity;
  const values = (field: string, max: number) =>
    field === '*' ? Array.from({ length: max }, (_, i) => i) : field.split(',').map(Number);
  const times = values(minutes, 60)
    .flatMap((m) => values(seconds, 60).map((s) => m * 60 + s))
    .sort((a, b) => a - b);
  let longest = times[0] + 3600 - times[times.length - 1];
  for (let i = 1; i < times.length; i++) longest = Math.max(longest, times[i] - times[i - 1]);
  return longest;
}

/** Validates the `flushCron` option: `false`, or a cron expression with no gap over {@link MAX_FLUSH_GAP_SECONDS}. */
export function assertFlushCron(value: unknown): void {
  if (value === false) return;
  if (typeof value !== 'string' || value.trim() === '') {
    throw new ApiTokenInputError('ApiTokenModule: option "flushCron" must be a cron expression or false');
  }
  let gap: number;
  try {
    gap = longestCronGapSeconds(value);
  } catch (error) {
    throw new ApiTokenInputError(`ApiTokenModule: option "flushCron" is not a valid cron expression: "${value}" (${(error as Error).message})`);
  }
  if (gap > MAX_FLUSH_GAP_SECONDS) {
    const leaves = Number.isFinite(gap) ? `${gap} s` : 'whole hours or days';
    throw new ApiTokenInputError(
      `ApiTokenModule: option "flushCron" "${value}" leaves ${leaves} between flushes; it must run at least every ` +
        `${MAX_FLUSH_GAP_SECONDS} s, well within the ${ACTIVE_KEY_TTL_SECONDS} s an api_token_active key lives`,
    );
  }
}
