// The ensign deployment: validator clients -> NLB (TCP 443, TLS passed through) -> ensign-host on
// enclave-enabled instances (8443) -> vsock -> ensign in a Nitro Enclave, which decrypts the
// validator keys with KMS only for its attested image (PCR0 in the key policy) and records every
// block and attestation in one shared Aurora PostgreSQL before it signs, so the instances behind
// the NLB can never both sign conflicting messages.

import * as cdk from 'aws-cdk-lib';
import * as autoscaling from 'aws-cdk-lib/aws-autoscaling';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cwActions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as elbv2 from 'aws-cdk-lib/aws-elasticloadbalancingv2';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as rds from 'aws-cdk-lib/aws-rds';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subs from 'aws-cdk-lib/aws-sns-subscriptions';
import { NagSuppressions } from 'cdk-nag';
import { Construct } from 'constructs';

import { EnsignConfig, MASTER_DB_USER, effectivePcr0 } from './config';
import { SIGNER_PORT, userDataLines } from './user-data';

/** The KMS condition key that carries the enclave image's PCR0 (KMS developer guide, "Condition keys for AWS Nitro Enclaves"). */
export const IMAGE_SHA384_CONDITION = 'kms:RecipientAttestation:ImageSha384';

/**
 * The signer secret's value until `ensign database provision` writes the first real one: no
 * credentials (ensign-host refuses it, naming the secret, and retries). Keep it constant: a changed
 * value would make the next deploy overwrite the provisioned password (then re-run provision).
 */
export const SIGNER_SECRET_PLACEHOLDER = JSON.stringify({
  unprovisioned: 'written by `ensign database provision` (docs/deploy-aws.md)',
});

export interface EnsignStackProps extends cdk.StackProps {
  readonly config: EnsignConfig;
  /**
   * Apply the cdk-nag suppressions (default true). Tests turn this off to prove that every
   * suppression answers a finding that really occurs.
   */
  readonly nagSuppressions?: boolean;
}

export class EnsignStack extends cdk.Stack {
  public readonly instanceRole: iam.Role;
  public readonly keysTable: dynamodb.Table;
  public readonly loadBalancer: elbv2.NetworkLoadBalancer;
  public readonly database: rds.DatabaseCluster;
  /** The Aurora master secret: for the administrator only, never readable by the instance role. */
  public readonly masterSecret: secretsmanager.ISecret;
  /** The KMS-encrypted password of the least-privilege signer role: what ensign-host reads. */
  public readonly signerSecret: secretsmanager.Secret;
  /** The key created here, or undefined when `kmsKeyArn` names one in another account. */
  public readonly signingKey?: kms.Key;

  private readonly zones: string[];

  constructor(scope: Construct, id: string, props: EnsignStackProps) {
    super(scope, id, props);
    const c = props.config;
    this.zones = [...c.availabilityZones];
    const pcr0 = effectivePcr0(c);
    const attestationCondition = { StringEqualsIgnoreCase: { [IMAGE_SHA384_CONDITION]: pcr0 } };

    if (c.devMode) {
      cdk.Annotations.of(this).addWarningV2(
        'ensign:devMode',
        'DEVELOPMENT MODE: the enclave runs in debug mode (ensign-host --enclave-debug-mode=true) and the KMS key policy accepts the all-zero PCR0 of ANY debug enclave. Never load real validator keys into this stack.',
      );
      new cdk.CfnOutput(this, 'DevModeWarning', {
        description: 'This stack is in development mode',
        value: 'DEVELOPMENT MODE: debug enclave, key policy pins the all-zero PCR0 (any debug enclave image can decrypt). Do not use real validator keys.',
      });
    }

    // --- Keys and logs for the operational resources (not the validator keys) -------------------
    const opsKey = new kms.Key(this, 'OpsKey', {
      description: `${c.stackName}: encrypts logs, alarm topic and artifacts (not validator keys)`,
      enableKeyRotation: true,
      removalPolicy: cdk.RemovalPolicy.RETAIN,
    });
    opsKey.addToResourcePolicy(new iam.PolicyStatement({
      sid: 'CloudWatchLogs',
      principals: [new iam.ServicePrincipal(`logs.${this.region}.amazonaws.com`)],
      actions: ['kms:Encrypt*', 'kms:Decrypt*', 'kms:ReEncrypt*', 'kms:GenerateDataKey*', 'kms:Describe*'],
      resources: ['*'],
      conditions: { ArnLike: { 'kms:EncryptionContext:aws:logs:arn': `arn:${this.partition}:logs:${this.region}:${this.account}:log-group:*` } },
    }));
    opsKey.addToResourcePolicy(new iam.PolicyStatement({
      sid: 'CloudWatchAlarmsToSns',
      principals: [new iam.ServicePrincipal('cloudwatch.amazonaws.com')],
      actions: ['kms:Decrypt', 'kms:GenerateDataKey*'],
      resources: ['*'],
    }));

    const logGroup = (id: string, name: string) => new logs.LogGroup(this, id, {
      logGroupName: `/ensign/${c.stackName}/${name}`,
      retention: c.logRetentionDays as logs.RetentionDays,
      encryptionKey: opsKey,
      removalPolicy: cdk.RemovalPolicy.RETAIN,
    });
    const hostLogs = logGroup('HostLogs', 'ensign-host');
    const bootLogs = logGroup('BootLogs', 'boot');
    const flowLogs = logGroup('FlowLogs', 'vpc-flow');

    // --- Network ---------------------------------------------------------------------------------
    const vpc = new ec2.Vpc(this, 'Vpc', {
      ipAddresses: ec2.IpAddresses.cidr(c.vpcCidr),
      availabilityZones: [...c.availabilityZones],
      natGateways: c.natGateways,
      subnetConfiguration: [
        { name: 'public', subnetType: ec2.SubnetType.PUBLIC, cidrMask: 24 },
        { name: 'signers', subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS, cidrMask: 22 },
        { name: 'database', subnetType: ec2.SubnetType.PRIVATE_ISOLATED, cidrMask: 24 },
      ],
      restrictDefaultSecurityGroup: true,
      flowLogs: {
        all: { destination: ec2.FlowLogDestination.toCloudWatchLogs(flowLogs), trafficType: ec2.FlowLogTrafficType.ALL },
      },
    });
    const lbSg = new ec2.SecurityGroup(this, 'LoadBalancerSg', {
      vpc, description: 'ensign NLB: validator clients on 443', allowAllOutbound: false,
    });
    for (const cidr of c.allowedClientCidrs) {
      lbSg.addIngressRule(ec2.Peer.ipv4(cidr), ec2.Port.tcp(443), `validator clients ${cidr}`);
    }
    const signerSg = new ec2.SecurityGroup(this, 'SignerSg', {
      vpc, description: 'ensign signer instances: 8443 from the NLB only; no SSH', allowAllOutbound: true,
    });
    signerSg.addIngressRule(lbSg, ec2.Port.tcp(SIGNER_PORT), 'NLB traffic and health checks');
    lbSg.addEgressRule(signerSg, ec2.Port.tcp(SIGNER_PORT), 'to signer instances');

    // The zones are explicit on purpose: synthesis stays offline and subnet placement is
    // reviewable in the configuration.
    cdk.Validations.of(vpc).acknowledge({
      id: 'CloudFormation-Validate::W3010',
      reason: 'Availability zones come from the validated configuration so that synth needs no AWS lookup.',
    });
    vpc.addGatewayEndpoint('S3Endpoint', { service: ec2.GatewayVpcEndpointAwsService.S3 });
    vpc.addGatewayEndpoint('DynamoDbEndpoint', { service: ec2.GatewayVpcEndpointAwsService.DYNAMODB });
    if (c.vpcEndpoints) {
      // KMS matters most: the enclave's KMS calls leave through ensign-host's proxy, and with
      // private DNS the regional KMS name resolves to this endpoint.
      const endpoints: Record<string, ec2.InterfaceVpcEndpointAwsService> = {
        KmsEndpoint: ec2.InterfaceVpcEndpointAwsService.KMS,
        SecretsManagerEndpoint: ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
        SsmEndpoint: ec2.InterfaceVpcEndpointAwsService.SSM,
        SsmMessagesEndpoint: ec2.InterfaceVpcEndpointAwsService.SSM_MESSAGES,
        Ec2MessagesEndpoint: ec2.InterfaceVpcEndpointAwsService.EC2_MESSAGES,
        LogsEndpoint: ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
      };
      // Reachable from the signer instances only (not from the whole VPC CIDR).
      const endpointSg = new ec2.SecurityGroup(this, 'EndpointsSg', {
        vpc, description: 'ensign interface endpoints: HTTPS from signer instances', allowAllOutbound: false,
      });
      endpointSg.addIngressRule(signerSg, ec2.Port.tcp(443), 'HTTPS from signer instances');
      for (const [id, service] of Object.entries(endpoints)) {
        vpc.addInterfaceEndpoint(id, {
          service, privateDnsEnabled: true, open: false, securityGroups: [endpointSg],
          subnets: { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS },
        });
      }
    }

    // --- Artifacts (ensign-host binary and the EIF, uploaded by the operator) ------------------
    const accessLogs = new s3.Bucket(this, 'AccessLogsBucket', {
      encryption: s3.BucketEncryption.S3_MANAGED,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      enforceSSL: true,
      versioned: true,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
      removalPolicy: cdk.RemovalPolicy.RETAIN,
    });
    const artifacts = new s3.Bucket(this, 'ArtifactsBucket', {
      encryption: s3.BucketEncryption.KMS,
      encryptionKey: opsKey,
      bucketKeyEnabled: true,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      enforceSSL: true,
      versioned: true,
      serverAccessLogsBucket: accessLogs,
      serverAccessLogsPrefix: 'artifacts/',
      removalPolicy: cdk.RemovalPolicy.RETAIN,
    });

    // --- Encrypted key records ------------------------------------------------------------------
    // One item per validator: pubkey (S), ciphertext (B: KMS-encrypted keystore + password),
    // active (BOOL), added_at. ensign-host scans it and sends AddKeys/RemoveKeys on change.
    this.keysTable = new dynamodb.Table(this, 'KeysTable', {
      partitionKey: { name: 'pubkey', type: dynamodb.AttributeType.STRING },
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      encryption: dynamodb.TableEncryption.AWS_MANAGED,
      deletionProtection: true,
      removalPolicy: cdk.RemovalPolicy.RETAIN,
    });

    // --- Instance role ---------------------------------------------------------------------------
    this.instanceRole = new iam.Role(this, 'InstanceRole', {
      assumedBy: new iam.ServicePrincipal('ec2.amazonaws.com'),
      description: 'ensign signer instances: SSM access, key records, the signer database secret (KMS ciphertext; never the master secret), artifacts, logs; kms:Decrypt only from the attested enclave',
      managedPolicies: [iam.ManagedPolicy.fromAwsManagedPolicyName('AmazonSSMManagedInstanceCore')],
    });
    const role = this.instanceRole;
    role.addToPolicy(new iam.PolicyStatement({
      sid: 'ReadKeyRecords',
      actions: ['dynamodb:Scan', 'dynamodb:GetItem', 'dynamodb:Query', 'dynamodb:DescribeTable'],
      resources: [this.keysTable.tableArn],
    }));
    role.addToPolicy(new iam.PolicyStatement({
      sid: 'ReadRelease',
      actions: ['s3:GetObject'],
      resources: [artifacts.arnForObjects(`releases/${c.artifactsVersion}/*`)],
    }));
    role.addToPolicy(new iam.PolicyStatement({
      sid: 'DecryptArtifactsAndLogs',
      actions: ['kms:Decrypt', 'kms:GenerateDataKey'],
      resources: [opsKey.keyArn],
    }));
    role.addToPolicy(new iam.PolicyStatement({
      sid: 'ShipLogs',
      actions: ['logs:CreateLogStream', 'logs:PutLogEvents', 'logs:DescribeLogStreams'],
      // A log group's Arn attribute already ends in ':*' (all of its streams).
      resources: [hostLogs.logGroupArn, bootLogs.logGroupArn],
    }));

    // --- The validator-key KMS key ---------------------------------------------------------------
    let signingKeyArn: string;
    if (c.kmsKeyArn === undefined) {
      // Written out in full (no CDK default policy): the account root may administer the key and
      // encrypt with it (`ensign keys upload`), but NOT decrypt, re-encrypt or create grants —
      // a grant could hand out Decrypt without the attestation condition.
      const policy = new iam.PolicyDocument({
        statements: [
          new iam.PolicyStatement({
            sid: 'AccountAdministersAndEncryptsButCannotDecrypt',
            principals: [new iam.AccountRootPrincipal()],
            actions: [
              'kms:CreateAlias', 'kms:Describe*', 'kms:Enable*', 'kms:List*', 'kms:Put*', 'kms:Update*',
              'kms:Revoke*', 'kms:Disable*', 'kms:Get*', 'kms:Delete*', 'kms:TagResource',
              'kms:UntagResource', 'kms:ScheduleKeyDeletion', 'kms:CancelKeyDeletion',
              'kms:RotateKeyOnDemand', 'kms:Encrypt',
            ],
            resources: ['*'],
          }),
          new iam.PolicyStatement({
            sid: 'DenyGrants',
            effect: iam.Effect.DENY,
            principals: [new iam.AnyPrincipal()],
            actions: ['kms:CreateGrant'],
            resources: ['*'],
          }),
          new iam.PolicyStatement({
            sid: 'DecryptOnlyFromAttestedEnclave',
            principals: [new iam.ArnPrincipal(role.roleArn)],
            actions: ['kms:Decrypt'],
            resources: ['*'],
            conditions: attestationCondition,
          }),
        ],
      });
      this.signingKey = new kms.Key(this, 'ValidatorKeysKey', {
        description: `${c.stackName}: encrypts validator keystores; Decrypt only for the enclave image with PCR0 ${pcr0}`,
        enableKeyRotation: true,
        policy,
        removalPolicy: cdk.RemovalPolicy.RETAIN,
      });
      signingKeyArn = this.signingKey.keyArn;
    } else {
      // Multi-account custody: the key lives in another account. Cross-account use needs both
      // the key policy there and an IAM allow here; both carry the attestation condition.
      signingKeyArn = c.kmsKeyArn;
      role.addToPolicy(new iam.PolicyStatement({
        sid: 'DecryptOnlyFromAttestedEnclave',
        actions: ['kms:Decrypt'],
        resources: [c.kmsKeyArn],
        conditions: attestationCondition,
      }));
      new cdk.CfnOutput(this, 'ExternalKeyPolicyStatement', {
        description: 'Add this statement to the key policy of kmsKeyArn in the key-custody account',
        value: this.toJsonString({
          Sid: 'EnsignDecryptOnlyFromAttestedEnclave',
          Effect: 'Allow',
          Principal: { AWS: role.roleArn },
          Action: 'kms:Decrypt',
          Resource: '*',
          Condition: attestationCondition,
        }),
      });
    }

    // --- Shared slashing-protection database ------------------------------------------------------
    const dbSg = new ec2.SecurityGroup(this, 'DatabaseSg', {
      vpc, description: 'ensign slashing-protection database: PostgreSQL from the signer instances only', allowAllOutbound: false,
    });
    const dbClusterId = `${c.stackName}-slashing`.toLowerCase();
    const dbLogs = new logs.LogGroup(this, 'DatabaseLogs', {
      logGroupName: `/aws/rds/cluster/${dbClusterId}/postgresql`,
      retention: c.logRetentionDays as logs.RetentionDays,
      encryptionKey: opsKey,
      removalPolicy: cdk.RemovalPolicy.RETAIN,
    });
    this.database = new rds.DatabaseCluster(this, 'SlashingDb', {
      engine: rds.DatabaseClusterEngine.auroraPostgres({ version: rds.AuroraPostgresEngineVersion.VER_17_9 }),
      // The master user: an administrator's, for `ensign database provision`; never the signers'.
      credentials: rds.Credentials.fromGeneratedSecret(MASTER_DB_USER, { secretName: `${c.stackName}/slashing-db` }),
      defaultDatabaseName: 'ensign',
      writer: rds.ClusterInstance.serverlessV2('writer'),
      readers: c.database.multiAz ? [rds.ClusterInstance.serverlessV2('reader', { scaleWithWriter: true })] : [],
      serverlessV2MinCapacity: c.database.minCapacityAcu,
      serverlessV2MaxCapacity: c.database.maxCapacityAcu,
      vpc,
      vpcSubnets: { subnetType: ec2.SubnetType.PRIVATE_ISOLATED },
      securityGroups: [dbSg],
      storageEncrypted: true,
      deletionProtection: true,
      backup: { retention: cdk.Duration.days(14) },
      clusterIdentifier: dbClusterId,
      // Exported to the log group created below (encrypted, with retention) rather than through
      // `cloudwatchLogsRetention`, which would add a Lambda custom resource.
      cloudwatchLogsExports: ['postgresql'],
      removalPolicy: cdk.RemovalPolicy.SNAPSHOT,
    });
    this.database.node.addDependency(dbLogs);
    dbSg.addIngressRule(signerSg, ec2.Port.tcp(5432), 'PostgreSQL from signer instances (ensign-host proxies the enclave)');
    // The parent instance is not trusted with the slashing history (in enclave mode it is the
    // adversary): with the master password it could delete the records that stop a double
    // signature. So the instance role gets no access to the master secret, and the secret's own
    // policy denies it outright, whatever IAM statement may be added to the role later.
    this.masterSecret = this.database.secret as secretsmanager.ISecret;
    this.masterSecret.addToResourcePolicy(new iam.PolicyStatement({
      sid: 'SignerInstancesNeverReadTheMasterSecret',
      effect: iam.Effect.DENY,
      principals: [new iam.ArnPrincipal(role.roleArn)],
      actions: ['secretsmanager:*'],
      resources: ['*'],
    }));
    // What the signers do read: the password of the least-privilege role (no DDL, no DELETE),
    // encrypted under the validator-key KMS key, which decrypts only for the attested enclave.
    // An administrator creates the role and writes this secret with `ensign database provision`
    // (and rotates it by running that again); ensign-host forwards the ciphertext into the enclave.
    this.signerSecret = new secretsmanager.Secret(this, 'SignerDbSecret', {
      secretName: `${c.stackName}/slashing-db-signer`,
      description: `KMS-encrypted password of the least-privilege PostgreSQL role ${c.database.signerRole} (schema ${c.database.schema}), written by \`ensign database provision\`; only the attested enclave can decrypt it`,
      secretStringValue: cdk.SecretValue.unsafePlainText(SIGNER_SECRET_PLACEHOLDER),
      // Nothing irreplaceable (like the master secret, deleted with the stack): provisioning writes it again.
      removalPolicy: cdk.RemovalPolicy.DESTROY,
    });
    // ensign-host's --db-secret-arn: GetSecretValue (and DescribeSecret) on the signer secret only.
    this.signerSecret.grantRead(role);

    // --- Signer instances --------------------------------------------------------------------------
    const userData = ec2.UserData.forLinux();
    userData.addCommands(...userDataLines({
      config: c,
      region: this.region,
      artifactsBucket: artifacts.bucketName,
      keysTable: this.keysTable.tableName,
      dbEndpoint: this.database.clusterEndpoint.socketAddress,
      dbSecretArn: this.signerSecret.secretArn,
      expectedPcr0: pcr0,
      hostLogGroup: hostLogs.logGroupName,
      bootLogGroup: bootLogs.logGroupName,
    }));
    const launchTemplate = new ec2.LaunchTemplate(this, 'SignerLaunchTemplate', {
      instanceType: new ec2.InstanceType(c.instanceType),
      machineImage: ec2.MachineImage.latestAmazonLinux2023({ cpuType: ec2.AmazonLinuxCpuType.X86_64 }),
      nitroEnclaveEnabled: true,
      // IMDSv2 only; hop limit 1 because ensign-host runs on the host, not in a container, so
      // nothing one network hop further away (a container) can fetch the role's credentials.
      requireImdsv2: true,
      httpTokens: ec2.LaunchTemplateHttpTokens.REQUIRED,
      httpPutResponseHopLimit: 1,
      httpEndpoint: true,
      role,
      securityGroup: signerSg,
      userData,
      // No keyPair: no SSH. Operators use SSM Session Manager.
      blockDevices: [{
        deviceName: '/dev/xvda',
        volume: ec2.BlockDeviceVolume.ebs(30, { encrypted: true, volumeType: ec2.EbsDeviceVolumeType.GP3, deleteOnTermination: true }),
      }],
      detailedMonitoring: true,
    });

    const alarmTopic = new sns.Topic(this, 'AlarmTopic', {
      displayName: `${c.stackName} signer alarms`,
      masterKey: opsKey,
      enforceSSL: true,
    });
    if (c.alarmEmail !== undefined) {
      alarmTopic.addSubscription(new subs.EmailSubscription(c.alarmEmail));
    }

    const asg = new autoscaling.AutoScalingGroup(this, 'SignerGroup', {
      vpc,
      vpcSubnets: { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS },
      launchTemplate,
      minCapacity: c.minInstances,
      maxCapacity: c.maxInstances,
      healthChecks: autoscaling.HealthChecks.withAdditionalChecks({
        additionalTypes: [autoscaling.AdditionalHealthCheckType.ELB],
        gracePeriod: cdk.Duration.minutes(10),
      }),
      updatePolicy: autoscaling.UpdatePolicy.rollingUpdate({ maxBatchSize: 1, minInstancesInService: Math.max(0, c.minInstances - 1) }),
      groupMetrics: [autoscaling.GroupMetrics.all()],
      notifications: [{ topic: alarmTopic }],
    });

    // --- Load balancer: TCP passthrough, TLS ends inside the enclave ------------------------------
    this.loadBalancer = new elbv2.NetworkLoadBalancer(this, 'SignerNlb', {
      vpc,
      internetFacing: c.loadBalancerScheme === 'internet-facing',
      vpcSubnets: { subnetType: c.loadBalancerScheme === 'internet-facing' ? ec2.SubnetType.PUBLIC : ec2.SubnetType.PRIVATE_WITH_EGRESS },
      securityGroups: [lbSg],
      crossZoneEnabled: true,
      deletionProtection: true,
    });
    const listener = this.loadBalancer.addListener('Tls', { port: 443, protocol: elbv2.Protocol.TCP });
    const targetGroup = listener.addTargets('Signers', {
      port: SIGNER_PORT,
      protocol: elbv2.Protocol.TCP,
      targets: [asg],
      healthCheck: {
        protocol: elbv2.Protocol.HTTPS,
        path: '/upcheck',
        port: 'traffic-port',
        healthyHttpCodes: '200',
        interval: cdk.Duration.seconds(10),
        timeout: cdk.Duration.seconds(6),
        healthyThresholdCount: 2,
        unhealthyThresholdCount: 2,
      },
      deregistrationDelay: cdk.Duration.seconds(30),
    });

    // --- Alarms -------------------------------------------------------------------------------------
    const alarmAction = new cwActions.SnsAction(alarmTopic);
    const tgDims = { LoadBalancer: this.loadBalancer.loadBalancerFullName, TargetGroup: targetGroup.targetGroupFullName };
    const alarms = [
      new cloudwatch.Alarm(this, 'UnhealthySigners', {
        alarmDescription: 'A signer target fails its /upcheck health check',
        metric: new cloudwatch.Metric({ namespace: 'AWS/NetworkELB', metricName: 'UnHealthyHostCount', dimensionsMap: tgDims, statistic: 'Maximum', period: cdk.Duration.minutes(1) }),
        threshold: 0,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        evaluationPeriods: 3,
        treatMissingData: cloudwatch.TreatMissingData.BREACHING,
      }),
      new cloudwatch.Alarm(this, 'TooFewHealthySigners', {
        alarmDescription: `Fewer than ${c.minInstances} healthy signers behind the NLB`,
        metric: new cloudwatch.Metric({ namespace: 'AWS/NetworkELB', metricName: 'HealthyHostCount', dimensionsMap: tgDims, statistic: 'Minimum', period: cdk.Duration.minutes(1) }),
        threshold: c.minInstances,
        comparisonOperator: cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
        evaluationPeriods: 3,
        treatMissingData: cloudwatch.TreatMissingData.BREACHING,
      }),
      new cloudwatch.Alarm(this, 'TooFewInServiceInstances', {
        alarmDescription: `Fewer than ${c.minInstances} InService instances in the signer group`,
        metric: new cloudwatch.Metric({ namespace: 'AWS/AutoScaling', metricName: 'GroupInServiceInstances', dimensionsMap: { AutoScalingGroupName: asg.autoScalingGroupName }, statistic: 'Minimum', period: cdk.Duration.minutes(1) }),
        threshold: c.minInstances,
        comparisonOperator: cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
        evaluationPeriods: 5,
        treatMissingData: cloudwatch.TreatMissingData.BREACHING,
      }),
    ];
    for (const a of alarms) a.addAlarmAction(alarmAction);

    // --- Outputs ---------------------------------------------------------------------------------------
    new cdk.CfnOutput(this, 'SignerEndpoint', { value: `https://${this.loadBalancer.loadBalancerDnsName}`, description: 'Validator clients: Web3Signer URL (TLS from the enclave)' });
    new cdk.CfnOutput(this, 'KeysTableName', { value: this.keysTable.tableName });
    new cdk.CfnOutput(this, 'ValidatorKeysKeyArn', { value: signingKeyArn });
    new cdk.CfnOutput(this, 'PinnedPcr0', { value: pcr0 });
    new cdk.CfnOutput(this, 'ArtifactsBucketName', { value: artifacts.bucketName, description: `Upload ensign-host and ensign.eif to s3://<bucket>/releases/${c.artifactsVersion}/` });
    new cdk.CfnOutput(this, 'InstanceRoleArn', { value: role.roleArn });
    new cdk.CfnOutput(this, 'AutoScalingGroupName', { value: asg.autoScalingGroupName });
    new cdk.CfnOutput(this, 'DatabaseSecretArn', {
      value: this.masterSecret.secretArn,
      description: 'Aurora master secret: for the administrator running `ensign database provision`; the instance role cannot read it',
    });
    new cdk.CfnOutput(this, 'SignerDatabaseSecretArn', {
      value: this.signerSecret.secretArn,
      description: 'KMS-encrypted signer password, read by ensign-host (--db-secret-arn); `ensign database provision --secret-id`',
    });
    new cdk.CfnOutput(this, 'DatabaseEndpoint', { value: this.database.clusterEndpoint.hostname, description: 'Aurora cluster endpoint (the image\'s DB_HOST)' });
    new cdk.CfnOutput(this, 'SignerDatabaseRole', { value: c.database.signerRole, description: 'PostgreSQL role of the signers: the image\'s DB_USER, `ensign database provision --role`' });
    new cdk.CfnOutput(this, 'DatabaseSchema', { value: c.database.schema, description: 'Schema of the slashing-protection tables: the image\'s DB_SCHEMA, `ensign database provision --schema`' });

    if (props.nagSuppressions ?? true) this.suppressWithReasons();
  }

  /**
   * The configured zones, so that synthesis needs no AWS call (the default implementation looks
   * them up in the account when the stack has an explicit environment).
   */
  get availabilityZones(): string[] {
    return this.zones;
  }

  /** Every cdk-nag finding accepted here, each with the reason it does not apply. */
  private suppressWithReasons(): void {
    NagSuppressions.addResourceSuppressions(this.instanceRole, [
      {
        id: 'AwsSolutions-IAM4',
        reason: 'AmazonSSMManagedInstanceCore is the AWS-maintained minimum for Session Manager access, which replaces SSH (no key pair, no port 22).',
        appliesTo: ['Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore'],
      },
      {
        id: 'AwsSolutions-IAM5',
        reason: 'The only wildcard is the object suffix of this release folder (releases/<artifactsVersion>/*), which holds exactly ensign-host and ensign.eif.',
      },
    ], true);
    NagSuppressions.addResourceSuppressions(this.database, [
      { id: 'AwsSolutions-RDS6', reason: 'ensign authenticates to PostgreSQL as a least-privilege role whose password only the attested enclave can decrypt (KMS); IAM database tokens would be minted with the instance role, i.e. by the parent instance, which must not be able to log in.' },
      { id: 'AwsSolutions-SMG4', reason: 'The master secret is read only by an administrator (ensign database provision); a rotation Lambda would be one more principal holding the master password. Rotate it with RDS by hand (docs/deploy-aws.md).' },
    ], true);
    NagSuppressions.addResourceSuppressions(this.signerSecret, [
      { id: 'AwsSolutions-SMG4', reason: 'Its value is a KMS ciphertext that only `ensign database provision`, run by an administrator with the master password, can produce (it sets the role password in PostgreSQL too); rotation is re-running that command (docs/deploy-aws.md), not a Lambda holding the master password.' },
    ]);
    NagSuppressions.addResourceSuppressions(this.loadBalancer, [
      { id: 'AwsSolutions-ELB2', reason: 'NLB access logs are produced only for TLS listeners; this listener is TCP passthrough so TLS ends inside the enclave. VPC flow logs cover the connections.' },
    ]);
  }
}
