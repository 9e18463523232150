//! The OpenAPI 3.1 document of every endpoint ensign serves (`api-spec/openapi/ensign.yaml`),
//! built into the binary and served at `GET /api-docs/openapi.yaml`.
//!
//! The document is ensign's own. The tests crate (`tests/tests/openapi.rs`) keeps it honest:
//! its routes are exactly the server's route table, every example parses and signs, and real
//! responses of every documented status validate against it; schemathesis fuzzes the release
//! binary with it.

/// The document, as YAML.
pub const OPENAPI_YAML: &str = include_str!("../openapi/ensign.yaml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_is_yaml_of_openapi_3_1() {
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(OPENAPI_YAML).expect("valid YAML");
        let version = doc["openapi"].as_str().expect("openapi field");
        assert!(version.starts_with("3.1."), "{version}");
    }
}
