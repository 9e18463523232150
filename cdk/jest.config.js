// jest + ts-jest: tests/*.test.ts against the real constructs (aws-cdk-lib/assertions).
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  transform: { '^.+\\.tsx?$': ['ts-jest', { diagnostics: true }] },
  // Synthesising a full stack takes a few seconds on 2 cores.
  testTimeout: 120000,
};
