#!/usr/bin/env node
// The CDK app: reads the configuration file named by the `config` context value
// (`npx cdk synth -c config=config/prod.json`; default config/example.json), validates it, and
// checks the stack with cdk-nag's AwsSolutions pack (findings are errors unless suppressed with a
// written reason in lib/ensign-stack.ts).
import * as fs from 'fs';
import * as path from 'path';
import * as cdk from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { ConfigError, parseConfig } from '../lib/config';
import { EnsignStack } from '../lib/ensign-stack';

const app = new cdk.App();
const configPath = path.resolve(__dirname, '..', String(app.node.tryGetContext('config') ?? 'config/example.json'));
let config;
try {
  config = parseConfig(JSON.parse(fs.readFileSync(configPath, 'utf8')));
} catch (e) {
  const what = e instanceof ConfigError ? e.message : `cannot read ${configPath}: ${(e as Error).message}`;
  process.stderr.write(`${configPath}: ${what}\n`);
  process.exit(1);
}
new EnsignStack(app, config.stackName, {
  stackName: config.stackName,
  env: { account: config.account, region: config.region },
  config,
  description: `ensign remote signer in Nitro Enclaves${config.devMode ? ' (DEVELOPMENT MODE)' : ''}`,
});
cdk.Aspects.of(app).add(new AwsSolutionsChecks({ verbose: true }));
