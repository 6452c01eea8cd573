//! Loading a policy set: Cedar policies and schema from source files, validated strictly.
//!
//! The caller reads the files (this crate does no I/O) and hands over [`SourceFile`]s. A set
//! loads whole or not at all: [`load`] returns every error found, each with its file and line.
//! [`load_cached`] does the same, type-checking only the policies that a [`ValidationCache`]
//! has not seen validate cleanly against the same schema.

mod schema;

use std::collections::{BTreeSet, HashMap, HashSet};

use cedar_policy::{ActionConstraint, Effect, EntityUid, PolicyId, ValidationMode, Validator};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::contract::ActionName;

/// The annotation that names a policy. Without it a policy is named `file#n`.
pub const ID_ANNOTATION: &str = "id";
/// The annotation whose text becomes the reason of a decision the policy determines.
pub const REASON_ANNOTATION: &str = "reason";

/// The entity file that the entity API of the server writes, at the top of the directory.
pub const ENTITIES_FILE: &str = "entities.json";

/// One file of a policy directory, by its path relative to the directory (with `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: String,
    pub text: String,
}

/// What a file in a policy directory is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// `*.cedar`: Cedar policies.
    Policies,
    /// `*.cedarschema`: a Cedar schema in the Cedar schema syntax.
    Schema,
    /// `*.cedarschema.json`: a Cedar schema in JSON.
    SchemaJson,
    /// `*.tests.json`: policy test cases, run by `ztinfra policy check`.
    Tests,
    /// `entities.json` or `*.entities.json`: the entity store, in Cedar's entity JSON format
    /// (an array of `{"uid", "attrs", "parents"}`), checked against the schema.
    Entities,
}

impl FileKind {
    /// The kind of the file at `path`, or `None` for a file that is not part of a policy set.
    pub fn of(path: &str) -> Option<Self> {
        if path.ends_with(".cedarschema.json") {
            Some(Self::SchemaJson)
        } else if path.ends_with(".cedarschema") {
            Some(Self::Schema)
        } else if path.ends_with(".cedar") {
            Some(Self::Policies)
        } else if path.ends_with(".tests.json") {
            Some(Self::Tests)
        } else if path == ENTITIES_FILE
            || path.ends_with(".entities.json")
            || path.ends_with(&format!("/{ENTITIES_FILE}"))
        {
            Some(Self::Entities)
        } else {
            None
        }
    }

    /// Whether files of this kind change decisions (and so the policy version).
    pub fn affects_decisions(self) -> bool {
        !matches!(self, Self::Tests)
    }
}

/// An error or warning in a policy set, located as precisely as Cedar allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicyError {
    /// The file, relative to the policy directory; `<schema>` for a problem of the schema as
    /// a whole.
    pub file: String,
    /// 1-based line, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// 1-based column, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    pub message: String,
}

impl PolicyError {
    fn whole_file(file: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line: None,
            column: None,
            message: message.into(),
        }
    }

    /// Builds an error from a Cedar diagnostic whose spans are offsets into `text`.
    fn from_diagnostic(file: &str, text: Option<&str>, diag: &dyn miette::Diagnostic) -> Self {
        let offset = diag
            .labels()
            .and_then(|mut labels| labels.next())
            .map(|label| label.offset());
        let (line, column) = match (offset, text) {
            (Some(offset), Some(text)) => {
                let (line, column) = line_and_column(text, offset);
                (Some(line), Some(column))
            }
            _ => (None, None),
        };
        let mut message = diag.to_string();
        if let Some(help) = diag.help() {
            message.push_str(&format!(" (help: {help})"));
        }
        Self {
            file: file.to_owned(),
            line,
            column,
            message,
        }
    }
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, "{}:{line}:{column}: ", self.file)?,
            (Some(line), None) => write!(f, "{}:{line}: ", self.file)?,
            _ => write!(f, "{}: ", self.file)?,
        }
        f.write_str(&self.message)
    }
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(1, |last| last.chars().count() + 1);
    (line, column)
}

/// A file that took part in the active set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileInfo {
    pub path: String,
    pub kind: FileKind,
    /// `sha256:<hex>` of the file's bytes.
    pub sha256: String,
    /// How many policies the file holds (0 for schema and test files).
    pub policies: usize,
    /// How many entities the file holds (entity files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entities: Option<usize>,
}

/// One loaded policy and what the engine needs to know of it.
#[derive(Debug, Clone)]
pub(crate) struct LoadedPolicy {
    pub(crate) policy: cedar_policy::Policy,
    pub(crate) effect: Effect,
    pub(crate) reason: Option<String>,
    /// Set on a permit that permits only with a person's approval.
    pub(crate) approval: Option<ApprovalRule>,
    /// Set on a forbid that quarantines what it forbids.
    pub(crate) quarantine: Option<QuarantineScope>,
}

/// The annotation that makes a satisfied forbid quarantine the request's session
/// (`@quarantine("session")`) or its agent (`@quarantine("agent")`): every later decision for
/// it is denied until an operator releases it.
pub const QUARANTINE_ANNOTATION: &str = "quarantine";

/// What a quarantine holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuarantineScope {
    /// The session that made the request (its agent, when the request has no session).
    Session,
    /// Every session of the agent, and the agent as an asserted actor.
    Agent,
}

impl QuarantineScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Agent => "agent",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "session" => Some(Self::Session),
            "agent" => Some(Self::Agent),
            _ => None,
        }
    }

    /// Reads a policy's `@quarantine` annotation; `Ok(None)` when it has none.
    fn of(policy: &cedar_policy::Policy) -> Result<Option<Self>, String> {
        let Some(scope) = policy.annotation(QUARANTINE_ANNOTATION) else {
            return Ok(None);
        };
        if policy.effect() != Effect::Forbid {
            return Err(format!(
                "`@{QUARANTINE_ANNOTATION}` is for forbid policies: what quarantines is a deny"
            ));
        }
        Self::parse(scope).map(Some).ok_or_else(|| {
            format!(
                "`@{QUARANTINE_ANNOTATION}(\"{}\")`: `session` or `agent`",
                scope.escape_debug()
            )
        })
    }
}

/// The annotation that makes a permit permit only with an approval, naming the group of
/// approvers who may give it (`on_behalf_of`: the person the session acts for).
pub const APPROVAL_ANNOTATION: &str = "approval";
/// How long an approval may be waited for and used: `30s`, `15m`, `2h`, `1d` (default 15m).
pub const APPROVAL_TTL_ANNOTATION: &str = "approval_ttl";
/// How many distinct approvers must approve (default 1, at most 5).
pub const APPROVALS_NEEDED_ANNOTATION: &str = "approvals_needed";

/// What a permit marked `@approval` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApprovalRule {
    /// The approver group; `on_behalf_of` names the session's own person.
    pub group: String,
    /// Seconds from the request until the approval expires (unanswered or unused).
    pub ttl_secs: u64,
    /// Distinct approvers needed.
    pub needed: u32,
}

/// The longest an approval may be waited for: 7 days.
pub const MAX_APPROVAL_TTL_SECS: u64 = 7 * 24 * 3600;
const DEFAULT_APPROVAL_TTL_SECS: u64 = 15 * 60;

impl ApprovalRule {
    /// Reads a policy's approval annotations; `Ok(None)` when it has none.
    fn of(policy: &cedar_policy::Policy) -> Result<Option<Self>, String> {
        let group = policy.annotation(APPROVAL_ANNOTATION);
        let ttl = policy.annotation(APPROVAL_TTL_ANNOTATION);
        let needed = policy.annotation(APPROVALS_NEEDED_ANNOTATION);
        let Some(group) = group else {
            return match (ttl, needed) {
                (None, None) => Ok(None),
                _ => Err(format!(
                    "`@{APPROVAL_TTL_ANNOTATION}` and `@{APPROVALS_NEEDED_ANNOTATION}` need `@{APPROVAL_ANNOTATION}(\"<group>\")`"
                )),
            };
        };
        if policy.effect() != Effect::Permit {
            return Err(format!(
                "`@{APPROVAL_ANNOTATION}` is for permit policies: a forbid cannot be approved away"
            ));
        }
        let group_ok = (1..=64).contains(&group.len())
            && group
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !group_ok {
            return Err(format!(
                "`@{APPROVAL_ANNOTATION}(\"{}\")`: a group is 1 to 64 letters, digits, `.`, `_` or `-`",
                group.escape_debug()
            ));
        }
        let ttl_secs = match ttl {
            None => DEFAULT_APPROVAL_TTL_SECS,
            Some(text) => parse_duration(text)
                .filter(|secs| (1..=MAX_APPROVAL_TTL_SECS).contains(secs))
                .ok_or_else(|| {
                    format!(
                        "`@{APPROVAL_TTL_ANNOTATION}(\"{}\")`: a duration such as `30s`, `15m`, `2h` or `1d`, at most 7 days",
                        text.escape_debug()
                    )
                })?,
        };
        let needed = match needed {
            None => 1,
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=5).contains(n))
                .ok_or_else(|| {
                    format!(
                        "`@{APPROVALS_NEEDED_ANNOTATION}(\"{}\")`: a number from 1 to 5",
                        text.escape_debug()
                    )
                })?,
        };
        Ok(Some(Self {
            group: group.to_owned(),
            ttl_secs,
            needed,
        }))
    }
}

/// `<digits><s|m|h|d>` in seconds.
fn parse_duration(text: &str) -> Option<u64> {
    let unit = match text.chars().last()? {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    let digits = text.get(..text.len() - 1)?;
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

/// A policy set that parsed and validated: the input of the engine.
#[derive(Debug, Clone)]
pub struct LoadedSet {
    pub(crate) version: String,
    pub(crate) files: Vec<FileInfo>,
    pub(crate) policies: Vec<LoadedPolicy>,
    pub(crate) by_id: HashMap<PolicyId, usize>,
    pub(crate) warnings: Vec<PolicyError>,
    pub(crate) schema: cedar_policy::Schema,
    pub(crate) entities: StoredEntities,
    /// Some policy's text names `behaviour` (see [`LoadedSet::reads_behaviour`]).
    pub(crate) reads_behaviour: bool,
}

/// The entity store of a policy set: the entities of its entity files, with their ancestors
/// computed, and indexed by type for the search APIs.
#[derive(Debug, Clone)]
pub(crate) struct StoredEntities {
    pub(crate) all: cedar_policy::Entities,
    /// Non-action entities by type name, each list in id order.
    pub(crate) by_type: HashMap<String, Vec<EntityUid>>,
    /// The entities as read, without the action entities the schema adds.
    pub(crate) json: Vec<serde_json::Value>,
}

impl StoredEntities {
    fn empty() -> Self {
        Self {
            all: cedar_policy::Entities::empty(),
            by_type: HashMap::new(),
            json: Vec::new(),
        }
    }
}

impl LoadedSet {
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn files(&self) -> &[FileInfo] {
        &self.files
    }

    pub fn warnings(&self) -> &[PolicyError] {
        &self.warnings
    }

    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    /// The entities of the entity files, as read (Cedar entity JSON).
    pub fn entities(&self) -> &[serde_json::Value] {
        &self.entities.json
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The version of a policy set: SHA-256 over the files that affect decisions, in path order,
/// each as `u64be(len(path)) || path || u64be(len(text)) || text`.
pub fn policy_version<'a>(files: impl IntoIterator<Item = &'a SourceFile>) -> String {
    let mut files: Vec<&SourceFile> = files
        .into_iter()
        .filter(|f| FileKind::of(&f.path).is_some_and(FileKind::affects_decisions))
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut hasher = Sha256::new();
    for file in files {
        hasher.update((file.path.len() as u64).to_be_bytes());
        hasher.update(file.path.as_bytes());
        hasher.update((file.text.len() as u64).to_be_bytes());
        hasher.update(file.text.as_bytes());
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// The policies of the last load that validated without an error or a warning, and the
/// schema they were validated against, so that the next load of a changed set type-checks only
/// what changed. Strict validation type-checks each policy on its own against the schema; the
/// schema is built from the schema files and the actions the policies name, so the cache keys
/// the schema by exactly those inputs, and each policy by its id and its text. A different
/// schema empties the cache. It holds the digests of one set's policies at most: every load
/// replaces them with its own.
#[derive(Debug, Default)]
pub struct ValidationCache {
    schema: Option<[u8; 32]>,
    clean: HashSet<[u8; 32]>,
    validated: usize,
}

impl ValidationCache {
    /// How many policies the last load type-checked (the others were known to be clean).
    pub fn last_validated(&self) -> usize {
        self.validated
    }
}

/// Length-prefixed parts, hashed: no two different lists of parts give the same input.
fn digest<'a>(parts: impl IntoIterator<Item = &'a str>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// Parses and validates a policy set. Files whose kind is not known are ignored; test files
/// are listed but not loaded here (see [`crate::testing`]).
pub fn load(sources: &[SourceFile]) -> Result<LoadedSet, Vec<PolicyError>> {
    load_cached(sources, &mut ValidationCache::default())
}

/// [`load`], skipping the type-checking of the policies that `cache` saw validate cleanly
/// against the same schema, and updating `cache` for the next load.
pub fn load_cached(
    sources: &[SourceFile],
    cache: &mut ValidationCache,
) -> Result<LoadedSet, Vec<PolicyError>> {
    let mut errors = Vec::new();
    let mut files = Vec::new();
    let mut policies: Vec<LoadedPolicy> = Vec::new();
    let mut origin: HashMap<PolicyId, (String, usize)> = HashMap::new();
    let mut schema_fragments = Vec::new();
    let mut texts: HashMap<&str, &str> = HashMap::new();
    let mut schema_inputs: Vec<&str> = Vec::new();

    let mut sorted: Vec<&SourceFile> = sources.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    for file in sorted {
        let Some(kind) = FileKind::of(&file.path) else {
            continue;
        };
        texts.insert(&file.path, &file.text);
        let mut count = 0;
        match kind {
            FileKind::Policies => {
                count = parse_policy_file(file, &mut policies, &mut origin, &mut errors);
            }
            FileKind::Schema | FileKind::SchemaJson => {
                schema_inputs.extend([file.path.as_str(), file.text.as_str()]);
                match schema::parse_fragment(&file.text, kind == FileKind::SchemaJson) {
                    Ok(fragment) => schema_fragments.push((file.path.clone(), fragment)),
                    Err(e) => errors.push(PolicyError::from_diagnostic(
                        &file.path,
                        Some(&file.text),
                        e.as_ref(),
                    )),
                }
            }
            FileKind::Tests | FileKind::Entities => {}
        }
        files.push(FileInfo {
            path: file.path.clone(),
            kind,
            sha256: sha256_hex(file.text.as_bytes()),
            policies: count,
            entities: None,
        });
    }

    let referenced = referenced_actions(&policies, &origin, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let schema = schema::build(schema_fragments, &referenced)?;

    // The schema's inputs: its files, in path order, and the actions the policies name.
    let schema_key = digest(
        schema_inputs
            .iter()
            .copied()
            .chain(std::iter::once("\0actions"))
            .chain(referenced.iter().map(ActionName::as_str)),
    );
    if cache.schema != Some(schema_key) {
        cache.schema = Some(schema_key);
        cache.clean.clear();
    }
    let keys: Vec<[u8; 32]> = policies
        .iter()
        .map(|p| digest([p.policy.id().as_ref(), p.policy.to_string().as_str()]))
        .collect();
    // Policies with an error or a warning: validated again next time.
    let mut flagged: HashSet<&PolicyId> = HashSet::new();
    let mut set = cedar_policy::PolicySet::new();
    for (loaded, key) in policies.iter().zip(&keys) {
        if cache.clean.contains(key) {
            continue;
        }
        if let Err(e) = set.add(loaded.policy.clone()) {
            flagged.insert(loaded.policy.id());
            errors.push(PolicyError::whole_file("<policies>", e.to_string()));
        }
    }
    cache.validated = set.num_of_policies();
    let validation = (cache.validated > 0)
        .then(|| Validator::new(schema.clone()).validate(&set, ValidationMode::Strict));
    let locate = |id: &PolicyId| {
        origin
            .get(id)
            .map_or("<policies>", |(file, _)| file.as_str())
    };
    for error in validation.iter().flat_map(|v| v.validation_errors()) {
        flagged.insert(error.policy_id());
        let file = locate(error.policy_id());
        errors.push(PolicyError::from_diagnostic(
            file,
            texts.get(file).copied(),
            error,
        ));
    }
    let warnings: Vec<PolicyError> = validation
        .iter()
        .flat_map(|v| v.validation_warnings())
        .map(|w| {
            flagged.insert(w.policy_id());
            let file = locate(w.policy_id());
            PolicyError::from_diagnostic(file, texts.get(file).copied(), w)
        })
        .collect();
    // Replaced, not extended: the cache holds this set's clean policies only.
    cache.clean = policies
        .iter()
        .zip(keys)
        .filter(|(p, _)| !flagged.contains(p.policy.id()))
        .map(|(_, key)| key)
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    let entity_files: Vec<&SourceFile> = sources
        .iter()
        .filter(|f| FileKind::of(&f.path) == Some(FileKind::Entities))
        .collect();
    let entities = load_entities(&entity_files, &schema, &mut files)?;

    let by_id = policies
        .iter()
        .enumerate()
        .map(|(i, p)| (p.policy.id().clone(), i))
        .collect();
    // Cedar has no attribute access by a computed name: a policy that reads
    // `context.behaviour` (or `context["behaviour"]`, or tests `has behaviour`) names it.
    let reads_behaviour = policies
        .iter()
        .any(|p| p.policy.to_string().contains(crate::contract::BEHAVIOUR));
    Ok(LoadedSet {
        version: policy_version(sources),
        files,
        policies,
        by_id,
        warnings,
        schema,
        entities,
        reads_behaviour,
    })
}

/// An error and its causes: Cedar keeps the useful part of an entity error (which attribute
/// of which entity) in the cause.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

/// Reads the entity files, each checked against the schema, into one store.
fn load_entities(
    sources: &[&SourceFile],
    schema: &cedar_policy::Schema,
    files: &mut [FileInfo],
) -> Result<StoredEntities, Vec<PolicyError>> {
    if sources.is_empty() {
        return Ok(StoredEntities::empty());
    }
    let mut errors = Vec::new();
    let mut json = Vec::new();
    let mut entities = Vec::new();
    let mut origin: HashMap<EntityUid, String> = HashMap::new();
    for file in sources {
        let items = match serde_json::from_str::<serde_json::Value>(&file.text) {
            Ok(serde_json::Value::Array(items)) => items,
            Ok(_) => {
                errors.push(PolicyError::whole_file(
                    &file.path,
                    "an entity file holds a JSON array of entities (`{\"uid\": {\"type\", \"id\"}, \"attrs\": {...}, \"parents\": [...]}`)",
                ));
                continue;
            }
            Err(e) => {
                errors.push(PolicyError {
                    file: file.path.clone(),
                    line: Some(e.line()),
                    column: Some(e.column()),
                    message: format!("malformed JSON: {e}"),
                });
                continue;
            }
        };
        match cedar_policy::Entities::from_json_value(
            serde_json::Value::Array(items.clone()),
            Some(schema),
        ) {
            Ok(parsed) => {
                let before = entities.len();
                for entity in parsed.iter() {
                    let uid = entity.uid();
                    if uid.type_name().basename() == "Action" {
                        continue;
                    }
                    if let Some(other) = origin.insert(uid.clone(), file.path.clone()) {
                        errors.push(PolicyError::whole_file(
                            &file.path,
                            format!("entity `{uid}` is also in `{other}`: each entity is in one entity file"),
                        ));
                        continue;
                    }
                    entities.push(entity.clone());
                }
                if let Some(info) = files.iter_mut().find(|f| f.path == file.path) {
                    info.entities = Some(entities.len() - before);
                }
                json.extend(items);
            }
            Err(e) => errors.push(PolicyError::whole_file(&file.path, with_causes(&e))),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut by_type: HashMap<String, Vec<EntityUid>> = HashMap::new();
    for entity in &entities {
        let uid = entity.uid();
        by_type
            .entry(uid.type_name().to_string())
            .or_default()
            .push(uid);
    }
    for uids in by_type.values_mut() {
        uids.sort_by(|a, b| a.id().unescaped().cmp(b.id().unescaped()));
    }
    let all = cedar_policy::Entities::from_entities(entities, Some(schema))
        .map_err(|e| vec![PolicyError::whole_file("<entities>", with_causes(&e))])?;
    Ok(StoredEntities { all, by_type, json })
}

/// Parses one `.cedar` file and appends its policies, renamed to their public ids. Returns how
/// many policies the file holds.
fn parse_policy_file(
    file: &SourceFile,
    policies: &mut Vec<LoadedPolicy>,
    origin: &mut HashMap<PolicyId, (String, usize)>,
    errors: &mut Vec<PolicyError>,
) -> usize {
    let parsed: cedar_policy::PolicySet = match file.text.parse() {
        Ok(set) => set,
        Err(e) => {
            let e: cedar_policy::ParseErrors = e;
            errors.extend(
                e.iter()
                    .map(|err| PolicyError::from_diagnostic(&file.path, Some(&file.text), err)),
            );
            return 0;
        }
    };
    if parsed.templates().next().is_some() {
        errors.push(PolicyError::whole_file(
            &file.path,
            "policy templates (with `?principal` or `?resource`) are not supported yet",
        ));
    }
    // Cedar names the policies of a parsed text `policy0`, `policy1`, ... in source order.
    let mut in_file: Vec<(usize, &cedar_policy::Policy)> = parsed
        .policies()
        .map(|p| {
            let id: &str = p.id().as_ref();
            let index = id
                .strip_prefix("policy")
                .and_then(|n| n.parse().ok())
                .unwrap_or(usize::MAX);
            (index, p)
        })
        .collect();
    in_file.sort_by_key(|(index, _)| *index);
    for (index, policy) in &in_file {
        let id = match policy.annotation(ID_ANNOTATION) {
            Some(id) if !id.trim().is_empty() => id.to_owned(),
            Some(_) => {
                errors.push(PolicyError::whole_file(
                    &file.path,
                    format!("policy #{index} has an empty `@id` annotation"),
                ));
                continue;
            }
            None => format!("{}#{index}", file.path),
        };
        let id = PolicyId::new(id);
        if let Some((other, _)) = origin.get(&id) {
            errors.push(PolicyError::whole_file(
                &file.path,
                format!("policy id `{id}` is already used in `{other}`"),
            ));
            continue;
        }
        let marks = ApprovalRule::of(policy)
            .and_then(|approval| Ok((approval, QuarantineScope::of(policy)?)));
        let (approval, quarantine) = match marks {
            Ok(marks) => marks,
            Err(e) => {
                errors.push(PolicyError::whole_file(
                    &file.path,
                    format!("policy `{id}`: {e}"),
                ));
                continue;
            }
        };
        origin.insert(id.clone(), (file.path.clone(), *index));
        policies.push(LoadedPolicy {
            effect: policy.effect(),
            reason: policy.annotation(REASON_ANNOTATION).map(str::to_owned),
            approval,
            quarantine,
            policy: policy.new_id(id),
        });
    }
    in_file.len()
}

/// Every action the policies name, in their scope or their conditions. An action of another
/// type than `Action`, or with a name no request can carry, is an error.
fn referenced_actions(
    policies: &[LoadedPolicy],
    origin: &HashMap<PolicyId, (String, usize)>,
    errors: &mut Vec<PolicyError>,
) -> BTreeSet<ActionName> {
    let mut names = BTreeSet::new();
    for loaded in policies {
        let policy = &loaded.policy;
        let mut uids = match policy.action_constraint() {
            ActionConstraint::Any => Vec::new(),
            ActionConstraint::Eq(uid) => vec![uid],
            ActionConstraint::In(uids) => uids,
        };
        uids.extend(
            policy
                .entity_literals()
                .into_iter()
                .filter(|uid| uid.type_name().basename() == "Action"),
        );
        let file = origin
            .get(policy.id())
            .map_or("<policies>", |(file, _)| file.as_str());
        for uid in uids {
            if uid.type_name().to_string() != "Action" {
                errors.push(PolicyError::whole_file(
                    file,
                    format!(
                        "policy `{}` names action `{uid}`: actions must be of type `Action`, in no namespace",
                        policy.id()
                    ),
                ));
                continue;
            }
            match ActionName::parse(uid.id().unescaped()) {
                Ok(name) => {
                    names.insert(name);
                }
                Err(why) => errors.push(PolicyError::whole_file(
                    file,
                    format!(
                        "policy `{}` names action `{uid}`, which no request can carry: {why}",
                        policy.id()
                    ),
                )),
            }
        }
    }
    names
}

impl LoadedSet {
    /// Looks up a loaded policy by its public id.
    pub(crate) fn policy(&self, id: &PolicyId) -> Option<&LoadedPolicy> {
        self.by_id.get(id).and_then(|&i| self.policies.get(i))
    }

    /// Whether some policy may read `context.behaviour` (its text names it). When none does,
    /// the service does not compute it: nothing would read it.
    pub fn reads_behaviour(&self) -> bool {
        self.reads_behaviour
    }

    /// The approval a policy asks for, if it is a permit marked `@approval`.
    pub fn approval_rule(&self, id: &str) -> Option<&ApprovalRule> {
        self.policy(&PolicyId::new(id))
            .and_then(|p| p.approval.as_ref())
    }

    /// Every policy id, in load order.
    pub fn policy_ids(&self) -> impl Iterator<Item = &str> {
        self.policies.iter().map(|p| p.policy.id().as_ref())
    }

    /// The actions each policy names in its scope, for indexing: `None` when the policy
    /// applies to every action.
    pub(crate) fn action_scopes(&self) -> impl Iterator<Item = (usize, ActionScope)> + '_ {
        self.policies
            .iter()
            .enumerate()
            .map(|(i, p)| (i, ActionScope::of(&p.policy)))
    }
}

/// The action part of a policy's scope, reduced to names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ActionScope {
    Any,
    Eq(String),
    In(Vec<String>),
}

impl ActionScope {
    fn of(policy: &cedar_policy::Policy) -> Self {
        match policy.action_constraint() {
            ActionConstraint::Any => Self::Any,
            ActionConstraint::Eq(uid) => Self::Eq(uid.id().unescaped().to_owned()),
            ActionConstraint::In(uids) => {
                Self::In(uids.iter().map(|u| u.id().unescaped().to_owned()).collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, text: &str) -> SourceFile {
        SourceFile {
            path: path.into(),
            text: text.into(),
        }
    }

    fn policies(n: usize) -> String {
        (0..n)
            .map(|i| format!("permit(principal, action == Action::\"svc.act{i}\", resource);\n"))
            .collect()
    }

    /// A reload of an unchanged set type-checks nothing; a changed policy is type-checked alone,
    /// and an error in it is still found.
    #[test]
    fn a_reload_validates_only_changed_policies() {
        let mut cache = ValidationCache::default();
        let first = load_cached(&[file("p.cedar", &policies(20))], &mut cache).unwrap();
        assert_eq!(cache.last_validated(), 20);
        let again = load_cached(&[file("p.cedar", &policies(20))], &mut cache).unwrap();
        assert_eq!(cache.last_validated(), 0);
        assert_eq!(again.version(), first.version());
        assert_eq!(again.policy_count(), 20);

        // Same actions (so the same schema), one condition changed.
        let changed = policies(20).replace(
            "Action::\"svc.act3\", resource);",
            "Action::\"svc.act3\", resource) when { principal == Agent::\"a\" };",
        );
        load_cached(&[file("p.cedar", &changed)], &mut cache).unwrap();
        assert_eq!(cache.last_validated(), 1);

        let broken = policies(20).replace(
            "Action::\"svc.act3\", resource);",
            "Action::\"svc.act3\", resource) when { context.missing == 1 };",
        );
        let errors = load_cached(&[file("p.cedar", &broken)], &mut cache).unwrap_err();
        assert_eq!(cache.last_validated(), 1);
        assert!(
            errors
                .iter()
                .any(|e| e.file == "p.cedar" && e.line == Some(4)),
            "{errors:?}"
        );
        // The failed policy is not remembered as clean: loading it again finds it again.
        assert!(load_cached(&[file("p.cedar", &broken)], &mut cache).is_err());
        assert_eq!(cache.last_validated(), 1);
    }

    /// The schema is part of what was validated: a schema change, or a policy naming a new
    /// action (which adds it to the schema), type-checks every policy again.
    #[test]
    fn a_different_schema_validates_everything_again() {
        let mut cache = ValidationCache::default();
        let reads = "permit(principal, action == Action::\"svc.read\", resource) when { context.ticket == \"t-1\" };\n";
        let with_ticket = "entity Agent;\nentity Resource;\ntype Context = { ticket: String };\n";
        let without = "entity Agent;\nentity Resource;\ntype Context = {};\n";
        let set = |schema: &str, extra: &str| {
            vec![
                file("s.cedarschema", schema),
                file("p.cedar", &format!("{reads}{}{extra}", policies(5))),
            ]
        };
        load_cached(&set(with_ticket, ""), &mut cache).unwrap();
        assert_eq!(cache.last_validated(), 6);
        load_cached(&set(with_ticket, ""), &mut cache).unwrap();
        assert_eq!(cache.last_validated(), 0);

        let errors = load_cached(&set(without, ""), &mut cache).unwrap_err();
        assert_eq!(cache.last_validated(), 6);
        assert!(errors.iter().any(|e| e.line == Some(1)), "{errors:?}");

        load_cached(&set(with_ticket, ""), &mut cache).unwrap();
        let new_action = "permit(principal, action == Action::\"other.write\", resource);\n";
        load_cached(&set(with_ticket, new_action), &mut cache).unwrap();
        assert_eq!(cache.last_validated(), 7);
    }

    /// A policy with a warning is never taken as known-clean, so every load reports the
    /// warning again.
    #[test]
    fn warnings_are_reported_on_every_load() {
        let mut cache = ValidationCache::default();
        let text = format!(
            "{}permit(principal, action == Action::\"svc.never\", resource) when {{ false }};\n",
            policies(3)
        );
        for validated in [4, 1] {
            let set = load_cached(&[file("p.cedar", &text)], &mut cache).unwrap();
            assert_eq!(cache.last_validated(), validated);
            assert_eq!(set.warnings().len(), 1, "{:?}", set.warnings());
            assert_eq!(set.warnings()[0].line, Some(4));
        }
    }

    #[test]
    fn parse_errors_carry_file_and_line() {
        let errs = load(&[
            file("ok.cedar", "permit(principal, action, resource);"),
            file(
                "bad.cedar",
                "permit(principal, action, resource);\n\nforbid(principal, action resource);",
            ),
        ])
        .unwrap_err();
        assert!(!errs.is_empty());
        assert!(errs.iter().all(|e| e.file == "bad.cedar"), "{errs:?}");
        assert_eq!(errs[0].line, Some(3), "{errs:?}");
    }

    #[test]
    fn validation_errors_carry_file_and_line() {
        let errs = load(&[file(
            "p.cedar",
            "permit(principal, action, resource);\npermit(principal, action, resource)\n  when { context.nope == 1 };",
        )])
        .unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].file, "p.cedar");
        assert_eq!(errs[0].line, Some(3), "{errs:?}");
        assert!(errs[0].message.contains("nope"), "{errs:?}");
    }

    #[test]
    fn ids_come_from_annotation_or_file_and_index() {
        let set = load(&[file(
            "dir/a.cedar",
            "@id(\"first\") permit(principal, action, resource);\npermit(principal, action, resource);",
        )])
        .unwrap();
        let ids: Vec<_> = set.policy_ids().collect();
        assert_eq!(ids, ["first", "dir/a.cedar#1"]);
    }

    #[test]
    fn quarantine_annotations_are_checked() {
        let set = load(&[file(
            "q.cedar",
            "@id(\"q\") @quarantine(\"session\") forbid(principal, action, resource) when { context has env };\n@id(\"p\") permit(principal, action, resource);",
        )])
        .unwrap();
        let q = set.policy(&PolicyId::new("q")).unwrap();
        assert_eq!(q.quarantine, Some(QuarantineScope::Session));
        assert_eq!(set.policy(&PolicyId::new("p")).unwrap().quarantine, None);
        for (text, expected) in [
            (
                "@quarantine(\"agent\") permit(principal, action, resource);",
                "is for forbid policies",
            ),
            (
                "@quarantine(\"everyone\") forbid(principal, action, resource);",
                "`session` or `agent`",
            ),
        ] {
            let errs = load(&[file("q.cedar", text)]).unwrap_err();
            assert!(errs[0].message.contains(expected), "{text}: {errs:?}");
        }
    }

    #[test]
    fn approval_annotations_are_checked() {
        let set = load(&[file(
            "a.cedar",
            "@id(\"p\") @approval(\"sre\") @approval_ttl(\"2h\") permit(principal, action, resource);",
        )])
        .unwrap();
        let rule = set.approval_rule("p").unwrap();
        assert_eq!((rule.ttl_secs, rule.needed), (7200, 1));
        for (policy, expected) in [
            (
                "@approval(\"sre\") forbid(principal, action, resource);",
                "for permit policies",
            ),
            (
                "@approval(\"\") permit(principal, action, resource);",
                "a group is",
            ),
            (
                "@approval(\"a b\") permit(principal, action, resource);",
                "a group is",
            ),
            (
                "@approval(\"g\") @approval_ttl(\"15\") permit(principal, action, resource);",
                "a duration",
            ),
            (
                "@approval(\"g\") @approval_ttl(\"8d\") permit(principal, action, resource);",
                "at most 7 days",
            ),
            (
                "@approval(\"g\") @approval_ttl(\"0s\") permit(principal, action, resource);",
                "a duration",
            ),
            (
                "@approval(\"g\") @approvals_needed(\"0\") permit(principal, action, resource);",
                "from 1 to 5",
            ),
            (
                "@approval(\"g\") @approvals_needed(\"six\") permit(principal, action, resource);",
                "from 1 to 5",
            ),
            (
                "@approvals_needed(\"2\") permit(principal, action, resource);",
                "need `@approval",
            ),
        ] {
            let errs = load(&[file("a.cedar", policy)]).unwrap_err();
            assert!(errs[0].message.contains(expected), "{policy}: {errs:?}");
        }
    }

    #[test]
    fn duplicate_ids_across_files_are_rejected() {
        let errs = load(&[
            file("a.cedar", "@id(\"x\") permit(principal, action, resource);"),
            file("b.cedar", "@id(\"x\") permit(principal, action, resource);"),
        ])
        .unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].message.contains("already used in `a.cedar`"),
            "{errs:?}"
        );
    }

    #[test]
    fn actions_no_request_can_carry_are_rejected() {
        let errs = load(&[file(
            "a.cedar",
            "permit(principal, action == Action::\"a..b\", resource);",
        )])
        .unwrap_err();
        assert!(errs[0].message.contains("empty segment"), "{errs:?}");
    }

    #[test]
    fn version_ignores_tests_and_unknown_files_but_not_order_of_input() {
        let a = file("a.cedar", "permit(principal, action, resource);");
        let s = file(
            "s.cedarschema",
            "entity Agent; entity Resource; type Context = {};",
        );
        let t = file("x.tests.json", "{}");
        let n = file("README.md", "hi");
        let v1 = policy_version([&a, &s]);
        assert_eq!(v1, policy_version([&s, &a, &t, &n]));
        let a2 = file("a.cedar", "permit(principal, action, resource); ");
        assert_ne!(v1, policy_version([&a2, &s]));
        assert!(v1.starts_with("sha256:") && v1.len() == 7 + 64);
    }

    #[test]
    fn line_and_column_count_from_one() {
        assert_eq!(line_and_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_and_column("ab\ncd", 4), (2, 2));
    }
}
