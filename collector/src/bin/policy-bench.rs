//! policy-bench: authorisation decisions per second on one thread, with a set of
//! generated policies (200 by default) and a full chain context.
//!
//! Runs single-threaded; pin it to one core for a stable figure:
//! `taskset -c 0 target/release/policy-bench`.
//!
//! Reports wall-clock rates and rates per CPU-second of the benchmark thread (the
//! latter is unaffected by other load sharing the core), for two paths: the chain
//! prepared once per chain (`Evaluator::evaluate_prepared`, how the collector
//! evaluates the events of a process) and the chain context rebuilt for every event
//! (`Evaluator::evaluate`). `--shape` picks the policy set: `mixed` (deployment-like),
//! `context` (chain-context rules only), `opaque` (the worst case: nothing the
//! evaluator's pre-filter can decide, every request authorised by Cedar).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Parser;
use custody_policy::{
    AgentInfo, ChainContext, CredentialInfo, Evaluator, HumanInfo, PolicySet, PreparedChain,
};
use custody_proto::sensor::v1::{
    Connection, Credential, CredentialSeen, DnsQuery, Event, FileAccess, FileOpen, LlmRequest,
    McpMessage, NetSocket, Process, event::Kind,
};

#[derive(Parser)]
#[command(about = "Custody policy evaluation benchmark (one thread)")]
struct Args {
    /// Number of generated policies.
    #[arg(long, default_value_t = 200)]
    policies: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// "mixed": deployment-like shapes (resource deny lists, chain-context rules);
    /// "context": every policy tests only the chain context (depth, task, root
    /// human's group); "opaque": every policy tests something the evaluator's
    /// pre-filter cannot decide (an entity attribute reached through the context), so
    /// every request is authorised by Cedar against its action's whole slice — the
    /// worst case.
    #[arg(long, default_value = "mixed")]
    shape: String,
}

/// `n` policies of the shapes Custody deployments write: endpoint and path deny
/// lists (some per agent), credential fingerprints, tools, models, domains, exec, and
/// chain-context rules (depth, scope flags, task text, root human's group).
fn generate(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        let principal = if i % 4 == 0 {
            format!("principal == Agent::\"agent-{}\"", i % 50)
        } else {
            "principal".to_string()
        };
        let body = match i % 10 {
            0 | 1 => format!(
                "forbid ({principal}, action == Action::\"connect\", resource) when {{ resource has addr && resource.addr.isInRange(ip(\"10.{}.0.0/16\")) && resource.port == {} }};",
                i % 250,
                1000 + i
            ),
            2 => format!(
                "forbid ({principal}, action in [Action::\"open_read\", Action::\"open_write\"], resource in Dir::\"/restricted/{i}\");"
            ),
            3 => format!(
                "forbid ({principal}, action == Action::\"open_write\", resource) when {{ resource.path like \"/etc/app{i}/*\" }};"
            ),
            4 => format!(
                "forbid ({principal}, action == Action::\"use_credential\", resource == Credential::\"hmac-sha256:{i:064x}\");"
            ),
            5 => format!(
                "forbid ({principal}, action == Action::\"tool_call\", resource) when {{ resource.name == \"danger_{i}\" || (context.depth >= 3 && resource.server == \"srv{i}\") }};"
            ),
            6 => format!(
                "forbid ({principal}, action in [Action::\"dns_query\", Action::\"connect\"], resource in Domain::\"bad{i}.example\");"
            ),
            7 => format!(
                "forbid ({principal}, action == Action::\"llm_call\", resource) when {{ resource.provider == \"p{i}\" && context has root_human && !(context.root_human in Group::\"g{i}\") }};"
            ),
            8 => format!(
                "forbid ({principal}, action in [Action::\"open_read\", Action::\"open_write\", Action::\"unlink\"], resource) when {{ context.depth >= {} && context.root_scope_declared && !context.in_root_scope && resource in Dir::\"/data{}\" }};",
                2 + i % 3,
                i % 7
            ),
            _ => format!(
                "forbid ({principal}, action == Action::\"exec\", resource) when {{ context.depth >= 2 && context.task like \"*forbidden-{i}*\" && resource.name == \"tool{i}\" }};"
            ),
        };
        let _ = writeln!(
            s,
            "@id(\"gen-{i}\")\n@severity(\"{}\")\n@response(\"{}\")\n{body}\n",
            ["low", "medium", "high", "critical"][i % 4],
            [
                "alert",
                "kill_process",
                "kill_chain",
                "quarantine",
                "revoke_credential"
            ][i % 5],
        );
    }
    s
}

/// `n` policies that only test the chain context, spread over eight actions. With
/// `opaque`, each tests the root agent's owner (an entity attribute), which only
/// Cedar can decide.
fn generate_context_only(n: usize, opaque: bool) -> String {
    const ACTIONS: [&str; 8] = [
        "open_read",
        "open_write",
        "connect",
        "dns_query",
        "tool_call",
        "llm_call",
        "use_credential",
        "exec",
    ];
    let mut s = String::new();
    for i in 0..n {
        let action = ACTIONS[i % ACTIONS.len()];
        let depth = 2 + i % 2;
        let cond = if opaque {
            format!("context.root_agent.owner == \"owner-{i}\" && context.depth >= {depth}")
        } else {
            format!(
                "context.depth >= {depth} && context.task like \"*forbidden-{i}*\" && context has root_human && !(context.root_human in Group::\"g{i}\")"
            )
        };
        let _ = writeln!(
            s,
            "@id(\"ctx-{i}\")\nforbid (principal, action == Action::\"{action}\", resource) when {{ {cond} }};\n"
        );
    }
    s
}

fn chain() -> ChainContext {
    let agent = |id: &str, declared: bool, scope: &[&str]| AgentInfo {
        id: id.into(),
        name: id.into(),
        owner: "alice".into(),
        declared,
        kind: if declared { "declared" } else { "discovered" }.into(),
        scope: scope.iter().map(|s| s.to_string()).collect(),
    };
    ChainContext {
        chain_id: "h1:100:1".into(),
        root_human: Some(HumanInfo {
            id: "alice".into(),
            groups: vec!["finance".into(), "staff".into()],
            via: "login".into(),
        }),
        task: "Summarise Q3 revenue from /data/finance and email the CFO".into(),
        depth: 3,
        agents: vec![
            agent(
                "agent-0",
                true,
                &["/data/finance", "api.openai.com:443", "tool:read_file"],
            ),
            agent("agent-4", false, &[]),
            agent("agent-8", false, &[]),
        ],
        host: "h1".into(),
        credential: Some(CredentialInfo {
            kind: "openai_api_key".into(),
            fingerprint: "hmac-sha256:beef".into(),
            source: "env".into(),
            location: "OPENAI_API_KEY".into(),
            metadata: [("prefix".to_string(), "sk-proj".to_string())].into(),
        }),
        inherited_credentials: vec!["hmac-sha256:beef".into()],
        delegated_by: None,
        incomplete: false,
    }
}

fn events() -> Vec<Event> {
    let process = Process {
        exec_id: "h1:300:7".into(),
        agent_id: "agent-8".into(),
        agent_kind: "discovered".into(),
        exe: "/usr/bin/python3".into(),
        cwd: "/srv/worker".into(),
        ..Process::default()
    };
    let mut out = Vec::new();
    for i in 0..1000u32 {
        let kind = match i % 8 {
            0 | 1 => Kind::FileOpen(FileOpen {
                path: match i % 5 {
                    0 => format!("/data/finance/q{}.csv", i % 4),
                    1 => format!("/data/hr/file{i}.csv"),
                    2 => format!("/restricted/{}/x", i % 200),
                    3 => format!("/usr/lib/python3/m{i}.py"),
                    _ => format!("/data{}/r/{i}", i % 7),
                },
                access: if i % 3 == 0 {
                    FileAccess::Write
                } else {
                    FileAccess::Read
                }
                .into(),
                result: 3,
                ..FileOpen::default()
            }),
            2 | 3 => Kind::Net(NetSocket {
                op: "connect".into(),
                conn: Some(Connection {
                    protocol: "tcp".into(),
                    family: "ipv4".into(),
                    remote_addr: format!("10.{}.1.{}", i % 250, i % 200),
                    remote_port: 1000 + (i % 200),
                    ..Connection::default()
                }),
                ..NetSocket::default()
            }),
            4 => Kind::Dns(DnsQuery {
                name: format!("api{}.bad{}.example", i % 3, i % 200),
                qtype: "A".into(),
                server: "10.0.0.2".into(),
            }),
            5 => Kind::Mcp(McpMessage {
                transport: "stdio".into(),
                message_type: "request".into(),
                method: "tools/call".into(),
                tool_name: format!("danger_{}", i % 200),
                peer_name: format!("srv{}", i % 100),
                ..McpMessage::default()
            }),
            6 => Kind::LlmRequest(LlmRequest {
                provider: format!("p{}", i % 200),
                model: "m1".into(),
                ..LlmRequest::default()
            }),
            _ => Kind::Credential(CredentialSeen {
                credential: Some(Credential {
                    kind: "github_token".into(),
                    fingerprint: format!("hmac-sha256:{:064x}", i % 200),
                    source: "file".into(),
                    location: "/home/alice/.config/gh/hosts.yml".into(),
                    ..Credential::default()
                }),
            }),
        };
        out.push(Event {
            host: "h1".into(),
            time_ns: u64::from(i),
            seq: u64::from(i),
            process: Some(process.clone()),
            kind: Some(kind),
        });
    }
    out
}

struct Run {
    decisions: u64,
    denied: u64,
    /// Wall-clock seconds.
    secs: f64,
    /// CPU seconds of this thread (unaffected by other load on the core).
    cpu_secs: f64,
}

/// CPU time consumed by the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn measure(seconds: f64, mut step: impl FnMut(&Event) -> (u64, u64), evs: &[Event]) -> Run {
    let budget = Duration::from_secs_f64(seconds);
    // Warm up.
    for e in evs.iter().take(200) {
        step(e);
    }
    let start = Instant::now();
    let cpu0 = thread_cpu();
    let (mut decisions, mut denied) = (0u64, 0u64);
    'outer: loop {
        for chunk in evs.chunks(100) {
            for e in chunk {
                let (d, x) = step(e);
                decisions += d;
                denied += x;
            }
            if start.elapsed() >= budget {
                break 'outer;
            }
        }
    }
    Run {
        decisions,
        denied,
        secs: start.elapsed().as_secs_f64(),
        cpu_secs: (thread_cpu() - cpu0).as_secs_f64(),
    }
}

// The ingest and policy threads allocate and free the same events; glibc's arenas
// serialised them on a lock (a third of the evaluation thread's time in malloc/free
// and futex waits when measured).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let args = Args::parse();
    let text = match args.shape.as_str() {
        "mixed" => generate(args.policies),
        "context" => generate_context_only(args.policies, false),
        "opaque" => generate_context_only(args.policies, true),
        other => anyhow::bail!("--shape {other:?}: expected mixed, context or opaque"),
    };
    let set = PolicySet::from_sources([("generated.cedar".to_string(), text)])
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("generated policies")?;
    let kernel = set
        .list()
        .iter()
        .filter(|p| p.enforcement == custody_policy::Enforcement::Kernel)
        .count();
    let eval = Evaluator::new(&set);
    let ctx = chain();
    let evs = events();
    let prepared = PreparedChain::new(&ctx);

    let count = |ds: Vec<custody_policy::Decision>| {
        (
            ds.len() as u64,
            ds.iter().filter(|d| !d.allowed).count() as u64,
        )
    };
    let hot = measure(
        args.seconds,
        |e| count(eval.evaluate_prepared(&prepared, e)),
        &evs,
    );
    let cold = measure(args.seconds, |e| count(eval.evaluate(&ctx, e)), &evs);
    let rate = |r: &Run| r.decisions as f64 / r.secs;
    let cpu_rate = |r: &Run| r.decisions as f64 / r.cpu_secs.max(1e-9);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "policies": set.len(),
                "shape": args.shape,
                "kernel_compiled": kernel,
                "chain_depth": ctx.depth,
                "decisions_per_sec_prepared_chain": rate(&hot).round(),
                "decisions_per_sec_chain_per_event": rate(&cold).round(),
                "decisions_per_cpu_sec_prepared_chain": cpu_rate(&hot).round(),
                "decisions_per_cpu_sec_chain_per_event": cpu_rate(&cold).round(),
                "denied_fraction": hot.denied as f64 / hot.decisions.max(1) as f64,
            })
        );
    } else {
        println!(
            "policy-bench: {} policies ({} shape, {} kernel-compiled), chain depth {}, one thread",
            set.len(),
            args.shape,
            kernel,
            ctx.depth
        );
        println!(
            "  prepared chain:        {:>10.0} decisions/s, {:>10.0} per CPU-second ({} decisions in {:.2} s, {:.1} % denied)",
            rate(&hot),
            cpu_rate(&hot),
            hot.decisions,
            hot.secs,
            100.0 * hot.denied as f64 / hot.decisions.max(1) as f64
        );
        println!(
            "  chain built per event: {:>10.0} decisions/s, {:>10.0} per CPU-second ({} decisions in {:.2} s)",
            rate(&cold),
            cpu_rate(&cold),
            cold.decisions,
            cold.secs
        );
    }
    Ok(())
}
