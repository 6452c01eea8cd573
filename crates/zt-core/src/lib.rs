//! ZT-Infra's decision core: the decision contract, policy loading and the Cedar engine.
//!
//! Architecture invariant: this crate does no I/O: no files, network, clock or randomness.
//! Callers read policy files and pass their text in; decision ids and times are added by the
//! server.
//!
//! Architecture invariant: every decision path fails closed. [`Engine::decide`] returns a
//! verdict for every [`ValidRequest`], and any error on the way is a deny.

pub mod authzen;
pub mod contract;
pub mod engine;
pub mod import;
pub mod policy;
pub mod testing;

pub use contract::{
    ActionName, Decision, DecisionRequest, FieldError, Limits, Reason, ReasonKind,
    ReferenceRequest, ValidRequest, Verdict,
};
pub use engine::Engine;
pub use policy::{
    ApprovalRule, FileInfo, FileKind, LoadedSet, PolicyError, QuarantineScope, SourceFile,
    ValidationCache,
};
