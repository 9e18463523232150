// cdk-nag (AwsSolutions pack): no finding is left unexplained, and no suppression is stale.
import { Match } from 'aws-cdk-lib/assertions';
import { nagFindings, rawConfig, synth } from './helpers';

const variants: Record<string, Record<string, unknown>> = {
  production: rawConfig(),
  development: rawConfig({ devMode: true, pcr0: undefined }),
  'external KMS key, internet-facing, no interface endpoints': rawConfig({
    kmsKeyArn: 'arn:aws:kms:eu-west-1:333333333333:key/00000000-0000-0000-0000-000000000000',
    loadBalancerScheme: 'internet-facing', allowedClientCidrs: ['203.0.113.0/24'], vpcEndpoints: false,
    alarmEmail: 'ops@example.com',
  }),
};

describe.each(Object.entries(variants))('%s', (_name, raw) => {
  test('no unsuppressed AwsSolutions finding', () => {
    expect(nagFindings(synth(raw))).toEqual([]);
  });
});

test('every suppression answers a finding that occurs without it, and has a written reason', () => {
  const s = synth(rawConfig());
  const suppressed = new Set<string>();
  for (const resource of Object.values(s.template.toJSON().Resources) as any[]) {
    for (const rule of resource.Metadata?.cdk_nag?.rules_to_suppress ?? []) {
      expect(rule.reason.length).toBeGreaterThanOrEqual(40);
      suppressed.add(rule.id);
    }
  }
  expect(suppressed.size).toBeGreaterThan(0);
  const bare = synth(rawConfig(), false);
  const fired = new Set(nagFindings(bare).map((f) => /(AwsSolutions-[A-Z]+\d+)/.exec(f)?.[1]));
  for (const id of suppressed) {
    expect([id, fired.has(id)]).toEqual([id, true]);
  }
});

test('nag runs at all (a finding appears when a suppression is removed)', () => {
  const bare = synth(rawConfig(), false);
  bare.annotations.hasError('*', Match.stringLikeRegexp('AwsSolutions-IAM4'));
});
