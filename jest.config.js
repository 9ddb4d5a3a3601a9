/** Unit specs sit beside the code; end-to-end specs in test/ run against the real servers. */
const common = {
  preset: 'ts-jest',
  testEnvironment: 'node',
  moduleNameMapper: {
    // The demo imports the library by its package name, like an application; the source stands in for the build.
    '^nestjs-api-token$': '<rootDir>/libs/api-token/src',
    '^nestjs-api-token/env$': '<rootDir>/libs/api-token/src/env',
    '^nestjs-api-token/admin$': '<rootDir>/libs/api-token/src/admin',
  },
  transform: { '^.+\\.ts$': 'ts-jest' },
  // Stryker's sandboxes and its report (npm run mutate) hold copies of the sources and specs.
  modulePathIgnorePatterns: ['<rootDir>/.tmp/'],
  testPathIgnorePatterns: ['/node_modules/', '<rootDir>/.tmp/'],
};

/** The suites that run a second time against a three-master Redis Cluster. */
const clusterSuites = ['request-path', 'single-flight', 'usage-flush', 'lifecycle', 'rate-limit', 'expiry', 'revocation-faults', 'membership-filter'];

module.exports = {
  testTimeout: 60000,
  projects: [
    { ...common, displayName: 'unit', testMatch: ['<rootDir>/libs/**/*.spec.ts', '<rootDir>/apps/**/*.spec.ts', '<rootDir>/bench/**/*.spec.ts'] },
    {
      ...common,
      displayName: 'e2e',
      testMatch: ['<rootDir>/test/**/*.e2e-spec.ts'],
      globalSetup: '<rootDir>/test/support/global-setup.ts',
    },
    {
      ...common,
      displayName: 'e2e-cluster',
      testMatch: clusterSuites.map((name) => `<rootDir>/test/${name}.e2e-spec.ts`),
      globalSetup: '<rootDir>/test/support/cluster-setup.ts',
      globalTeardown: '<rootDir>/test/support/cluster-teardown.ts',
      setupFiles: ['<rootDir>/test/support/cluster-mode.ts'],
    },
  ],
};
