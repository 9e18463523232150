//! The Nitro Secure Module attestor (`/dev/nsm`, through the AWS
//! aws-nitro-enclaves-nsm-api crate: CBOR request in an ioctl).

use aws_nitro_enclaves_nsm_api::api::{Request, Response};
use aws_nitro_enclaves_nsm_api::driver::{nsm_exit, nsm_init, nsm_process_request};
use serde_bytes::ByteBuf;

use super::{AttestationError, Attestor, MAX_OPTIONAL_FIELD_LEN};

/// An open `/dev/nsm`. Only exists inside a Nitro Enclave; elsewhere
/// [`NsmAttestor::open`] returns [`AttestationError::NsmUnavailable`].
#[derive(Debug)]
pub struct NsmAttestor {
    fd: i32,
}

impl NsmAttestor {
    pub fn open() -> Result<Self, AttestationError> {
        let fd = nsm_init();
        if fd < 0 {
            return Err(AttestationError::NsmUnavailable(
                "cannot open /dev/nsm (not inside a Nitro Enclave?)".into(),
            ));
        }
        Ok(Self { fd })
    }
}

impl Drop for NsmAttestor {
    fn drop(&mut self) {
        nsm_exit(self.fd);
    }
}

fn checked(name: &'static str, v: Option<&[u8]>) -> Result<Option<ByteBuf>, AttestationError> {
    match v {
        Some(b) if b.len() > MAX_OPTIONAL_FIELD_LEN => Err(AttestationError::InputTooLarge {
            field: name,
            len: b.len(),
            max: MAX_OPTIONAL_FIELD_LEN,
        }),
        Some(b) => Ok(Some(ByteBuf::from(b.to_vec()))),
        None => Ok(None),
    }
}

impl Attestor for NsmAttestor {
    fn attest(
        &self,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, AttestationError> {
        let request = Request::Attestation {
            user_data: checked("user_data", user_data)?,
            nonce: checked("nonce", nonce)?,
            public_key: checked("public_key", public_key)?,
        };
        match nsm_process_request(self.fd, request) {
            Response::Attestation { document } => Ok(document),
            Response::Error(code) => Err(AttestationError::Nsm(format!("{code:?}"))),
            _ => Err(AttestationError::Nsm("unexpected response".into())),
        }
    }
}
