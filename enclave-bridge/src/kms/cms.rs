//! Opening KMS's `CiphertextForRecipient`: a CMS `EnvelopedData` (RFC 5652
//! §6) in BER, wrapped in a `ContentInfo`.
//!
//! What KMS sends (and all this accepts): `ContentInfo { id-envelopedData,
//! EnvelopedData v2 { one KeyTransRecipientInfo v2 (subjectKeyIdentifier),
//! keyEncryptionAlgorithm id-RSAES-OAEP with SHA-256 and MGF1-SHA-256
//! (RFC 8017 A.2.1, RFC 4055 §4.1), EncryptedContentInfo { id-data,
//! aes256-CBC with the IV as parameter (RFC 3565 §4.1), content } } }`,
//! indefinite lengths and chunked content octets included (BER, X.690 §8.1.3.6
//! and §8.7.3). Everything else is refused.

use aes::Aes256;
use cbc::cipher::{BlockModeDecrypt, KeyIvInit};
use cms::content_info::ContentInfo;
use cms::enveloped_data::{EnvelopedData, RecipientInfo};
use const_oid::db::rfc5911::{ID_AES_256_CBC, ID_DATA, ID_ENVELOPED_DATA};
use const_oid::db::rfc5912::{ID_MGF_1, ID_RSAES_OAEP, ID_SHA_256};
use der::asn1::OctetString;
use der::{Decode, Encode, Tagged};
use rsa::pkcs1::RsaOaepParams;
use rsa::{Oaep, PrivateKey};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::KmsError;
use crate::secret::SecretBytes;

fn cms_err(what: &str) -> KmsError {
    KmsError::Cms(what.to_owned())
}

/// Decrypt `ber` (KMS's `CiphertextForRecipient`) with the recipient's
/// private key.
pub fn open_enveloped_data(ber: &[u8], key: &PrivateKey) -> Result<SecretBytes, KmsError> {
    let info = ContentInfo::from_ber(ber).map_err(|e| cms_err(&format!("ContentInfo: {e}")))?;
    if info.content_type != ID_ENVELOPED_DATA {
        return Err(cms_err("content type is not id-envelopedData"));
    }
    // `Any` keeps the content's value octets as received; decode them again
    // under BER rules.
    let inner = info
        .content
        .to_der()
        .map_err(|e| cms_err(&format!("content: {e}")))?;
    let env =
        EnvelopedData::from_ber(&inner).map_err(|e| cms_err(&format!("EnvelopedData: {e}")))?;

    let mut recipients = env.recip_infos.0.iter();
    let ktri = match (recipients.next(), recipients.next()) {
        (Some(RecipientInfo::Ktri(k)), None) => k,
        (Some(_), None) => return Err(cms_err("recipient is not a KeyTransRecipientInfo")),
        _ => return Err(cms_err("expected exactly one recipient")),
    };
    // Structure first, the private-key operation last.
    check_oaep_sha256(&ktri.key_enc_alg)?;
    let eci = &env.encrypted_content;
    if eci.content_type != ID_DATA {
        return Err(cms_err("encrypted content type is not id-data"));
    }
    if eci.content_enc_alg.oid != ID_AES_256_CBC {
        return Err(cms_err("content encryption is not AES-256-CBC"));
    }
    let iv: OctetString = eci
        .content_enc_alg
        .parameters
        .as_ref()
        .ok_or_else(|| cms_err("AES-256-CBC without an IV"))?
        .decode_as()
        .map_err(|_| cms_err("AES-256-CBC IV is not an OCTET STRING"))?;
    let iv: [u8; 16] = iv
        .as_bytes()
        .try_into()
        .map_err(|_| cms_err("AES-256-CBC IV is not 16 bytes"))?;
    let ciphertext = eci
        .encrypted_content
        .as_ref()
        .ok_or_else(|| cms_err("no encrypted content"))?
        .as_bytes();

    let cek = Zeroizing::new(
        // Blinded RSA: a timing side-channel countermeasure, cheap next to
        // the KMS round trip.
        key.decrypt_blinded(
            &mut getrandom::SysRng,
            Oaep::<Sha256>::new(),
            ktri.enc_key.as_bytes(),
        )
        .map_err(|_| cms_err("RSA-OAEP unwrap of the content key failed"))?,
    );
    if cek.len() != 32 {
        return Err(cms_err("content key is not 256 bits"));
    }

    let decryptor = cbc::Decryptor::<Aes256>::new_from_slices(&cek, &iv)
        .map_err(|_| cms_err("bad AES-256-CBC key or IV length"))?;
    // RFC 5652 §6.3: PKCS #7 padding. Decrypt into a zeroizing buffer of the
    // final capacity.
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    let len = decryptor
        .decrypt_padded::<cbc::cipher::block_padding::Pkcs7>(&mut buf)
        .map_err(|_| cms_err("AES-256-CBC decryption or padding failed"))?
        .len();
    buf.truncate(len);
    Ok(SecretBytes::from(buf))
}

/// RSAES-OAEP parameters must name SHA-256 as the hash and MGF1 with SHA-256
/// as the mask generator, with the default (empty) label — what KMS's
/// `RSAES_OAEP_SHA_256` means. Hash parameters may be absent or NULL
/// (RFC 4055 §2.1).
fn check_oaep_sha256(alg: &spki::AlgorithmIdentifierOwned) -> Result<(), KmsError> {
    if alg.oid != ID_RSAES_OAEP {
        return Err(cms_err("key encryption is not RSAES-OAEP"));
    }
    let params: RsaOaepParams<der::Any> = alg
        .parameters
        .as_ref()
        .ok_or_else(|| cms_err("RSAES-OAEP without parameters means SHA-1"))?
        .decode_as()
        .map_err(|_| cms_err("malformed RSAES-OAEP parameters"))?;
    let null_or_absent = |p: &Option<der::Any>| {
        p.as_ref()
            .is_none_or(|a| a.tag() == der::Tag::Null && a.value().is_empty())
    };
    let hash_ok = params.hash.oid == ID_SHA_256 && null_or_absent(&params.hash.parameters);
    let mgf_ok = params.mask_gen.oid == ID_MGF_1
        && params
            .mask_gen
            .parameters
            .as_ref()
            .is_some_and(|h| h.oid == ID_SHA_256 && null_or_absent(&h.parameters));
    let default_label = RsaOaepParams::<der::Any>::default().p_source;
    if !hash_ok || !mgf_ok || params.p_source != default_label {
        return Err(cms_err(
            "RSAES-OAEP parameters are not SHA-256 / MGF1-SHA-256 / empty label",
        ));
    }
    Ok(())
}
