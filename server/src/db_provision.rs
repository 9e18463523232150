//! `ensign database provision`: the signer's own least-privilege PostgreSQL role, with a
//! password nobody sees (issue 15, finding 3).
//!
//! Run by the database's administrator, not by a signer instance:
//! 1. a fresh random password (256 bits) is made in memory;
//! 2. KMS encrypts it under the enclave image's key with the encryption context
//!    `{"ensign-purpose": "slashing-db-password", "ensign-db-user": <role>}` — first, so that a
//!    KMS failure changes nothing in the database;
//! 3. `slashing::provision_postgres` migrates the schema as the administrator and creates (or
//!    resets) the role with that password and only the signer's grants (no DELETE, no DDL);
//! 4. the credentials document — `{"username": <role>, "encrypted_password": {"ciphertext",
//!    "kms_key_id", "encryption_context"}}`, what `ensign-host --db-secret-arn` reads — is
//!    written to a file or stored as the new value of a Secrets Manager secret.
//!
//! The document holds nothing the parent instance can use: the key policy lets it decrypt only
//! from the attested image (KMS's Recipient flow), and the enclave refuses a password in clear.
//! Running the command again rotates the password (ensign-host forwards the changed secret).

use crate::config::DatabaseProvisionArgs;
use crate::key_records::ToolError;

/// Runs the command; returns what was done.
#[cfg(feature = "aws")]
pub async fn provision_command(args: &DatabaseProvisionArgs) -> Result<String, ToolError> {
    use crate::key_records::{aws_failed, CONTEXT_DB_USER, CONTEXT_PURPOSE, PURPOSE_DB_PASSWORD};
    use std::collections::BTreeMap;
    use zeroize::Zeroizing;

    let admin_password = match &args.admin_db_password_file {
        Some(path) => Some(crate::key_records::read_password_file(path)?),
        None => None,
    };
    let password = Zeroizing::new(hex::encode(Zeroizing::new(rand::random::<[u8; 32]>())));

    let config = crate::key_records::sdk_config(&args.aws).await?;
    let context = BTreeMap::from([
        (CONTEXT_PURPOSE.to_string(), PURPOSE_DB_PASSWORD.to_string()),
        (CONTEXT_DB_USER.to_string(), args.role.clone()),
    ]);
    let (ciphertext, key_id) =
        crate::key_records::kms_encrypt(&config, &args.kms_key_id, password.as_bytes(), &context)
            .await
            .map_err(|e| ToolError::DatabaseUnchanged(Box::new(e)))?;

    let (url, schema, role) = (
        args.admin_db_url.clone(),
        args.schema.clone(),
        args.role.clone(),
    );
    tokio::task::spawn_blocking(move || {
        slashing::provision_postgres(
            &url,
            None,
            admin_password.as_deref().map(|p| p.as_str()),
            slashing::PostgresOptions {
                schema: Some(schema),
                ..slashing::PostgresOptions::default()
            },
            &role,
            &password,
        )
    })
    .await
    .map_err(|source| ToolError::Aborted {
        step: "provisioning aborted",
        source,
    })?
    .map_err(ToolError::Provision)?;

    // The record's one definition, which ensign-host's reader (`host::db_secret`) is tested
    // against.
    let document = enclave_bridge::records::EncryptedDbSecret {
        username: args.role.clone(),
        encrypted_password: enclave_bridge::control::EncryptedBlob {
            ciphertext: enclave_bridge::secret::Base64Bytes(ciphertext),
            encryption_context: context,
            kms_key_id: Some(key_id.clone()),
        },
    };
    let pretty = serde_json::to_string_pretty(&document).expect("plain data serialises");
    let compact = serde_json::to_string(&document).expect("plain data serialises");
    let done = format!(
        "schema {} migrated; role {} has a new password, encrypted with KMS key {key_id}",
        args.schema, args.role
    );
    // From here on the role's password is only in the document: if it cannot be written, the
    // signer cannot log in until the command is run again.
    let lost = |e: ToolError| ToolError::PasswordLost(Box::new(e));
    match (&args.out, &args.secret_id) {
        (Some(path), _) => {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, format!("{pretty}\n"))
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| lost(crate::FileError::write(path)(e).into()))?;
            Ok(format!("{done}; wrote {}", path.display()))
        }
        (None, Some(secret)) => {
            let sm = aws_sdk_secretsmanager::Client::new(&config);
            sm.put_secret_value()
                .secret_id(secret)
                .secret_string(compact)
                .send()
                .await
                .map_err(|e| {
                    lost(aws_failed(
                        format!("Secrets Manager PutSecretValue into {secret}"),
                        &e,
                    ))
                })?;
            Ok(format!("{done}; stored in secret {secret}"))
        }
        (None, None) => Err(ToolError::NoDestination("--out or --secret-id")),
    }
}

/// Without the `aws` feature there is no KMS client.
#[cfg(not(feature = "aws"))]
pub async fn provision_command(_: &DatabaseProvisionArgs) -> Result<String, ToolError> {
    Err(ToolError::NoAws("database provision"))
}
