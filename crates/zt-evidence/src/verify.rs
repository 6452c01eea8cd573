//! The export format and the offline verifier.
//!
//! An export is JSON lines: a header, then records in sequence order with the checkpoints
//! that cover them:
//!
//! ```text
//! {"type":"header","format":"ztinfra-evidence-export/1","origin":"…","from":0,"to":100,"prefix":{"size":0,"nodes":[]}}
//! {"type":"record","hash":"<hex>","record":{…}}
//! {"type":"checkpoint","note":"<signed note>"}
//! ```
//!
//! `from` is the first sequence number and `to` the tree size at the end (one past the last
//! record). `prefix` holds the compact range of the records before `from` (empty when `from` is 0), so
//! that roots can be recomputed from a partial export. Verification needs the export and the
//! log's public keys, nothing else. It runs in two passes: [`Verifier::new`] takes the header,
//! checkpoints (each signature checked there) and the set of sequence numbers present; then each
//! record is fed in file order to [`Verifier::record`]; [`Verifier::finish`] gives the verdict.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checkpoint::{Keyring, NoteError, VerifiedCheckpoint, verify_notes};
use crate::merkle::{CompactRange, Hash, leaf_hash};
use crate::record::{GENESIS, record_hash};

pub const EXPORT_FORMAT: &str = "ztinfra-evidence-export/1";

/// The compact range before the first exported record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prefix {
    pub size: u64,
    pub nodes: Vec<String>,
}

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    Header {
        format: String,
        origin: String,
        from: u64,
        to: u64,
        prefix: Prefix,
    },
    Record {
        hash: String,
        record: Value,
    },
    Checkpoint {
        note: String,
    },
}

/// What is wrong with an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// A line is not part of the format.
    Malformed,
    /// A record's content changed.
    Modified,
    /// A record is absent.
    Missing,
    /// Records are out of order.
    Reordered,
    /// A record that was never logged is present.
    Inserted,
    /// The log ends before a checkpoint or its header says it should.
    Truncated,
    /// Records are not covered by any signed checkpoint.
    Unsigned,
    /// A checkpoint is signed by a key not in the keyring.
    UnknownKey,
    /// A checkpoint's signature does not verify.
    BadSignature,
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}{message}", .seq.map(|s| format!("seq {s}: ")).unwrap_or_default())]
pub struct Failure {
    pub kind: FailureKind,
    /// The first bad sequence number, when one can be named.
    pub seq: Option<u64>,
    pub message: String,
}

fn fail(kind: FailureKind, seq: Option<u64>, message: impl Into<String>) -> Failure {
    Failure {
        kind,
        seq,
        message: message.into(),
    }
}

/// A successful verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub records: u64,
    pub from: u64,
    pub tree_size: u64,
    pub root: String,
    pub checkpoints: usize,
    pub key_ids: Vec<String>,
}

/// A record line's hash and the exact text of its record object, without parsing the record;
/// `None` for any other line.
pub fn record_line(line: &str) -> Option<(&str, &str)> {
    #[derive(Deserialize)]
    struct RecordLine<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        hash: &'a str,
        #[serde(borrow)]
        record: &'a serde_json::value::RawValue,
    }
    serde_json::from_str::<RecordLine<'_>>(line)
        .ok()
        .filter(|r| r.kind == "record")
        .map(|r| (r.hash, r.record.get()))
}

/// The sequence number of an exported record line, read cheaply from the end of the line
/// where the exporter's canonical encoding puts it (`…,"seq":N,"time_ms":…}}`); `None` when the
/// line is not in that shape. A hint for naming failures, never a check.
pub fn skim_seq(line: &str) -> Option<u64> {
    let at = line.rfind(",\"seq\":")? + 7;
    let digits = line.get(at..)?;
    let end = digits.find(|c: char| !c.is_ascii_digit())?;
    digits.get(..end)?.parse().ok()
}

/// Parses one line of an export.
pub fn parse_line(line: &str, number: usize) -> Result<Line, Failure> {
    if let Some(pointer) = crate::strict::duplicate_key(line) {
        let kind = if pointer.starts_with("/record/") {
            FailureKind::Modified
        } else {
            FailureKind::Malformed
        };
        return Err(fail(
            kind,
            skim_seq(line),
            format!("line {number} repeats the member `{pointer}`"),
        ));
    }
    serde_json::from_str(line).map_err(|e| {
        fail(
            FailureKind::Malformed,
            None,
            format!("line {number} is not an export line: {e}"),
        )
    })
}

/// What the verifier is told to expect of an export, from outside it: a tree size, and perhaps
/// the root at that size (from a trusted checkpoint, or given by hand), so that an export cut
/// short with its header edited to match cannot pass as the whole log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin {
    pub size: u64,
    pub root: Option<Hash>,
    /// `true`: the export must end at exactly `size`; `false`: at `size` or later.
    pub exact: bool,
}

/// The verifier's state between records.
#[derive(Debug)]
pub struct Verifier {
    from: u64,
    to: u64,
    expected: u64,
    present: HashSet<u64>,
    checkpoints: BTreeMap<u64, VerifiedCheckpoint>,
    range: CompactRange,
    /// The hashes of the last two records, for naming what a broken link means.
    previous: Option<Hash>,
    before_previous: Option<Hash>,
    last_checked: u64,
    pin: Option<Pin>,
    /// The root at the pinned size, once the records reached it.
    pinned_root: Option<Hash>,
}

impl Verifier {
    /// Starts a verification from the header, every checkpoint note of the export (in any
    /// order), and the sequence numbers its records carry.
    pub fn new(
        header: &Line,
        notes: &[String],
        present: HashSet<u64>,
        keyring: &Keyring,
    ) -> Result<Self, Failure> {
        let Line::Header {
            format,
            origin,
            from,
            to,
            prefix,
        } = header
        else {
            return Err(fail(
                FailureKind::Malformed,
                None,
                "the export does not start with a header",
            ));
        };
        if format != EXPORT_FORMAT {
            return Err(fail(
                FailureKind::Malformed,
                None,
                format!("unknown export format `{format}`"),
            ));
        }
        if *origin != keyring.origin {
            return Err(fail(
                FailureKind::UnknownKey,
                None,
                format!(
                    "the export is of log `{origin}`, the keys are of log `{}`",
                    keyring.origin
                ),
            ));
        }
        let nodes: Option<Vec<Hash>> = prefix.nodes.iter().map(|n| Hash::from_hex(n)).collect();
        let range = nodes
            .and_then(|nodes| CompactRange::from_parts(prefix.size, nodes))
            .filter(|r| r.len() == *from)
            .ok_or_else(|| {
                fail(
                    FailureKind::Malformed,
                    None,
                    "the header's prefix does not match `from`",
                )
            })?;
        let verified = verify_notes(notes, keyring).map_err(|(i, e)| {
            let size = notes
                .get(i)
                .and_then(|n| n.lines().nth(1))
                .and_then(|s| s.parse::<u64>().ok());
            let at = size
                .map(|s| format!("the checkpoint of size {s}: "))
                .unwrap_or_default();
            let seq = size.and_then(|s| s.checked_sub(1));
            match e {
                NoteError::UnknownKey(_) => fail(FailureKind::UnknownKey, seq, format!("{at}{e}")),
                NoteError::BadSignature(_) => {
                    fail(FailureKind::BadSignature, seq, format!("{at}{e}"))
                }
                NoteError::Origin { .. } | NoteError::Malformed(_) => {
                    fail(FailureKind::Malformed, seq, format!("{at}{e}"))
                }
            }
        })?;
        let checkpoints: BTreeMap<u64, VerifiedCheckpoint> = verified
            .into_iter()
            .map(|v| (v.checkpoint.size, v))
            .collect();
        Ok(Self {
            from: *from,
            to: *to,
            expected: *from,
            present,
            checkpoints,
            range,
            previous: None,
            before_previous: None,
            last_checked: *from,
            pin: None,
            pinned_root: None,
        })
    }

    /// Sets what the export must hold (see [`Pin`]).
    pub fn pin(&mut self, pin: Pin) -> Result<(), Failure> {
        if pin.size < self.from {
            return Err(fail(
                FailureKind::Malformed,
                None,
                format!(
                    "the export starts at record {}, after the expected size {}: it cannot show that size",
                    self.from, pin.size
                ),
            ));
        }
        if pin.size == self.range.len() {
            self.pinned_root = Some(self.range.root());
        }
        self.pin = Some(pin);
        Ok(())
    }

    /// Checks the next record, given as the exact text of its JSON object (as exported).
    ///
    /// The fast path hashes that text as is: when it matches the record's hash, these are the
    /// very bytes that were hashed and signed, and only `seq` and `prev_hash` need reading.
    /// Otherwise the record is parsed and canonicalized, which tells a re-encoded but intact
    /// record from a modified one.
    pub fn record_text(&mut self, hash: &str, text: &str) -> Result<(), Failure> {
        let claimed = Hash::from_hex(hash);
        let raw = Hash::digest(text.as_bytes());
        if claimed == Some(raw) {
            #[derive(Deserialize)]
            struct Links<'a> {
                seq: Option<u64>,
                #[serde(borrow)]
                prev_hash: Option<&'a str>,
            }
            let links: Links<'_> = serde_json::from_str(text).map_err(|e| {
                fail(
                    FailureKind::Malformed,
                    Some(self.expected),
                    format!("a record is not JSON: {e}"),
                )
            })?;
            let seq = links.seq.ok_or_else(|| {
                fail(
                    FailureKind::Malformed,
                    Some(self.expected),
                    "a record has no `seq`",
                )
            })?;
            return self.place(seq, raw, links.prev_hash.and_then(Hash::from_hex));
        }
        // Not the signed bytes: parsed and canonicalized. A record that repeats a member name
        // reads as different records to different readers (the first or the last wins), so it
        // is modified whatever its canonical form would hash to.
        if let Some(pointer) = crate::strict::duplicate_key(text) {
            return Err(fail(
                FailureKind::Modified,
                Some(self.expected),
                format!(
                    "the record repeats the member `{pointer}`: it is not the record that was signed"
                ),
            ));
        }
        let record: Value = serde_json::from_str(text).map_err(|e| {
            fail(
                FailureKind::Malformed,
                Some(self.expected),
                format!("a record is not JSON: {e}"),
            )
        })?;
        self.record(hash, &record)
    }

    /// Checks the next record line (its hash field and record object).
    pub fn record(&mut self, hash: &str, record: &Value) -> Result<(), Failure> {
        let seq = record.get("seq").and_then(Value::as_u64).ok_or_else(|| {
            fail(
                FailureKind::Malformed,
                Some(self.expected),
                "a record has no `seq`",
            )
        })?;
        // A record out of place is named as such before its content is judged.
        self.check_seq(seq)?;
        let actual = record_hash(record);
        if Hash::from_hex(hash) != Some(actual) {
            return Err(fail(
                FailureKind::Modified,
                Some(seq),
                "the record's content does not match its hash",
            ));
        }
        let prev = record
            .get("prev_hash")
            .and_then(Value::as_str)
            .and_then(Hash::from_hex);
        self.place(seq, actual, prev)
    }

    fn check_seq(&self, seq: u64) -> Result<(), Failure> {
        let expected = self.expected;
        if seq > expected {
            return Err(if self.present.contains(&expected) {
                fail(
                    FailureKind::Reordered,
                    Some(expected),
                    format!("record {expected} is out of order (record {seq} comes first)"),
                )
            } else {
                fail(
                    FailureKind::Missing,
                    Some(expected),
                    format!("record {expected} is missing (the next record present is {seq})"),
                )
            });
        }
        if seq < expected {
            return Err(fail(
                FailureKind::Inserted,
                Some(seq),
                format!(
                    "a second record with seq {seq} appears after record {}",
                    expected - 1
                ),
            ));
        }
        Ok(())
    }

    /// Places a record whose content matches `actual`, its hash: checks its place and its link,
    /// and adds it to the tree.
    fn place(&mut self, seq: u64, actual: Hash, prev: Option<Hash>) -> Result<(), Failure> {
        self.check_seq(seq)?;
        let prev = prev.ok_or_else(|| {
            fail(
                FailureKind::Malformed,
                Some(seq),
                "the record has no valid `prev_hash`",
            )
        })?;
        let linked = match self.previous {
            Some(previous) => prev == previous,
            None => seq != 0 || prev == GENESIS,
        };
        if !linked {
            let previous_seq = seq.saturating_sub(1);
            return Err(if self.before_previous == Some(prev) {
                fail(
                    FailureKind::Inserted,
                    Some(previous_seq),
                    format!("record {previous_seq} was inserted: record {seq} links past it"),
                )
            } else if seq == 0 {
                fail(
                    FailureKind::Modified,
                    Some(0),
                    "the first record does not start the chain",
                )
            } else {
                fail(
                    FailureKind::Modified,
                    Some(previous_seq),
                    format!(
                        "record {previous_seq} was changed: record {seq} links to a different hash"
                    ),
                )
            });
        }
        self.before_previous = self.previous;
        self.previous = Some(actual);
        self.range.push(leaf_hash(&actual.0));
        self.expected += 1;
        if self.pin.is_some_and(|p| p.size == self.range.len()) {
            self.pinned_root = Some(self.range.root());
        }
        if let Some(checkpoint) = self.checkpoints.get(&self.range.len()) {
            if checkpoint.checkpoint.root != self.range.root() {
                let first = self.last_checked;
                return Err(fail(
                    FailureKind::Modified,
                    Some(first),
                    format!(
                        "records {first}..={seq} do not match the signed checkpoint of size {}: one of them was changed",
                        self.range.len()
                    ),
                ));
            }
            self.last_checked = self.range.len();
        }
        Ok(())
    }

    /// The verdict once every record has been fed.
    pub fn finish(self) -> Result<Summary, Failure> {
        let end = self.range.len();
        if let Some((size, _)) = self.checkpoints.range(end + 1..).next() {
            return Err(fail(
                FailureKind::Truncated,
                Some(end),
                format!("the log ends after {end} records, but a signed checkpoint covers {size}"),
            ));
        }
        if end < self.to {
            return Err(fail(
                FailureKind::Truncated,
                Some(end),
                format!(
                    "the export ends after {end} records; its header promises {}",
                    self.to
                ),
            ));
        }
        if let Some(pin) = self.pin {
            if end < pin.size {
                return Err(fail(
                    FailureKind::Truncated,
                    Some(end),
                    format!(
                        "the export ends after {end} records; {} were expected",
                        pin.size
                    ),
                ));
            }
            if pin.exact && end > pin.size {
                return Err(fail(
                    FailureKind::Inserted,
                    Some(pin.size),
                    format!(
                        "the export holds {end} records; exactly {} were expected",
                        pin.size
                    ),
                ));
            }
            if let (Some(expected), Some(found)) = (pin.root, self.pinned_root)
                && expected != found
            {
                return Err(fail(
                    FailureKind::Modified,
                    None,
                    format!(
                        "the root of the first {} records is {}, not the expected {}",
                        pin.size,
                        found.to_hex(),
                        expected.to_hex()
                    ),
                ));
            }
        }
        if self.last_checked < end {
            return Err(fail(
                FailureKind::Unsigned,
                Some(self.last_checked),
                format!(
                    "records {}..{end} are not covered by any signed checkpoint",
                    self.last_checked
                ),
            ));
        }
        let mut key_ids: Vec<String> = self
            .checkpoints
            .values()
            .map(|c| c.key_id.clone())
            .collect();
        key_ids.sort();
        key_ids.dedup();
        Ok(Summary {
            records: end - self.from,
            from: self.from,
            tree_size: end,
            root: self.range.root().to_hex(),
            checkpoints: self.checkpoints.len(),
            key_ids,
        })
    }
}

/// Verifies an export, read twice through `open` (each call yields its lines from the start):
/// pass 1 takes the header and the checkpoints and notes which records are present (record
/// lines are only skimmed), pass 2 checks every record in file order. `progress` is told how
/// many records pass 2 has checked, every 4,096. The outer error is the line source's own.
pub fn verify_export<I, E>(
    open: impl FnMut() -> Result<I, E>,
    keyring: &Keyring,
    progress: impl FnMut(u64),
) -> Result<Result<Summary, Failure>, E>
where
    I: Iterator<Item = Result<String, E>>,
{
    verify_export_pinned(open, keyring, None, progress)
}

/// [`verify_export`], and the export must also hold what `pin` says.
pub fn verify_export_pinned<I, E>(
    mut open: impl FnMut() -> Result<I, E>,
    keyring: &Keyring,
    pin: Option<Pin>,
    mut progress: impl FnMut(u64),
) -> Result<Result<Summary, Failure>, E>
where
    I: Iterator<Item = Result<String, E>>,
{
    let mut header = None;
    let mut notes = Vec::new();
    let mut present = HashSet::new();
    for (i, line) in open()?.enumerate() {
        let line = line?;
        // Our exporter's record lines: skimmed for their place, checked in pass 2.
        if i > 0 && line.starts_with("{\"type\":\"record\"") {
            if let Some(seq) = skim_seq(&line) {
                present.insert(seq);
            }
            continue;
        }
        let parsed = match parse_line(&line, i + 1) {
            Ok(parsed) => parsed,
            Err(f) => return Ok(Err(f)),
        };
        match parsed {
            Line::Header { .. } if i == 0 => header = Some(parsed),
            Line::Header { .. } => {
                return Ok(Err(fail(
                    FailureKind::Malformed,
                    None,
                    format!("line {} is a second header", i + 1),
                )));
            }
            _ if i == 0 => {
                return Ok(Err(fail(
                    FailureKind::Malformed,
                    None,
                    "the export does not start with a header",
                )));
            }
            Line::Checkpoint { note } => notes.push(note),
            Line::Record { record, .. } => {
                if let Some(seq) = record.get("seq").and_then(Value::as_u64) {
                    present.insert(seq);
                }
            }
        }
    }
    let Some(header) = header else {
        return Ok(Err(fail(
            FailureKind::Malformed,
            None,
            "the export is empty",
        )));
    };
    let mut verifier = match Verifier::new(&header, &notes, present, keyring) {
        Ok(v) => v,
        Err(f) => return Ok(Err(f)),
    };
    if let Some(pin) = pin
        && let Err(f) = verifier.pin(pin)
    {
        return Ok(Err(f));
    }
    let mut done = 0u64;
    for (i, line) in open()?.enumerate().skip(1) {
        let line = line?;
        let checked = match record_line(&line) {
            Some((hash, text)) => verifier.record_text(hash, text),
            None => match parse_line(&line, i + 1) {
                Ok(Line::Record { hash, record }) => verifier.record(&hash, &record),
                Ok(_) => continue,
                Err(f) => Err(f),
            },
        };
        if let Err(f) = checked {
            return Ok(Err(f));
        }
        done += 1;
        if done.is_multiple_of(4096) {
            progress(done);
        }
    }
    Ok(verifier.finish())
}

/// Verifies a whole export held in memory.
pub fn verify_lines(lines: &[String], keyring: &Keyring) -> Result<Summary, Failure> {
    let open = || Ok::<_, std::convert::Infallible>(lines.iter().cloned().map(Ok));
    match verify_export(open, keyring, |_| {}) {
        Ok(verdict) => verdict,
        Err(never) => match never {},
    }
}
