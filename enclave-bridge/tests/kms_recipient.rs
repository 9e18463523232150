//! KMS Decrypt with an attested Recipient, end to end: the real
//! `aws-sdk-kms` client over plain HTTP to the fake KMS, which verifies the
//! attestation document and the PCR0 policy and answers with CMS.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use enclave_bridge::attestation::{AttestFields, AttestationError, Attestor};
use enclave_bridge::control::{AwsCredentials, EndpointUrl};
use enclave_bridge::kms::{
    kms_client, open_enveloped_data, DecryptRequest, KeyDecryptor, KmsClientConfig, KmsError,
    PlainDecryptor, RecipientDecryptor,
};
use enclave_bridge::secret::SecretString;
use enclave_bridge::test_util::{TestAttestor, TestPki};
use test_support::fake_kms::{CmsEncoding, FakeKms, FakeKmsConfig};

const GOOD_PCR0: [u8; 48] = [0x11; 48];
const OTHER_PCR0: [u8; 48] = [0x22; 48];
const SECRET: &[u8] = b"\x25\x29\x5f\x0d\x1d\x59\x2a\x90\xb3\x33\xf2\x6e\x85\x14\x97\x08\x20\x8e\x9f\x8e\x8b\xc1\x8c\x6f\x77\xbd\x62\xf8\xad\x7a\x68\x66";

fn pki() -> Arc<TestPki> {
    static PKI: OnceLock<Arc<TestPki>> = OnceLock::new();
    PKI.get_or_init(|| Arc::new(TestPki::generate())).clone()
}

async fn fake_kms(required_pcr0: Option<[u8; 48]>, encoding: CmsEncoding) -> FakeKms {
    let mut config = FakeKmsConfig::new(pki().root_der.clone());
    config.required_pcr0 = required_pcr0.map(|p| p.to_vec());
    config.cms_encoding = encoding;
    FakeKms::start(config).await.unwrap()
}

fn client_for(kms: &FakeKms) -> aws_sdk_kms::Client {
    kms_client(&KmsClientConfig {
        region: serde_json::from_value(serde_json::json!("us-east-1")).unwrap(),
        credentials: AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: SecretString::new("secret"),
            session_token: Some(SecretString::new("token")),
            expiration: None,
        },
        endpoint_url: Some(EndpointUrl::try_from(kms.url().to_owned()).unwrap()),
        resolve_to: None,
        trust_roots_pem: None,
    })
}

/// Encrypt through the SDK (the fake's Encrypt operation).
async fn encrypt(
    client: &aws_sdk_kms::Client,
    kms: &FakeKms,
    ctx: &BTreeMap<String, String>,
) -> Vec<u8> {
    let mut call = client
        .encrypt()
        .key_id(kms.key_arn())
        .plaintext(aws_sdk_kms::primitives::Blob::new(SECRET));
    for (k, v) in ctx {
        call = call.encryption_context(k, v);
    }
    call.send()
        .await
        .unwrap()
        .ciphertext_blob
        .unwrap()
        .into_inner()
}

/// RSA key generation is CPU work: done off the runtime, as the server should.
async fn recipient<A: Attestor + 'static>(
    client: aws_sdk_kms::Client,
    attestor: A,
) -> RecipientDecryptor<A> {
    tokio::task::spawn_blocking(move || RecipientDecryptor::new(client, attestor).unwrap())
        .await
        .unwrap()
}

fn ctx() -> BTreeMap<String, String> {
    BTreeMap::from([("validator".to_owned(), "0xa99a".to_owned())])
}

#[tokio::test]
async fn matching_pcr0_decrypts_through_cms_only() {
    for encoding in [CmsEncoding::KmsBer, CmsEncoding::Der] {
        let kms = fake_kms(Some(GOOD_PCR0), encoding).await;
        let client = client_for(&kms);
        let blob = encrypt(&client, &kms, &ctx()).await;
        let dec = recipient(client, TestAttestor::new(pki(), GOOD_PCR0)).await;
        let context = ctx();
        let plain = dec
            .decrypt(DecryptRequest::with_context(
                &blob,
                Some(kms.key_arn()),
                &context,
            ))
            .await
            .unwrap_or_else(|e| panic!("{encoding:?}: {e}"));
        assert_eq!(plain.expose(), SECRET, "{encoding:?}");
        // The key came back only as CMS, and the secret never shows in Debug.
        let stats = kms.stats();
        assert_eq!(
            stats
                .decrypt_with_recipient
                .load(std::sync::atomic::Ordering::SeqCst),
            1
        );
        assert_eq!(
            stats
                .decrypt_plain
                .load(std::sync::atomic::Ordering::SeqCst),
            0
        );
        assert!(!format!("{plain:?}").contains("25295f"));
        // Works through the trait object the server will hold.
        let shared: Arc<dyn KeyDecryptor> = Arc::new(dec);
        let again = shared
            .decrypt(DecryptRequest::with_context(&blob, None, &context))
            .await
            .unwrap();
        assert_eq!(again.expose(), SECRET);
    }
}

#[tokio::test]
async fn wrong_pcr0_is_access_denied() {
    let kms = fake_kms(Some(GOOD_PCR0), CmsEncoding::KmsBer).await;
    let client = client_for(&kms);
    let blob = encrypt(&client, &kms, &BTreeMap::new()).await;
    let dec = recipient(client.clone(), TestAttestor::new(pki(), OTHER_PCR0)).await;
    let err = dec.decrypt(DecryptRequest::new(&blob)).await.unwrap_err();
    assert!(matches!(err, KmsError::AccessDenied(_)), "{err}");
    // Without a Recipient at all, the PCR0 condition cannot be met either.
    let err = PlainDecryptor::new(client)
        .decrypt(DecryptRequest::new(&blob))
        .await
        .unwrap_err();
    assert!(matches!(err, KmsError::AccessDenied(_)), "{err}");
    assert_eq!(
        kms.stats().denied.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}

/// An attestor whose documents are altered after signing.
struct Tampering<A>(A);

impl<A: Attestor> Attestor for Tampering<A> {
    fn attest_fields(&self, fields: AttestFields<'_>) -> Result<Vec<u8>, AttestationError> {
        let mut doc = self.0.attest_fields(fields)?;
        let pcr = doc
            .windows(48)
            .position(|w| w == GOOD_PCR0)
            .expect("PCR0 in the document");
        // One bit of PCR0 changed after signing.
        doc[pcr + 47] ^= 0x01;
        Ok(doc)
    }
}

#[tokio::test]
async fn tampered_or_foreign_documents_are_refused() {
    let kms = fake_kms(Some(GOOD_PCR0), CmsEncoding::KmsBer).await;
    let client = client_for(&kms);
    let blob = encrypt(&client, &kms, &BTreeMap::new()).await;

    let dec = recipient(
        client.clone(),
        Tampering(TestAttestor::new(pki(), GOOD_PCR0)),
    )
    .await;
    let err = dec.decrypt(DecryptRequest::new(&blob)).await.unwrap_err();
    assert!(
        matches!(&err, KmsError::Service { code, message } if code == "ValidationException" && message.contains("signature")),
        "{err}"
    );

    // A well-formed document from a PKI that is not the trusted one.
    let rogue = Arc::new(TestPki::generate());
    let dec = recipient(client, TestAttestor::new(rogue, GOOD_PCR0)).await;
    let err = dec.decrypt(DecryptRequest::new(&blob)).await.unwrap_err();
    assert!(
        matches!(&err, KmsError::Service { code, .. } if code == "ValidationException"),
        "{err}"
    );
    assert_eq!(
        kms.stats()
            .decrypt_with_recipient
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn kms_errors_and_endpoints_that_leak_plaintext_are_reported() {
    // No policy condition: plain Decrypt works...
    let kms = fake_kms(None, CmsEncoding::KmsBer).await;
    let client = client_for(&kms);
    let blob = encrypt(&client, &kms, &ctx()).await;
    let context = ctx();
    let plain = PlainDecryptor::new(client.clone())
        .decrypt(DecryptRequest::with_context(&blob, None, &context))
        .await
        .unwrap();
    assert_eq!(plain.expose(), SECRET);
    // ...a wrong encryption context is InvalidCiphertextException...
    let err = PlainDecryptor::new(client.clone())
        .decrypt(DecryptRequest::new(&blob))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, KmsError::Service { code, .. } if code == "InvalidCiphertextException"),
        "{err}"
    );
    // ...and an unknown key NotFoundException.
    let err = PlainDecryptor::new(client.clone())
        .decrypt(DecryptRequest::with_context(
            &blob,
            Some("arn:aws:kms:us-east-1:111122223333:key/other"),
            &context,
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, KmsError::Service { code, .. } if code == "NotFoundException"),
        "{err}"
    );

    // Nothing listening: a transport error, not a panic.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let mut cfg = KmsClientConfig {
        region: serde_json::from_value(serde_json::json!("us-east-1")).unwrap(),
        credentials: AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: SecretString::new("secret"),
            session_token: None,
            expiration: None,
        },
        endpoint_url: Some(EndpointUrl::try_from(dead).unwrap()),
        resolve_to: None,
        trust_roots_pem: None,
    };
    let err = PlainDecryptor::new(kms_client(&cfg))
        .decrypt(DecryptRequest::new(&blob))
        .await
        .unwrap_err();
    assert!(matches!(err, KmsError::Transport(_)), "{err}");

    // Routing every name to 127.0.0.1 (the enclave's loopback forwarder):
    // a host name that does not resolve anywhere still reaches the fake.
    let port = kms.url().rsplit(':').next().unwrap();
    cfg.endpoint_url =
        Some(EndpointUrl::try_from(format!("http://kms.us-east-1.amazonaws.com:{port}")).unwrap());
    cfg.resolve_to = Some("127.0.0.1".parse().unwrap());
    let plain = PlainDecryptor::new(kms_client(&cfg))
        .decrypt(DecryptRequest::with_context(&blob, None, &context))
        .await
        .unwrap();
    assert_eq!(plain.expose(), SECRET);
}

#[tokio::test]
async fn malformed_envelopes_are_refused() {
    let key =
        tokio::task::spawn_blocking(|| rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap())
            .await
            .unwrap();
    for junk in [&b""[..], b"\x30\x80\x00\x00", &[0x30u8; 64][..]] {
        assert!(matches!(
            open_enveloped_data(junk, &key),
            Err(KmsError::Cms(_))
        ));
    }
}
