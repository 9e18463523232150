// The synthesised template has each property docs/deploy-aws.md promises (issue 8, item 3).
import { Match, Template } from 'aws-cdk-lib/assertions';
import { DEBUG_MODE_PCR0 } from '../lib/config';
import { IMAGE_SHA384_CONDITION } from '../lib/ensign-stack';
import { PROD_PCR0, rawConfig, resourceByPrefix, synth } from './helpers';

const prod = () => synth(rawConfig()).template;
const dev = () => synth(rawConfig({ devMode: true, pcr0: undefined })).template;
const EXTERNAL_KEY = 'arn:aws:kms:eu-west-1:333333333333:key/00000000-0000-0000-0000-000000000000';
const external = () => synth(rawConfig({ kmsKeyArn: EXTERNAL_KEY })).template;
const publicNlb = () => synth(rawConfig({ loadBalancerScheme: 'internet-facing', allowedClientCidrs: ['203.0.113.0/24'] })).template;

/** The launch template's user data as one string (tokens shown as their JSON). */
function userData(t: Template): string {
  const lt = resourceByPrefix(t, 'AWS::EC2::LaunchTemplate', 'SignerLaunchTemplate');
  const join = lt.props.LaunchTemplateData.UserData['Fn::Base64']['Fn::Join'];
  return join[1].map((p: unknown) => (typeof p === 'string' ? p : JSON.stringify(p))).join(join[0]);
}

/** The validator-key KMS key's policy statements. */
function keyStatements(t: Template): any[] {
  const keys = t.findResources('AWS::KMS::Key', { Properties: { Description: Match.stringLikeRegexp('encrypts validator keystores') } });
  const ids = Object.keys(keys);
  expect(ids).toHaveLength(1);
  return keys[ids[0]].Properties.KeyPolicy.Statement;
}

function roleId(t: Template): string {
  return resourceByPrefix(t, 'AWS::IAM::Role', 'InstanceRole').id;
}

describe('network', () => {
  test('VPC with public, private-with-NAT and isolated subnets in the configured zones, flow logs on', () => {
    const t = prod();
    t.resourceCountIs('AWS::EC2::VPC', 1);
    t.resourceCountIs('AWS::EC2::NatGateway', 1);
    t.resourceCountIs('AWS::EC2::Subnet', 6);
    t.hasResourceProperties('AWS::EC2::Subnet', { AvailabilityZone: 'eu-west-1a', Tags: Match.arrayWith([{ Key: 'aws-cdk:subnet-type', Value: 'Private' }]) });
    t.hasResourceProperties('AWS::EC2::Subnet', { AvailabilityZone: 'eu-west-1b', Tags: Match.arrayWith([{ Key: 'aws-cdk:subnet-type', Value: 'Isolated' }]) });
    t.hasResourceProperties('AWS::EC2::FlowLog', { TrafficType: 'ALL', LogDestinationType: 'cloud-watch-logs' });
  });

  test('KMS is reached through a private interface endpoint open only to the signers', () => {
    const t = prod();
    t.hasResourceProperties('AWS::EC2::VPCEndpoint', {
      ServiceName: 'com.amazonaws.eu-west-1.kms', VpcEndpointType: 'Interface', PrivateDnsEnabled: true,
    });
    const sg = resourceByPrefix(t, 'AWS::EC2::SecurityGroup', 'EndpointsSg');
    expect(sg.props.SecurityGroupIngress ?? []).toEqual([]);
    t.hasResourceProperties('AWS::EC2::SecurityGroupIngress', {
      GroupId: { 'Fn::GetAtt': [sg.id, 'GroupId'] }, FromPort: 443, ToPort: 443,
      SourceSecurityGroupId: { 'Fn::GetAtt': [resourceByPrefix(t, 'AWS::EC2::SecurityGroup', 'SignerSg').id, 'GroupId'] },
    });
  });

  test('no interface endpoints when vpcEndpoints is false', () => {
    const t = synth(rawConfig({ vpcEndpoints: false })).template;
    t.resourcePropertiesCountIs('AWS::EC2::VPCEndpoint', { VpcEndpointType: 'Interface' }, 0);
  });
});

describe('load balancer', () => {
  test('internal NLB by default, TCP 443 passthrough to 8443, HTTPS health check on /upcheck', () => {
    const t = prod();
    t.hasResourceProperties('AWS::ElasticLoadBalancingV2::LoadBalancer', { Type: 'network', Scheme: 'internal' });
    t.hasResourceProperties('AWS::ElasticLoadBalancingV2::Listener', { Port: 443, Protocol: 'TCP' });
    t.resourcePropertiesCountIs('AWS::ElasticLoadBalancingV2::Listener', { Protocol: 'TLS' }, 0);
    t.hasResourceProperties('AWS::ElasticLoadBalancingV2::TargetGroup', {
      Port: 8443, Protocol: 'TCP',
      HealthCheckProtocol: 'HTTPS', HealthCheckPath: '/upcheck', HealthCheckPort: 'traffic-port',
      Matcher: { HttpCode: '200' },
    });
  });

  test('internet-facing NLB in public subnets admits only the allowed client CIDRs', () => {
    const t = publicNlb();
    t.hasResourceProperties('AWS::ElasticLoadBalancingV2::LoadBalancer', { Type: 'network', Scheme: 'internet-facing' });
    const sg = resourceByPrefix(t, 'AWS::EC2::SecurityGroup', 'LoadBalancerSg');
    expect(sg.props.SecurityGroupIngress).toEqual([
      expect.objectContaining({ CidrIp: '203.0.113.0/24', FromPort: 443, ToPort: 443, IpProtocol: 'tcp' }),
    ]);
  });

  test('signer instances accept only 8443 from the NLB: no SSH, no other ingress', () => {
    const t = prod();
    const signerSg = resourceByPrefix(t, 'AWS::EC2::SecurityGroup', 'SignerSg');
    expect(signerSg.props.SecurityGroupIngress ?? []).toEqual([]);
    const ingress = t.findResources('AWS::EC2::SecurityGroupIngress', { Properties: { GroupId: { 'Fn::GetAtt': [signerSg.id, 'GroupId'] } } });
    const rules = Object.values(ingress).map((r: any) => r.Properties);
    expect(rules).toHaveLength(1);
    expect(rules[0]).toMatchObject({
      FromPort: 8443, ToPort: 8443, IpProtocol: 'tcp',
      SourceSecurityGroupId: { 'Fn::GetAtt': [resourceByPrefix(t, 'AWS::EC2::SecurityGroup', 'LoadBalancerSg').id, 'GroupId'] },
    });
    for (const r of Object.values(t.findResources('AWS::EC2::SecurityGroupIngress')) as any[]) {
      expect(r.Properties.FromPort).not.toBe(22);
    }
  });
});

describe('signer instances', () => {
  test('launch template: enclave enabled, IMDSv2 only with hop limit 1, no key pair, encrypted root volume', () => {
    const t = prod();
    const lt = resourceByPrefix(t, 'AWS::EC2::LaunchTemplate', 'SignerLaunchTemplate').props.LaunchTemplateData;
    expect(lt.EnclaveOptions).toEqual({ Enabled: true });
    expect(lt.MetadataOptions).toMatchObject({ HttpTokens: 'required', HttpPutResponseHopLimit: 1, HttpEndpoint: 'enabled' });
    expect(lt.KeyName).toBeUndefined();
    expect(lt.InstanceType).toBe('c6i.xlarge');
    expect(lt.IamInstanceProfile).toBeDefined();
    expect(lt.BlockDeviceMappings[0].Ebs).toMatchObject({ Encrypted: true, VolumeType: 'gp3' });
  });

  test('auto scaling group: configured sizes, private subnets, ELB health checks, rolling updates', () => {
    const t = prod();
    t.hasResourceProperties('AWS::AutoScaling::AutoScalingGroup', { MinSize: '2', MaxSize: '3', HealthCheckType: 'ELB', DesiredCapacity: Match.absent() });
    t.hasResource('AWS::AutoScaling::AutoScalingGroup', { UpdatePolicy: { AutoScalingRollingUpdate: Match.objectLike({ MaxBatchSize: 1, MinInstancesInService: 1 }) } });
  });

  test('instance role: SSM managed instance core, key table read, release read, database secret read', () => {
    const t = prod();
    t.hasResourceProperties('AWS::IAM::Role', {
      AssumeRolePolicyDocument: { Statement: [Match.objectLike({ Principal: { Service: 'ec2.amazonaws.com' } })] },
      ManagedPolicyArns: [{ 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':iam::aws:policy/AmazonSSMManagedInstanceCore']] }],
    });
    const policies = Object.values(t.findResources('AWS::IAM::Policy', { Properties: { Roles: [{ Ref: roleId(t) }] } })) as any[];
    const actions = policies.flatMap((p) => p.Properties.PolicyDocument.Statement.flatMap((s: any) => ([] as string[]).concat(s.Action)));
    expect(actions).toEqual(expect.arrayContaining(['dynamodb:Scan', 's3:GetObject', 'secretsmanager:GetSecretValue', 'logs:PutLogEvents']));
    // Same-account key: kms:Decrypt comes only from the key policy, with its condition.
    expect(actions).not.toContain('kms:*');
    const decrypts = policies.flatMap((p) => p.Properties.PolicyDocument.Statement).filter((s: any) => ([] as string[]).concat(s.Action).includes('kms:Decrypt'));
    for (const s of decrypts) {
      expect(JSON.stringify(s.Resource)).toMatch(/OpsKey/); // only the logs/artifacts key
    }
  });

  test('ensign-host gets the Aurora secret: --db-secret-arn in user data, GetSecretValue on that secret only', () => {
    const t = prod();
    // The cluster's secret as RDS attached it (JSON with username, password, host, …).
    const attachment = resourceByPrefix(t, 'AWS::SecretsManager::SecretTargetAttachment', 'SlashingDbSecretAttachment');
    expect(userData(t)).toMatch(/ExecStart=.* --db-proxy-port 5432 --db-secret-arn \{"Ref":"SlashingDbSecretAttachment[0-9A-F]+"\}/);
    expect(userData(t)).toContain(`--db-secret-arn {"Ref":"${attachment.id}"}`);
    // Every statement of the instance role that names a Secrets Manager action names exactly
    // that secret, and grants no more than reading it.
    const policies = Object.values(t.findResources('AWS::IAM::Policy', { Properties: { Roles: [{ Ref: roleId(t) }] } })) as any[];
    const statements = policies.flatMap((p) => p.Properties.PolicyDocument.Statement);
    const secretStatements = statements.filter((s: any) => ([] as string[]).concat(s.Action).some((a) => a.startsWith('secretsmanager:')));
    expect(secretStatements).toHaveLength(1);
    expect(secretStatements[0]).toMatchObject({
      Effect: 'Allow',
      Action: ['secretsmanager:DescribeSecret', 'secretsmanager:GetSecretValue'],
      Resource: { Ref: attachment.id },
    });
    expect(JSON.stringify(statements)).not.toMatch(/secretsmanager:\*/);
  });

  test('user data installs nitro-cli, sizes the allocator, fetches the release, checks PCR0, runs ensign-host under systemd', () => {
    const ud = userData(prod());
    expect(ud).toContain('dnf install -y aws-nitro-enclaves-cli');
    expect(ud).toMatch(/memory_mib: 2048\ncpu_count: 2/);
    expect(ud).toContain('systemctl enable --now nitro-enclaves-allocator.service');
    expect(ud).toMatch(/aws s3 cp --region eu-west-1 s3:\/\/.*\/releases\/v1\/ensign.eif \/opt\/ensign\/ensign.eif/);
    expect(ud).toContain(`if [ "\${actual_pcr0,,}" != "${PROD_PCR0}" ]; then`);
    expect(ud).toContain('[Service]');
    expect(ud).toMatch(/ExecStart=\/opt\/ensign\/ensign-host --listen 0.0.0.0:8443 --enclave-cid 16 --data-port 5000 --control-port 5001 --kms-proxy-port 8000 --region eu-west-1 --keys-table .* --eif \/opt\/ensign\/ensign.eif --enclave-cpus 2 --enclave-memory-mib 2048 --db-endpoint .* --db-proxy-port 5432 --db-secret-arn /);
    expect(ud).toContain('User=ensign-host');
    expect(ud).toContain('Restart=always');
    expect(ud).toContain('systemctl enable --now ensign-host.service');
    expect(ud).not.toContain('--enclave-debug-mode');
  });
});

describe('validator-key KMS key', () => {
  test('Decrypt only for the instance role and only with the configured PCR0 (ImageSha384)', () => {
    const t = prod();
    const st = keyStatements(t);
    const decrypt = st.filter((s) => ([] as string[]).concat(s.Action).some((a: string) => a === 'kms:Decrypt' || a === 'kms:*' || a.startsWith('kms:Decrypt')));
    expect(decrypt).toHaveLength(1);
    expect(decrypt[0]).toMatchObject({
      Effect: 'Allow',
      Action: 'kms:Decrypt',
      Principal: { AWS: { 'Fn::GetAtt': [roleId(t), 'Arn'] } },
      Condition: { StringEqualsIgnoreCase: { [IMAGE_SHA384_CONDITION]: PROD_PCR0 } },
    });
  });

  test('the account administers and encrypts but cannot decrypt, re-encrypt or grant', () => {
    const st = keyStatements(prod());
    const root = st.find((s) => s.Sid === 'AccountAdministersAndEncryptsButCannotDecrypt');
    const actions: string[] = ([] as string[]).concat(root.Action);
    expect(actions).toContain('kms:Encrypt');
    expect(actions).toContain('kms:Put*'); // PutKeyPolicy: KMS refuses a policy that locks its creator out
    // IAM action patterns: '*' matches any run of characters.
    const covers = (pattern: string, action: string) => new RegExp(`^${pattern.replace(/\*/g, '.*')}$`, 'i').test(action);
    for (const forbidden of ['kms:Decrypt', 'kms:ReEncryptFrom', 'kms:ReEncryptTo', 'kms:CreateGrant', 'kms:GenerateDataKey', 'kms:GenerateDataKeyPair']) {
      expect(actions.filter((a) => covers(a, forbidden))).toEqual([]);
    }
    // Every statement that allows Decrypt carries the attestation condition.
    for (const s of st.filter((x) => x.Effect === 'Allow' && ([] as string[]).concat(x.Action).some((a) => covers(a, 'kms:Decrypt')))) {
      expect(s.Condition?.StringEqualsIgnoreCase?.[IMAGE_SHA384_CONDITION]).toBe(PROD_PCR0);
    }
    expect(st.find((s) => s.Sid === 'DenyGrants')).toMatchObject({ Effect: 'Deny', Action: 'kms:CreateGrant', Principal: { AWS: '*' } });
    prod().hasResourceProperties('AWS::KMS::Key', { Description: Match.stringLikeRegexp('validator'), EnableKeyRotation: true });
  });

  test('development mode: debug enclave, all-zero PCR0, loud warning', () => {
    const s = synth(rawConfig({ devMode: true, pcr0: undefined }));
    const decrypt = keyStatements(s.template).find((x) => x.Action === 'kms:Decrypt');
    expect(decrypt.Condition.StringEqualsIgnoreCase[IMAGE_SHA384_CONDITION]).toBe(DEBUG_MODE_PCR0);
    expect(userData(dev())).toMatch(/--enclave-debug-mode=true/);
    expect(userData(dev())).toContain('WARNING: devMode');
    s.template.hasOutput('DevModeWarning', { Value: Match.stringLikeRegexp('DEVELOPMENT MODE') });
    s.annotations.hasWarning('*', Match.stringLikeRegexp('DEVELOPMENT MODE'));
    expect(Object.keys(prod().findOutputs('DevModeWarning'))).toHaveLength(0);
  });

  test('key in another account: no key created, IAM Decrypt with the same condition, key policy statement as output', () => {
    const t = external();
    expect(Object.keys(t.findResources('AWS::KMS::Key', { Properties: { Description: Match.stringLikeRegexp('encrypts validator keystores') } }))).toHaveLength(0);
    t.hasResourceProperties('AWS::IAM::Policy', {
      Roles: [{ Ref: roleId(t) }],
      PolicyDocument: { Statement: Match.arrayWith([{
        Sid: 'DecryptOnlyFromAttestedEnclave', Effect: 'Allow', Action: 'kms:Decrypt', Resource: EXTERNAL_KEY,
        Condition: { StringEqualsIgnoreCase: { [IMAGE_SHA384_CONDITION]: PROD_PCR0 } },
      }]) },
    });
    const out = t.findOutputs('ExternalKeyPolicyStatement');
    const text = JSON.stringify(out);
    expect(text).toContain(IMAGE_SHA384_CONDITION);
    expect(text).toContain(PROD_PCR0);
    t.hasOutput('ValidatorKeysKeyArn', { Value: EXTERNAL_KEY });
  });
});

describe('key records and database', () => {
  test('DynamoDB table keyed by pubkey, point-in-time recovery, encrypted, protected from deletion', () => {
    prod().hasResourceProperties('AWS::DynamoDB::Table', {
      KeySchema: [{ AttributeName: 'pubkey', KeyType: 'HASH' }],
      AttributeDefinitions: [{ AttributeName: 'pubkey', AttributeType: 'S' }],
      PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
      SSESpecification: { SSEEnabled: true },
      DeletionProtectionEnabled: true,
    });
  });

  test('Aurora PostgreSQL Serverless v2, encrypted, isolated subnets, generated secret readable by the role', () => {
    const t = prod();
    t.hasResourceProperties('AWS::RDS::DBCluster', {
      Engine: 'aurora-postgresql', StorageEncrypted: true, DeletionProtection: true,
      ServerlessV2ScalingConfiguration: { MinCapacity: 0.5, MaxCapacity: 4 },
      EnableCloudwatchLogsExports: ['postgresql'],
    });
    t.resourcePropertiesCountIs('AWS::RDS::DBInstance', { DBInstanceClass: 'db.serverless' }, 2);
    t.hasResourceProperties('AWS::RDS::DBSubnetGroup', {
      SubnetIds: Match.arrayWith([{ Ref: Match.stringLikeRegexp('VpcdatabaseSubnet') }]),
    });
    t.hasResourceProperties('AWS::SecretsManager::Secret', { GenerateSecretString: Match.objectLike({ SecretStringTemplate: '{"username":"ensign"}' }) });
    t.hasResourceProperties('AWS::IAM::Policy', {
      Roles: [{ Ref: roleId(t) }],
      PolicyDocument: { Statement: Match.arrayWith([Match.objectLike({ Action: ['secretsmanager:DescribeSecret', 'secretsmanager:GetSecretValue'] })]) },
    });
  });

  test('database reachable only from the signer instances', () => {
    const t = prod();
    const dbSg = resourceByPrefix(t, 'AWS::EC2::SecurityGroup', 'DatabaseSg');
    expect(dbSg.props.SecurityGroupIngress ?? []).toEqual([]);
    const ingress = Object.values(t.findResources('AWS::EC2::SecurityGroupIngress', { Properties: { GroupId: { 'Fn::GetAtt': [dbSg.id, 'GroupId'] } } })) as any[];
    expect(ingress).toHaveLength(1);
    expect(ingress[0].Properties).toMatchObject({
      FromPort: 5432, ToPort: 5432,
      SourceSecurityGroupId: { 'Fn::GetAtt': [resourceByPrefix(t, 'AWS::EC2::SecurityGroup', 'SignerSg').id, 'GroupId'] },
    });
  });

  test('single-AZ database when multiAz is false', () => {
    const t = synth(rawConfig({ database: { multiAz: false } })).template;
    t.resourcePropertiesCountIs('AWS::RDS::DBInstance', { DBInstanceClass: 'db.serverless' }, 1);
  });
});

describe('logs and alarms', () => {
  test('encrypted log groups with the configured retention', () => {
    const t = synth(rawConfig({ logRetentionDays: 90 })).template;
    for (const name of ['/ensign/ensign-test/ensign-host', '/ensign/ensign-test/boot', '/aws/rds/cluster/ensign-test-slashing/postgresql']) {
      t.hasResourceProperties('AWS::Logs::LogGroup', { LogGroupName: name, RetentionInDays: 90, KmsKeyId: Match.anyValue() });
    }
  });

  test('alarms on NLB health and ASG capacity notify the encrypted topic', () => {
    const t = prod();
    const topic = resourceByPrefix(t, 'AWS::SNS::Topic', 'AlarmTopic');
    expect(topic.props.KmsMasterKeyId).toBeDefined();
    t.hasResourceProperties('AWS::CloudWatch::Alarm', {
      Namespace: 'AWS/NetworkELB', MetricName: 'UnHealthyHostCount', Threshold: 0, ComparisonOperator: 'GreaterThanThreshold', AlarmActions: [{ Ref: topic.id }],
    });
    t.hasResourceProperties('AWS::CloudWatch::Alarm', {
      Namespace: 'AWS/NetworkELB', MetricName: 'HealthyHostCount', Threshold: 2, ComparisonOperator: 'LessThanThreshold', AlarmActions: [{ Ref: topic.id }],
    });
    t.hasResourceProperties('AWS::CloudWatch::Alarm', {
      Namespace: 'AWS/AutoScaling', MetricName: 'GroupInServiceInstances', Threshold: 2, ComparisonOperator: 'LessThanThreshold', AlarmActions: [{ Ref: topic.id }],
    });
    t.hasResourceProperties('AWS::AutoScaling::AutoScalingGroup', { NotificationConfigurations: Match.anyValue(), MetricsCollection: Match.anyValue() });
  });

  test('alarm e-mail subscription when configured', () => {
    synth(rawConfig({ alarmEmail: 'ops@example.com' })).template.hasResourceProperties('AWS::SNS::Subscription', { Protocol: 'email', Endpoint: 'ops@example.com' });
  });
});
