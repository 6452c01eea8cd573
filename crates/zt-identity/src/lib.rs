//! ZT-Infra identity: who is calling, verified.
//!
//! Pure: no I/O, no clock, no randomness. A credential arrives as an
//! [`UnverifiedCredential`] (text from an `Authorization` header); it becomes a [`Caller`] only
//! through [`UnverifiedCredential::verify`], given the stored record its digest names. What a
//! caller may do is its [`Role`]'s, asked through [`Caller::authorize`].

pub mod credential;

pub use credential::{
    AuthError, Caller, CallerKind, CredentialName, CredentialRecord, NewSecret, Permission, Role,
    TokenDigest, UnverifiedCredential,
};
