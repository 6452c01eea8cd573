//! ZT-Infra's evidence format: records, the hash chain, the Merkle tree, signed checkpoints and
//! the offline verifier. Pure: no I/O, no clock (times come in as values).
//!
//! Every decision becomes a [`record::SealedRecord`] that names the hash of the record before it
//! and is a leaf of an RFC 9162 Merkle tree; signed checkpoints (C2SP signed notes) over the
//! tree's root cover every record, so an export can be verified offline with only the log's
//! public keys ([`verify`]).

pub mod canonical;
pub mod checkpoint;
pub mod merkle;
pub mod record;
pub mod strict;
pub mod verify;

pub use checkpoint::{Checkpoint, Keyring, PublicKey};
pub use merkle::{CompactRange, Hash, Tiles, Tree};
pub use record::{Chain, PendingRecord, SealedRecord};
pub use verify::{Failure, FailureKind, Line, Summary};

#[cfg(test)]
mod tests;
