//! A throw-away attestation PKI shaped like AWS's (P-384 everywhere,
//! ecdsa-with-SHA384, root → intermediate → leaf), and an [`Attestor`] that
//! signs NSM-format documents with the leaf key.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coset::{iana, CborSerializable, CoseSign1Builder, HeaderBuilder};
use der::asn1::OctetString;
use der::Encode;
use p384::ecdsa::signature::Signer;
use p384::ecdsa::{DerSignature, Signature, SigningKey};
use p384::elliptic_curve::Generate;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::certificate::TbsCertificate;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

use crate::attestation::{AttestFields, AttestationDoc, AttestationError, Attestor};

/// Validity periods of a generated PKI, and extensions added to it.
#[derive(Clone, Debug)]
pub struct TestPkiOptions {
    /// Root and intermediate: valid from `not_before` to `ca_not_after`.
    pub not_before: SystemTime,
    pub ca_not_after: SystemTime,
    /// Leaf: valid from `not_before` to `leaf_not_after` (AWS's leaves live
    /// about three hours).
    pub leaf_not_after: SystemTime,
    /// Extensions added after basicConstraints and keyUsage (none by
    /// default), for tests of how a verifier treats them.
    pub extra_extensions: Vec<TestExtension>,
}

/// One certificate of a [`TestPki`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestCert {
    Root,
    Intermediate,
    Leaf,
}

/// An extension to add to one certificate of a generated PKI.
#[derive(Clone, Debug)]
pub struct TestExtension {
    pub cert: TestCert,
    /// Dotted-decimal OID, e.g. `"1.3.6.1.4.1.99999.1"`.
    pub oid: &'static str,
    pub critical: bool,
    /// The DER value (it goes inside extnValue's OCTET STRING).
    pub value: Vec<u8>,
}

impl Default for TestPkiOptions {
    fn default() -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - Duration::from_secs(3600),
            ca_not_after: now + Duration::from_secs(30 * 24 * 3600),
            leaf_not_after: now + Duration::from_secs(3 * 3600),
            extra_extensions: Vec::new(),
        }
    }
}

/// Root, intermediate and leaf certificates with their keys.
pub struct TestPki {
    pub root_der: Vec<u8>,
    pub intermediate_der: Vec<u8>,
    pub leaf_der: Vec<u8>,
    leaf_key: SigningKey,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki").finish_non_exhaustive()
    }
}

struct Profile {
    issuer: Name,
    subject: Name,
    ca: Option<Option<u8>>,
    extra: Vec<Extension>,
}

impl BuilderProfile for Profile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        _spk: spki::SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: spki::SubjectPublicKeyInfoRef<'_>,
        _tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        use const_oid::AssociatedOid;
        let (bc, usage) = match self.ca {
            Some(path_len) => (
                BasicConstraints {
                    ca: true,
                    path_len_constraint: path_len,
                },
                KeyUsages::KeyCertSign | KeyUsages::CRLSign | KeyUsages::DigitalSignature,
            ),
            None => (
                BasicConstraints {
                    ca: false,
                    path_len_constraint: None,
                },
                KeyUsages::DigitalSignature.into(),
            ),
        };
        let mut extensions = vec![
            Extension {
                extn_id: BasicConstraints::OID,
                critical: true,
                extn_value: OctetString::new(bc.to_der()?)?,
            },
            Extension {
                extn_id: KeyUsage::OID,
                critical: true,
                extn_value: OctetString::new(KeyUsage(usage).to_der()?)?,
            },
        ];
        extensions.extend(self.extra.iter().cloned());
        Ok(extensions)
    }
}

fn new_key() -> SigningKey {
    SigningKey::try_generate_from_rng(&mut getrandom::SysRng).expect("system RNG")
}

fn serial() -> SerialNumber {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    SerialNumber::from(NEXT.fetch_add(1, Ordering::Relaxed))
}

fn certificate(
    profile: Profile,
    subject_key: &SigningKey,
    issuer_key: &SigningKey,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Vec<u8> {
    let validity = Validity::new(
        Time::try_from(not_before).expect("representable time"),
        Time::try_from(not_after).expect("representable time"),
    );
    let spki = SubjectPublicKeyInfoOwned::from_key(subject_key.verifying_key())
        .expect("P-384 key encodes");
    let builder =
        CertificateBuilder::new(profile, serial(), validity, spki).expect("certificate builder");
    builder
        .build::<_, DerSignature>(issuer_key)
        .expect("certificate signs")
        .to_der()
        .expect("certificate encodes")
}

impl TestPki {
    /// Generate with [`TestPkiOptions::default`].
    pub fn generate() -> Self {
        Self::generate_with(&TestPkiOptions::default())
    }

    pub fn generate_with(opts: &TestPkiOptions) -> Self {
        let name = |s: &str| Name::from_str(s).expect("valid test name");
        let root_name = name("CN=ensign test root,O=ensign test,C=US");
        let int_name = name("CN=ensign test intermediate,O=ensign test,C=US");
        let leaf_name = name("CN=i-test.enc-test.eu-west-1.aws,O=ensign test,C=US");
        let root_key = new_key();
        let int_key = new_key();
        let leaf_key = new_key();
        let extra = |which: TestCert| -> Vec<Extension> {
            opts.extra_extensions
                .iter()
                .filter(|e| e.cert == which)
                .map(|e| Extension {
                    extn_id: der::oid::ObjectIdentifier::new(e.oid).expect("valid test OID"),
                    critical: e.critical,
                    extn_value: OctetString::new(e.value.clone()).expect("extension value"),
                })
                .collect()
        };
        let root_der = certificate(
            Profile {
                issuer: root_name.clone(),
                subject: root_name.clone(),
                ca: Some(None),
                extra: extra(TestCert::Root),
            },
            &root_key,
            &root_key,
            opts.not_before,
            opts.ca_not_after,
        );
        let intermediate_der = certificate(
            Profile {
                issuer: root_name,
                subject: int_name.clone(),
                ca: Some(Some(0)),
                extra: extra(TestCert::Intermediate),
            },
            &int_key,
            &root_key,
            opts.not_before,
            opts.ca_not_after,
        );
        let leaf_der = certificate(
            Profile {
                issuer: int_name,
                subject: leaf_name,
                ca: None,
                extra: extra(TestCert::Leaf),
            },
            &leaf_key,
            &int_key,
            opts.not_before,
            opts.leaf_not_after,
        );
        Self {
            root_der,
            intermediate_der,
            leaf_der,
            leaf_key,
        }
    }

    /// Sign `doc` (its payload) as a COSE_Sign1 with the leaf key, untagged,
    /// as the NSM returns it.
    pub fn sign(&self, doc: &AttestationDoc) -> Vec<u8> {
        let protected = HeaderBuilder::new()
            .algorithm(iana::Algorithm::ES384)
            .build();
        CoseSign1Builder::new()
            .protected(protected)
            .payload(doc.to_cbor())
            .create_signature(b"", |data| {
                let sig: Signature = self.leaf_key.sign(data);
                sig.to_bytes().to_vec()
            })
            .build()
            .to_vec()
            .expect("COSE_Sign1 encodes")
    }
}

/// An [`Attestor`] producing real, verifiable documents from a [`TestPki`].
#[derive(Clone, Debug)]
pub struct TestAttestor {
    pki: Arc<TestPki>,
    pcrs: BTreeMap<u8, Vec<u8>>,
    module_id: String,
}

impl TestAttestor {
    /// PCR0 as given, PCR1–4 and PCR8 zero (48 bytes each, SHA-384).
    pub fn new(pki: Arc<TestPki>, pcr0: [u8; 48]) -> Self {
        let mut pcrs = BTreeMap::new();
        pcrs.insert(0, pcr0.to_vec());
        for i in [1u8, 2, 3, 4, 8] {
            pcrs.insert(i, vec![0; 48]);
        }
        Self {
            pki,
            pcrs,
            module_id: "i-0123456789abcdef0-enc0123456789abcdef".into(),
        }
    }

    pub fn with_pcr(mut self, index: u8, value: Vec<u8>) -> Self {
        self.pcrs.insert(index, value);
        self
    }

    pub fn pki(&self) -> &TestPki {
        &self.pki
    }

    /// The document payload `attest` would sign (for tests that tamper).
    pub fn document(
        &self,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> AttestationDoc {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        AttestationDoc {
            module_id: self.module_id.clone(),
            digest: "SHA384".into(),
            timestamp,
            pcrs: self.pcrs.clone(),
            certificate: self.pki.leaf_der.clone(),
            cabundle: vec![self.pki.root_der.clone(), self.pki.intermediate_der.clone()],
            public_key: public_key.map(<[u8]>::to_vec),
            user_data: user_data.map(<[u8]>::to_vec),
            nonce: nonce.map(<[u8]>::to_vec),
        }
    }
}

impl Attestor for TestAttestor {
    fn attest_fields(&self, fields: AttestFields<'_>) -> Result<Vec<u8>, AttestationError> {
        fields.check_sizes()?;
        let AttestFields {
            user_data,
            nonce,
            public_key,
        } = fields;
        Ok(self.pki.sign(&self.document(user_data, nonce, public_key)))
    }
}

impl TestPki {
    /// The PKI as bytes (the three certificates and the leaf's signing key),
    /// so a second process — the `ensign-fake-enclave` test binary — signs
    /// documents that chain to the same root. Test material only.
    pub fn to_bytes(&self) -> Vec<u8> {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        serde_json::json!({
            "root": b64(&self.root_der),
            "intermediate": b64(&self.intermediate_der),
            "leaf": b64(&self.leaf_der),
            "leaf_key": b64(&self.leaf_key.to_bytes()),
        })
        .to_string()
        .into_bytes()
    }

    /// The inverse of [`TestPki::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        use base64::Engine as _;
        let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let field = |name: &str| -> Result<Vec<u8>, String> {
            v.get(name)
                .and_then(serde_json::Value::as_str)
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                .ok_or_else(|| format!("test PKI: missing or invalid `{name}`"))
        };
        let leaf_key = SigningKey::from_slice(&field("leaf_key")?)
            .map_err(|_| "test PKI: invalid leaf key".to_owned())?;
        Ok(Self {
            root_der: field("root")?,
            intermediate_der: field("intermediate")?,
            leaf_der: field("leaf")?,
            leaf_key,
        })
    }
}

/// File of a shared test PKI directory holding [`TestPki::to_bytes`] (the
/// leaf's signing key included: test material only).
pub const TEST_PKI_FILE: &str = "test-pki.json";
/// File of a shared test PKI directory holding the root certificate, PEM.
pub const TEST_ROOT_FILE: &str = "test-root.pem";

impl TestPki {
    /// The root certificate as PEM (RFC 7468 §5: base64 lines of 64
    /// characters between the CERTIFICATE labels).
    pub fn root_pem(&self) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.root_der);
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        pem
    }

    /// The PKI of directory `dir`, so that several processes (an
    /// insecure-test enclave, a fake KMS, a verifier) share one test root:
    /// `dir/`[`TEST_PKI_FILE`] if it exists, else a new PKI written there
    /// (mode 0600; created atomically, so of two processes racing, both end
    /// up with the one written first). `dir/`[`TEST_ROOT_FILE`] is written
    /// when missing.
    pub fn load_or_generate(dir: &std::path::Path) -> std::io::Result<Self> {
        use std::io::Write as _;
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        std::fs::create_dir_all(dir)?;
        let path = dir.join(TEST_PKI_FILE);
        if !path.exists() {
            let fresh = Self::generate();
            let tmp = dir.join(format!(".{TEST_PKI_FILE}.{}.tmp", std::process::id()));
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            f.write_all(&fresh.to_bytes())?;
            f.sync_all()?;
            // A hard link fails if the name exists: the first writer wins.
            let linked = std::fs::hard_link(&tmp, &path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        let pki = Self::from_bytes(&std::fs::read(&path)?).map_err(invalid)?;
        let root = dir.join(TEST_ROOT_FILE);
        if std::fs::read(&root).ok().as_deref() != Some(pki.root_pem().as_bytes()) {
            let tmp = dir.join(format!(".{TEST_ROOT_FILE}.{}.tmp", std::process::id()));
            std::fs::write(&tmp, pki.root_pem())?;
            std::fs::rename(&tmp, &root)?;
        }
        Ok(pki)
    }
}
