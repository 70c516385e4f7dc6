//! A chain drawn as a server-rendered SVG: columns by depth (the human first, then
//! each hop), one horizontal band per host, edges labelled with how the hop happened
//! and the credentials the receiving process holds or used, and resources at the
//! right (what the processes touched; denied actions from alerts in red). Large
//! chains are collapsed by agent (one box per agent or command per host) or by host.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use custody_proto::admin::v1 as admin;
use custody_proto::sensor::v1::event::Kind;
use maud::{Markup, html};

use super::layout::short;
use super::link;

const NODE_W: usize = 190;
const NODE_H: usize = 40;
const COL_W: usize = 300;
const ROW_H: usize = 54;
const BAND_TOP: usize = 26;
const BAND_GAP: usize = 10;
const PAD: usize = 12;
/// The gap between columns, where edge labels go.
const GAP: usize = COL_W - NODE_W;
/// Characters of an edge label that fit the gap at the label's font size.
const LABEL_CHARS: usize = 17;
/// Chains up to this size are drawn in full by default.
pub const FULL_LIMIT: usize = 60;
/// Resources are drawn only for chains this small (in full view).
const RESOURCE_LIMIT: usize = 40;
const RESOURCES_PER_NODE: usize = 3;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum View {
    Full,
    Agent,
    Host,
}

impl View {
    pub fn parse(s: &str) -> Result<Option<View>, String> {
        match s {
            "" => Ok(None),
            "full" => Ok(Some(View::Full)),
            "agent" => Ok(Some(View::Agent)),
            "host" => Ok(Some(View::Host)),
            v => Err(format!("unknown view {v:?}: expected full, agent or host")),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            View::Full => "full",
            View::Agent => "agent",
            View::Host => "host",
        }
    }
    /// Full for small chains; grouped by agent, or by host when even that is big.
    pub fn default_for(chain: &admin::Chain) -> View {
        if chain.nodes.len() <= FULL_LIMIT {
            return View::Full;
        }
        let groups: HashSet<(String, String)> = chain.nodes.iter().map(agent_group).collect();
        if groups.len() <= FULL_LIMIT {
            View::Agent
        } else {
            View::Host
        }
    }
}

fn agent_group(n: &admin::ChainNode) -> (String, String) {
    let who = if n.agent_id.is_empty() {
        format!("cmd:{}", display_name(n))
    } else {
        format!("agent:{}", n.agent_id)
    };
    (n.host.clone(), who)
}

pub fn display_name(n: &admin::ChainNode) -> String {
    if !n.agent_name.is_empty() {
        n.agent_name.clone()
    } else if !n.agent_id.is_empty() {
        n.agent_id.clone()
    } else if !n.comm.is_empty() {
        n.comm.clone()
    } else {
        n.exe.rsplit('/').next().unwrap_or(&n.exe).to_string()
    }
}

struct GNode {
    label: String,
    sub: String,
    /// A third line in the mark's colour ("TLS not readable").
    mark: Option<String>,
    class: String,
    href: Option<String>,
    title: String,
    exec: Option<String>,
    band: usize,
    col: usize,
    slot: usize,
}

/// Hops between two boxes: (count, kinds, credentials, details).
type Hop = (usize, BTreeSet<String>, BTreeSet<String>, Vec<String>);

struct GEdge {
    from: usize,
    to: usize,
    label: String,
    title: String,
    class: &'static str,
}

#[derive(Default)]
struct Graph {
    bands: Vec<String>,
    nodes: Vec<GNode>,
    edges: Vec<GEdge>,
}

impl Graph {
    fn band(&mut self, host: &str) -> usize {
        match self.bands.iter().position(|b| b == host) {
            Some(i) => i,
            None => {
                self.bands.push(host.to_string());
                self.bands.len() - 1
            }
        }
    }
}

/// What the graph is drawn from.
pub struct Input<'a> {
    pub chain: &'a admin::Chain,
    pub alerts: &'a [admin::Alert],
    pub exited: &'a HashSet<String>,
    pub view: View,
    /// The chain page's path, for node links.
    pub base: &'a str,
    /// The process whose details are open (highlighted).
    pub selected: &'a str,
}

fn cred_label(creds: &BTreeSet<String>) -> String {
    if creds.is_empty() {
        String::new()
    } else {
        format!(
            "key: {}",
            creds.iter().cloned().collect::<Vec<_>>().join(", ")
        )
    }
}

fn edge_kind_label(kind: &str) -> &str {
    match kind {
        "fork" => "",
        "stdio" => "mcp stdio",
        k => k,
    }
}

/// Files every program opens (libraries, interpreters' modules, the runtime's own
/// files): not what an operator looks for in a chain.
fn runtime_file(path: &str) -> bool {
    const PREFIXES: [&str; 9] = [
        "/usr/lib",
        "/lib",
        "/usr/share",
        "/proc",
        "/sys",
        "/dev",
        "/etc/ld.so",
        "/usr/local/lib",
        "/root/.pyenv",
    ];
    PREFIXES.iter().any(|p| path.starts_with(p))
        || [".so", ".pyc", ".py", ".pth"]
            .iter()
            .any(|e| path.ends_with(e))
        || path.contains(".so.")
        || path.contains("site-packages")
        || path.contains("node_modules")
        || path.contains("__pycache__")
}

/// Resources a process touched, from the chain's events (bounded): the network,
/// requests, tools and models first, then files other than the runtime's own.
fn resources(chain: &admin::Chain) -> HashMap<&str, Vec<String>> {
    let mut m: HashMap<&str, Vec<(u8, String)>> = HashMap::new();
    for se in &chain.events {
        let Some(ev) = &se.event else { continue };
        let Some(p) = &ev.process else { continue };
        let r = match &ev.kind {
            Some(Kind::FileOpen(f)) if !runtime_file(&f.path) => (1, format!("file {}", f.path)),
            Some(Kind::Net(n)) if n.op == "connect" => match &n.conn {
                Some(c) => (0, format!("connect {}:{}", c.remote_addr, c.remote_port)),
                None => continue,
            },
            Some(Kind::HttpRequest(h)) if h.direction != "received" => {
                (0, format!("{} {}{}", h.method, h.host, h.path))
            }
            Some(Kind::Mcp(x)) if !x.tool_name.is_empty() => (0, format!("tool {}", x.tool_name)),
            Some(Kind::LlmRequest(l)) => (0, format!("llm {} {}", l.provider, l.model)),
            _ => continue,
        };
        let v = m.entry(p.exec_id.as_str()).or_default();
        if !v.iter().any(|x| x.1 == r.1) && v.len() < 50 {
            v.push(r);
        }
    }
    m.into_iter()
        .map(|(k, mut v)| {
            v.sort_by_key(|x| x.0);
            (k, v.into_iter().map(|x| x.1).collect())
        })
        .collect()
}

/// Short-lived helpers with nothing significant (an SDK's `uname -p`): ended leaf
/// processes that are not agents or MCP servers, hold no credential, made no hop,
/// were denied nothing, and whose actions are only exec, exit, fork and routine
/// reads. They fold into their parent's node as a count.
fn helpers<'a>(
    chain: &'a admin::Chain,
    denied: &HashMap<&str, Vec<&admin::Alert>>,
) -> HashSet<&'a str> {
    let members: HashSet<&str> = chain.nodes.iter().map(|n| n.exec_id.as_str()).collect();
    let parents: HashSet<&str> = chain.nodes.iter().map(|n| n.upstream.as_str()).collect();
    let hops: HashSet<&str> = chain
        .edges
        .iter()
        .filter(|e| e.kind != "fork")
        .flat_map(|e| [e.from_exec_id.as_str(), e.to_exec_id.as_str()])
        .collect();
    let quiet = |a: &str| {
        a.starts_with("exec ")
            || a.starts_with("exit ")
            || a.starts_with("fork ")
            || (a.contains(" routine read")
                && a.split(' ')
                    .next()
                    .is_some_and(|n| n.parse::<u64>().is_ok()))
    };
    chain
        .nodes
        .iter()
        .filter(|n| {
            members.contains(n.upstream.as_str())
                && !parents.contains(n.exec_id.as_str())
                && !hops.contains(n.exec_id.as_str())
                && n.agent_id.is_empty()
                && n.credentials.is_empty()
                && n.tls_uncovered.is_empty()
                && n.opaque_connections == 0
                && !denied.contains_key(n.exec_id.as_str())
                && n.actions.iter().all(|a| quiet(a))
                // An exec'd helper's actions start with its exec; a process seen
                // only by its exit is not one we know enough about to hide.
                && n.actions.first().is_some_and(|a| a.starts_with("exec "))
                && n.actions.iter().any(|a| a.starts_with("exit "))
        })
        .map(|n| n.exec_id.as_str())
        .collect()
}

fn build(inp: &Input) -> Graph {
    let chain = inp.chain;
    let mut g = Graph::default();
    let summary = chain.summary.clone().unwrap_or_default();
    let by_exec: HashMap<&str, &admin::ChainNode> = chain
        .nodes
        .iter()
        .map(|n| (n.exec_id.as_str(), n))
        .collect();
    let mut denied: HashMap<&str, Vec<&admin::Alert>> = HashMap::new();
    for a in inp.alerts {
        denied.entry(a.exec_id.as_str()).or_default().push(a);
    }
    let stdio: HashSet<&str> = chain
        .edges
        .iter()
        .filter(|e| e.kind == "stdio")
        .map(|e| e.to_exec_id.as_str())
        .collect();
    let class_of = |n: &admin::ChainNode| -> &'static str {
        if !n.agent_id.is_empty() {
            "agent"
        } else if stdio.contains(n.exec_id.as_str()) {
            "tool"
        } else {
            "proc"
        }
    };
    let creds_of = |n: &admin::ChainNode| -> BTreeSet<String> {
        n.credentials.iter().map(|c| c.kind.clone()).collect()
    };
    let offset = usize::from(!summary.human.is_empty());
    let root = by_exec.get(summary.root_exec_id.as_str()).copied();
    if let Some(r) = root {
        g.band(&r.host);
    }
    // Process (or group) key of each exec id.
    let mut key_of: HashMap<&str, usize> = HashMap::new();
    let mut group_members: Vec<Vec<&admin::ChainNode>> = vec![];
    match inp.view {
        View::Full => {
            let helpers = helpers(chain, &denied);
            let mut helpers_of: HashMap<&str, usize> = HashMap::new();
            for h in &helpers {
                if let Some(n) = by_exec.get(h) {
                    *helpers_of.entry(n.upstream.as_str()).or_default() += 1;
                }
            }
            for n in chain
                .nodes
                .iter()
                .filter(|n| !helpers.contains(n.exec_id.as_str()))
            {
                let band = g.band(&n.host);
                let mut class = class_of(n).to_string();
                if denied.contains_key(n.exec_id.as_str()) {
                    class.push_str(" denied");
                }
                if inp.exited.contains(&n.exec_id) {
                    class.push_str(" ended");
                }
                if n.exec_id == inp.selected {
                    class.push_str(" selected");
                }
                if !n.tls_uncovered.is_empty() {
                    class.push_str(" uncovered");
                }
                let helpers = helpers_of.get(n.exec_id.as_str()).copied().unwrap_or(0);
                let keys = if n.credentials.is_empty() {
                    String::new()
                } else {
                    format!(" · {} cred", n.credentials.len())
                };
                key_of.insert(&n.exec_id, g.nodes.len());
                group_members.push(vec![n]);
                let mut title = format!("{} {}\n{}", n.exec_id, n.exe, n.argv.join(" "));
                if !n.tls_uncovered.is_empty() {
                    title = format!("{title}\n{}", n.tls_uncovered);
                }
                if helpers > 0 {
                    title = format!(
                        "{title}\n+{helpers} short-lived helper processes with nothing significant"
                    );
                }
                g.nodes.push(GNode {
                    label: display_name(n),
                    sub: format!(
                        "{}pid {} · {}{keys}",
                        if helpers > 0 {
                            format!("+{helpers} helpers · ")
                        } else {
                            String::new()
                        },
                        n.pid,
                        n.host
                    ),
                    mark: (!n.tls_uncovered.is_empty()).then(|| "TLS not readable".to_owned()),
                    class,
                    href: Some(
                        link(inp.base, &[("view", "full"), ("node", &n.exec_id)]) + "#details",
                    ),
                    title,
                    exec: Some(n.exec_id.clone()),
                    band,
                    col: offset + n.depth as usize,
                    slot: 0,
                });
            }
        }
        View::Agent | View::Host => {
            let mut groups: BTreeMap<(String, String), usize> = BTreeMap::new();
            for n in &chain.nodes {
                let k = if inp.view == View::Agent {
                    agent_group(n)
                } else {
                    (n.host.clone(), String::new())
                };
                let i = match groups.get(&k) {
                    Some(i) => *i,
                    None => {
                        let band = g.band(&n.host);
                        let (label, q) = if inp.view == View::Agent {
                            (display_name(n), display_name(n))
                        } else {
                            (n.host.clone(), n.host.clone())
                        };
                        g.nodes.push(GNode {
                            label,
                            sub: String::new(),
                            mark: None,
                            class: if inp.view == View::Agent {
                                class_of(n).to_string()
                            } else {
                                "host".into()
                            },
                            href: Some(
                                link(inp.base, &[("view", inp.view.as_str()), ("q", &q)])
                                    + "#nodes",
                            ),
                            title: String::new(),
                            exec: None,
                            band,
                            col: offset + n.depth as usize,
                            slot: 0,
                        });
                        group_members.push(vec![]);
                        groups.insert(k, g.nodes.len() - 1);
                        g.nodes.len() - 1
                    }
                };
                key_of.insert(&n.exec_id, i);
                group_members[i].push(n);
                let gn = &mut g.nodes[i];
                gn.col = gn.col.min(offset + n.depth as usize);
            }
            for (i, members) in group_members.iter().enumerate() {
                let live = members
                    .iter()
                    .filter(|m| !inp.exited.contains(&m.exec_id))
                    .count();
                let agents: BTreeSet<&str> = members
                    .iter()
                    .filter(|m| !m.agent_id.is_empty())
                    .map(|m| m.agent_id.as_str())
                    .collect();
                let gn = &mut g.nodes[i];
                gn.sub = if inp.view == View::Agent {
                    format!("×{} ({live} live) · {}", members.len(), members[0].host)
                } else {
                    format!("{} processes · {} agents", members.len(), agents.len())
                };
                gn.title = format!(
                    "{} processes, {live} live{}",
                    members.len(),
                    if agents.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; agents: {}",
                            agents.into_iter().collect::<Vec<_>>().join(", ")
                        )
                    }
                );
                if members
                    .iter()
                    .any(|m| denied.contains_key(m.exec_id.as_str()))
                {
                    gn.class.push_str(" denied");
                }
                if live == 0 {
                    gn.class.push_str(" ended");
                }
            }
        }
    }
    // The human at the left, in the root's band.
    let human = if offset == 1 {
        g.nodes.push(GNode {
            label: summary.human.clone(),
            mark: None,
            sub: format!(
                "human{}",
                if summary.human_source.is_empty() {
                    String::new()
                } else {
                    format!(" · {}", summary.human_source)
                }
            ),
            class: "human".into(),
            href: None,
            title: format!("{} ({})", summary.human, summary.human_source),
            exec: None,
            band: 0,
            col: 0,
            slot: 0,
        });
        Some(g.nodes.len() - 1)
    } else {
        None
    };
    if let (Some(h), Some(r)) = (human, root)
        && let Some(&ri) = key_of.get(r.exec_id.as_str())
    {
        g.edges.push(GEdge {
            from: h,
            to: ri,
            label: cred_label(&creds_of(r)),
            title: "started".into(),
            class: "human",
        });
    }
    // Hops, aggregated between groups.
    let mut agg: BTreeMap<(usize, usize), Hop> = BTreeMap::new();
    for e in &chain.edges {
        let (Some(&a), Some(&b)) = (
            key_of.get(e.from_exec_id.as_str()),
            key_of.get(e.to_exec_id.as_str()),
        ) else {
            continue;
        };
        if a == b {
            continue;
        }
        let slot = agg.entry((a, b)).or_default();
        slot.0 += 1;
        slot.1.insert(edge_kind_label(&e.kind).to_string());
        if let Some(t) = by_exec.get(e.to_exec_id.as_str())
            && t.upstream == e.from_exec_id
        {
            slot.2.extend(creds_of(t));
        }
        if slot.3.len() < 5 && !e.detail.is_empty() {
            slot.3.push(e.detail.clone());
        }
    }
    for ((a, b), (count, kinds, creds, details)) in agg {
        let kinds: Vec<String> = kinds.into_iter().filter(|k| !k.is_empty()).collect();
        let mut label = kinds.join(", ");
        if count > 1 {
            label = format!("{label} ×{count}").trim().to_string();
        }
        let cl = cred_label(&creds);
        if !cl.is_empty() {
            label = if label.is_empty() {
                cl
            } else {
                format!("{label} · {cl}")
            };
        }
        g.edges.push(GEdge {
            from: a,
            to: b,
            label,
            title: details.join("\n"),
            class: if kinds.iter().any(|k| k == "net" || k == "http") {
                "net"
            } else {
                "local"
            },
        });
    }
    // Resources and denied actions, one column right of what touched them.
    let touched = if inp.view == View::Full && chain.nodes.len() <= RESOURCE_LIMIT {
        resources(chain)
    } else {
        HashMap::new()
    };
    let owners: Vec<(usize, Vec<&admin::ChainNode>)> =
        group_members.iter().cloned().enumerate().collect();
    for (i, members) in owners {
        let (band, res_col) = (g.nodes[i].band, g.nodes[i].col + 1);
        let mut leaves: Vec<(String, String, bool)> = vec![];
        for m in &members {
            for a in denied.get(m.exec_id.as_str()).into_iter().flatten() {
                if leaves.len() < RESOURCES_PER_NODE + 2 {
                    leaves.push((format!("denied {}", a.action), a.resource.clone(), true));
                }
            }
        }
        for m in &members {
            for r in touched.get(m.exec_id.as_str()).into_iter().flatten() {
                if leaves.iter().filter(|l| !l.2).count() < RESOURCES_PER_NODE {
                    leaves.push((r.clone(), String::new(), false));
                }
            }
        }
        for (label, sub, bad) in leaves {
            g.nodes.push(GNode {
                title: format!("{label} {sub}"),
                label,
                sub,
                mark: None,
                class: if bad {
                    "res denied".into()
                } else {
                    "res".into()
                },
                href: None,
                exec: None,
                band,
                col: res_col,
                slot: 0,
            });
            g.edges.push(GEdge {
                from: i,
                to: g.nodes.len() - 1,
                label: String::new(),
                title: String::new(),
                class: if bad { "denied" } else { "res" },
            });
        }
    }
    place(&mut g);
    g
}

/// Slots within each (band, column): ordered by the slot of the first placed
/// predecessor, so children sit next to their parents.
fn place(g: &mut Graph) {
    // No empty columns (a group sits at its shallowest member's depth).
    let used: BTreeSet<usize> = g.nodes.iter().map(|n| n.col).collect();
    let at: HashMap<usize, usize> = used.iter().enumerate().map(|(i, c)| (*c, i)).collect();
    for n in &mut g.nodes {
        n.col = at[&n.col];
    }
    let cols = used.len();
    let mut preds: Vec<Vec<usize>> = vec![vec![]; g.nodes.len()];
    for e in &g.edges {
        preds[e.to].push(e.from);
    }
    let mut placed: Vec<Option<(usize, usize)>> = vec![None; g.nodes.len()];
    for c in 0..cols {
        let mut cells: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, n) in g.nodes.iter().enumerate() {
            if n.col == c {
                cells.entry(n.band).or_default().push(i);
            }
        }
        for (_, mut ids) in cells {
            ids.sort_by_key(|&i| {
                let p = preds[i]
                    .iter()
                    .filter_map(|&p| {
                        placed[p].map(|(b, s)| (g.nodes[p].band != g.nodes[i].band, b, s))
                    })
                    .min()
                    .unwrap_or((true, usize::MAX, usize::MAX));
                (p, i)
            });
            for (slot, i) in ids.into_iter().enumerate() {
                g.nodes[i].slot = slot;
                placed[i] = Some((g.nodes[i].band, slot));
            }
        }
    }
}

pub fn render(inp: &Input) -> Markup {
    let g = build(inp);
    let cols = g.nodes.iter().map(|n| n.col).max().unwrap_or(0) + 1;
    let mut band_rows = vec![1usize; g.bands.len().max(1)];
    for n in &g.nodes {
        band_rows[n.band] = band_rows[n.band].max(n.slot + 1);
    }
    let mut band_top = vec![0usize; band_rows.len()];
    let mut y = PAD;
    for (i, rows) in band_rows.iter().enumerate() {
        band_top[i] = y;
        y += BAND_TOP + rows * ROW_H + BAND_GAP;
    }
    let height = y + PAD;
    let width = PAD * 2 + cols * COL_W;
    let pos = |n: &GNode| {
        (
            PAD + n.col * COL_W,
            band_top[n.band] + BAND_TOP + n.slot * ROW_H,
        )
    };
    let processes = inp.chain.nodes.len();
    html! {
        // Inside <svg> the HTML parser knows no void elements: every SVG element
        // gets an explicit end tag (`{}`), never maud's `;`.
        // Scaled to its container (width 100 %, height from the viewBox), never
        // wider than its natural size, so it fits a window of any width.
        svg.chain-graph xmlns="http://www.w3.org/2000/svg" width="100%"
            style=(format!("max-width:{width}px")) preserveAspectRatio="xMinYMin meet"
            viewBox=(format!("0 0 {width} {height}")) role="group"
            aria-label=(format!("Chain graph: {processes} processes on {} hosts ({} view)", g.bands.len(), inp.view.as_str())) {
            defs {
                marker #arrow viewBox="0 0 8 8" refX="8" refY="4" markerWidth="8" markerHeight="8" orient="auto" {
                    path d="M0,0 L8,4 L0,8 z" class="arrow" {}
                }
                marker #arrow-bad viewBox="0 0 8 8" refX="8" refY="4" markerWidth="8" markerHeight="8" orient="auto" {
                    path d="M0,0 L8,4 L0,8 z" class="arrow-bad" {}
                }
            }
            @for (i, b) in g.bands.iter().enumerate() {
                g.band data-host=(b) {
                    rect class=(if i % 2 == 0 { "band-bg even" } else { "band-bg odd" })
                        x="0" y=(band_top[i]) width=(width) height=(BAND_TOP + band_rows[i] * ROW_H) {}
                    text.band-label x=(PAD) y=(band_top[i] + 17) { "host " (b) }
                }
            }
            @for e in &g.edges {
                @let (x1, y1) = pos(&g.nodes[e.from]);
                @let (x2, y2) = pos(&g.nodes[e.to]);
                @let (sx, sy) = (x1 + NODE_W, y1 + NODE_H / 2);
                @let (tx, ty) = (x2, y2 + NODE_H / 2);
                @let mid = (sx + tx) / 2;
                // The label sits in the gap just before the target's column, where
                // no node is drawn, and is cut to the gap's width (the whole text is
                // its title).
                @let adjacent = tx.saturating_sub(sx) <= COL_W - NODE_W;
                @let (lx, ly) = if adjacent { (mid, (sy + ty) / 2 - 4) } else { (tx.saturating_sub(GAP / 2), ty.saturating_sub(6)) };
                g class=(format!("edge {}", e.class)) {
                    path d=(format!("M{sx},{sy} C{mid},{sy} {mid},{ty} {tx},{ty}"))
                        marker-end=(if e.class == "denied" { "url(#arrow-bad)" } else { "url(#arrow)" }) {
                        @if !e.title.is_empty() { title { (e.title) } }
                    }
                    @if !e.label.is_empty() {
                        // A level edge has only the gap between columns for its label.
                        text.edge-label x=(lx) y=(ly) text-anchor="middle" {
                            (short(&e.label, LABEL_CHARS))
                            title { (e.label) }
                        }
                    }
                }
            }
            @for n in &g.nodes {
                @let (x, y) = pos(n);
                @let inner = html! {
                    rect x=(x) y=(y) width=(NODE_W) height=(NODE_H) rx="6" {}
                    text.n-label x=(x + 8) y=(y + 16) { (short(&n.label, 23)) }
                    text.n-sub x=(x + 8) y=(y + 32) { (short(&n.sub, 30)) }
                    @if let Some(m) = &n.mark { text.n-mark x=(x + 8) y=(y + NODE_H + 11) { (m) } }
                    title { (n.title) }
                };
                @match &n.href {
                    Some(h) => {
                        a class=(format!("node {}", n.class)) href=(h) data-exec=[n.exec.as_deref()]
                            aria-label=(format!("{} {}", n.label, n.sub)) { (inner) }
                    }
                    None => {
                        g class=(format!("node {}", n.class)) { (inner) }
                    }
                }
            }
        }
    }
}
