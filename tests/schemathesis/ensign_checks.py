"""schemathesis hooks for ensign, loaded by tests/tests/openapi.rs (SCHEMATHESIS_HOOKS).

`no_undocumented_server_error` replaces schemathesis's `not_a_server_error`: ensign answers a
few client mistakes with 500, as Web3Signer does and as validator clients expect (a missing
`fork_info`, a `signingRoot` that differs from the payload's root: both documented in
api-spec/openapi/ensign.yaml), and 503 past `--max-in-flight-signing`. Any other 5xx, or one of
these statuses with another body (an internal fault), fails the run.

`map_path_parameters` points half of the generated sign requests at the loaded key
(`ENSIGN_SCHEMATHESIS_IDENTIFIER`): a random identifier finds no key, so without this the
fuzzer would never get past the key lookup to signing roots and slashing protection.
"""

import os

import schemathesis

LOADED_KEY = os.environ.get("ENSIGN_SCHEMATHESIS_IDENTIFIER")

DOCUMENTED_SERVER_ERRORS = {
    (500, "Internal Server Error: fork_info is required for this type"),
    (500, "Internal Server Error: signingRoot does not match the payload"),
    (503, "Service Unavailable"),
}


@schemathesis.check
def no_undocumented_server_error(ctx, response, case):
    """A 5xx only for the documented client-caused reasons."""
    if response.status_code < 500:
        return None
    body = response.content.decode("utf-8", "replace")
    if (response.status_code, body) not in DOCUMENTED_SERVER_ERRORS:
        raise AssertionError(f"undocumented server error {response.status_code}: {body[:300]!r}")
    return None


@schemathesis.hook
def map_path_parameters(ctx, path_parameters):
    """The loaded key for every generated identifier of even length (deterministic, so
    shrinking and replays see the same request)."""
    identifier = path_parameters.get("identifier") if path_parameters else None
    if LOADED_KEY and isinstance(identifier, str) and len(identifier) % 2 == 0:
        path_parameters["identifier"] = LOADED_KEY
    return path_parameters
