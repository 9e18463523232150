// Boot script of a signer instance (Amazon Linux 2023): installs the Nitro Enclaves CLI, reserves
// the enclave's CPUs and memory, fetches `ensign-host` and the EIF from the artifacts bucket,
// checks the EIF's PCR0 against the one the KMS key policy pins, ships logs to CloudWatch, and
// runs `ensign-host` under systemd. `ensign-host` itself starts (and restarts) the enclave with
// `nitro-cli run-enclave` and feeds it the encrypted key records, so there is one unit, not two
// that would race over the enclave's lifecycle.

import { EnsignConfig } from './config';

/** Ports of the parent <-> enclave plumbing (vsock), fixed by the EIF's entrypoint. */
export const ENCLAVE_CID = 16;
export const DATA_PORT = 5000;
export const CONTROL_PORT = 5001;
export const KMS_PROXY_PORT = 8000;
export const DB_PROXY_PORT = 5432;
/** Where validator-client TLS arrives on the instance (the NLB's targets). */
export const SIGNER_PORT = 8443;

export interface UserDataInputs {
  readonly config: EnsignConfig;
  readonly region: string;
  readonly artifactsBucket: string;
  readonly keysTable: string;
  readonly dbEndpoint: string; // host:port, a token at synth time
  /** The signer secret (KMS ciphertext of the signer role's password), not the master secret. */
  readonly dbSecretArn: string;
  readonly expectedPcr0: string;
  readonly hostLogGroup: string;
  readonly bootLogGroup: string;
}

/** The `ensign-host` command line the unit runs (flags of issue 7's `ensign-host`). */
export function ensignHostCommand(i: UserDataInputs): string {
  const c = i.config;
  return [
    '/opt/ensign/ensign-host',
    `--listen 0.0.0.0:${SIGNER_PORT}`,
    `--enclave-cid ${ENCLAVE_CID}`,
    `--data-port ${DATA_PORT}`,
    `--control-port ${CONTROL_PORT}`,
    `--kms-proxy-port ${KMS_PROXY_PORT}`,
    `--region ${i.region}`,
    `--keys-table ${i.keysTable}`,
    '--eif /opt/ensign/ensign.eif',
    `--enclave-cpus ${c.enclaveCpus}`,
    `--enclave-memory-mib ${c.enclaveMemoryMib}`,
    `--db-endpoint ${i.dbEndpoint}`,
    `--db-proxy-port ${DB_PROXY_PORT}`,
    // The signer secret, never the Aurora master secret: the least-privilege role's name and its
    // password encrypted under the validator-key KMS key (written by `ensign database provision`).
    // ensign-host reads it with the instance role and forwards it to the enclave at Init, and
    // again when it changes; only the attested enclave can decrypt the password.
    `--db-secret-arn ${i.dbSecretArn}`,
    ...(c.devMode ? ['--enclave-debug-mode=true'] : []),
  ].join(' ');
}

/** The boot script, one line per element (CDK joins them; tokens resolve at deploy time). */
export function userDataLines(i: UserDataInputs): string[] {
  const c = i.config;
  const release = `s3://${i.artifactsBucket}/releases/${c.artifactsVersion}`;
  const agentConfig = JSON.stringify({
    logs: {
      logs_collected: {
        files: {
          collect_list: [
            { file_path: '/var/log/ensign/ensign-host.log', log_group_name: i.hostLogGroup, log_stream_name: '{instance_id}/ensign-host' },
            { file_path: '/var/log/nitro_enclaves/nitro_enclaves.log', log_group_name: i.hostLogGroup, log_stream_name: '{instance_id}/nitro-cli' },
            { file_path: '/var/log/ensign-boot.log', log_group_name: i.bootLogGroup, log_stream_name: '{instance_id}' },
          ],
        },
      },
    },
  });
  return [
    'set -euo pipefail',
    'exec > >(tee -a /var/log/ensign-boot.log) 2>&1',
    'echo "ensign boot: $(date -u +%FT%TZ)"',
    // Nitro Enclaves CLI (creates the `ne` group that may use /dev/nitro_enclaves), jq for the
    // PCR0 check, and the CloudWatch agent for the logs.
    'dnf install -y aws-nitro-enclaves-cli aws-nitro-enclaves-cli-devel jq amazon-cloudwatch-agent',
    // Reserve the enclave's memory and CPUs at boot (the allocator takes them from the parent).
    'cat > /etc/nitro_enclaves/allocator.yaml <<\'EOF\'',
    '---',
    `memory_mib: ${c.enclaveMemoryMib}`,
    `cpu_count: ${c.enclaveCpus}`,
    'EOF',
    'systemctl enable --now nitro-enclaves-allocator.service',
    // Logs first, so a failure below still reaches CloudWatch.
    'install -d -m 0755 /var/log/ensign',
    `cat > /opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.json <<'EOF'`,
    agentConfig,
    'EOF',
    '/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 -s -c file:/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.json',
    // The release: the same EIF bytes on every instance (built once, reproducibly; see
    // docs/deploy-aws.md), never rebuilt here.
    'install -d -m 0755 /opt/ensign',
    `aws s3 cp --region ${i.region} ${release}/ensign-host /opt/ensign/ensign-host`,
    `aws s3 cp --region ${i.region} ${release}/ensign.eif /opt/ensign/ensign.eif`,
    'chmod 0755 /opt/ensign/ensign-host && chmod 0644 /opt/ensign/ensign.eif',
    // Refuse an EIF whose measurement is not the one KMS will accept: fail here, loudly, rather
    // than later with an opaque AccessDenied from KMS inside the enclave.
    'actual_pcr0="$(nitro-cli describe-eif --eif-path /opt/ensign/ensign.eif | jq -r .Measurements.PCR0)"',
    'echo "ensign boot: EIF PCR0 ${actual_pcr0}"',
    ...(c.devMode
      ? ['echo "ensign boot: WARNING: devMode: the enclave runs in DEBUG mode (PCR0 reads as zeros; any debug image can decrypt the keys)"']
      : [
          `if [ "\${actual_pcr0,,}" != "${i.expectedPcr0}" ]; then`,
          `  echo "ensign boot: FATAL: EIF PCR0 \${actual_pcr0} is not the configured ${i.expectedPcr0}; not starting" >&2`,
          '  exit 1',
          'fi',
        ]),
    // An unprivileged service user; membership in `ne` is what nitro-cli needs.
    'id ensign-host >/dev/null 2>&1 || useradd --system --no-create-home --shell /sbin/nologin --groups ne ensign-host',
    'install -d -o ensign-host -g ne -m 0750 /var/log/ensign',
    'touch /var/log/ensign/ensign-host.log && chown ensign-host:ne /var/log/ensign/ensign-host.log',
    "cat > /etc/systemd/system/ensign-host.service <<'EOF'",
    '[Unit]',
    'Description=ensign-host: TLS passthrough, vsock proxies and key delivery for the ensign enclave',
    'Requires=nitro-enclaves-allocator.service',
    'After=network-online.target nitro-enclaves-allocator.service',
    'Wants=network-online.target',
    '',
    '[Service]',
    'Type=simple',
    'User=ensign-host',
    'Group=ne',
    `ExecStart=${ensignHostCommand(i)}`,
    'Restart=always',
    'RestartSec=5',
    'NoNewPrivileges=yes',
    'ProtectSystem=strict',
    'ProtectHome=yes',
    'PrivateTmp=yes',
    'ReadWritePaths=/var/log/ensign /var/log/nitro_enclaves /run/nitro_enclaves',
    'StandardOutput=append:/var/log/ensign/ensign-host.log',
    'StandardError=append:/var/log/ensign/ensign-host.log',
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    'EOF',
    'systemctl daemon-reload',
    'systemctl enable --now ensign-host.service',
    'echo "ensign boot: done"',
  ];
}
