//! Parent/enclave bridge for running ensign inside an AWS Nitro Enclave.
//!
//! Purpose: the versioned, length-prefixed control protocol between the parent
//! instance (`ensign-host`) and the enclave, vsock proxying, attestation and
//! KMS decryption for an attested image.
//!
//! Status: not built yet (tracked by the "Enclave mode" issue). The crate exists
//! so the workspace has the layout of the design card; it exports nothing.
//!
//! Invariants (to hold once implemented): no key material ever crosses to the
//! host in plaintext; every frame is size-capped before it is read into memory.
