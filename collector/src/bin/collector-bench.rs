//! `collector-bench`: ingest throughput into sled with chain indexing (one thread,
//! through the same `Engine` the gRPC service uses) and chain-query latency for one
//! event. Driven by `cargo xtask bench collector`; prints a human summary on
//! stderr and one JSON object on stdout.
//!
//! The workload: `--hosts` hosts; on each, tasks started by login users, each task
//! an agent process with children (file opens, connects to an agent on the next
//! host, MCP over stdio), so chains span hosts and keep growing.

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use custody_collector::Engine;
use custody_collector::event_key::key_to_id;
use custody_collector::synth;
use custody_proto::admin::v1::{GetChainRequest, get_chain_request::Target};
use custody_proto::sensor::v1::{Event, EventBatch, McpMessage, event::Kind};

#[derive(Parser)]
struct Args {
    /// Events to ingest.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    #[arg(long, default_value_t = 16)]
    hosts: u32,
    /// Events per batch (what one sensor sends at once).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Batches per group commit (one write + one flush).
    #[arg(long, default_value_t = 8)]
    group: usize,
    /// Chain queries to time.
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Events returned per chain query.
    #[arg(long, default_value_t = 100)]
    event_limit: u32,
    /// Store directory (default: a fresh temp dir, removed afterwards).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Close and reopen the store after ingest (timed: the in-memory indexes are
    /// rebuilt), and time the queries on the reopened store.
    #[arg(long)]
    reopen: bool,
    /// Evaluate every stored event against the built-in policy set, as the collector
    /// does (its own thread, fed from the ingest path with back-pressure); the ingest
    /// time then includes waiting for evaluation to finish.
    #[arg(long)]
    policy: bool,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Per-host generator of realistic event sequences.
struct HostGen {
    host: String,
    idx: u32,
    seq: u64,
    next_pid: u32,
    task: Vec<custody_proto::sensor::v1::Process>,
    task_left: u32,
    port: u32,
}

impl HostGen {
    fn event(&mut self, rng: &mut Rng, hosts: u32, t: u64) -> Event {
        if self.task_left == 0 || self.task.is_empty() {
            // New task: a login user's agent.
            self.next_pid += 1;
            let user = ["alice", "bob", "carol", "dave"][rng.below(4) as usize];
            let root = synth::with_login(
                synth::process(&self.host, self.next_pid, 0, "/usr/bin/agent", "agent"),
                1000 + rng.below(4) as u32,
                user,
            );
            self.task = vec![root];
            self.task_left = 200 + rng.below(800) as u32;
            let p = self.task[0].clone();
            self.seq += 1;
            let mut e = synth::exec(&p, &self.host, t, vec![synth::api_key("k1")]);
            e.seq = self.seq;
            return e;
        }
        self.task_left -= 1;
        let r = rng.below(100);
        let parent = self.task[rng.below(self.task.len() as u64) as usize].clone();
        let mut e = if r < 5 && self.task.len() < 50 {
            self.next_pid += 1;
            let child = synth::process(&self.host, self.next_pid, parent.pid, "/usr/bin/tool", "");
            let mut child = child;
            child.parent_exec_id = parent.exec_id.clone();
            child.principal = parent.principal.clone();
            self.task.push(child.clone());
            synth::exec(&child, &self.host, t, vec![])
        } else if r < 8 {
            self.port += 1;
            let me = format!("10.0.{}.{}", self.idx / 250, self.idx % 250 + 1);
            let peer = (self.idx + 1) % hosts;
            let them = format!("10.0.{}.{}", peer / 250, peer % 250 + 1);
            synth::net(
                &parent,
                &self.host,
                t,
                "connect",
                (&me, 20000 + self.port % 40000),
                (&them, 8080),
            )
        } else if r < 10 {
            synth::event(
                &parent,
                &self.host,
                t,
                Kind::Mcp(McpMessage {
                    transport: "stdio".into(),
                    method: "tools/call".into(),
                    tool_name: "search".into(),
                    ..Default::default()
                }),
            )
        } else {
            synth::file_open(&parent, &self.host, t, "/srv/work/data.json")
        };
        self.seq += 1;
        e.seq = self.seq;
        e
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

type EvalTotals = (u64, u64, u64, u64);

/// The collector's evaluation path without the network: context from the chain
/// index, the built-in policy set, every stored action event.
fn start_evaluation(
    engine: std::sync::Arc<Engine>,
) -> (std::thread::JoinHandle<EvalTotals>, Instant) {
    use custody_collector::live_policy::{cached_eval::CachedEvaluator, is_action};
    use custody_policy::{Evaluator, PolicySet};
    let (tx, rx) = std::sync::mpsc::sync_channel(65_536);
    engine.set_policy_sink(tx);
    let mut cached = CachedEvaluator::new(Evaluator::new(&PolicySet::builtin()));
    let h = std::thread::spawn(move || {
        let (mut events, mut decisions, mut denied, mut ns) = (0u64, 0u64, 0u64, 0u64);
        while let Ok(se) = rx.recv() {
            let se: std::sync::Arc<custody_collector::engine::StoredEvent> = se;
            if !is_action(&se.event) {
                continue;
            }
            let t = Instant::now();
            let (_, d) = cached.decide(&engine, &se);
            ns += t.elapsed().as_nanos() as u64;
            events += 1;
            decisions += d.len() as u64;
            denied += d.iter().filter(|x| !x.allowed).count() as u64;
        }
        (events, decisions, denied, ns)
    });
    (h, Instant::now())
}

// The ingest and policy threads allocate and free the same events; glibc's arenas
// serialised them on a lock (a third of the evaluation thread's time in malloc/free
// and futex waits when measured).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let a = Args::parse();
    let tmp;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => {
            tmp = std::env::temp_dir().join(format!("collector-bench-{}", std::process::id()));
            tmp
        }
    };
    let mut engine = std::sync::Arc::new(Engine::open(&dir)?);
    let evaluation = a.policy.then(|| start_evaluation(engine.clone()));
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut gens: Vec<HostGen> = (0..a.hosts)
        .map(|i| HostGen {
            host: format!("bench-{i}"),
            idx: i,
            seq: 0,
            next_pid: 100,
            task: vec![],
            task_left: 0,
            port: 0,
        })
        .collect();
    let t0 = synth::T0;
    let mut produced = 0u64;
    let mut ingest_secs = 0.0;
    let mut h = 0usize;
    while produced < a.events {
        let mut group = Vec::with_capacity(a.group);
        for _ in 0..a.group {
            if produced >= a.events {
                break;
            }
            let n = (a.batch as u64).min(a.events - produced) as usize;
            let ng = gens.len();
            let g = &mut gens[h % ng];
            h += 1;
            let events: Vec<Event> = (0..n)
                .map(|i| g.event(&mut rng, a.hosts, t0 + (produced + i as u64) * 1000))
                .collect();
            produced += n as u64;
            group.push((
                g.host.clone(),
                EventBatch {
                    first_seq: events[0].seq,
                    events,
                },
            ));
        }
        // Only the engine's work is timed, not event generation.
        let start = Instant::now();
        engine.ingest_group(group)?;
        ingest_secs += start.elapsed().as_secs_f64();
    }
    let mut eval = serde_json::Value::Null;
    if let Some((handle, started)) = evaluation {
        // Evaluation finishing is part of the work.
        let start = Instant::now();
        engine.clear_policy_sink();
        let (events, decisions, denied, eval_ns) = handle.join().expect("evaluation thread");
        ingest_secs += start.elapsed().as_secs_f64();
        let _ = started;
        eval = serde_json::json!({
            "evaluated_events": events,
            "decisions": decisions,
            "denied": denied,
            "eval_ns_per_event": eval_ns as f64 / events.max(1) as f64,
        });
        eprintln!(
            "policy: {events} action events evaluated ({decisions} decisions, {denied} denied), {:.2} µs per event on the evaluation thread",
            eval_ns as f64 / events.max(1) as f64 / 1e3
        );
    }
    let rate = produced as f64 / ingest_secs;
    let mut reopen_secs = None;
    if a.reopen {
        drop(engine);
        let start = Instant::now();
        engine = std::sync::Arc::new(Engine::open(&dir)?);
        reopen_secs = Some(start.elapsed().as_secs_f64());
    }

    // Chain query for one event: sample processes, take one of their events.
    let execs: Vec<String> = engine
        .read()
        .chains
        .nodes()
        .map(|(k, _)| k.clone())
        .collect();
    let mut lat = Vec::with_capacity(a.queries);
    for _ in 0..a.queries {
        let exec = &execs[rng.below(execs.len() as u64) as usize];
        let Some(k) = engine.first_exec_keys(exec, 1)?.pop() else {
            continue;
        };
        let req = GetChainRequest {
            target: Some(Target::EventId(key_to_id(&k))),
            event_limit: a.event_limit,
        };
        let start = Instant::now();
        let c = engine.get_chain(&req)?;
        lat.push(start.elapsed().as_secs_f64() * 1e3);
        assert!(c.is_some());
    }
    lat.sort_by(|x, y| x.partial_cmp(y).expect("finite"));
    let (p50, p99) = (pct(&lat, 0.5), pct(&lat, 0.99));
    let chains = engine.read().chains.chain_ids().count();
    eprintln!(
        "ingest: {produced} events in {ingest_secs:.2} s = {rate:.0} events/s (one thread, sled, chain indexing, {} batches/flush)\n\
         chain query (event -> chain graph, {} events returned): p50 {p50:.3} ms, p99 {p99:.3} ms over {} queries\n\
         store: {} processes, {chains} chains, {} bytes of events{}",
        a.group,
        a.event_limit,
        lat.len(),
        execs.len(),
        engine.read().stored_bytes,
        reopen_secs
            .map(|s| format!("; reopened in {s:.2} s (queries on the reopened store)"))
            .unwrap_or_default()
    );
    println!(
        "{}",
        serde_json::json!({
            "events": produced,
            "ingest_seconds": ingest_secs,
            "ingest_events_per_sec": rate,
            "query_p50_ms": p50,
            "query_p99_ms": p99,
            "queries": lat.len(),
            "processes": execs.len(),
            "chains": chains,
            "reopen_seconds": reopen_secs,
            "policy": eval,
        })
    );
    drop(engine);
    if a.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
