/** Unit specs sit beside the code; end-to-end specs in test/ run against the real servers. */
const common = {
  preset: 'ts-jest',
  testEnvironment: 'node',
  moduleNameMapper: {
    '^@app/api-token$': '<rootDir>/libs/api-token/src',
    '^@app/api-token/(.*)$': '<rootDir>/libs/api-token/src/$1',
  },
  transform: { '^.+\\.ts$': 'ts-jest' },
};

module.exports = {
  projects: [
    { ...common, displayName: 'unit', testMatch: ['<rootDir>/libs/**/*.spec.ts', '<rootDir>/apps/**/*.spec.ts'] },
    {
      ...common,
      displayName: 'e2e',
      testMatch: ['<rootDir>/test/**/*.e2e-spec.ts'],
      globalSetup: '<rootDir>/test/support/global-setup.ts',
      testTimeout: 60000,
    },
  ],
};
