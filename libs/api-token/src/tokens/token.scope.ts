import { ApiTokenInputError } from '../api-token.errors';
import { ANY_SCOPE } from '../api-token.keys';

/**
 * A scope is the `type` column (varchar(16)) and a segment of Redis keys, where `:` separates
 * segments and `any` / `None` name "no scope": a scope outside this rule would share or split keys.
 */
const SCOPE = /^[A-Za-z0-9_.-]{1,16}$/;
const RESERVED_SCOPES = new Set([ANY_SCOPE, 'None']);

/** The scope rule, as error messages state it. */
export const SCOPE_RULE = `1 to 16 letters, digits, "_", "." or "-", and not "${ANY_SCOPE}" or "None"`;

/** Whether a value may be a scope (the rule every entry point applies: create, list, guard, authenticate, CLI). */
export const isScope = (value: unknown): value is string => typeof value === 'string' && SCOPE.test(value) && !RESERVED_SCOPES.has(value);

/** The scope, or an ApiTokenInputError naming `what` (never quoting the value). */
export function checkScope(value: unknown, what: string): string {
  if (!isScope(value)) throw new ApiTokenInputError(`${what} must be ${SCOPE_RULE}`);
  return value;
}
