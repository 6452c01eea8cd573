//! Behaviour as a decision input, and quarantine.
//!
//! For each agent and each session the service observes its own decisions and hands policies
//! what it saw, as `context.behaviour` (declared in the built-in schema): decisions in the last
//! minute against the agent's baseline (its average per hour over a window of hours), denies
//! in the recent window, whether the action (and the action on this resource type) was ever
//! allowed to the agent within the window, distinct resources touched recently, and for a
//! session its decisions, its recent denies and its age. The values a decision was made with
//! are in its request, and so in its evidence record.
//!
//! Memory is bounded: per agent, one counter per hour of the window and per 10 seconds of the
//! recent window, and at most [`MAX_KINDS`] known actions, as many known action and resource
//! type pairs and [`MAX_RESOURCES`] recent resources; at most `max_agents` agents and
//! `max_sessions` sessions are tracked (the least recently seen goes first). Exact on one node;
//! each replica writes its agents' counters and known actions to the store every `share_secs`
//! and reads the others', so across replicas the signals are approximate by that interval
//! (recent resources and sessions are per node). A restarted node reads its own back.
//!
//! A quarantine (an operator's, or a satisfied forbid marked `@quarantine`) is kept by the
//! session registry ([`crate::sessions::Sessions::quarantine`]) and pushed to every replica
//! like a revocation; [`answer`](crate::api::answer) denies every decision it holds, with a
//! reason of kind `quarantine`.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash as _, Hasher as _};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use zt_core::{Decision, Reason, ReasonKind, ValidRequest, Verdict};

use crate::api::{AppState, Origin};
use crate::auth::{Admin, Reader};
use crate::body::JsonBody;
use crate::problem::Problem;
use crate::sessions::{Quarantine, SessionError};
use zt_identity::Caller;

/// The context member the service sets.
pub const CONTEXT_MEMBER: &str = zt_core::contract::BEHAVIOUR;

/// Known actions, and known action and resource type pairs, kept per agent.
pub const MAX_KINDS: usize = 256;
/// Recent distinct resources counted per agent (the count stops there).
pub const MAX_RESOURCES: usize = 256;
/// The width of a recent-window counter.
const BUCKET_MS: i64 = 10_000;
const HOUR_MS: i64 = 3_600_000;
/// Buckets in the last minute.
const MINUTE_BUCKETS: i64 = 60_000 / BUCKET_MS;

/// `[behaviour]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BehaviourSettings {
    /// Observe decisions and give policies `context.behaviour` (default on).
    pub enabled: bool,
    /// The baseline's window, in hours (default 168: a week).
    pub window_hours: u32,
    /// The recent window of `denies_recent` and `distinct_resources_recent`, in seconds, a
    /// multiple of 10 from 60 to 3600 (default 300).
    pub recent_secs: u32,
    /// How often each replica writes what it observed to the store and reads the others'
    /// (default 10 s).
    pub share_secs: u32,
    /// The lowest baseline `rate_percent` divides by, in decisions per hour (default 60):
    /// an agent with little or no history is measured against this.
    pub min_baseline_per_hour: u32,
    /// Agents tracked at most (default 10,000).
    pub max_agents: usize,
    /// Sessions tracked at most (default 100,000).
    pub max_sessions: usize,
    /// Agents whose decisions are counted in Prometheus under their name
    /// (`ztinfra_agent_decisions_total{agent,decision}`); no others, so that labels stay
    /// bounded.
    pub metrics_agents: Vec<String>,
}

impl Default for BehaviourSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            window_hours: 168,
            recent_secs: 300,
            share_secs: 10,
            min_baseline_per_hour: 60,
            max_agents: 10_000,
            max_sessions: 100_000,
            metrics_agents: Vec::new(),
        }
    }
}

impl BehaviourSettings {
    pub fn check(&self) -> Result<(), String> {
        if !(1..=24 * 90).contains(&self.window_hours) {
            return Err("`window_hours` is from 1 to 2160 (90 days)".into());
        }
        if !(60..=3600).contains(&self.recent_secs) || !self.recent_secs.is_multiple_of(10) {
            return Err("`recent_secs` is a multiple of 10 from 60 to 3600".into());
        }
        if !(1..=3600).contains(&self.share_secs) {
            return Err("`share_secs` is from 1 to 3600".into());
        }
        if self.min_baseline_per_hour == 0 {
            return Err("`min_baseline_per_hour` is at least 1".into());
        }
        if self.max_agents == 0 || self.max_sessions == 0 {
            return Err("`max_agents` and `max_sessions` are at least 1".into());
        }
        if self.metrics_agents.len() > 100 {
            return Err("`metrics_agents` names at most 100 agents".into());
        }
        Ok(())
    }

    fn recent_buckets(&self) -> i64 {
        i64::from(self.recent_secs) * 1000 / BUCKET_MS
    }
}

/// What a decision's policies see of its agent's and session's behaviour
/// (`context.behaviour`). Counts are of decisions before this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Signals {
    /// The agent's decisions in the last 60 seconds.
    pub rate_last_minute: i64,
    /// The agent's average decisions per hour over the window's completed hours (0: no
    /// completed hour yet).
    pub baseline_per_hour: i64,
    /// The last minute's rate as a percentage of the baseline (the baseline, or
    /// `min_baseline_per_hour` if higher): 100 is usual, 1000 ten times usual.
    pub rate_percent: i64,
    /// The agent's denies in the recent window.
    pub denies_recent: i64,
    /// Distinct resources the agent asked for in the recent window (at most 256 counted).
    pub distinct_resources_recent: i64,
    /// The action was never allowed to the agent within the window.
    pub novel_action: bool,
    /// The action was never allowed to the agent on a resource of this type within the window.
    pub novel_resource_type: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_decisions: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_denies_recent: Option<i64>,
    /// Seconds since the session's token was issued (its start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_age_s: Option<i64>,
}

/// The part of an agent's record that replicas share and a restart reads back.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Shared {
    /// The hour (since the epoch) the agent was first seen.
    first_hour: i64,
    /// Decisions per hour: `(hour, count)`, oldest first, within the window.
    hours: VecDeque<(i64, u32)>,
    /// Per 10 seconds: `(bucket, decisions, denies)`, oldest first, within the recent window.
    buckets: VecDeque<(i64, u32, u32)>,
    /// Allowed actions and the hour each was last allowed.
    actions: HashMap<String, i64>,
    /// Allowed `(action, resource type)` pairs and the hour each was last allowed.
    kinds: HashMap<String, i64>,
    /// The hour the two maps were last cleared of hours out of the window.
    #[serde(skip)]
    pruned_hour: i64,
}

/// One agent as this node sees it.
#[derive(Debug, Default)]
struct AgentTrack {
    own: Shared,
    /// Resources asked for recently (their hashes) and when.
    resources: HashMap<u64, i64>,
    /// The other replicas' last snapshots of this agent, by replica.
    others: HashMap<String, Shared>,
    last_ms: i64,
    /// Changed since it was last written to the store.
    dirty: bool,
}

#[derive(Debug, Default)]
struct SessionTrack {
    decisions: i64,
    /// Per 10 seconds: `(bucket, denies)`.
    denies: VecDeque<(i64, u32)>,
    last_ms: i64,
}

#[derive(Debug, Default)]
struct Tracked {
    agents: HashMap<String, AgentTrack>,
    sessions: HashMap<String, SessionTrack>,
}

/// The behaviour every agent and session has shown this node.
#[derive(Debug)]
pub struct Behaviour {
    settings: BehaviourSettings,
    metrics_agents: HashSet<String>,
    tracked: Mutex<Tracked>,
    /// This replica's name in the shared snapshots (its evidence log's origin).
    replica: String,
}

/// The key of an action on a resource type.
fn kind_key(action: &str, resource_type: &str) -> String {
    format!("{action} {resource_type}")
}

/// The type of a request's resource: its Cedar type, or, for the ZT-Infra contract's
/// `Resource`, the id up to its first `/` or `:` (`invoice/42` is an `invoice`).
fn resource_type(request: &ValidRequest) -> std::borrow::Cow<'_, str> {
    let cedar = request.resource_type();
    if cedar != zt_core::contract::RESOURCE_TYPE {
        return cedar;
    }
    match request.resource().split_once(['/', ':']) {
        Some((prefix, _)) if !prefix.is_empty() => prefix.into(),
        _ => cedar,
    }
}

fn resource_hash(resource: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    resource.hash(&mut hasher);
    hasher.finish()
}

/// Removes the entry last allowed longest ago when a map is full.
fn make_room(map: &mut HashMap<String, i64>) {
    if map.len() >= MAX_KINDS
        && let Some(oldest) = map
            .iter()
            .min_by_key(|(_, hour)| **hour)
            .map(|(k, _)| k.clone())
    {
        map.remove(&oldest);
    }
}

impl Shared {
    fn prune(&mut self, settings: &BehaviourSettings, now_ms: i64) {
        let hour = now_ms.div_euclid(HOUR_MS);
        let bucket = now_ms.div_euclid(BUCKET_MS);
        let window = i64::from(settings.window_hours);
        while self.hours.front().is_some_and(|(h, _)| *h < hour - window) {
            self.hours.pop_front();
        }
        let recent = settings.recent_buckets();
        while self
            .buckets
            .front()
            .is_some_and(|(b, _, _)| *b <= bucket - recent)
        {
            self.buckets.pop_front();
        }
        if self.pruned_hour != hour {
            self.actions.retain(|_, h| *h >= hour - window);
            self.kinds.retain(|_, h| *h >= hour - window);
            self.pruned_hour = hour;
        }
    }

    /// `(decisions in the last minute, denies in the recent window)`.
    fn recent(&self, settings: &BehaviourSettings, now_ms: i64) -> (i64, i64) {
        let bucket = now_ms.div_euclid(BUCKET_MS);
        let recent = settings.recent_buckets();
        self.buckets
            .iter()
            .filter(|(b, _, _)| *b > bucket - recent && *b <= bucket)
            .fold((0, 0), |(minute, denies), (b, d, x)| {
                let in_minute = *b > bucket - MINUTE_BUCKETS;
                (
                    minute + if in_minute { i64::from(*d) } else { 0 },
                    denies + i64::from(*x),
                )
            })
    }

    /// `(decisions in the window's completed hours, completed hours covered)`.
    fn baseline(&self, settings: &BehaviourSettings, now_ms: i64) -> (i64, i64) {
        let hour = now_ms.div_euclid(HOUR_MS);
        let window = i64::from(settings.window_hours);
        let total = self
            .hours
            .iter()
            .filter(|(h, _)| *h >= hour - window && *h < hour)
            .map(|(_, c)| i64::from(*c))
            .sum();
        (total, (hour - self.first_hour).clamp(0, window))
    }

    fn knows(&self, key: &str, map: fn(&Self) -> &HashMap<String, i64>, since_hour: i64) -> bool {
        map(self).get(key).is_some_and(|h| *h >= since_hour)
    }
}

impl Behaviour {
    pub fn new(settings: BehaviourSettings, replica: String) -> Self {
        Self {
            metrics_agents: settings.metrics_agents.iter().cloned().collect(),
            settings,
            tracked: Mutex::new(Tracked::default()),
            replica,
        }
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tracked> {
        self.tracked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The signals for a request of `agent` for `action` on a resource of `rtype` (`resource`),
    /// in `session` (its id and start, in seconds), at `now_ms`.
    fn signals(
        &self,
        tracked: &Tracked,
        agent: &str,
        (action, rtype, resource): (&str, &str, u64),
        session: Option<(&str, i64)>,
        now_ms: i64,
    ) -> Signals {
        let settings = &self.settings;
        let window_start = now_ms.div_euclid(HOUR_MS) - i64::from(settings.window_hours);
        let recent_from = now_ms - i64::from(settings.recent_secs) * 1000;
        let track = tracked.agents.get(agent);
        let all = track
            .into_iter()
            .flat_map(|t| std::iter::once(&t.own).chain(t.others.values()));
        let (mut minute, mut denies, mut total, mut covered) = (0, 0, 0, 0);
        let (mut known_action, mut known_kind) = (false, false);
        let kind = kind_key(action, rtype);
        for shared in all {
            let (m, d) = shared.recent(settings, now_ms);
            let (t, c) = shared.baseline(settings, now_ms);
            (minute, denies, total) = (minute + m, denies + d, total + t);
            covered = covered.max(c);
            known_action |= shared.knows(action, |s| &s.actions, window_start);
            known_kind |= shared.knows(&kind, |s| &s.kinds, window_start);
        }
        let baseline_per_hour = if covered > 0 { total / covered } else { 0 };
        let floor = baseline_per_hour.max(i64::from(settings.min_baseline_per_hour));
        let distinct = track.map_or(0, |t| {
            let others = t
                .resources
                .iter()
                .filter(|(hash, at)| **at > recent_from && **hash != resource)
                .count();
            i64::try_from(others).unwrap_or(i64::MAX)
        });
        let session_track = session.and_then(|(id, _)| tracked.sessions.get(id));
        let bucket = now_ms.div_euclid(BUCKET_MS);
        Signals {
            rate_last_minute: minute,
            baseline_per_hour,
            rate_percent: minute.saturating_mul(60 * 100) / floor,
            denies_recent: denies,
            distinct_resources_recent: distinct,
            novel_action: !known_action,
            novel_resource_type: !known_kind,
            session_decisions: session.map(|_| session_track.map_or(0, |s| s.decisions)),
            session_denies_recent: session.map(|_| {
                session_track.map_or(0, |s| {
                    s.denies
                        .iter()
                        .filter(|(b, _)| *b > bucket - settings.recent_buckets())
                        .map(|(_, x)| i64::from(*x))
                        .sum()
                })
            }),
            session_age_s: session.map(|(_, started)| (now_ms / 1000 - started).max(0)),
        }
    }

    /// Adds `context.behaviour` to a request an agent makes to act.
    pub(crate) fn inform(
        &self,
        origin: &Origin,
        request: &mut ValidRequest,
        now_ms: i64,
    ) -> Result<(), zt_core::FieldError> {
        if !self.settings.enabled {
            return Ok(());
        }
        let rtype = resource_type(request);
        let signals = {
            let tracked = self.lock();
            self.signals(
                &tracked,
                request.actor(),
                (
                    request.action().as_str(),
                    &rtype,
                    resource_hash(request.resource()),
                ),
                origin
                    .session
                    .as_ref()
                    .map(|c| (c.session.session_id.as_str(), c.iat)),
                now_ms,
            )
        };
        let value = serde_json::to_value(&signals).unwrap_or(Value::Null);
        request
            .add_context(CONTEXT_MEMBER, value)
            .map_err(|e| zt_core::FieldError::new(format!("/context/{CONTEXT_MEMBER}"), e))
    }

    /// Counts an agent's decision (after every bound: what was answered).
    pub(crate) fn observe(
        &self,
        request: &ValidRequest,
        session: Option<&str>,
        decision: Decision,
        now_ms: i64,
    ) {
        if !self.settings.enabled {
            return;
        }
        let agent = request.actor();
        if self.metrics_agents.contains(agent) {
            metrics::counter!("ztinfra_agent_decisions_total", "agent" => agent.to_owned(), "decision" => decision.as_str())
                .increment(1);
        }
        let settings = &self.settings;
        let (hour, bucket) = (now_ms.div_euclid(HOUR_MS), now_ms.div_euclid(BUCKET_MS));
        let denied = u32::from(decision == Decision::Deny);
        let rtype = resource_type(request);
        let mut tracked = self.lock();
        if !tracked.agents.contains_key(agent) && tracked.agents.len() >= settings.max_agents {
            evict_oldest(&mut tracked.agents, |t| t.last_ms);
        }
        let track = tracked
            .agents
            .entry(agent.to_owned())
            .or_insert_with(|| AgentTrack {
                own: Shared {
                    first_hour: hour,
                    ..Shared::default()
                },
                ..AgentTrack::default()
            });
        track.last_ms = now_ms;
        track.dirty = true;
        let own = &mut track.own;
        own.first_hour = own.first_hour.min(hour);
        own.prune(settings, now_ms);
        match own.hours.back_mut() {
            Some((h, count)) if *h == hour => *count = count.saturating_add(1),
            _ => own.hours.push_back((hour, 1)),
        }
        match own.buckets.back_mut() {
            Some((b, count, denies)) if *b == bucket => {
                *count = count.saturating_add(1);
                *denies = denies.saturating_add(denied);
            }
            _ => own.buckets.push_back((bucket, 1, denied)),
        }
        if decision == Decision::Allow {
            let action = request.action().as_str();
            match own.actions.get_mut(action) {
                Some(last) => *last = hour,
                None => {
                    make_room(&mut own.actions);
                    own.actions.insert(action.to_owned(), hour);
                }
            }
            let kind = kind_key(action, &rtype);
            match own.kinds.get_mut(&kind) {
                Some(last) => *last = hour,
                None => {
                    make_room(&mut own.kinds);
                    own.kinds.insert(kind, hour);
                }
            }
        }
        let recent_from = now_ms - i64::from(settings.recent_secs) * 1000;
        let hash = resource_hash(request.resource());
        if track.resources.len() >= MAX_RESOURCES && !track.resources.contains_key(&hash) {
            track.resources.retain(|_, at| *at > recent_from);
        }
        if track.resources.len() < MAX_RESOURCES || track.resources.contains_key(&hash) {
            track.resources.insert(hash, now_ms);
        }
        if let Some(id) = session {
            if !tracked.sessions.contains_key(id) && tracked.sessions.len() >= settings.max_sessions
            {
                evict_oldest(&mut tracked.sessions, |s| s.last_ms);
            }
            let s = tracked.sessions.entry(id.to_owned()).or_default();
            s.decisions += 1;
            s.last_ms = now_ms;
            while s
                .denies
                .front()
                .is_some_and(|(b, _)| *b <= bucket - settings.recent_buckets())
            {
                s.denies.pop_front();
            }
            if denied > 0 {
                match s.denies.back_mut() {
                    Some((b, x)) if *b == bucket => *x = x.saturating_add(1),
                    _ => s.denies.push_back((bucket, 1)),
                }
            }
        }
    }

    /// The snapshots of the agents changed since the last write, marked written.
    fn changed(&self, now_ms: i64) -> Vec<zt_store::BehaviourSnapshot> {
        let mut tracked = self.lock();
        metrics::gauge!("ztinfra_behaviour_tracked_agents").set(tracked.agents.len() as f64);
        let mut out = Vec::new();
        for (agent, track) in &mut tracked.agents {
            if !track.dirty {
                continue;
            }
            track.own.prune(&self.settings, now_ms);
            if let Ok(state) = serde_json::to_string(&track.own) {
                out.push(zt_store::BehaviourSnapshot {
                    agent: agent.clone(),
                    replica: self.replica.clone(),
                    updated_ms: now_ms,
                    state,
                });
                track.dirty = false;
            }
        }
        out
    }

    /// Takes snapshots read from the store: this replica's own (at start) as its own counts,
    /// the others' as theirs.
    fn take(&self, snapshots: Vec<zt_store::BehaviourSnapshot>, now_ms: i64) {
        let mut tracked = self.lock();
        for snapshot in snapshots {
            let Ok(mut shared) = serde_json::from_str::<Shared>(&snapshot.state) else {
                tracing::warn!(agent = %snapshot.agent, replica = %snapshot.replica, "a behaviour snapshot could not be read; ignored");
                continue;
            };
            shared.prune(&self.settings, now_ms);
            if !tracked.agents.contains_key(&snapshot.agent)
                && tracked.agents.len() >= self.settings.max_agents
            {
                evict_oldest(&mut tracked.agents, |t| t.last_ms);
            }
            // An agent known here only from others' snapshots has no history of its own yet.
            let track = tracked
                .agents
                .entry(snapshot.agent)
                .or_insert_with(|| AgentTrack {
                    own: Shared {
                        first_hour: i64::MAX,
                        ..Shared::default()
                    },
                    ..AgentTrack::default()
                });
            track.last_ms = track.last_ms.max(snapshot.updated_ms);
            if snapshot.replica == self.replica {
                if track.own.hours.is_empty() && track.own.buckets.is_empty() {
                    track.own = shared;
                }
            } else {
                track.others.insert(snapshot.replica, shared);
            }
        }
    }

    /// Reads every snapshot in the store (this replica's own back, after a restart), then
    /// writes and reads them every `share_secs`.
    pub async fn share(
        self: Arc<Self>,
        store: zt_store::Store,
    ) -> Result<(), zt_store::StoreError> {
        if !self.settings.enabled {
            return Ok(());
        }
        let start = crate::now_ms();
        let mut read_to = start;
        let window_ms = i64::from(self.settings.window_hours) * HOUR_MS;
        self.take(store.behaviour_since(start - window_ms).await?, start);
        let period = std::time::Duration::from_secs(u64::from(self.settings.share_secs));
        // A snapshot written late by a slow commit is still read: each read starts a period
        // before the last one ended.
        let overlap = i64::from(self.settings.share_secs) * 1000;
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let now = crate::now_ms();
                let changed = self.changed(now);
                if !changed.is_empty()
                    && let Err(e) = store.put_behaviour(&changed).await
                {
                    tracing::warn!(error = %crate::error_chain(&e), "behaviour could not be written to the store; retried at the next interval");
                    let mut tracked = self.lock();
                    for s in &changed {
                        if let Some(t) = tracked.agents.get_mut(&s.agent) {
                            t.dirty = true;
                        }
                    }
                }
                match store.behaviour_since(read_to - overlap).await {
                    Ok(found) => {
                        let others = found
                            .into_iter()
                            .filter(|s| s.replica != self.replica)
                            .collect();
                        self.take(others, now);
                        read_to = now;
                    }
                    Err(e) => {
                        tracing::warn!(error = %crate::error_chain(&e), "other replicas' behaviour could not be read; retried at the next interval");
                    }
                }
            }
        });
        Ok(())
    }

    /// What `GET /v1/agents/{name}/behaviour` shows.
    fn view(&self, agent: &str, now_ms: i64) -> Option<BehaviourView> {
        let tracked = self.lock();
        let track = tracked.agents.get(agent)?;
        let signals = self.signals(&tracked, agent, ("", "", 0), None, now_ms);
        let window_start = now_ms.div_euclid(HOUR_MS) - i64::from(self.settings.window_hours);
        let shared = || std::iter::once(&track.own).chain(track.others.values());
        let mut hours: std::collections::BTreeMap<i64, i64> = std::collections::BTreeMap::new();
        for s in shared() {
            for (h, c) in &s.hours {
                if *h >= window_start {
                    *hours.entry(*h * HOUR_MS).or_default() += i64::from(*c);
                }
            }
        }
        let known = |map: fn(&Shared) -> &HashMap<String, i64>| {
            let mut all: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
            for s in shared() {
                all.extend(
                    map(s)
                        .iter()
                        .filter(|(_, h)| **h >= window_start)
                        .map(|(k, _)| k.clone()),
                );
            }
            all.into_iter().collect::<Vec<_>>()
        };
        Some(BehaviourView {
            agent: agent.to_owned(),
            at_ms: now_ms,
            rate_last_minute: signals.rate_last_minute,
            baseline_per_hour: signals.baseline_per_hour,
            rate_percent: signals.rate_percent,
            denies_recent: signals.denies_recent,
            distinct_resources_recent: signals.distinct_resources_recent,
            recent_secs: i64::from(self.settings.recent_secs),
            window_hours: i64::from(self.settings.window_hours),
            hours: hours.into_iter().collect(),
            known_actions: known(|s| &s.actions),
            known_resource_types: known(|s| &s.kinds),
            replicas: track.others.len() + 1,
            quarantine: None,
        })
    }
}

/// Drops the entry seen longest ago (a map at its bound).
fn evict_oldest<T>(map: &mut HashMap<String, T>, seen: impl Fn(&T) -> i64) {
    if let Some(oldest) = map
        .iter()
        .min_by_key(|(_, v)| seen(v))
        .map(|(k, _)| k.clone())
    {
        map.remove(&oldest);
    }
}

/// Adds `context.behaviour` to each request before the policies decide it (see
/// [`Behaviour::inform`]).
pub(crate) fn inform_all<'a>(
    app: &AppState,
    origin: &Origin,
    requests: impl IntoIterator<Item = &'a mut ValidRequest>,
) -> Result<(), zt_core::FieldError> {
    // Computed only for what policies may read: a set that never names `behaviour` pays
    // nothing for it here (what was decided is still counted, `observe`).
    if !origin.acts || !app.policies.with_engine(|e| e.policies().reads_behaviour()) {
        return Ok(());
    }
    let now = crate::now_ms();
    for request in requests {
        app.behaviour.inform(origin, request, now)?;
    }
    Ok(())
}

/// The deny of a decision held by a quarantine, or of one whose quarantine cannot be told
/// (this node's state is stale): `None` when nothing holds it.
pub(crate) fn held(
    app: &AppState,
    origin: &Origin,
    request: &ValidRequest,
    verdict: &Verdict,
) -> Option<Verdict> {
    // The acting session, and, under a delegated token, every session of its chain: a
    // quarantined delegator holds what it delegated.
    let claims = origin.session.as_deref();
    let mut sessions: Vec<&str> = claims
        .map(|c| c.session.session_id.as_str())
        .into_iter()
        .collect();
    if let Some(delegation) = claims.and_then(|c| c.delegation.as_ref()) {
        sessions.extend(delegation.sessions.iter().map(String::as_str));
    }
    let (message, quarantine) = match app.sessions.quarantine_of(request.actor(), &sessions) {
        Ok(None) => return None,
        Ok(Some(q)) => (
            format!(
                "`{}` is quarantined ({}, by {}): every decision is denied until an operator releases it",
                q.target, q.reason, q.by
            ),
            Some(q.target),
        ),
        Err(e) => (
            format!("quarantine cannot be checked: {e}; denied (fail closed)"),
            None,
        ),
    };
    Some(Verdict {
        decision: Decision::Deny,
        reasons: vec![Reason {
            kind: ReasonKind::Quarantine,
            policy: None,
            message,
            approval: None,
            quarantine,
        }],
        policy_version: verdict.policy_version.clone(),
    })
}

/// The quarantine a denied decision's policies ask for (a satisfied forbid marked
/// `@quarantine`). `session` without a session is the agent.
pub(crate) fn asked(
    origin: &Origin,
    request: &ValidRequest,
    verdict: &Verdict,
    decision_id: &str,
    now_ms: i64,
) -> Option<Quarantine> {
    if verdict.decision != Decision::Deny {
        return None;
    }
    let reason = verdict
        .reasons
        .iter()
        .filter(|r| r.kind == ReasonKind::Forbid)
        .find(|r| r.quarantine.is_some())?;
    let session = origin
        .session
        .as_ref()
        .map(|c| c.session.session_id.as_str());
    let target = match (reason.quarantine.as_deref(), session) {
        (Some("session"), Some(id)) => Quarantine::session_target(id),
        _ => Quarantine::agent_target(request.actor()),
    };
    Some(Quarantine {
        target,
        reason: reason.message.clone(),
        by: format!("policy:{}", reason.policy.as_deref().unwrap_or_default()),
        decision_id: decision_id.to_owned(),
        at_ms: now_ms,
    })
}

/// Stores, announces and records a quarantine a decision's policies imposed (it holds on this
/// node already, [`crate::sessions::Sessions::hold`]); what fails is reported, and the
/// quarantine still holds here.
pub(crate) async fn impose(app: &AppState, quarantine: Quarantine) {
    let act = json!({
        "target": quarantine.target,
        "by": quarantine.by,
        "reason": quarantine.reason,
        "decision_id": quarantine.decision_id,
    });
    let message = format!("`{}` quarantined by {}", quarantine.target, quarantine.by);
    tracing::warn!(target = %quarantine.target, by = %quarantine.by, "quarantined by policy");
    let target = quarantine.target.clone();
    if let Err(e) = app.sessions.quarantine(quarantine).await {
        tracing::error!(error = %crate::error_chain(&e), target = %target, "a quarantine holds on this node but could not be stored or announced");
    }
    if let Err(e) = crate::api::record_act(app, "quarantine.start", None, act, message).await {
        tracing::error!(error = %e, target = %target, "a quarantine could not be put on record (it holds)");
    }
}

pub(crate) fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/v1/agents/{name}/behaviour", axum::routing::get(behaviour))
        .route("/v1/quarantines", axum::routing::get(quarantines))
}

/// Quarantine and release: served on the admin address when there is one.
pub(crate) fn admin_routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route(
            "/v1/agents/{name}/quarantine",
            axum::routing::post(quarantine_agent).delete(release_agent),
        )
        .route(
            "/v1/sessions/{id}/quarantine",
            axum::routing::post(quarantine_session).delete(release_session),
        )
}

/// `GET /v1/agents/{name}/behaviour`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BehaviourView {
    pub agent: String,
    pub at_ms: i64,
    pub rate_last_minute: i64,
    pub baseline_per_hour: i64,
    pub rate_percent: i64,
    pub denies_recent: i64,
    pub distinct_resources_recent: i64,
    pub recent_secs: i64,
    pub window_hours: i64,
    /// Decisions per hour in the window: `[hour start (ms), count]`.
    pub hours: Vec<(i64, i64)>,
    /// Actions allowed within the window.
    pub known_actions: Vec<String>,
    /// `<action> <resource type>` pairs allowed within the window.
    pub known_resource_types: Vec<String>,
    /// Replicas whose observations are included (this one and those it read).
    pub replicas: usize,
    /// The agent's quarantine, if one is in force.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<Quarantine>,
}

/// An agent's behaviour as this replica sees it (auditor).
#[utoipa::path(
    get, path = "/v1/agents/{name}/behaviour",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "agent")),
    responses((status = 200, body = BehaviourView), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
pub(crate) async fn behaviour(
    State(app): State<Arc<AppState>>,
    _: Reader,
    Path(name): Path<String>,
) -> Result<Json<BehaviourView>, Problem> {
    let now = crate::now_ms();
    let quarantine = app
        .sessions
        .quarantines()
        .into_iter()
        .find(|q| q.target == Quarantine::agent_target(&name));
    let view = app.behaviour.view(&name, now).or_else(|| {
        quarantine.is_some().then(|| BehaviourView {
            agent: name.clone(),
            at_ms: now,
            rate_last_minute: 0,
            baseline_per_hour: 0,
            rate_percent: 0,
            denies_recent: 0,
            distinct_resources_recent: 0,
            recent_secs: i64::from(app.behaviour.settings.recent_secs),
            window_hours: i64::from(app.behaviour.settings.window_hours),
            hours: Vec::new(),
            known_actions: Vec::new(),
            known_resource_types: Vec::new(),
            replicas: 1,
            quarantine: None,
        })
    });
    let Some(view) = view else {
        return Err(Problem::not_found(format!(
            "no behaviour of the agent `{name}` is known here"
        )));
    };
    Ok(Json(BehaviourView { quarantine, ..view }))
}

/// `POST /v1/agents/{name}/quarantine` and `/v1/sessions/{id}/quarantine`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuarantineRequest {
    /// Why (recorded, and given in every deny).
    #[serde(default)]
    pub reason: String,
}

/// The quarantines in force.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QuarantineList {
    pub quarantines: Vec<Quarantine>,
}

fn quarantine_problem(e: SessionError) -> Problem {
    tracing::error!(error = %crate::error_chain(&e), "a quarantine could not be stored");
    Problem::unavailable("the quarantine could not be stored; retry")
}

/// Puts a target in quarantine for an operator, and records it.
async fn operator_quarantine(
    app: &AppState,
    admin: &Caller,
    target: String,
    reason: String,
) -> Result<Json<Quarantine>, Problem> {
    if reason.chars().count() > 500 || reason.chars().any(char::is_control) {
        return Err(Problem::invalid_fields(vec![zt_core::FieldError::new(
            "/reason",
            "is at most 500 characters, without control characters",
        )]));
    }
    let reason = if reason.is_empty() {
        "quarantined by an operator".to_owned()
    } else {
        reason
    };
    let caller = crate::auth::record_caller(admin);
    let act = json!({"target": target, "by": admin.name().to_string(), "reason": reason});
    let decision_id = uuid::Uuid::now_v7().to_string();
    let message = format!("`{target}` quarantined by `{}`", admin.name());
    crate::api::record_act_as(
        app,
        &decision_id,
        "quarantine.start",
        Some(caller),
        act,
        message,
    )
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "a quarantine could not be put on record; not imposed");
        Problem::unavailable("the quarantine could not be put on record; nothing was changed")
    })?;
    let quarantine = Quarantine {
        target,
        reason,
        by: admin.name().to_string(),
        decision_id,
        at_ms: crate::now_ms(),
    };
    app.sessions
        .quarantine(quarantine.clone())
        .await
        .map_err(quarantine_problem)?;
    tracing::warn!(credential = %admin.name(), target = %quarantine.target, "quarantined by an operator");
    Ok(Json(quarantine))
}

/// Releases a target for an operator, and records it.
async fn operator_release(
    app: &AppState,
    admin: &Caller,
    target: String,
) -> Result<Json<Value>, Problem> {
    let released = app
        .sessions
        .release(&target, crate::now_ms())
        .await
        .map_err(quarantine_problem)?;
    if !released {
        return Err(Problem::not_found(format!(
            "`{target}` is not in quarantine"
        )));
    }
    let caller = crate::auth::record_caller(admin);
    crate::api::record_act(
        app,
        "quarantine.release",
        Some(caller),
        json!({"target": target}),
        format!("`{target}` released by `{}`", admin.name()),
    )
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "a release could not be put on record (it stands)");
        Problem::unavailable("released, but the release could not be put on record")
    })?;
    tracing::info!(credential = %admin.name(), target = %target, "released from quarantine");
    Ok(Json(json!({"released": target})))
}

/// Quarantine an agent (admin): every decision for it is denied until released.
#[utoipa::path(
    post, path = "/v1/agents/{name}/quarantine",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "agent")),
    request_body = QuarantineRequest,
    responses((status = 200, body = Quarantine), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
pub(crate) async fn quarantine_agent(
    State(app): State<Arc<AppState>>,
    Admin(admin): Admin,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<QuarantineRequest>,
) -> Result<Json<Quarantine>, Problem> {
    if !app.sessions.agents().iter().any(|a| a.name == name) {
        return Err(Problem::not_found(format!("there is no agent `{name}`")));
    }
    operator_quarantine(&app, &admin, Quarantine::agent_target(&name), body.reason).await
}

/// Quarantine a session and the sessions descending from it (admin).
#[utoipa::path(
    post, path = "/v1/sessions/{id}/quarantine",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "session id")),
    request_body = QuarantineRequest,
    responses((status = 200, body = Quarantine), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
pub(crate) async fn quarantine_session(
    State(app): State<Arc<AppState>>,
    Admin(admin): Admin,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<QuarantineRequest>,
) -> Result<Json<Quarantine>, Problem> {
    // A session started on another replica may not have reached this one yet: the store
    // knows it.
    let known = app.sessions.knows_session(&id)
        || app
            .sessions
            .load_session(&id)
            .await
            .map_err(|e| quarantine_problem(SessionError::Store(e)))?;
    if !known {
        return Err(Problem::not_found(format!("there is no session `{id}`")));
    }
    operator_quarantine(&app, &admin, Quarantine::session_target(&id), body.reason).await
}

/// Release an agent from quarantine (admin).
#[utoipa::path(
    delete, path = "/v1/agents/{name}/quarantine",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "agent")),
    responses((status = 200, body = Object), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
pub(crate) async fn release_agent(
    State(app): State<Arc<AppState>>,
    Admin(admin): Admin,
    Path(name): Path<String>,
) -> Result<Json<Value>, Problem> {
    operator_release(&app, &admin, Quarantine::agent_target(&name)).await
}

/// Release a session from quarantine (admin).
#[utoipa::path(
    delete, path = "/v1/sessions/{id}/quarantine",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "session id")),
    responses((status = 200, body = Object), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
pub(crate) async fn release_session(
    State(app): State<Arc<AppState>>,
    Admin(admin): Admin,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    operator_release(&app, &admin, Quarantine::session_target(&id)).await
}

/// The quarantines in force (auditor).
#[utoipa::path(get, path = "/v1/quarantines", security(("bearer" = [])), responses((status = 200, body = QuarantineList)))]
pub(crate) async fn quarantines(
    State(app): State<Arc<AppState>>,
    _: Reader,
) -> Json<QuarantineList> {
    Json(QuarantineList {
        quarantines: app.sessions.quarantines(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(actor: &str, action: &str, resource: &str) -> ValidRequest {
        zt_core::DecisionRequest {
            actor: actor.into(),
            action: action.into(),
            resource: resource.into(),
            context: serde_json::Map::new(),
        }
        .validate(&zt_core::Limits::default())
        .unwrap()
    }

    fn settings() -> BehaviourSettings {
        BehaviourSettings {
            window_hours: 24,
            ..BehaviourSettings::default()
        }
    }

    /// Observes a decision made with `context.behaviour` (only those are counted).
    fn seen(
        b: &Behaviour,
        actor: &str,
        action: &str,
        resource: &str,
        session: Option<&str>,
        now: i64,
    ) {
        let mut r = request(actor, action, resource);
        b.inform(&Origin::now("test", None), &mut r, now).unwrap();
        b.observe(&r, session, Decision::Allow, now);
    }

    /// Informs and observes one decision at `now`, returning the signals it was made with.
    fn decide(
        b: &Behaviour,
        action: &str,
        resource: &str,
        decision: Decision,
        now: i64,
    ) -> Signals {
        let mut r = request("bot", action, resource);
        b.inform(&Origin::now("test", None), &mut r, now).unwrap();
        let seen = r.context_member(CONTEXT_MEMBER).unwrap().clone();
        b.observe(&r, Some("s1"), decision, now);
        serde_json::from_value(seen).unwrap()
    }

    #[test]
    fn novelty_denies_and_distinct_resources() {
        let b = Behaviour::new(settings(), "r0".into());
        let t0 = 10 * HOUR_MS;
        let first = decide(&b, "files.read", "doc/1", Decision::Allow, t0);
        assert!(first.novel_action && first.novel_resource_type);
        assert_eq!((first.rate_last_minute, first.denies_recent), (0, 0));
        let again = decide(&b, "files.read", "doc/2", Decision::Allow, t0 + 1000);
        assert!(!again.novel_action && !again.novel_resource_type);
        assert_eq!(again.distinct_resources_recent, 1);
        // Same action, another resource type.
        let other = decide(&b, "files.read", "secret/1", Decision::Deny, t0 + 2000);
        assert!(!other.novel_action && other.novel_resource_type);
        // A deny does not make an action known.
        let delete = decide(&b, "files.delete", "doc/1", Decision::Deny, t0 + 3000);
        assert!(delete.novel_action);
        assert_eq!(delete.denies_recent, 1);
        let next = decide(&b, "files.delete", "doc/1", Decision::Deny, t0 + 4000);
        assert!(next.novel_action);
        assert_eq!((next.denies_recent, next.rate_last_minute), (2, 4));
        // Past the recent window, the denies are forgotten; within the window the action
        // stays known.
        let later = decide(&b, "files.read", "doc/1", Decision::Allow, t0 + 400_000);
        assert_eq!((later.denies_recent, later.rate_last_minute), (0, 0));
        assert!(!later.novel_action);
        // Past the baseline window, it is new again.
        let much_later = decide(
            &b,
            "files.read",
            "doc/1",
            Decision::Allow,
            t0 + 30 * HOUR_MS,
        );
        assert!(much_later.novel_action);
    }

    #[test]
    fn rate_is_measured_against_the_baseline() {
        let b = Behaviour::new(settings(), "r0".into());
        let t0 = 100 * HOUR_MS;
        // Ten hours of 120 decisions an hour.
        for hour in 0..10 {
            for i in 0..120 {
                seen(
                    &b,
                    "bot",
                    "a.b",
                    "r",
                    None,
                    t0 + hour * HOUR_MS + i * 30_000,
                );
            }
        }
        let now = t0 + 10 * HOUR_MS + 30 * 60_000;
        // A burst: 60 decisions in the last minute, 30 times the usual 2 a minute.
        for i in 0..60 {
            seen(&b, "bot", "a.b", "r", None, now - 50_000 + i * 800);
        }
        let tracked = b.lock();
        let s = b.signals(&tracked, "bot", ("a.b", "Resource", 0), None, now);
        assert_eq!(s.baseline_per_hour, 120);
        assert_eq!(s.rate_last_minute, 60);
        assert_eq!(s.rate_percent, 3000);
        drop(tracked);
        // Another replica that never saw the agent computes the same from the snapshot.
        let other = Behaviour::new(settings(), "r1".into());
        other.take(b.changed(now), now);
        let from_snapshot = {
            let tracked = other.lock();
            other.signals(&tracked, "bot", ("a.b", "Resource", 0), None, now)
        };
        // (Recent resources are per node.)
        assert_eq!(from_snapshot.distinct_resources_recent, 0);
        assert_eq!(
            Signals {
                distinct_resources_recent: s.distinct_resources_recent,
                ..from_snapshot
            },
            s
        );
        let tracked = b.lock();
        // An agent never seen is measured against the floor.
        let fresh = b.signals(
            &tracked,
            "new",
            ("a.b", "Resource", 0),
            Some(("s", now / 1000 - 5)),
            now,
        );
        assert_eq!((fresh.baseline_per_hour, fresh.rate_percent), (0, 0));
        assert_eq!(
            (fresh.session_decisions, fresh.session_age_s),
            (Some(0), Some(5))
        );
    }

    #[test]
    fn memory_is_bounded_and_snapshots_round_trip() {
        let b = Behaviour::new(
            BehaviourSettings {
                max_agents: 3,
                max_sessions: 2,
                ..settings()
            },
            "r0".into(),
        );
        let t0 = 5 * HOUR_MS;
        for i in 0..10 {
            seen(
                &b,
                &format!("agent-{i}"),
                "a.b",
                "r",
                Some(&format!("s{i}")),
                t0 + i,
            );
        }
        for i in 0..(MAX_KINDS as i64 + 50) {
            seen(
                &b,
                "agent-9",
                &format!("act.n{i}"),
                &format!("t{i}/x"),
                None,
                t0 + 100 + i,
            );
        }
        {
            let tracked = b.lock();
            assert_eq!(tracked.agents.len(), 3);
            assert_eq!(tracked.sessions.len(), 2);
            let t = &tracked.agents["agent-9"];
            assert!(t.own.actions.len() <= MAX_KINDS && t.own.kinds.len() <= MAX_KINDS);
            assert!(t.resources.len() <= MAX_RESOURCES);
        }
        // Another replica reads this one's snapshot and counts it in.
        let snapshots = b.changed(t0 + 1000);
        assert_eq!(snapshots.len(), 3);
        assert!(
            b.changed(t0 + 1000).is_empty(),
            "written snapshots are not written again"
        );
        let other = Behaviour::new(settings(), "r1".into());
        other.take(snapshots, t0 + 1000);
        let tracked = other.lock();
        let s = other.signals(
            &tracked,
            "agent-9",
            // The last one allowed (when the map is full, one of those last allowed longest
            // ago makes room, in no particular order within an hour).
            ("act.n305", "t305", 0),
            None,
            t0 + 1000,
        );
        assert!(!s.novel_action);
        assert_eq!(s.rate_last_minute, MAX_KINDS as i64 + 51);
    }
}
