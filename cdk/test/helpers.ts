// Test helpers: a valid base configuration and a synthesiser that uses the same feature flags as
// `cdk synth` (cdk.json's context) and the same cdk-nag aspect as bin/ensign.ts.
import * as fs from 'fs';
import * as path from 'path';
import * as cdk from 'aws-cdk-lib';
import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import { AwsSolutionsChecks } from 'cdk-nag';
import { parseConfig } from '../lib/config';
import { EnsignStack } from '../lib/ensign-stack';

export const PROD_PCR0 = 'ab'.repeat(48);

/** A valid production configuration; tests override single fields. */
export function rawConfig(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    stackName: 'ensign-test',
    account: '123456789012',
    region: 'eu-west-1',
    availabilityZones: ['eu-west-1a', 'eu-west-1b'],
    devMode: false,
    pcr0: PROD_PCR0,
    instanceType: 'c6i.xlarge',
    minInstances: 2,
    maxInstances: 3,
    enclaveCpus: 2,
    enclaveMemoryMib: 2048,
    loadBalancerScheme: 'internal',
    network: 'mainnet',
    artifactsVersion: 'v1',
    ...overrides,
  };
}

function cdkJsonContext(): Record<string, unknown> {
  const cdkJson = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'cdk.json'), 'utf8'));
  return cdkJson.context;
}

export interface Synth {
  stack: EnsignStack;
  template: Template;
  annotations: Annotations;
}

const cache = new Map<string, Synth>();

/** Synthesises the stack for a raw configuration (memoised: synthesis is slow). */
export function synth(raw: Record<string, unknown>, nagSuppressions = true): Synth {
  const key = JSON.stringify([raw, nagSuppressions]);
  const hit = cache.get(key);
  if (hit) return hit;
  const config = parseConfig(raw);
  const app = new cdk.App({ context: cdkJsonContext() });
  const stack = new EnsignStack(app, config.stackName, {
    stackName: config.stackName,
    env: { account: config.account, region: config.region },
    config,
    nagSuppressions,
  });
  cdk.Aspects.of(app).add(new AwsSolutionsChecks({ verbose: true }));
  const template = Template.fromStack(stack);
  const out = { stack, template, annotations: Annotations.fromStack(stack) };
  cache.set(key, out);
  return out;
}

/** Every cdk-nag finding (error or warning) left unsuppressed, as "rule at path" lines. */
export function nagFindings(s: Synth): string[] {
  // CdkNagValidationFailure (a rule that could not evaluate a property) counts too: an
  // unchecked rule is not a passed one.
  const pattern = Match.stringLikeRegexp('(AwsSolutions-|CdkNagValidationFailure)');
  const msgs = [...s.annotations.findError('*', pattern), ...s.annotations.findWarning('*', pattern)];
  return msgs.map((m) => `${m.id}: ${String(m.entry.data).split('\n')[0]}`);
}

/** The single resource of a type whose logical id starts with `prefix`. */
export function resourceByPrefix(t: Template, type: string, prefix: string): { id: string; props: any } {
  const all = t.findResources(type);
  const ids = Object.keys(all).filter((id) => id.startsWith(prefix));
  if (ids.length !== 1) throw new Error(`expected one ${type} with id ${prefix}*, found ${ids.join(', ') || 'none'}`);
  return { id: ids[0], props: all[ids[0]].Properties };
}
