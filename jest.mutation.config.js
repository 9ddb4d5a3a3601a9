/** The unit project of jest.config.js alone, for Stryker (`npm run mutate`): the e2e projects need servers. */
const { projects, testTimeout } = require('./jest.config.js');

module.exports = { ...projects.find((project) => project.displayName === 'unit'), testTimeout };
