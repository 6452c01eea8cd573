//! ZT-Infra identity: who is calling, verified.
//!
//! Pure: no I/O, no clock, no randomness. A credential arrives as an
//! [`UnverifiedCredential`] (text from an `Authorization` header); it becomes a [`Caller`] only
//! through [`UnverifiedCredential::verify`], given the stored record its digest names. What a
//! caller may do is its [`Role`]'s, asked through [`Caller::authorize`]. Agent sessions
//! ([`session`]) carry signed access tokens: an [`session::UnverifiedToken`] becomes a
//! [`session::VerifiedSession`] only through its `verify`, given the keys and the time.
//! Workloads ([`svid`]) arrive as SPIFFE SVIDs, checked against trust bundles at a time passed
//! in; the service's own issuing CA signs with a key its caller made (ECDSA signatures draw
//! their nonces from `ring`).

pub mod credential;
pub mod delegation;
pub mod session;
pub mod status_list;
pub mod svid;

pub use credential::{
    AuthError, Caller, CallerKind, CredentialName, CredentialRecord, NewSecret, Permission, Role,
    TokenDigest, UnverifiedCredential,
};
