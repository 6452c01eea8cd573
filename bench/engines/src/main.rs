//! Engine-only comparison (issue 6): the workloads of `bench/compare.py` (W1 to W4) decided in
//! process by ztinfra's decision path (`zt_core`: request validation, then `Engine::decide`),
//! bare Cedar (`is_authorized` over the whole policy set), regorus (Rego) and casbin. Each
//! engine starts from the request as it comes off the wire (three strings and a JSON context)
//! and builds its own input from it, as an integration would.
//!
//! Every engine must first give every request of a workload its expected decision; a wrong
//! answer stops the run with a non-zero exit. Then each (workload, engine) pair is timed in
//! rounds that cycle through the workload's requests, and the median round is reported.
//!
//! ```text
//! bench/engines.sh                 the full run (about a minute), a markdown table on stdout
//! bench/engines.sh --write         the same, and the table written into BENCHMARKS.md
//! ... --workloads W1,W3            some workloads only; --engine ztinfra: one engine only
//! ... --smoke                      decisions checked and one short pass each (the test suite)
//! ```

use std::collections::BTreeMap;
use std::hint::black_box;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

/// Timed rounds per (workload, engine), each about `ROUND` long; the median is reported.
const ROUNDS: usize = 7;
const ROUND: Duration = Duration::from_millis(300);

struct Request {
    actor: String,
    action: String,
    resource: String,
    context: Map<String, Value>,
    allow: bool,
}

impl Request {
    fn new(actor: String, action: &str, resource: &str, allow: bool) -> Self {
        Self {
            actor,
            action: action.to_owned(),
            resource: resource.to_owned(),
            context: Map::new(),
            allow,
        }
    }
}

/// One way to write a workload in Rego: a module in package `bench` whose `allow` rule decides,
/// and the data it reads.
struct Rego {
    label: &'static str,
    module: String,
    data: Value,
}

/// A workload in casbin: the model, its policy lines, and whether requests carry the context
/// as a fourth argument.
struct CasbinSetup {
    model: String,
    policies: Vec<Vec<String>>,
    with_context: bool,
}

struct Workload {
    name: &'static str,
    title: &'static str,
    requests: Vec<Request>,
    /// Cedar over `Agent`, `Action` and `Resource`, as ztinfra and bare Cedar load it.
    cedar: String,
    rego: Vec<Rego>,
    casbin: Option<CasbinSetup>,
}

const REGO_HEADER: &str = "package bench\n\ndefault allow := false\n\n";

/// A casbin model whose policy lines are `subject, action`, the subject `*` for anyone, and
/// whose matcher adds `extra` (conditions on the request's context).
fn casbin_model(extra: &str, with_context: bool) -> String {
    let request = if with_context {
        "sub, obj, act, ctx"
    } else {
        "sub, obj, act"
    };
    format!(
        "[request_definition]\nr = {request}\n\n[policy_definition]\np = sub, act\n\n\
         [policy_effect]\ne = some(where (p.eft == allow))\n\n\
         [matchers]\nm = (p.sub == \"*\" || r.sub == p.sub) && r.act == p.act{extra}\n"
    )
}

fn anyone_may(action: &str) -> Vec<Vec<String>> {
    vec![vec!["*".to_owned(), action.to_owned()]]
}

fn w1() -> Workload {
    Workload {
        name: "W1",
        title: "simple allow, one policy",
        requests: vec![Request::new("agent-1".into(), "read", "doc-1", true)],
        cedar: "permit(principal, action == Action::\"read\", resource);\n".into(),
        rego: vec![Rego {
            label: "regorus",
            module: format!("{REGO_HEADER}allow if input.action == \"read\"\n"),
            data: json!({}),
        }],
        casbin: Some(CasbinSetup {
            model: casbin_model("", false),
            policies: anyone_may("read"),
            with_context: false,
        }),
    }
}

fn w2() -> Workload {
    let n = 1000;
    let actor = |i: usize| format!("agent-{}", i % 50);
    let cedar = (0..n)
        .map(|i| {
            format!(
                "permit(principal == Agent::\"{}\", action == Action::\"act{i}\", resource);\n",
                actor(i)
            )
        })
        .collect();
    let rules: String = (0..n)
        .map(|i| {
            format!(
                "allow if {{\n  input.actor == \"{}\"\n  input.action == \"act{i}\"\n}}\n",
                actor(i)
            )
        })
        .collect();
    let grants: Map<String, Value> = (0..n)
        .map(|i| (format!("act{i}"), Value::String(actor(i))))
        .collect();
    let mut requests = Vec::new();
    for i in (0..n).step_by(7) {
        let action = format!("act{i}");
        requests.push(Request::new(actor(i), &action, "doc-1", true));
        requests.push(Request::new(actor(i + 1), &action, "doc-1", false));
    }
    Workload {
        name: "W2",
        title: "1,000 policies over 1,000 actions, half matching",
        requests,
        cedar,
        rego: vec![
            Rego {
                label: "regorus",
                module: format!("{REGO_HEADER}{rules}"),
                data: json!({}),
            },
            Rego {
                label: "regorus, one rule over data",
                module: format!("{REGO_HEADER}allow if data.grants[input.action] == input.actor\n"),
                data: json!({ "grants": grants }),
            },
        ],
        casbin: Some(CasbinSetup {
            model: casbin_model("", false),
            policies: (0..n).map(|i| vec![actor(i), format!("act{i}")]).collect(),
            with_context: false,
        }),
    }
}

fn w3() -> Workload {
    // 100 string attributes of about 80 bytes: an 8 KB context; the policy reads 5 of them.
    let context: Map<String, Value> = (0..100)
        .map(|i| {
            (
                format!("attr{i:03}"),
                Value::String(format!("value-{i:03}-{}", "x".repeat(66))),
            )
        })
        .collect();
    let reads = [7, 23, 42, 61, 99];
    let expected = |i: usize| format!("value-{i:03}-{}", "x".repeat(66));
    let join = |each: &dyn Fn(usize) -> String, by: &str| {
        reads.iter().map(|&i| each(i)).collect::<Vec<_>>().join(by)
    };
    let cedar_cond = join(
        &|i| format!("context.attr{i:03} == \"{}\"", expected(i)),
        " && ",
    );
    let rego_cond = join(
        &|i| format!("  input.context.attr{i:03} == \"{}\"\n", expected(i)),
        "",
    );
    let casbin_cond = join(
        &|i| format!(" && r.ctx.attr{i:03} == \"{}\"", expected(i)),
        "",
    );
    let mut denied = context.clone();
    denied.insert("attr042".into(), Value::String("something-else".into()));
    let mut allowed = Request::new("agent-1".into(), "read", "doc-1", true);
    allowed.context = context;
    let mut refused = Request::new("agent-1".into(), "read", "doc-2", false);
    refused.context = denied;
    Workload {
        name: "W3",
        title: "heavy context: 8 KB, 100 attributes, the policy reads 5",
        requests: vec![allowed, refused],
        cedar: format!(
            "permit(principal, action == Action::\"read\", resource) when {{ {cedar_cond} }};\n"
        ),
        rego: vec![Rego {
            label: "regorus",
            module: format!(
                "{REGO_HEADER}allow if {{\n  input.action == \"read\"\n{rego_cond}}}\n"
            ),
            data: json!({}),
        }],
        casbin: Some(CasbinSetup {
            model: casbin_model(&casbin_cond, true),
            policies: anyone_may("read"),
            with_context: true,
        }),
    }
}

fn w4() -> Workload {
    let requests = (0..1000)
        .map(|i| {
            let deny = i % 10 == 9;
            Request::new(
                format!("agent-{i}"),
                if deny { "delete" } else { "read" },
                &format!("doc-{}", i % 97),
                !deny,
            )
        })
        .collect();
    Workload {
        name: "W4",
        title: "90% allow / 10% deny over 1,000 actors",
        requests,
        ..w1()
    }
}

/// An engine ready to decide one workload's requests.
trait Decide {
    fn decide(&mut self, request: &Request) -> Result<bool, String>;
}

/// ztinfra's decision path: the wire request validated (limits, names), then `Engine::decide`.
struct ZtInfra {
    engine: zt_core::Engine,
    limits: zt_core::Limits,
}

impl ZtInfra {
    fn new(workload: &Workload) -> Result<Self, String> {
        // The schema compare.py gives the server: the entity types, and the context attributes
        // the requests carry.
        let attributes: std::collections::BTreeSet<&String> = workload
            .requests
            .iter()
            .flat_map(|r| r.context.keys())
            .collect();
        let context = attributes
            .iter()
            .map(|key| format!("{key}: String"))
            .collect::<Vec<_>>()
            .join(", ");
        let sources = [
            zt_core::SourceFile {
                path: "bench.cedar".into(),
                text: workload.cedar.clone(),
            },
            zt_core::SourceFile {
                path: "bench.cedarschema".into(),
                text: format!("entity Agent;\nentity Resource;\ntype Context = {{{context}}};\n"),
            },
        ];
        let engine = zt_core::Engine::load(&sources).map_err(|e| format!("{e:?}"))?;
        Ok(Self {
            engine,
            limits: zt_core::Limits::default(),
        })
    }
}

impl Decide for ZtInfra {
    fn decide(&mut self, r: &Request) -> Result<bool, String> {
        let request = zt_core::DecisionRequest {
            actor: r.actor.clone(),
            action: r.action.clone(),
            resource: r.resource.clone(),
            context: r.context.clone(),
        };
        let valid = request
            .validate(&self.limits)
            .map_err(|e| format!("{e:?}"))?;
        Ok(self.engine.decide(&valid).decision == zt_core::Decision::Allow)
    }
}

/// Bare Cedar: uids and context built from the request, `is_authorized` over the whole set.
struct BareCedar {
    set: cedar_policy::PolicySet,
    authorizer: cedar_policy::Authorizer,
    entities: cedar_policy::Entities,
    agent: cedar_policy::EntityTypeName,
    action: cedar_policy::EntityTypeName,
    resource: cedar_policy::EntityTypeName,
}

impl BareCedar {
    fn new(workload: &Workload) -> Result<Self, String> {
        let name = |s: &str| cedar_policy::EntityTypeName::from_str(s).map_err(|e| e.to_string());
        Ok(Self {
            set: cedar_policy::PolicySet::from_str(&workload.cedar).map_err(|e| e.to_string())?,
            authorizer: cedar_policy::Authorizer::new(),
            entities: cedar_policy::Entities::empty(),
            agent: name("Agent")?,
            action: name("Action")?,
            resource: name("Resource")?,
        })
    }
}

impl Decide for BareCedar {
    fn decide(&mut self, r: &Request) -> Result<bool, String> {
        use cedar_policy::{Context, EntityId, EntityUid};
        let uid = |kind: &cedar_policy::EntityTypeName, id: &str| {
            EntityUid::from_type_name_and_id(kind.clone(), EntityId::new(id))
        };
        let context = Context::from_json_value(Value::Object(r.context.clone()), None)
            .map_err(|e| e.to_string())?;
        let request = cedar_policy::Request::new(
            uid(&self.agent, &r.actor),
            uid(&self.action, &r.action),
            uid(&self.resource, &r.resource),
            context,
            None,
        )
        .map_err(|e| e.to_string())?;
        let answer = self
            .authorizer
            .is_authorized(&request, &self.set, &self.entities);
        Ok(answer.decision() == cedar_policy::Decision::Allow)
    }
}

/// regorus: one engine with the module and data loaded; per request, the input document is set
/// and `data.bench.allow` evaluated.
struct Regorus {
    engine: regorus::Engine,
}

impl Regorus {
    fn new(rego: &Rego) -> Result<Self, String> {
        let mut engine = regorus::Engine::new();
        engine
            .add_policy("bench.rego".into(), rego.module.clone())
            .map_err(|e| e.to_string())?;
        engine
            .add_data(regorus::Value::from(rego.data.clone()))
            .map_err(|e| e.to_string())?;
        Ok(Self { engine })
    }
}

impl Decide for Regorus {
    fn decide(&mut self, r: &Request) -> Result<bool, String> {
        let input = json!({
            "actor": r.actor,
            "action": r.action,
            "resource": r.resource,
            "context": Value::Object(r.context.clone()),
        });
        self.engine.set_input(regorus::Value::from(input));
        let answer = self
            .engine
            .eval_rule("data.bench.allow".into())
            .map_err(|e| e.to_string())?;
        answer.as_bool().copied().map_err(|e| e.to_string())
    }
}

/// casbin: an enforcer over an in-memory adapter; per request, `enforce` with the subject,
/// object and action (and the context as a map of strings when the model reads it).
struct Casbin {
    enforcer: casbin::Enforcer,
    with_context: bool,
}

impl Casbin {
    fn new(setup: &CasbinSetup, runtime: &tokio::runtime::Runtime) -> Result<Self, String> {
        use casbin::prelude::*;
        runtime.block_on(async {
            let model = DefaultModel::from_str(&setup.model)
                .await
                .map_err(|e| e.to_string())?;
            let mut enforcer = Enforcer::new(model, MemoryAdapter::default())
                .await
                .map_err(|e| e.to_string())?;
            enforcer
                .add_policies(setup.policies.clone())
                .await
                .map_err(|e| e.to_string())?;
            Ok(Self {
                enforcer,
                with_context: setup.with_context,
            })
        })
    }
}

impl Decide for Casbin {
    fn decide(&mut self, r: &Request) -> Result<bool, String> {
        use casbin::CoreApi;
        let answer = if self.with_context {
            let context: BTreeMap<&str, &str> = r
                .context
                .iter()
                .filter_map(|(key, value)| Some((key.as_str(), value.as_str()?)))
                .collect();
            self.enforcer.enforce((
                r.actor.as_str(),
                r.resource.as_str(),
                r.action.as_str(),
                context,
            ))
        } else {
            self.enforcer
                .enforce((r.actor.as_str(), r.resource.as_str(), r.action.as_str()))
        };
        answer.map_err(|e| e.to_string())
    }
}

/// Checks every request's decision; the error names the first wrong one.
fn check(engine: &mut dyn Decide, workload: &Workload) -> Result<(), String> {
    for (i, r) in workload.requests.iter().enumerate() {
        let got = engine.decide(r)?;
        if got != r.allow {
            return Err(format!(
                "request {i} ({} {} {}): expected {}, got {}",
                r.actor,
                r.action,
                r.resource,
                if r.allow { "allow" } else { "deny" },
                if got { "allow" } else { "deny" }
            ));
        }
    }
    Ok(())
}

/// Decides `count` requests, cycling through the workload's; returns the time taken.
fn run(engine: &mut dyn Decide, workload: &Workload, count: usize) -> Result<Duration, String> {
    let started = Instant::now();
    for r in workload.requests.iter().cycle().take(count) {
        black_box(engine.decide(black_box(r))?);
    }
    Ok(started.elapsed())
}

/// Median nanoseconds per decision over the rounds, each round about `round` long.
fn measure(
    engine: &mut dyn Decide,
    workload: &Workload,
    round: Duration,
    rounds: usize,
) -> Result<f64, String> {
    // Calibrate (and warm up): double the count until one pass takes a tenth of a round.
    let mut count = workload.requests.len().max(1);
    loop {
        let took = run(engine, workload, count)?;
        if took >= round / 10 {
            let scale = round.as_secs_f64() / took.as_secs_f64().max(1e-9);
            count = ((count as f64 * scale) as usize).max(1);
            break;
        }
        count *= 2;
    }
    let mut per: Vec<f64> = (0..rounds)
        .map(|_| run(engine, workload, count).map(|t| t.as_nanos() as f64 / count as f64))
        .collect::<Result<_, _>>()?;
    per.sort_by(f64::total_cmp);
    Ok(per.get(per.len() / 2).copied().unwrap_or(f64::NAN))
}

struct Row {
    workload: &'static str,
    engine: String,
    nanos: f64,
}

/// An engine and the name it is reported under.
type Named = (String, Box<dyn Decide>);

fn engines(workload: &Workload, runtime: &tokio::runtime::Runtime) -> Result<Vec<Named>, String> {
    let mut all: Vec<Named> = vec![
        ("ztinfra".into(), Box::new(ZtInfra::new(workload)?)),
        ("bare Cedar".into(), Box::new(BareCedar::new(workload)?)),
    ];
    for rego in &workload.rego {
        all.push((rego.label.into(), Box::new(Regorus::new(rego)?)));
    }
    if let Some(setup) = &workload.casbin {
        all.push(("casbin".into(), Box::new(Casbin::new(setup, runtime)?)));
    }
    Ok(all)
}

fn table(rows: &[Row], titles: &[(&str, &str)]) -> String {
    let mut out = String::from(
        "| workload | engine | µs per decision | decisions/s on one core | ztinfra time / engine time |\n|---|---|---|---|---|\n",
    );
    for row in rows {
        let ours = rows
            .iter()
            .find(|r| r.workload == row.workload && r.engine == "ztinfra")
            .map_or(f64::NAN, |r| r.nanos);
        let ratio = if row.engine == "ztinfra" {
            "—".to_owned()
        } else {
            let ratio = ours / row.nanos;
            // Two significant digits, however small.
            let decimals = if ratio >= 0.1 { 2 } else { 3 };
            format!("{ratio:.decimals$}x")
        };
        out.push_str(&format!(
            "| {} | {} | {:.2} | {} | {} |\n",
            row.workload,
            row.engine,
            row.nanos / 1000.0,
            thousands((1e9 / row.nanos) as u64),
            ratio
        ));
    }
    out.push('\n');
    for (name, title) in titles {
        out.push_str(&format!("{name}: {title}. "));
    }
    out.trim_end().to_owned() + "\n"
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Replaces the text between the `engines` markers of BENCHMARKS.md.
fn write(table: &str) -> Result<(), String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (begin, end) = ("<!-- engines:begin -->\n", "<!-- engines:end -->");
    let (Some(start), Some(stop)) = (text.find(begin), text.find(end)) else {
        return Err(format!(
            "{} has no {begin:?} … {end:?} block",
            path.display()
        ));
    };
    let Some((head, tail)) = text
        .get(..start + begin.len())
        .zip(text.get(stop..))
        .filter(|_| stop >= start + begin.len())
    else {
        return Err(format!("{}: the markers are out of order", path.display()));
    };
    std::fs::write(&path, format!("{head}{table}{tail}"))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn main() -> ExitCode {
    let usage =
        "usage: zt-bench-engines [--smoke] [--write] [--workloads W1,W2,W3,W4] [--engine NAME]";
    let (mut smoke, mut write_out, mut only, mut engine) = (false, false, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--smoke" => smoke = true,
            "--write" => write_out = true,
            "--workloads" => only = args.next(),
            "--engine" => engine = args.next(),
            _ => {
                eprintln!("unknown argument {arg:?}; {usage}");
                return ExitCode::from(2);
            }
        }
    }
    match main_inner(smoke, write_out, only.as_deref(), engine.as_deref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `only` keeps the named workloads, `engine` one engine (for profiling).
fn main_inner(
    smoke: bool,
    write_out: bool,
    only: Option<&str>,
    engine: Option<&str>,
) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| e.to_string())?;
    let mut workloads = vec![w1(), w2(), w3(), w4()];
    if let Some(only) = only {
        let names: Vec<&str> = only.split(',').map(str::trim).collect();
        if let Some(unknown) = names
            .iter()
            .find(|n| !workloads.iter().any(|w| w.name == **n))
        {
            return Err(format!(
                "no workload {unknown:?}; the workloads are W1 to W4"
            ));
        }
        workloads.retain(|w| names.contains(&w.name));
    }
    let mut rows = Vec::new();
    for workload in &workloads {
        for (name, mut decider) in engines(workload, &runtime)? {
            if engine.is_some_and(|wanted| wanted != name) {
                continue;
            }
            check(decider.as_mut(), workload)
                .map_err(|e| format!("{} on {}: {e}", name, workload.name))?;
            let nanos = if smoke {
                // A debug build in the test suite: one short pass, to show the path runs.
                let count = workload.requests.len().min(20);
                run(decider.as_mut(), workload, count).map(|t| t.as_nanos() as f64 / count as f64)
            } else {
                measure(decider.as_mut(), workload, ROUND, ROUNDS)
            }
            .map_err(|e| format!("{} on {}: {e}", name, workload.name))?;
            eprintln!(
                "{} {name}: {:.2} µs per decision, decisions checked",
                workload.name,
                nanos / 1000.0
            );
            rows.push(Row {
                workload: workload.name,
                engine: name,
                nanos,
            });
        }
    }
    let titles: Vec<(&str, &str)> = workloads.iter().map(|w| (w.name, w.title)).collect();
    let table = table(&rows, &titles);
    print!("{table}");
    if write_out {
        write(&table)?;
        eprintln!("written into BENCHMARKS.md");
    }
    Ok(())
}
