//! `--api-key`: every `/v1` HTTP route and the whole gRPC API require `Authorization: Bearer
//! <key>` (gRPC: the `authorization` metadata) once at least one key is set, as vLLM's
//! `--api-key` does; `/health` and `/metrics` stay open for probes and scrapers.
//!
//! A presented key is hashed and its SHA-256 digest compared with every configured key's in
//! constant time (`subtle`), all keys every time: the time taken tells nothing about how much
//! of a key matched, how long the keys are, or which one matched.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The keys a server accepts; none means the API is open.
#[derive(Clone, Debug, Default)]
pub struct ApiKeys {
    digests: Arc<[[u8; 32]]>,
}

impl ApiKeys {
    /// Refuses empty keys (a typo such as `--api-key ""` must not open the API).
    pub fn new<I: IntoIterator<Item = String>>(keys: I) -> Result<ApiKeys, String> {
        let mut digests = Vec::new();
        for key in keys {
            let key = key.trim();
            if key.is_empty() {
                return Err("an API key must not be empty".into());
            }
            digests.push(Sha256::digest(key.as_bytes()).into());
        }
        Ok(ApiKeys { digests: digests.into() })
    }

    pub fn is_enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Whether an `Authorization` value (`Bearer <key>`) carries an accepted key. Always true
    /// when no key is configured.
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        if !self.is_enabled() {
            return true;
        }
        let Some(token) = authorization.and_then(bearer_token) else { return false };
        let presented: [u8; 32] = Sha256::digest(token).into();
        let matched = self.digests.iter().fold(subtle::Choice::from(0), |any, d| any | d.ct_eq(&presented));
        matched.into()
    }
}

/// The token of `Bearer <token>` (the scheme in any case, as RFC 7235 has it).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = (value.get(..7)?, &value[7..]);
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.trim_ascii()).filter(|t| !t.is_empty())
}

/// Why a request was refused, for the 401 body and the UNAUTHENTICATED status.
pub const REFUSED: &str =
    "Invalid or missing API key: send `Authorization: Bearer <key>` with a key given to the server's --api-key.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_keys_are_checked_against_every_key() {
        let keys = ApiKeys::new(["first-key".to_string(), "second".to_string()]).unwrap();
        assert!(keys.allows(Some(b"Bearer first-key")));
        assert!(keys.allows(Some(b"bearer second")), "the scheme is case-insensitive");
        assert!(keys.allows(Some(b"Bearer  second ")), "surrounding spaces are not part of the key");
        for bad in [&b"Bearer first-ke"[..], b"Bearer first-key2", b"first-key", b"Basic first-key", b"Bearer ", b""] {
            assert!(!keys.allows(Some(bad)), "{}", String::from_utf8_lossy(bad));
        }
        assert!(!keys.allows(None));
    }

    #[test]
    fn no_keys_leave_the_api_open_and_empty_keys_are_refused() {
        let open = ApiKeys::default();
        assert!(!open.is_enabled() && open.allows(None));
        assert!(ApiKeys::new(["  ".to_string()]).is_err());
    }
}
