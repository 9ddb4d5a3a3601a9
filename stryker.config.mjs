// @ts-check
/**
 * Mutation testing of the unit-tested pure modules (`npm run mutate`): the unit project of jest only,
 * the end-to-end suites stay out. Incremental: the result of the last run is kept in
 * stryker-incremental.json (committed), so a run re-tests only the mutants whose code or tests changed.
 * The HTML report goes to .tmp/mutation (gitignored).
 * @type {import('@stryker-mutator/api/core').PartialStrykerOptions}
 */
const config = {
  packageManager: 'npm',
  testRunner: 'jest',
  jest: {
    projectType: 'custom',
    configFile: 'jest.mutation.config.js',
    enableFindRelatedTests: true,
  },
  coverageAnalysis: 'perTest',
  // A static mutant (a module-level constant) runs every unit test: 16 % of the mutants, 80 % of the time.
  ignoreStatic: true,
  mutate: [
    'libs/api-token/src/limits/rate-limit.policy.ts',
    'libs/api-token/src/store/api-token.record.ts',
    'libs/api-token/src/api-token.keys.ts',
    'libs/api-token/src/tokens/token.scope.ts',
    'libs/api-token/src/auth/refusal.ts',
    'libs/api-token/src/api-token.options.ts',
    'libs/api-token/src/usage/flush.page.ts',
  ],
  ignorePatterns: ['.tmp', 'coverage', 'dist', 'libs/api-token/dist', 'bench', 'test'],
  incremental: true,
  incrementalFile: 'stryker-incremental.json',
  reporters: ['html', 'clear-text', 'progress'],
  htmlReporter: { fileName: '.tmp/mutation/index.html' },
  tempDirName: '.tmp/stryker',
  concurrency: 2,
  // Today's score (ignoring static mutants): 89.01 % with the flush's page logic (97.78 %); the options
  // of #24 and #25 have survivors (75 %). Raise `break` with the score, never lower it.
  thresholds: { high: 90, low: 85, break: 88 },
};
export default config;
