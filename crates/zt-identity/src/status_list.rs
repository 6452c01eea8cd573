//! Token Status Lists (draft-ietf-oauth-status-list): one bit per issued access token, set when
//! its session is revoked, so that an enforcement point verifying tokens itself learns of
//! revocations without asking for each token.
//!
//! A token names its place in its `status` claim (`{"status_list": {"idx", "uri"}}`); the list is
//! served as a JWT (`typ: statuslist+jwt`) whose `status_list` claim holds `bits` (1) and `lst`,
//! the bytes compressed with DEFLATE in the zlib format and encoded as base64url. Bit `i` is bit
//! `i % 8` (least significant first) of byte `i / 8`.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::session::TokenSigner;

/// The JWT `typ` of a status list token.
pub const STATUS_LIST_TYPE: &str = "statuslist+jwt";

/// A token's reference into a status list: its `status` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub status_list: StatusReference,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReference {
    pub idx: u64,
    pub uri: String,
}

/// One bit per token: 0 valid, 1 revoked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusList {
    bytes: Vec<u8>,
}

/// The most tokens one list indexes (16 Mi: 2 MiB uncompressed).
pub const MAX_INDEX: u64 = 16 * 1024 * 1024;

impl StatusList {
    /// Marks token `idx` revoked; `false` if `idx` is beyond [`MAX_INDEX`].
    pub fn revoke(&mut self, idx: u64) -> bool {
        let Some(byte) = usize::try_from(idx / 8).ok().filter(|_| idx < MAX_INDEX) else {
            return false;
        };
        if self.bytes.len() <= byte {
            self.bytes.resize(byte + 1, 0);
        }
        if let Some(b) = self.bytes.get_mut(byte) {
            *b |= 1 << (idx % 8);
        }
        true
    }

    pub fn is_revoked(&self, idx: u64) -> bool {
        usize::try_from(idx / 8)
            .ok()
            .and_then(|byte| self.bytes.get(byte))
            .is_some_and(|b| b & (1 << (idx % 8)) != 0)
    }

    /// Makes room for `len` tokens (a list covers every index issued, revoked or not).
    pub fn cover(&mut self, len: u64) {
        let bytes = usize::try_from(len.min(MAX_INDEX).div_ceil(8)).unwrap_or(0);
        if self.bytes.len() < bytes {
            self.bytes.resize(bytes, 0);
        }
    }

    /// `lst`: the bytes, zlib-compressed, base64url.
    pub fn encoded(&self) -> String {
        let compressed = miniz_oxide::deflate::compress_to_vec_zlib(&self.bytes, 9);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(compressed)
    }

    /// Reads `lst` back (for verifiers and tests).
    pub fn decode(lst: &str) -> Option<Self> {
        let compressed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(lst)
            .ok()?;
        let bytes = miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(
            &compressed,
            usize::try_from(MAX_INDEX / 8).unwrap_or(0),
        )
        .ok()?;
        Some(Self { bytes })
    }

    /// The list as a signed status list token, `sub` its URI, valid from `now` for `ttl`
    /// seconds (the time a verifier may cache it).
    pub fn token(
        &self,
        signer: &TokenSigner,
        uri: &str,
        now: i64,
        ttl: i64,
    ) -> Result<String, String> {
        let claims = serde_json::json!({
            "sub": uri,
            "iat": now,
            "exp": now + ttl,
            "ttl": ttl,
            "status_list": {"bits": 1, "lst": self.encoded()},
        });
        signer.sign_typed(STATUS_LIST_TYPE, &claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_round_trip_through_the_compressed_form() {
        let mut list = StatusList::default();
        list.cover(100_000);
        for idx in [0, 7, 8, 99_999, 12_345] {
            assert!(list.revoke(idx));
        }
        assert!(!list.revoke(MAX_INDEX));
        let back = StatusList::decode(&list.encoded()).unwrap();
        assert_eq!(back, list);
        for idx in [0, 7, 8, 12_345, 99_999] {
            assert!(back.is_revoked(idx));
        }
        for idx in [1, 6, 9, 12_344, 99_998, 100_000] {
            assert!(!back.is_revoked(idx));
        }
        // Bit 0 is the least significant bit of byte 0 (the draft's example order).
        let mut one = StatusList::default();
        one.revoke(0);
        one.revoke(9);
        assert_eq!(one.bytes, [0b0000_0001, 0b0000_0010]);
        // 100,000 tokens, five revoked: a few hundred bytes.
        assert!(list.encoded().len() < 400, "{}", list.encoded().len());
        assert!(StatusList::decode("!!").is_none());
    }
}
