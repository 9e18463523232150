//! The Nitro Secure Module attestor (`/dev/nsm`, through the AWS
//! aws-nitro-enclaves-nsm-api crate: CBOR request in an ioctl).

use aws_nitro_enclaves_nsm_api::api::{Request, Response};
use aws_nitro_enclaves_nsm_api::driver::{nsm_exit, nsm_init, nsm_process_request};
use serde_bytes::ByteBuf;

use super::{AttestFields, AttestationError, Attestor};

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

/// The field as the NSM API takes it.
fn owned(v: Option<&[u8]>) -> Option<ByteBuf> {
    v.map(|b| ByteBuf::from(b.to_vec()))
}

impl Attestor for NsmAttestor {
    fn attest_fields(&self, fields: AttestFields<'_>) -> Result<Vec<u8>, AttestationError> {
        fields.check_sizes()?;
        let request = Request::Attestation {
            user_data: owned(fields.user_data),
            nonce: owned(fields.nonce),
            public_key: owned(fields.public_key),
        };
        match nsm_process_request(self.fd, request) {
            Response::Attestation { document } => Ok(document),
            Response::Error(code) => Err(AttestationError::Nsm(format!("{code:?}"))),
            _ => Err(AttestationError::Nsm("unexpected response".into())),
        }
    }
}
