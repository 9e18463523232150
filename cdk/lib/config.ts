// Typed, validated configuration of the ensign deployment.
//
// The stack never reads raw JSON: `parseConfig` turns an unknown value (a config file, CDK context)
// into an `EnsignConfig` or throws a `ConfigError` listing every problem at once, so an operator
// fixes a file in one pass instead of one `cdk synth` per mistake.

/** A PCR0 (SHA-384 of the enclave image) as 96 lowercase hex characters. */
export const PCR0_HEX_LENGTH = 96;

/** The PCR0 every enclave reports in debug mode (the NSM zeroes the PCRs of a debug enclave). */
export const DEBUG_MODE_PCR0 = '0'.repeat(PCR0_HEX_LENGTH);

/**
 * x86_64 instance families that support Nitro Enclaves (AWS Nitro Enclaves user guide,
 * "Requirements": Nitro-based, Intel or AMD, at least 4 vCPUs; not T, U-, Mac, or bare-metal
 * sizes). The EIF is built for x86_64, so Graviton families are not offered.
 */
export const NITRO_ENCLAVE_FAMILIES: readonly string[] = [
  'c5', 'c5a', 'c5ad', 'c5d', 'c5n', 'c6a', 'c6i', 'c6id', 'c6in', 'c7a', 'c7i',
  'm5', 'm5a', 'm5ad', 'm5d', 'm5dn', 'm5n', 'm5zn', 'm6a', 'm6i', 'm6id', 'm6idn', 'm6in', 'm7a', 'm7i',
  'r5', 'r5a', 'r5ad', 'r5b', 'r5d', 'r5dn', 'r5n', 'r6a', 'r6i', 'r6id', 'r6idn', 'r6in', 'r7a', 'r7i', 'r7iz',
];

/** vCPUs per size of the families above (4 is the Nitro Enclaves minimum). */
export const VCPUS_BY_SIZE: Readonly<Record<string, number>> = {
  xlarge: 4, '2xlarge': 8, '4xlarge': 16, '8xlarge': 32, '9xlarge': 36, '12xlarge': 48,
  '16xlarge': 64, '18xlarge': 72, '24xlarge': 96, '32xlarge': 128, '48xlarge': 192,
};

export type LoadBalancerScheme = 'internet-facing' | 'internal';

/**
 * The Aurora master user (`rds.Credentials.fromGeneratedSecret`). Only an administrator uses it,
 * for `ensign database provision`; the signers never get its secret.
 */
export const MASTER_DB_USER = 'ensign';

/** An unquoted PostgreSQL identifier as ensign writes it: lowercase, at most 63 bytes (NAMEDATALEN - 1). */
export const PG_IDENTIFIER = /^[a-z_][a-z0-9_]{0,62}$/;

export interface DatabaseConfig {
  /** Aurora Serverless v2 capacity range, in ACUs (0.5 steps). */
  readonly minCapacityAcu: number;
  readonly maxCapacityAcu: number;
  /** Add a reader in another AZ (fail-over target). Recommended outside development. */
  readonly multiAz: boolean;
  /**
   * The least-privilege PostgreSQL role the enclave signs as (no DDL, no DELETE), created by an
   * administrator with `ensign database provision --role`; the enclave image's DB_USER.
   */
  readonly signerRole: string;
  /** The schema of the slashing-protection tables (`ensign database provision --schema`, the image's DB_SCHEMA). */
  readonly schema: string;
}

export interface EnsignConfig {
  /** CloudFormation stack name. */
  readonly stackName: string;
  /** Where the stack goes. Explicit, so `cdk synth` needs no AWS call. */
  readonly account: string;
  readonly region: string;
  /** Availability zones of `region` to use (explicit, so synth needs no lookup). At least 2. */
  readonly availabilityZones: readonly string[];
  readonly vpcCidr: string;
  /** NAT gateways: 1 is cheaper; one per AZ survives an AZ outage. */
  readonly natGateways: number;
  /** Interface VPC endpoints (KMS, SSM, Secrets Manager, CloudWatch Logs) so that traffic stays in the VPC. */
  readonly vpcEndpoints: boolean;

  /**
   * Development mode: the enclave runs in debug mode (`ensign-host --enclave-debug-mode=true`; console readable from the host) and the
   * KMS key policy accepts the all-zero PCR0 that every debug enclave reports, i.e. ANY debug
   * enclave image can decrypt the keys. Never with real validator keys.
   */
  readonly devMode: boolean;
  /** PCR0 of the production EIF (`nitro-cli describe-eif`), 96 hex characters. Required unless devMode. */
  readonly pcr0?: string;
  /**
   * A KMS key in another account (multi-account custody). When set, no key is created here; the
   * instance role gets an IAM `kms:Decrypt` statement with the same attestation condition, and the
   * other account must set the key policy shown in the `ExternalKeyPolicyStatement` output.
   */
  readonly kmsKeyArn?: string;

  readonly instanceType: string;
  readonly minInstances: number;
  readonly maxInstances: number;
  readonly enclaveCpus: number;
  readonly enclaveMemoryMib: number;

  readonly loadBalancerScheme: LoadBalancerScheme;
  /** CIDRs allowed to reach the NLB on 443 (validator clients). Required for internet-facing. */
  readonly allowedClientCidrs: readonly string[];

  /** Ethereum network passed to ensign inside the enclave. */
  readonly network: string;
  /** Release folder in the artifacts bucket: `s3://<bucket>/releases/<artifactsVersion>/{ensign-host,ensign.eif}`. */
  readonly artifactsVersion: string;

  readonly database: DatabaseConfig;
  /** Optional e-mail subscribed to the alarm topic. */
  readonly alarmEmail?: string;
  /** CloudWatch Logs retention in days. */
  readonly logRetentionDays: number;
}

/** Every problem found in a configuration, one per line. */
export class ConfigError extends Error {
  constructor(public readonly problems: readonly string[]) {
    super(`invalid ensign configuration:\n  - ${problems.join('\n  - ')}`);
    this.name = 'ConfigError';
  }
}

const KNOWN_KEYS = new Set([
  'stackName', 'account', 'region', 'availabilityZones', 'vpcCidr', 'natGateways', 'vpcEndpoints',
  'devMode', 'pcr0', 'kmsKeyArn', 'instanceType', 'minInstances', 'maxInstances',
  'enclaveCpus', 'enclaveMemoryMib', 'loadBalancerScheme', 'allowedClientCidrs', 'network',
  'artifactsVersion', 'database', 'alarmEmail', 'logRetentionDays',
]);
const KNOWN_DB_KEYS = new Set(['minCapacityAcu', 'maxCapacityAcu', 'multiAz', 'signerRole', 'schema']);

/** Retention values CloudWatch Logs accepts (PutRetentionPolicy). */
const LOG_RETENTION_DAYS = [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653];

const DEFAULTS = {
  vpcCidr: '10.40.0.0/16',
  natGateways: 1,
  vpcEndpoints: true,
  devMode: false,
  instanceType: 'c6i.xlarge',
  minInstances: 2,
  maxInstances: 2,
  enclaveCpus: 2,
  enclaveMemoryMib: 2048,
  loadBalancerScheme: 'internal' as LoadBalancerScheme,
  network: 'mainnet',
  logRetentionDays: 365,
  database: { minCapacityAcu: 0.5, maxCapacityAcu: 4, multiAz: true, signerRole: 'ensign_signer', schema: 'ensign' },
};

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function cidrOk(s: string): boolean {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(s);
  if (!m) return false;
  const octets = m.slice(1, 5).map(Number);
  return octets.every((o) => o <= 255) && Number(m[5]) <= 32;
}

/**
 * Parses and validates a configuration. Unknown keys are errors (a misspelt `pcr0` must not
 * silently fall back to a default). Throws `ConfigError` with every problem found.
 */
export function parseConfig(raw: unknown): EnsignConfig {
  const problems: string[] = [];
  if (!isObject(raw)) {
    throw new ConfigError(['configuration must be a JSON object']);
  }
  for (const k of Object.keys(raw)) {
    if (!KNOWN_KEYS.has(k)) problems.push(`unknown key "${k}"`);
  }

  const str = (k: string, required: boolean): string | undefined => {
    const v = raw[k];
    if (v === undefined) {
      if (required) problems.push(`"${k}" is required`);
      return undefined;
    }
    if (typeof v !== 'string' || v.length === 0) {
      problems.push(`"${k}" must be a non-empty string`);
      return undefined;
    }
    return v;
  };
  const num = (k: string, dflt: number, src: Record<string, unknown> = raw, prefix = ''): number => {
    const v = src[k];
    if (v === undefined) return dflt;
    if (typeof v !== 'number' || !Number.isFinite(v)) {
      problems.push(`"${prefix}${k}" must be a number`);
      return dflt;
    }
    return v;
  };
  const bool = (k: string, dflt: boolean, src: Record<string, unknown> = raw, prefix = ''): boolean => {
    const v = src[k];
    if (v === undefined) return dflt;
    if (typeof v !== 'boolean') {
      problems.push(`"${prefix}${k}" must be true or false`);
      return dflt;
    }
    return v;
  };
  const nestedStr = (k: string, dflt: string, src: Record<string, unknown>, prefix: string): string => {
    const v = src[k];
    if (v === undefined) return dflt;
    if (typeof v !== 'string' || v.length === 0) {
      problems.push(`"${prefix}${k}" must be a non-empty string`);
      return dflt;
    }
    return v;
  };
  const strList = (k: string): string[] => {
    const v = raw[k];
    if (v === undefined) return [];
    if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) {
      problems.push(`"${k}" must be a list of strings`);
      return [];
    }
    return v as string[];
  };

  const stackName = str('stackName', true) ?? 'invalid';
  if (stackName !== 'invalid' && !/^[A-Za-z][A-Za-z0-9-]{0,127}$/.test(stackName)) {
    problems.push(`"stackName" must start with a letter and contain only letters, digits and hyphens (got "${stackName}")`);
  }
  const account = str('account', true) ?? '000000000000';
  if (!/^\d{12}$/.test(account)) problems.push(`"account" must be a 12-digit AWS account id (got "${account}")`);
  const region = str('region', true) ?? 'invalid';
  if (region !== 'invalid' && !/^[a-z]{2}(-gov)?-[a-z]+-\d$/.test(region)) {
    problems.push(`"region" must be an AWS region name such as eu-west-1 (got "${region}")`);
  }
  const availabilityZones = strList('availabilityZones');
  if (availabilityZones.length < 2) {
    problems.push('"availabilityZones" must list at least 2 zones of the region (the database and the load balancer need two)');
  }
  for (const az of availabilityZones) {
    if (!az.startsWith(region) || !/^[a-z]$/.test(az.slice(region.length))) {
      problems.push(`availability zone "${az}" is not in region "${region}"`);
    }
  }
  if (new Set(availabilityZones).size !== availabilityZones.length) {
    problems.push('"availabilityZones" lists a zone twice');
  }
  const vpcCidr = str('vpcCidr', false) ?? DEFAULTS.vpcCidr;
  if (!cidrOk(vpcCidr)) problems.push(`"vpcCidr" must be an IPv4 CIDR (got "${vpcCidr}")`);
  else if (Number(vpcCidr.split('/')[1]) > 20) problems.push(`"vpcCidr" must be /20 or larger to hold 3 subnet tiers (got "${vpcCidr}")`);
  const natGateways = num('natGateways', DEFAULTS.natGateways);
  if (!Number.isInteger(natGateways) || natGateways < 1 || natGateways > Math.max(1, availabilityZones.length)) {
    problems.push(`"natGateways" must be an integer from 1 to the number of availability zones (got ${natGateways})`);
  }
  const vpcEndpoints = bool('vpcEndpoints', DEFAULTS.vpcEndpoints);

  const devMode = bool('devMode', DEFAULTS.devMode);
  let pcr0 = str('pcr0', false);
  if (pcr0 !== undefined) {
    pcr0 = pcr0.toLowerCase();
    if (!new RegExp(`^[0-9a-f]{${PCR0_HEX_LENGTH}}$`).test(pcr0)) {
      problems.push(`"pcr0" must be exactly ${PCR0_HEX_LENGTH} hex characters (SHA-384), as printed by \`nitro-cli describe-eif\` (got ${pcr0.length} characters)`);
    } else if (!devMode && pcr0 === DEBUG_MODE_PCR0) {
      problems.push('"pcr0" is all zeros, the value every debug-mode enclave reports: it is only allowed with "devMode": true');
    }
  }
  if (!devMode && pcr0 === undefined) {
    problems.push('"pcr0" is required unless "devMode" is true: compute it with `nitro-cli describe-eif --eif-path ensign.eif` (docs/deploy-aws.md)');
  }
  if (devMode && pcr0 !== undefined && pcr0 !== DEBUG_MODE_PCR0) {
    problems.push('"devMode" runs the enclave in debug mode, whose PCR0 is all zeros: leave "pcr0" unset in devMode');
  }
  const kmsKeyArn = str('kmsKeyArn', false);
  if (kmsKeyArn !== undefined) {
    const m = /^arn:aws[a-z-]*:kms:([a-z0-9-]+):(\d{12}):key\/[0-9a-f-]{36}$|^arn:aws[a-z-]*:kms:([a-z0-9-]+):(\d{12}):key\/mrk-[0-9a-f]{32}$/.exec(kmsKeyArn);
    if (!m) {
      problems.push(`"kmsKeyArn" must be a KMS key ARN arn:aws:kms:<region>:<account>:key/<key-id> (aliases are not accepted: a key policy names one key) (got "${kmsKeyArn}")`);
    } else if ((m[1] ?? m[3]) !== region) {
      problems.push(`"kmsKeyArn" is in region ${m[1] ?? m[3]} but the stack is in ${region}: the enclave calls KMS in its own region`);
    }
  }

  const instanceType = str('instanceType', false) ?? DEFAULTS.instanceType;
  const [family, size] = instanceType.split('.');
  const vcpus = size !== undefined ? VCPUS_BY_SIZE[size] : undefined;
  if (!NITRO_ENCLAVE_FAMILIES.includes(family) || vcpus === undefined) {
    problems.push(`"instanceType" ${instanceType} is not a Nitro Enclaves capable x86_64 type of at least 4 vCPUs (families: ${NITRO_ENCLAVE_FAMILIES.join(', ')}; sizes: ${Object.keys(VCPUS_BY_SIZE).join(', ')})`);
  }
  const minInstances = num('minInstances', DEFAULTS.minInstances);
  const maxInstances = num('maxInstances', DEFAULTS.maxInstances);
  for (const [k, v] of [['minInstances', minInstances], ['maxInstances', maxInstances]] as const) {
    if (!Number.isInteger(v) || v < 1) problems.push(`"${k}" must be a positive integer (got ${v})`);
  }
  if (minInstances > maxInstances) {
    problems.push(`"minInstances" (${minInstances}) must not exceed "maxInstances" (${maxInstances})`);
  }
  const enclaveCpus = num('enclaveCpus', DEFAULTS.enclaveCpus);
  // Nitro Enclaves take whole cores (both hyper-threads), and CPU 0's core stays with the parent.
  if (!Number.isInteger(enclaveCpus) || enclaveCpus < 2 || enclaveCpus % 2 !== 0) {
    problems.push(`"enclaveCpus" must be an even integer >= 2 (enclaves take whole cores) (got ${enclaveCpus})`);
  } else if (vcpus !== undefined && enclaveCpus > vcpus - 2) {
    problems.push(`"enclaveCpus" ${enclaveCpus} leaves the parent of a ${instanceType} (${vcpus} vCPUs) without a core: at most ${vcpus - 2}`);
  }
  const enclaveMemoryMib = num('enclaveMemoryMib', DEFAULTS.enclaveMemoryMib);
  if (!Number.isInteger(enclaveMemoryMib) || enclaveMemoryMib < 512) {
    problems.push(`"enclaveMemoryMib" must be an integer >= 512 (the EIF is loaded into enclave memory) (got ${enclaveMemoryMib})`);
  }

  const schemeRaw = raw['loadBalancerScheme'] ?? DEFAULTS.loadBalancerScheme;
  let loadBalancerScheme: LoadBalancerScheme = DEFAULTS.loadBalancerScheme;
  if (schemeRaw === 'internet-facing' || schemeRaw === 'internal') loadBalancerScheme = schemeRaw;
  else problems.push(`"loadBalancerScheme" must be "internet-facing" or "internal" (got ${JSON.stringify(schemeRaw)})`);
  let allowedClientCidrs = strList('allowedClientCidrs');
  for (const c of allowedClientCidrs) {
    if (!cidrOk(c)) problems.push(`"allowedClientCidrs" entry "${c}" is not an IPv4 CIDR`);
  }
  if (loadBalancerScheme === 'internet-facing') {
    if (allowedClientCidrs.length === 0) {
      problems.push('"allowedClientCidrs" is required for an internet-facing load balancer: list the validator clients\' addresses');
    }
    if (allowedClientCidrs.includes('0.0.0.0/0')) {
      problems.push('"allowedClientCidrs" must not contain 0.0.0.0/0: a signer must not be open to the whole internet');
    }
  } else if (allowedClientCidrs.length === 0) {
    allowedClientCidrs = [vpcCidr];
  }

  const network = str('network', false) ?? DEFAULTS.network;
  if (!['mainnet', 'hoodi', 'sepolia', 'holesky', 'gnosis'].includes(network)) {
    problems.push(`"network" must be one of mainnet, hoodi, sepolia, holesky, gnosis (got "${network}")`);
  }
  const artifactsVersion = str('artifactsVersion', true) ?? 'invalid';
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(artifactsVersion)) {
    problems.push(`"artifactsVersion" must be 1-64 characters of letters, digits, '.', '_' or '-' (got "${artifactsVersion}")`);
  }

  let database: DatabaseConfig = DEFAULTS.database;
  const dbRaw = raw['database'];
  if (dbRaw !== undefined && !isObject(dbRaw)) {
    problems.push('"database" must be an object');
  } else if (isObject(dbRaw)) {
    for (const k of Object.keys(dbRaw)) {
      if (!KNOWN_DB_KEYS.has(k)) problems.push(`unknown key "database.${k}"`);
    }
    database = {
      minCapacityAcu: num('minCapacityAcu', DEFAULTS.database.minCapacityAcu, dbRaw, 'database.'),
      maxCapacityAcu: num('maxCapacityAcu', DEFAULTS.database.maxCapacityAcu, dbRaw, 'database.'),
      multiAz: bool('multiAz', DEFAULTS.database.multiAz, dbRaw, 'database.'),
      signerRole: nestedStr('signerRole', DEFAULTS.database.signerRole, dbRaw, 'database.'),
      schema: nestedStr('schema', DEFAULTS.database.schema, dbRaw, 'database.'),
    };
  }
  const acuOk = (v: number) => v >= 0.5 && v <= 256 && Number.isInteger(v * 2);
  if (!acuOk(database.minCapacityAcu) || !acuOk(database.maxCapacityAcu) || database.minCapacityAcu > database.maxCapacityAcu) {
    problems.push(`"database" capacity must be 0.5..256 ACUs in 0.5 steps with min <= max (got ${database.minCapacityAcu}..${database.maxCapacityAcu})`);
  }
  for (const k of ['signerRole', 'schema'] as const) {
    const v = database[k];
    if (!PG_IDENTIFIER.test(v)) {
      problems.push(`"database.${k}" must be a PostgreSQL identifier: a lowercase letter or '_', then lowercase letters, digits or '_', at most 63 characters (got "${v}")`);
    } else if (v.startsWith('pg_')) {
      problems.push(`"database.${k}" must not start with "pg_" (reserved by PostgreSQL) (got "${v}")`);
    }
  }
  if (database.signerRole === MASTER_DB_USER) {
    problems.push(`"database.signerRole" must not be "${MASTER_DB_USER}", the master user: the signers must never hold its rights`);
  } else if (database.signerRole === 'public') {
    problems.push('"database.signerRole" must not be "public" (reserved by PostgreSQL)');
  }

  const alarmEmail = str('alarmEmail', false);
  if (alarmEmail !== undefined && !/^[^@\s]+@[^@\s]+\.[^@\s]+$/.test(alarmEmail)) {
    problems.push(`"alarmEmail" is not an e-mail address (got "${alarmEmail}")`);
  }
  const logRetentionDays = num('logRetentionDays', DEFAULTS.logRetentionDays);
  if (!LOG_RETENTION_DAYS.includes(logRetentionDays)) {
    problems.push(`"logRetentionDays" must be one of CloudWatch's values ${LOG_RETENTION_DAYS.join(', ')} (got ${logRetentionDays})`);
  }

  if (problems.length > 0) throw new ConfigError(problems);
  return {
    stackName, account, region, availabilityZones, vpcCidr, natGateways, vpcEndpoints,
    devMode, pcr0, kmsKeyArn, instanceType, minInstances, maxInstances,
    enclaveCpus, enclaveMemoryMib, loadBalancerScheme, allowedClientCidrs, network,
    artifactsVersion, database, alarmEmail, logRetentionDays,
  };
}

/** The PCR0 the key policy pins: the configured one, or the debug-mode zeros in devMode. */
export function effectivePcr0(config: EnsignConfig): string {
  return config.devMode ? DEBUG_MODE_PCR0 : (config.pcr0 as string);
}
