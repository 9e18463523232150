// Configuration validation: every rule gives a clear error, all problems are reported at once,
// and valid files (the shipped examples) parse.
import * as fs from 'fs';
import * as path from 'path';
import { ConfigError, DEBUG_MODE_PCR0, effectivePcr0, parseConfig } from '../lib/config';
import { PROD_PCR0, rawConfig } from './helpers';

function problems(overrides: Record<string, unknown>, remove: string[] = []): string[] {
  const raw = rawConfig(overrides);
  for (const k of remove) delete raw[k];
  try {
    parseConfig(raw);
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return [...(e as ConfigError).problems];
  }
  return [];
}

function expectProblem(overrides: Record<string, unknown>, pattern: RegExp, remove: string[] = []): void {
  const p = problems(overrides, remove);
  expect(p.some((x) => pattern.test(x))).toBe(true);
  if (!p.some((x) => pattern.test(x))) throw new Error(`no problem matches ${pattern}: ${JSON.stringify(p)}`);
}

describe('valid configurations', () => {
  test('the base test configuration parses, with defaults filled in', () => {
    const c = parseConfig(rawConfig());
    expect(c.pcr0).toBe(PROD_PCR0);
    expect(c.vpcCidr).toBe('10.40.0.0/16');
    expect(c.allowedClientCidrs).toEqual(['10.40.0.0/16']); // internal NLB: the VPC
    expect(c.database).toEqual({ minCapacityAcu: 0.5, maxCapacityAcu: 4, multiAz: true, signerRole: 'ensign_signer', schema: 'ensign' });
    expect(effectivePcr0(c)).toBe(PROD_PCR0);
  });

  test('upper-case PCR0 is normalised to lower case', () => {
    expect(parseConfig(rawConfig({ pcr0: PROD_PCR0.toUpperCase() })).pcr0).toBe(PROD_PCR0);
  });

  test('the signer role and schema default to ensign_signer and ensign, and may be set', () => {
    expect(parseConfig(rawConfig({ database: { multiAz: false } })).database).toMatchObject({ signerRole: 'ensign_signer', schema: 'ensign', multiAz: false });
    const c = parseConfig(rawConfig({ database: { signerRole: '_signer_2', schema: 's'.repeat(63) } }));
    expect(c.database).toMatchObject({ signerRole: '_signer_2', schema: 's'.repeat(63) });
  });

  test('devMode needs no PCR0 and pins the debug-mode zeros', () => {
    const c = parseConfig(rawConfig({ devMode: true, pcr0: undefined }));
    expect(effectivePcr0(c)).toBe(DEBUG_MODE_PCR0);
  });

  test('config/example.json parses (devMode)', () => {
    const raw = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'config', 'example.json'), 'utf8'));
    expect(parseConfig(raw).devMode).toBe(true);
  });

  test('config/prod.example.json fails only on its PCR0 placeholder', () => {
    const raw = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'config', 'prod.example.json'), 'utf8'));
    let caught: ConfigError | undefined;
    try { parseConfig(raw); } catch (e) { caught = e as ConfigError; }
    expect(caught?.problems).toHaveLength(1);
    expect(caught?.problems[0]).toMatch(/"pcr0" must be exactly 96 hex characters/);
    raw.pcr0 = PROD_PCR0;
    expect(parseConfig(raw).kmsKeyArn).toMatch(/^arn:aws:kms:eu-west-1:333333333333:key\//);
  });
});

describe('invalid configurations give clear errors', () => {
  test('not an object', () => {
    expect(() => parseConfig([])).toThrow(/must be a JSON object/);
  });
  test('unknown keys are rejected (a misspelt key must not fall back to a default)', () => {
    expectProblem({ pcrO: PROD_PCR0 }, /unknown key "pcrO"/);
    expectProblem({ database: { minCapacityAcu: 1, maxCapacity: 2 } }, /unknown key "database.maxCapacity"/);
  });
  test('PCR0 required unless devMode', () => {
    expectProblem({}, /"pcr0" is required unless "devMode" is true/, ['pcr0']);
  });
  test('PCR0 must be 96 hex characters', () => {
    expectProblem({ pcr0: 'ab'.repeat(32) }, /exactly 96 hex characters.*got 64/);
    expectProblem({ pcr0: 'zz'.repeat(48) }, /exactly 96 hex characters/);
  });
  test('the all-zero (debug) PCR0 is refused outside devMode', () => {
    expectProblem({ pcr0: DEBUG_MODE_PCR0 }, /all zeros.*only allowed with "devMode": true/);
  });
  test('devMode with a real PCR0 is contradictory', () => {
    expectProblem({ devMode: true }, /leave "pcr0" unset in devMode/);
  });
  test('instance type must be Nitro Enclaves capable', () => {
    expectProblem({ instanceType: 't3.xlarge' }, /"instanceType" t3.xlarge is not a Nitro Enclaves capable/);
    expectProblem({ instanceType: 'c6i.large' }, /at least 4 vCPUs/);
    expectProblem({ instanceType: 'c7g.xlarge' }, /not a Nitro Enclaves capable x86_64/);
  });
  test('enclave CPUs: even, and a core left for the parent', () => {
    expectProblem({ enclaveCpus: 3 }, /even integer/);
    expectProblem({ enclaveCpus: 4 }, /leaves the parent of a c6i.xlarge \(4 vCPUs\) without a core: at most 2/);
    expect(problems({ enclaveCpus: 6, instanceType: 'c6i.2xlarge' })).toEqual([]);
  });
  test('enclave memory', () => {
    expectProblem({ enclaveMemoryMib: 256 }, /"enclaveMemoryMib" must be an integer >= 512/);
  });
  test('instance counts', () => {
    expectProblem({ minInstances: 0 }, /"minInstances" must be a positive integer/);
    expectProblem({ minInstances: 3, maxInstances: 2 }, /"minInstances" \(3\) must not exceed "maxInstances" \(2\)/);
    expectProblem({ minInstances: '2' }, /"minInstances" must be a number/);
  });
  test('account, region and zones', () => {
    expectProblem({ account: '1234' }, /12-digit AWS account id/);
    expectProblem({ region: 'Europe' }, /AWS region name/);
    expectProblem({ availabilityZones: ['eu-west-1a'] }, /at least 2 zones/);
    expectProblem({ availabilityZones: ['eu-west-1a', 'us-east-1b'] }, /"us-east-1b" is not in region "eu-west-1"/);
    expectProblem({ availabilityZones: ['eu-west-1a', 'eu-west-1a'] }, /lists a zone twice/);
  });
  test('network sizes', () => {
    expectProblem({ vpcCidr: '10.0.0.0/24' }, /must be \/20 or larger/);
    expectProblem({ vpcCidr: '10.0.0.300/16' }, /IPv4 CIDR/);
    expectProblem({ natGateways: 3 }, /"natGateways" must be an integer from 1 to the number of availability zones/);
  });
  test('internet-facing NLB needs an allowlist, and not the whole internet', () => {
    expectProblem({ loadBalancerScheme: 'internet-facing' }, /"allowedClientCidrs" is required for an internet-facing/);
    expectProblem({ loadBalancerScheme: 'internet-facing', allowedClientCidrs: ['0.0.0.0/0'] }, /must not contain 0.0.0.0\/0/);
    expectProblem({ loadBalancerScheme: 'public' }, /"internet-facing" or "internal"/);
    expectProblem({ allowedClientCidrs: ['10.1.2.3'] }, /is not an IPv4 CIDR/);
  });
  test('external KMS key ARN', () => {
    expectProblem({ kmsKeyArn: 'alias/validators' }, /"kmsKeyArn" must be a KMS key ARN.*aliases are not accepted/);
    expectProblem({ kmsKeyArn: 'arn:aws:kms:us-east-1:333333333333:key/00000000-0000-0000-0000-000000000000' }, /is in region us-east-1 but the stack is in eu-west-1/);
    expect(problems({ kmsKeyArn: 'arn:aws:kms:eu-west-1:333333333333:key/mrk-0123456789abcdef0123456789abcdef' })).toEqual([]);
  });
  test('network, artifacts version, database, e-mail, retention', () => {
    expectProblem({ network: 'goerli' }, /"network" must be one of/);
    expectProblem({ artifactsVersion: '../x' }, /"artifactsVersion" must be/);
    expectProblem({}, /"artifactsVersion" is required/, ['artifactsVersion']);
    expectProblem({ database: { minCapacityAcu: 4, maxCapacityAcu: 2 } }, /0.5..256 ACUs in 0.5 steps with min <= max/);
    expectProblem({ database: { minCapacityAcu: 0.7 } }, /0.5 steps/);
    expectProblem({ database: 'big' }, /"database" must be an object/);
    expectProblem({ alarmEmail: 'nobody' }, /"alarmEmail" is not an e-mail address/);
    expectProblem({ logRetentionDays: 10 }, /"logRetentionDays" must be one of CloudWatch's values/);
    expectProblem({ devMode: 'yes' }, /"devMode" must be true or false/);
  });
  test('signer role and schema are plain PostgreSQL identifiers', () => {
    for (const k of ['signerRole', 'schema']) {
      for (const bad of ['Ensign', '1ensign', 'ensign-signer', 'ensign signer', 'ensign"', 'é', 'x'.repeat(64)]) {
        expectProblem({ database: { [k]: bad } }, new RegExp(`"database.${k}" must be a PostgreSQL identifier: a lowercase letter or '_'.*at most 63 characters \\(got "${bad.replace(/"/g, '\\"')}"\\)`));
      }
      expectProblem({ database: { [k]: '' } }, new RegExp(`"database.${k}" must be a non-empty string`));
      expectProblem({ database: { [k]: 7 } }, new RegExp(`"database.${k}" must be a non-empty string`));
      expectProblem({ database: { [k]: 'pg_ensign' } }, new RegExp(`"database.${k}" must not start with "pg_"`));
    }
  });
  test('the signer role is never the master user', () => {
    expectProblem({ database: { signerRole: 'ensign' } }, /"database.signerRole" must not be "ensign", the master user/);
    expectProblem({ database: { signerRole: 'public' } }, /"database.signerRole" must not be "public"/);
    expect(problems({ database: { schema: 'ensign', signerRole: 'ensign_signer' } })).toEqual([]);
    expect(problems({ database: { schema: 'public' } })).toEqual([]);
  });
  test('every problem is reported at once', () => {
    const p = problems({ account: 'x', pcr0: 'short', instanceType: 't3.micro' });
    expect(p.length).toBeGreaterThanOrEqual(3);
  });
});

describe('the app entry point (bin/ensign.ts)', () => {
  const { spawnSync } = require('child_process') as typeof import('child_process');
  const os = require('os') as typeof import('os');

  function runApp(config: unknown): { status: number | null; stderr: string } {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ensign-cdk-'));
    const file = path.join(dir, 'config.json');
    fs.writeFileSync(file, JSON.stringify(config));
    const r = spawnSync(process.execPath, ['-r', 'ts-node/register/transpile-only', path.join(__dirname, '..', 'bin', 'ensign.ts')], {
      cwd: path.join(__dirname, '..'),
      env: { ...process.env, CDK_CONTEXT_JSON: JSON.stringify({ config: file }), CDK_OUTDIR: path.join(dir, 'out') },
      encoding: 'utf8',
    });
    fs.rmSync(dir, { recursive: true, force: true });
    return { status: r.status, stderr: r.stderr };
  }

  test('an invalid configuration file stops synthesis with every problem listed', () => {
    const r = runApp(rawConfig({ pcr0: 'abc', instanceType: 't3.micro' }));
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/invalid ensign configuration/);
    expect(r.stderr).toMatch(/"pcr0" must be exactly 96 hex characters/);
    expect(r.stderr).toMatch(/"instanceType" t3.micro/);
  });
});
