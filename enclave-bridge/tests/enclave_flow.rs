//! The whole enclave-mode path with TCP standing in for vsock: the host sends
//! `Init` over the control protocol; the enclave's handler decrypts each key
//! with an attested KMS `Recipient` request that leaves through the outbound
//! proxy (its KMS client resolves the KMS host name to loopback, as it would
//! to its vsock forwarder) and reaches the fake KMS.

use std::sync::{Arc, Mutex, OnceLock};

use enclave_bridge::control::*;
use enclave_bridge::forward::ForwardLimits;
use enclave_bridge::kms::{
    kms_client, DecryptRequest, KeyDecryptor, KmsClientConfig, RecipientDecryptor,
};
use enclave_bridge::proxy::{AllowedRemote, Allowlist, OutboundProxy};
use enclave_bridge::secret::{Base64Bytes, SecretBytes, SecretString};
use enclave_bridge::test_util::{TestAttestor, TestPki};
use enclave_bridge::transport::Endpoint;
use test_support::enclave::loopback_listener;
use test_support::fake_kms::{FakeKms, FakeKmsConfig};

const GOOD_PCR0: [u8; 48] = [0x5a; 48];

fn pki() -> Arc<TestPki> {
    static PKI: OnceLock<Arc<TestPki>> = OnceLock::new();
    PKI.get_or_init(|| Arc::new(TestPki::generate())).clone()
}

/// What an enclave application would do with `Init`.
struct Enclave {
    attestor: TestAttestor,
    loaded: Mutex<Vec<(String, SecretBytes)>>,
}

impl ControlHandler for Enclave {
    async fn init(&self, request: InitRequest) -> Result<KeysReport, HandlerError> {
        let client = kms_client(&KmsClientConfig {
            region: request.region.clone(),
            credentials: request.credentials.clone(),
            endpoint_url: request.kms_endpoint.clone(),
            resolve_to: Some("127.0.0.1".parse().unwrap()),
            trust_roots_pem: None,
        });
        let attestor = self.attestor.clone();
        let decryptor =
            tokio::task::spawn_blocking(move || RecipientDecryptor::new(client, attestor))
                .await
                .map_err(|_| HandlerError::new("key generation aborted"))?
                .map_err(|e| HandlerError::new(e.to_string()))?;
        let mut report = KeysReport::default();
        for key in &request.keys {
            let outcome = decryptor.decrypt(DecryptRequest::from(key)).await;
            match outcome {
                Ok(secret) => {
                    self.loaded.lock().unwrap().push((key.id.clone(), secret));
                    report.loaded.push(key.id.clone());
                }
                Err(e) => report.failed.push(KeyFailure {
                    id: key.id.clone(),
                    reason: e.to_string(),
                }),
            }
        }
        Ok(report)
    }

    async fn add_keys(&self, _: AddKeysRequest) -> Result<KeysReport, HandlerError> {
        Err(HandlerError::new("not in this test"))
    }

    async fn remove_keys(&self, _: RemoveKeysRequest) -> Result<RemoveReport, HandlerError> {
        Err(HandlerError::new("not in this test"))
    }

    async fn refresh_credentials(&self, _: AwsCredentials) -> Result<(), HandlerError> {
        Ok(())
    }
}

async fn run_enclave(pcr0: [u8; 48]) -> (Endpoint, Arc<Enclave>) {
    let enclave = Arc::new(Enclave {
        attestor: TestAttestor::new(pki(), pcr0),
        loaded: Mutex::default(),
    });
    let server = ControlServer::with_shared_handler(enclave.clone(), Default::default());
    let listener = loopback_listener().await;
    let ep = listener.local_endpoint().unwrap();
    tokio::spawn(async move { server.serve(listener, std::future::pending()).await });
    (ep, enclave)
}

#[tokio::test]
async fn init_decrypts_keys_through_the_proxy_only_for_the_right_image() {
    let mut config = FakeKmsConfig::new(pki().root_der.clone());
    config.required_pcr0 = Some(GOOD_PCR0.to_vec());
    let kms = FakeKms::start(config).await.unwrap();
    let kms_port: u16 = kms.url().rsplit(':').next().unwrap().parse().unwrap();

    // The parent's outbound proxy: one allowlisted destination.
    let remote = AllowedRemote::new("127.0.0.1", kms_port);
    let proxy = OutboundProxy::bind(
        &"tcp:127.0.0.1:0".parse().unwrap(),
        remote.clone(),
        &Allowlist::new([remote]),
        ForwardLimits::default(),
    )
    .await
    .unwrap();
    let proxy_port = match proxy.local_endpoint().unwrap() {
        Endpoint::Tcp { port, .. } => port,
        other => panic!("{other:?}"),
    };
    let proxy_stats = proxy.stats();
    tokio::spawn(proxy.run(std::future::pending()));

    let secrets: [&[u8]; 2] = [&[1u8; 32], &[2u8; 32]];
    let mut keys: Vec<EncryptedKeyRecord> = secrets
        .iter()
        .enumerate()
        .map(|(i, s)| EncryptedKeyRecord {
            id: format!("key-{i}"),
            pubkey: None,
            ciphertext: Base64Bytes(kms.encrypt(s, &Default::default())),
            encryption_context: Default::default(),
            kms_key_id: Some(kms.key_arn().to_owned()),
        })
        .collect();
    keys.push(EncryptedKeyRecord {
        id: "garbage".into(),
        pubkey: None,
        ciphertext: Base64Bytes(b"not a kms blob".to_vec()),
        encryption_context: Default::default(),
        kms_key_id: None,
    });
    let init = InitRequest {
        credentials: AwsCredentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: SecretString::new("instance-role-secret"),
            session_token: Some(SecretString::new("instance-role-token")),
            expiration: None,
        },
        region: serde_json::from_value(serde_json::json!("us-east-1")).unwrap(),
        // The real KMS host name; only the resolver sends it to loopback.
        kms_endpoint: Some(
            EndpointUrl::try_from(format!("http://kms.us-east-1.amazonaws.com:{proxy_port}"))
                .unwrap(),
        ),
        keys,
        tls: None,
        database: None,
    };

    // The right image: both keys load, the garbage one fails alone.
    let (ep, enclave) = run_enclave(GOOD_PCR0).await;
    let mut host = ControlClient::connect(&ep).await.unwrap();
    let report = host.init(init.clone()).await.unwrap();
    assert_eq!(report.loaded, vec!["key-0", "key-1"]);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].id, "garbage");
    assert!(
        report.failed[0].reason.contains("InvalidCiphertext"),
        "{:?}",
        report.failed
    );
    {
        let loaded = enclave.loaded.lock().unwrap();
        assert_eq!(loaded.len(), 2);
        for ((_, got), want) in loaded.iter().zip(secrets) {
            assert_eq!(got.expose(), want);
        }
    }
    assert!(
        proxy_stats.piped() >= 1,
        "KMS traffic went through the proxy"
    );
    assert_eq!(host.status().await.unwrap().state, EnclaveState::Ready);

    // Another image (PCR0) with the same credentials gets nothing.
    let (ep, enclave) = run_enclave([0u8; 48]).await;
    let mut host = ControlClient::connect(&ep).await.unwrap();
    let report = host.init(init).await.unwrap();
    assert!(report.loaded.is_empty());
    assert_eq!(report.failed.len(), 3);
    assert!(
        report.failed[..2]
            .iter()
            .all(|f| f.reason.contains("denied")),
        "{:?}",
        report.failed
    );
    assert!(enclave.loaded.lock().unwrap().is_empty());
}
