//! The decision engine: a validated policy set, indexed by action, deciding [`ValidRequest`]s.
//!
//! Architecture invariant: [`Engine::decide`] always returns a verdict, and every path that
//! cannot decide (a policy that cannot be built into a request plan, a Cedar request error, a
//! forbid policy that fails to evaluate, a panic inside Cedar) returns deny.
//!
//! Cedar evaluates every policy of the set it is given. A policy whose action scope does not
//! cover the request's action can never be satisfied, and its scope is checked before its
//! conditions, so leaving it out changes neither the decision nor the errors. The engine
//! therefore evaluates each request against a *plan*: the slice of policies whose action scope
//! can cover that action, with the action's dotted ancestry as entities. Plans are built once
//! per action name and cached in the engine, which is immutable and replaced whole on reload.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use cedar_policy::{
    AuthorizationError, Authorizer, Effect, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    PolicySet, Request,
};

use crate::contract::{ActionName, Decision, Party, Reason, ReasonKind, ValidRequest, Verdict};
use crate::policy::{ActionScope, LoadedSet, PolicyError, SourceFile, ValidationCache};

/// How many action plans an engine keeps before it starts over. Each plan holds references to
/// the policies that apply to one action, so this bounds memory under a stream of distinct,
/// perhaps hostile, action names.
pub const DEFAULT_MAX_CACHED_PLANS: usize = 16_384;

/// The policies that can apply to one action, ready to evaluate.
#[derive(Debug)]
struct Plan {
    action: EntityUid,
    policies: PolicySet,
    entities: Entities,
}

/// A loaded policy set, ready to decide.
#[derive(Debug)]
pub struct Engine {
    set: LoadedSet,
    action_type: EntityTypeName,
    /// Policies with no action scope.
    any: Vec<usize>,
    /// Policies with `action == Action::"x"`, by `x`.
    equal: HashMap<String, Vec<usize>>,
    /// Policies with `action in Action::"x"` (or a list naming `x`), by `x`.
    within: HashMap<String, Vec<usize>>,
    plans: RwLock<HashMap<String, Arc<Plan>>>,
    max_cached_plans: usize,
    authorizer: Authorizer,
}

impl Engine {
    /// Loads and validates `sources` (see [`crate::policy::load`]) into an engine.
    pub fn load(sources: &[SourceFile]) -> Result<Self, Vec<PolicyError>> {
        let set = crate::policy::load(sources)?;
        Self::new(set).map_err(|e| vec![e])
    }

    /// [`Engine::load`] through a [`ValidationCache`] (see [`crate::policy::load_cached`]).
    pub fn load_cached(
        sources: &[SourceFile],
        cache: &mut ValidationCache,
    ) -> Result<Self, Vec<PolicyError>> {
        let set = crate::policy::load_cached(sources, cache)?;
        Self::new(set).map_err(|e| vec![e])
    }

    /// Indexes a loaded set.
    pub fn new(set: LoadedSet) -> Result<Self, PolicyError> {
        let action_type = EntityTypeName::from_str("Action").map_err(|e| PolicyError {
            file: "<engine>".into(),
            line: None,
            column: None,
            message: e.to_string(),
        })?;
        let mut any = Vec::new();
        let mut equal: HashMap<String, Vec<usize>> = HashMap::new();
        let mut within: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, scope) in set.action_scopes() {
            match scope {
                ActionScope::Any => any.push(i),
                ActionScope::Eq(name) => equal.entry(name).or_default().push(i),
                ActionScope::In(names) => {
                    for name in names {
                        within.entry(name).or_default().push(i);
                    }
                }
            }
        }
        Ok(Self {
            set,
            action_type,
            any,
            equal,
            within,
            plans: RwLock::new(HashMap::new()),
            max_cached_plans: DEFAULT_MAX_CACHED_PLANS,
            authorizer: Authorizer::new(),
        })
    }

    /// The loaded set: version, files, warnings.
    pub fn policies(&self) -> &LoadedSet {
        &self.set
    }

    pub fn version(&self) -> &str {
        self.set.version()
    }

    /// Decides a request. Never fails: what cannot be decided is denied.
    pub fn decide(&self, request: &ValidRequest) -> Verdict {
        match catch_unwind(AssertUnwindSafe(|| self.evaluate(request))) {
            Ok(verdict) => verdict,
            Err(_) => self.deny_error(None, "internal error while deciding".to_owned()),
        }
    }

    fn evaluate(&self, request: &ValidRequest) -> Verdict {
        let plan = match self.plan(request.action()) {
            Ok(plan) => plan,
            Err(e) => return self.deny_error(None, e),
        };
        let entities = match self.entities_for(request, &plan) {
            Ok(entities) => entities,
            Err(e) => return self.deny_error(None, e),
        };
        let context = match request.cedar_context().build() {
            Ok(context) => context,
            Err(e) => return self.deny_error(None, e),
        };
        let cedar_request = match Request::new(
            request.principal().uid.clone(),
            plan.action.clone(),
            request.resource_party().uid.clone(),
            context,
            None,
        ) {
            Ok(r) => r,
            Err(e) => return self.deny_error(None, format!("request rejected by Cedar: {e}")),
        };
        let response = self
            .authorizer
            .is_authorized(&cedar_request, &plan.policies, &entities);

        let mut errors = Vec::new();
        let mut forbid_failed = false;
        for error in response.diagnostics().errors() {
            let AuthorizationError::PolicyEvaluationError(error) = error;
            let id = error.policy_id();
            let loaded = self.set.policy(id);
            if loaded.is_none_or(|p| p.effect == Effect::Forbid) {
                forbid_failed = true;
            }
            errors.push(Reason {
                approval: None,
                quarantine: None,
                kind: ReasonKind::Error,
                policy: Some(id.to_string()),
                message: format!("policy could not be evaluated: {}", error.inner()),
            });
        }

        let determining: Vec<Reason> = response
            .diagnostics()
            .reason()
            .filter_map(|id| self.set.policy(id).map(|p| (id, p)))
            .map(|(id, p)| {
                let (kind, verb) = match p.effect {
                    Effect::Permit => (ReasonKind::Permit, "permitted"),
                    Effect::Forbid => (ReasonKind::Forbid, "forbidden"),
                };
                Reason {
                    approval: None,
                    quarantine: p.quarantine.map(|scope| scope.as_str().to_owned()),
                    kind,
                    policy: Some(id.to_string()),
                    message: p
                        .reason
                        .clone()
                        .unwrap_or_else(|| format!("{verb} by policy `{id}`")),
                }
            })
            .collect();
        let mut determining = determining;
        determining.sort_by(|a, b| a.policy.cmp(&b.policy));

        let allowed = response.decision() == cedar_policy::Decision::Allow && !forbid_failed;
        if allowed {
            // An ordinary permit wins over one that needs an approval; when every satisfied
            // permit needs one, the request waits for it.
            let asks = |r: &Reason| {
                r.policy
                    .as_deref()
                    .and_then(|id| self.set.approval_rule(id))
            };
            if !determining.iter().all(|r| asks(r).is_some()) {
                return self.verdict(Decision::Allow, determining);
            }
            let reasons = determining
                .into_iter()
                .filter_map(|r| {
                    let rule = asks(&r)?;
                    let message = format!(
                        "{}: needs the approval of {} of group `{}`",
                        r.message, rule.needed, rule.group
                    );
                    Some(Reason {
                        kind: ReasonKind::Approval,
                        message,
                        ..r
                    })
                })
                .collect();
            return self.verdict(Decision::ApprovalRequired, reasons);
        }
        let mut reasons: Vec<Reason> = determining
            .into_iter()
            .filter(|r| r.kind == ReasonKind::Forbid)
            .collect();
        if reasons.is_empty() && !forbid_failed {
            reasons.push(Reason {
                approval: None,
                quarantine: None,
                kind: ReasonKind::DefaultDeny,
                policy: None,
                message: format!(
                    "no policy permits `{}` on `{}` (deny by default)",
                    request.action(),
                    request.resource()
                ),
            });
        }
        errors.sort_by(|a, b| a.policy.cmp(&b.policy));
        reasons.extend(errors);
        self.verdict(Decision::Deny, reasons)
    }

    fn verdict(&self, decision: Decision, reasons: Vec<Reason>) -> Verdict {
        Verdict {
            decision,
            reasons,
            policy_version: self.set.version().to_owned(),
        }
    }

    fn deny_error(&self, policy: Option<String>, message: String) -> Verdict {
        self.verdict(
            Decision::Deny,
            vec![Reason {
                approval: None,
                quarantine: None,
                kind: ReasonKind::Error,
                policy,
                message: format!("{message}; denied (fail closed)"),
            }],
        )
    }

    /// The entities a request is evaluated with: the action hierarchy of its plan, and, when
    /// the entity store holds its principal or resource or the request sends attributes, those
    /// two entities (stored attributes overridden by sent ones) and their stored ancestors.
    /// Without sent attributes, that is the whole store when it declares the action (the
    /// schema's action entities follow the same dotted hierarchy as a plan's).
    fn entities_for<'a>(
        &'a self,
        request: &ValidRequest,
        plan: &'a Plan,
    ) -> Result<Cow<'a, Entities>, String> {
        let stored = &self.set.entities.all;
        let parties = [request.principal(), request.resource_party()];
        let involved = |party: &&Party| party.attrs.is_some() || stored.get(&party.uid).is_some();
        if !parties.iter().any(involved) {
            return Ok(Cow::Borrowed(&plan.entities));
        }
        // The store holds the schema's action entities too: when it holds this action and
        // nothing is sent, the store is the request's entity set as it is.
        if parties.iter().all(|p| p.attrs.is_none()) && stored.get(&plan.action).is_some() {
            return Ok(Cow::Borrowed(stored));
        }
        let mut extra: HashMap<EntityUid, Entity> = HashMap::new();
        for party in parties {
            let found = stored.get(&party.uid);
            for ancestor in stored.ancestors(&party.uid).into_iter().flatten() {
                if let Some(entity) = stored.get(ancestor) {
                    extra
                        .entry(ancestor.clone())
                        .or_insert_with(|| entity.clone());
                }
            }
            let entity = match (found, &party.attrs) {
                // The stored entity as it is: no conversion of its attributes.
                (Some(entity), None) => entity.clone(),
                (found, sent) => {
                    let (mut attrs, parents): (HashMap<_, _>, HashSet<_>) = found
                        .map(|e| {
                            let (_, attrs, parents) = e.clone().into_inner();
                            (attrs, parents)
                        })
                        .unwrap_or_default();
                    if let Some(sent) = sent {
                        attrs.extend(sent.iter().map(|(k, v)| (k.clone(), v.clone())));
                    }
                    Entity::new(party.uid.clone(), attrs, parents)
                        .map_err(|e| format!("cannot build entity `{}`: {e}", party.uid))?
                }
            };
            extra.insert(party.uid.clone(), entity);
        }
        let all = plan.entities.iter().cloned().chain(extra.into_values());
        Entities::from_entities(all, None)
            .map(Cow::Owned)
            .map_err(|e| format!("cannot assemble the request's entities: {e}"))
    }

    /// The stored entities of type `type_name`, in id order: the candidates of a subject or
    /// resource search. Empty for a type the store does not hold.
    pub fn entities_of_type(&self, type_name: &str) -> &[EntityUid] {
        self.set
            .entities
            .by_type
            .get(type_name)
            .map_or(&[], Vec::as_slice)
    }

    /// The actions the schema declares for principals of type `principal` on resources of
    /// type `resource`, by name: the candidates of an action search.
    pub fn actions_for(&self, principal: &str, resource: &str) -> Vec<ActionName> {
        let (Ok(principal), Ok(resource)) = (
            EntityTypeName::from_str(principal),
            EntityTypeName::from_str(resource),
        ) else {
            return Vec::new();
        };
        let mut names: Vec<ActionName> = self
            .set
            .schema
            .actions_for_principal_and_resource(&principal, &resource)
            .filter_map(|uid| ActionName::parse(uid.id().unescaped()).ok())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Whether some permit policy could ever allow this request's principal to take its
    /// action, whatever the resource, context and conditions: a policy whose action scope
    /// covers the action and whose principal scope can match the principal (through the
    /// stored entity hierarchy for `principal in ...`). An over-approximation, used to hide
    /// what can never be allowed (the MCP gateway's tool list); `true` decides nothing.
    pub fn could_allow(&self, request: &ValidRequest) -> bool {
        use cedar_policy::PrincipalConstraint;
        let Ok(plan) = self.plan(request.action()) else {
            return false;
        };
        let principal = &request.principal().uid;
        let stored = &self.set.entities.all;
        let within = |group: &EntityUid| {
            group == principal
                || stored
                    .ancestors(principal)
                    .is_some_and(|mut ancestors| ancestors.any(|a| a == group))
        };
        plan.policies
            .policies()
            .filter(|p| p.effect() == Effect::Permit)
            .any(|p| match p.principal_constraint() {
                PrincipalConstraint::Any => true,
                PrincipalConstraint::Eq(uid) => &uid == principal,
                PrincipalConstraint::Is(type_name) => &type_name == principal.type_name(),
                PrincipalConstraint::In(group) => within(&group),
                PrincipalConstraint::IsIn(type_name, group) => {
                    &type_name == principal.type_name() && within(&group)
                }
            })
    }

    /// The cached plan for `action`, built on first use.
    fn plan(&self, action: &ActionName) -> Result<Arc<Plan>, String> {
        if let Ok(plans) = self.plans.read()
            && let Some(plan) = plans.get(action.as_str())
        {
            return Ok(Arc::clone(plan));
        }
        let plan = Arc::new(self.build_plan(action)?);
        if let Ok(mut plans) = self.plans.write() {
            if plans.len() >= self.max_cached_plans {
                plans.clear();
            }
            plans.insert(action.as_str().to_owned(), Arc::clone(&plan));
        }
        Ok(plan)
    }

    fn build_plan(&self, action: &ActionName) -> Result<Plan, String> {
        let mut chosen: Vec<usize> = self.any.clone();
        chosen.extend(self.equal.get(action.as_str()).into_iter().flatten());
        for name in action.self_and_ancestors() {
            chosen.extend(self.within.get(name).into_iter().flatten());
        }
        chosen.sort_unstable();
        chosen.dedup();
        let mut policies = PolicySet::new();
        for i in chosen {
            if let Some(p) = self.set.policies.get(i) {
                policies
                    .add(p.policy.clone())
                    .map_err(|e| format!("cannot build the policy plan: {e}"))?;
            }
        }

        let uid = |name: &str| {
            EntityUid::from_type_name_and_id(self.action_type.clone(), EntityId::new(name))
        };
        let entities = action.self_and_ancestors().map(|name| {
            let parent = ActionName::parse(name)
                .ok()
                .and_then(|n| n.parent().map(uid))
                .into_iter()
                .collect();
            Entity::new_no_attrs(uid(name), parent)
        });
        let entities = Entities::from_entities(entities, None)
            .map_err(|e| format!("cannot build the action hierarchy: {e}"))?;
        Ok(Plan {
            action: uid(action.as_str()),
            policies,
            entities,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{DecisionRequest, Limits};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn engine(policies: &str) -> Engine {
        Engine::load(&[SourceFile {
            path: "p.cedar".into(),
            text: policies.into(),
        }])
        .unwrap()
    }

    fn with_schema(schema: &str, policies: &str) -> Engine {
        Engine::load(&[
            SourceFile {
                path: "s.cedarschema".into(),
                text: schema.into(),
            },
            SourceFile {
                path: "p.cedar".into(),
                text: policies.into(),
            },
        ])
        .unwrap()
    }

    fn ask(engine: &Engine, actor: &str, action: &str, context: Value) -> Verdict {
        let request = DecisionRequest {
            actor: actor.into(),
            action: action.into(),
            resource: "r-1".into(),
            context: context.as_object().cloned().unwrap_or_default(),
        }
        .validate(&Limits::default())
        .unwrap();
        engine.decide(&request)
    }

    /// What the service adds to a context (`behaviour`) is what policies see and what the
    /// record holds; a forbid marked `@quarantine` says so in its reason.
    #[test]
    fn added_context_reaches_policies_and_quarantine_is_named() {
        let engine = engine(
            "@id(\"probe\") @quarantine(\"session\") forbid(principal, action, resource) when { context has behaviour && context.behaviour.denies_recent >= 5 && context.behaviour.novel_action };\n\
             @id(\"any\") permit(principal, action, resource);",
        );
        let mut request = DecisionRequest {
            actor: "a".into(),
            action: "x.y".into(),
            resource: "r-1".into(),
            context: json!({"env": "prod"}).as_object().cloned().unwrap(),
        }
        .validate(&Limits::default())
        .unwrap();
        assert_eq!(engine.decide(&request).decision, Decision::Allow);
        let signals = json!({"denies_recent": 7, "novel_action": true});
        request.add_context("behaviour", signals.clone()).unwrap();
        assert_eq!(request.context_member("behaviour"), Some(&signals));
        assert_eq!(request.context_member("env"), Some(&json!("prod")));
        assert!(request.add_context("behaviour", json!({})).is_err());
        assert!(request.add_context("x", json!(1.5)).is_err());
        let verdict = engine.decide(&request);
        assert_eq!(verdict.decision, Decision::Deny);
        assert!(engine.policies().reads_behaviour());
        let plain = Engine::load(&[SourceFile {
            path: "p.cedar".into(),
            text: "permit(principal, action, resource) when { context has env };".into(),
        }])
        .unwrap();
        assert!(!plain.policies().reads_behaviour());
        assert_eq!(verdict.reasons[0].policy.as_deref(), Some("probe"));
        assert_eq!(verdict.reasons[0].quarantine.as_deref(), Some("session"));
    }

    #[test]
    fn no_policy_means_deny_by_default() {
        let verdict = ask(&engine(""), "a", "x.y", json!({}));
        assert_eq!(verdict.decision, Decision::Deny);
        assert_eq!(verdict.reasons.len(), 1);
        assert_eq!(verdict.reasons[0].kind, ReasonKind::DefaultDeny);
        assert!(verdict.reasons[0].message.contains("deny by default"));
    }

    #[test]
    fn could_allow_follows_action_and_principal_scopes_only() {
        let e = engine(
            "permit(principal, action == Action::\"mcp.fs.read\", resource) when { false };\n\
             permit(principal == Agent::\"writer\", action in Action::\"mcp.fs.write\", resource);\n\
             permit(principal is Agent, action == Action::\"mcp.time.now\", resource);\n\
             forbid(principal, action, resource);",
        );
        let probe = |actor: &str, action: &str| {
            let request = DecisionRequest {
                actor: actor.into(),
                action: action.into(),
                resource: "fs".into(),
                context: Default::default(),
            }
            .validate(&Limits::default())
            .unwrap();
            e.could_allow(&request)
        };
        // Conditions are not evaluated: a permit that could apply counts, even `when { false }`.
        assert!(probe("anyone", "mcp.fs.read"));
        assert!(probe("writer", "mcp.fs.write.file"));
        assert!(!probe("reader", "mcp.fs.write.file"));
        assert!(probe("reader", "mcp.time.now"));
        assert!(!probe("reader", "mcp.time.later"));
        assert!(!probe("reader", "mcp.shell.exec"));
    }

    #[test]
    fn a_permit_marked_approval_asks_for_one_and_loses_to_forbids_and_plain_permits() {
        let e = engine(
            "@id(\"prod-delete\") @approval(\"sre-oncall\") @approvals_needed(\"2\")\n\
             permit(principal, action == Action::\"db.delete\", resource);\n\
             @id(\"owner\") permit(principal == Agent::\"owner\", action == Action::\"db.delete\", resource);\n\
             @id(\"frozen\") forbid(principal, action == Action::\"db.delete\", resource) when { context has frozen };",
        );
        let v = ask(&e, "a", "db.delete", json!({}));
        assert_eq!(v.decision, Decision::ApprovalRequired);
        assert_eq!(v.reasons.len(), 1);
        assert_eq!(v.reasons[0].kind, ReasonKind::Approval);
        assert_eq!(v.reasons[0].policy.as_deref(), Some("prod-delete"));
        assert!(
            v.reasons[0].message.contains("2 of group `sre-oncall`"),
            "{v:?}"
        );
        let rule = e.policies().approval_rule("prod-delete").unwrap();
        assert_eq!(
            (rule.group.as_str(), rule.ttl_secs, rule.needed),
            ("sre-oncall", 900, 2)
        );
        assert!(e.policies().approval_rule("owner").is_none());
        // An ordinary permit that is satisfied wins; a forbid wins over both.
        assert_eq!(
            ask(&e, "owner", "db.delete", json!({})).decision,
            Decision::Allow
        );
        let v = ask(&e, "a", "db.delete", json!({"frozen": true}));
        assert_eq!(v.decision, Decision::Deny);
        assert_eq!(v.reasons[0].policy.as_deref(), Some("frozen"));
        assert_eq!(ask(&e, "a", "db.read", json!({})).decision, Decision::Deny);
    }

    #[test]
    fn dotted_actions_form_a_hierarchy() {
        let e = engine(
            "@id(\"ec2\") @reason(\"ec2 is fine\") permit(principal, action in Action::\"aws.ec2\", resource);\n\
             @id(\"iam\") @reason(\"no iam\") forbid(principal, action in Action::\"aws.iam\", resource);\n\
             permit(principal, action in Action::\"aws\", resource) when { principal == Agent::\"root\" };",
        );
        let v = ask(&e, "a", "aws.ec2.terminate_instances", json!({}));
        assert_eq!(v.decision, Decision::Allow);
        assert_eq!(v.reasons[0].policy.as_deref(), Some("ec2"));
        assert_eq!(v.reasons[0].message, "ec2 is fine");
        // The group name itself is covered by `in`.
        assert_eq!(ask(&e, "a", "aws.ec2", json!({})).decision, Decision::Allow);
        // A sibling prefix is not.
        assert_eq!(
            ask(&e, "a", "aws.ec2x.run", json!({})).decision,
            Decision::Deny
        );
        let v = ask(&e, "root", "aws.iam.create_user", json!({}));
        assert_eq!(v.decision, Decision::Deny);
        assert_eq!(v.reasons.len(), 1);
        assert_eq!(v.reasons[0].kind, ReasonKind::Forbid);
        assert_eq!(v.reasons[0].message, "no iam");
        assert_eq!(
            ask(&e, "root", "aws.s3.get", json!({})).decision,
            Decision::Allow
        );
        assert_eq!(
            ask(&e, "other", "aws.s3.get", json!({})).decision,
            Decision::Deny
        );
    }

    #[test]
    fn equality_does_not_cover_children() {
        let e = engine("permit(principal, action == Action::\"a.b\", resource);");
        assert_eq!(ask(&e, "x", "a.b", json!({})).decision, Decision::Allow);
        assert_eq!(ask(&e, "x", "a.b.c", json!({})).decision, Decision::Deny);
    }

    #[test]
    fn context_is_the_cedar_context() {
        let e = with_schema(
            "entity Agent; entity Resource; type Context = { env?: String };",
            "permit(principal, action, resource) when { context has env && context.env == \"staging\" };",
        );
        assert_eq!(
            ask(&e, "a", "x", json!({"env": "staging"})).decision,
            Decision::Allow
        );
        assert_eq!(
            ask(&e, "a", "x", json!({"env": "prod"})).decision,
            Decision::Deny
        );
        assert_eq!(ask(&e, "a", "x", json!({})).decision, Decision::Deny);
    }

    #[test]
    fn a_forbid_that_fails_to_evaluate_denies() {
        let e = with_schema(
            "entity Agent; entity Resource; type Context = { env?: String };",
            "@id(\"all\") permit(principal, action, resource);\n\
             @id(\"prod\") forbid(principal, action, resource) when { context has env && context.env like \"prod*\" };",
        );
        assert_eq!(ask(&e, "a", "x", json!({})).decision, Decision::Allow);
        // A mistyped context value makes the forbid policy error at evaluation: deny.
        let v = ask(&e, "a", "x", json!({"env": 7}));
        assert_eq!(v.decision, Decision::Deny);
        assert_eq!(v.reasons.len(), 1, "{v:?}");
        assert_eq!(v.reasons[0].kind, ReasonKind::Error);
        assert_eq!(v.reasons[0].policy.as_deref(), Some("prod"));
    }

    #[test]
    fn a_permit_that_fails_to_evaluate_does_not_allow() {
        let e = with_schema(
            "entity Agent; entity Resource; type Context = { n?: Long };",
            "@id(\"n\") permit(principal, action, resource) when { context has n && context.n > 3 };",
        );
        assert_eq!(ask(&e, "a", "x", json!({"n": 4})).decision, Decision::Allow);
        let v = ask(&e, "a", "x", json!({"n": "four"}));
        assert_eq!(v.decision, Decision::Deny);
        let kinds: Vec<_> = v.reasons.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, [ReasonKind::DefaultDeny, ReasonKind::Error]);
    }

    fn fixture() -> Engine {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/authzen-fixture");
        let files: Vec<SourceFile> = ["schema.cedarschema", "policies.cedar", "entities.json"]
            .iter()
            .map(|name| SourceFile {
                path: (*name).into(),
                text: std::fs::read_to_string(dir.join(name)).unwrap(),
            })
            .collect();
        Engine::load(&files).unwrap()
    }

    fn authzen(engine: &Engine, request: Value) -> Decision {
        let request = crate::authzen::Evaluation::from_object(request.as_object().unwrap())
            .validate(&Limits::default())
            .unwrap();
        engine.decide(&request).decision
    }

    #[test]
    fn stored_entities_decide_and_sent_properties_override_them() {
        let e = fixture();
        let ask = |subject: Value, action: Value, resource: Value| {
            authzen(
                &e,
                json!({"subject": subject, "action": action, "resource": resource}),
            )
        };
        let alice = json!({"type": "user", "id": "alice"});
        let stranger = json!({"type": "user", "id": "mallory"});
        let write = json!({"name": "write"});
        let record2 = json!({"type": "record", "id": "record-2"});
        // Group membership comes from the store: a stranger is in no group.
        assert_eq!(
            ask(alice.clone(), json!({"name": "read"}), record2.clone()),
            Decision::Allow
        );
        assert_eq!(
            ask(stranger, json!({"name": "read"}), record2.clone()),
            Decision::Deny
        );
        // record-2 is archived in the store; a sent status overrides it.
        assert_eq!(
            ask(alice.clone(), write.clone(), record2.clone()),
            Decision::Deny
        );
        let active =
            json!({"type": "record", "id": "record-2", "properties": {"status": "active"}});
        assert_eq!(ask(alice, write.clone(), active), Decision::Allow);
        // bob is an admin in the store, and keeps his group when he sends properties.
        let bob = json!({"type": "user", "id": "bob", "properties": {"department": "ops"}});
        assert_eq!(ask(bob.clone(), write, record2.clone()), Decision::Allow);
        assert_eq!(ask(bob, json!({"name": "read"}), record2), Decision::Allow);
        // A sent attribute of the wrong type makes the policy error: no allow.
        let odd = json!({"type": "user", "id": "bob", "properties": {"role": 1}});
        let archived = json!({"type": "record", "id": "record-2"});
        assert_eq!(ask(odd, json!({"name": "write"}), archived), Decision::Deny);
    }

    #[test]
    fn search_candidates_come_from_the_store_and_the_schema() {
        let e = fixture();
        let ids: Vec<&str> = e
            .entities_of_type("user")
            .iter()
            .map(|u| u.id().unescaped())
            .collect();
        assert_eq!(ids, ["alice", "bob"]);
        assert!(e.entities_of_type("spaceship").is_empty());
        let actions: Vec<String> = e
            .actions_for("user", "record")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(actions, ["delete", "read", "write"]);
        assert!(e.actions_for("record", "user").is_empty());
        assert!(e.actions_for("not a type", "record").is_empty());
    }

    #[test]
    fn the_plan_cache_is_bounded() {
        let mut e = engine("permit(principal, action, resource);");
        e.max_cached_plans = 4;
        for i in 0..10 {
            assert_eq!(
                ask(&e, "a", &format!("x.{i}"), json!({})).decision,
                Decision::Allow
            );
        }
        assert!(e.plans.read().unwrap().len() <= 4);
    }

    fn full_set_decision(e: &Engine, actor: &str, action: &str) -> cedar_policy::Decision {
        let mut all = PolicySet::new();
        for p in &e.set.policies {
            all.add(p.policy.clone()).unwrap();
        }
        let name = ActionName::parse(action).unwrap();
        let plan = e.build_plan(&name).unwrap();
        let request = Request::new(
            format!("Agent::{actor:?}").parse().unwrap(),
            plan.action.clone(),
            "Resource::\"r-1\"".parse().unwrap(),
            cedar_policy::Context::empty(),
            None,
        )
        .unwrap();
        e.authorizer
            .is_authorized(&request, &all, &plan.entities)
            .decision()
    }

    fn arb_action() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..4)
            .prop_map(|segments| segments.join("."))
    }

    fn arb_policy() -> impl Strategy<Value = String> {
        let effect = prop::sample::select(vec!["permit", "forbid"]);
        let scope = prop_oneof![
            Just("action".to_owned()),
            arb_action().prop_map(|a| format!("action == Action::\"{a}\"")),
            arb_action().prop_map(|a| format!("action in Action::\"{a}\"")),
            (arb_action(), arb_action())
                .prop_map(|(a, b)| format!("action in [Action::\"{a}\", Action::\"{b}\"]")),
        ];
        let principal = prop_oneof![
            Just("principal".to_owned()),
            prop::sample::select(vec!["p", "q"])
                .prop_map(|p| format!("principal == Agent::\"{p}\"")),
        ];
        (effect, principal, scope).prop_map(|(e, p, s)| format!("{e}({p}, {s}, resource);"))
    }

    proptest! {
        /// Evaluating a request against its action plan decides exactly as evaluating it
        /// against the whole set.
        #[test]
        fn plans_decide_like_the_whole_set(
            policies in prop::collection::vec(arb_policy(), 0..12),
            actor in prop::sample::select(vec!["p", "q", "z"]),
            action in arb_action(),
        ) {
            let e = engine(&policies.join("\n"));
            let expected = match full_set_decision(&e, actor, &action) {
                cedar_policy::Decision::Allow => Decision::Allow,
                cedar_policy::Decision::Deny => Decision::Deny,
            };
            prop_assert_eq!(ask(&e, actor, &action, json!({})).decision, expected);
        }
    }
}
