//! A timeline picture of a run (issue 13): an SVG with one lane per node over virtual time,
//! drawn from the full trace ([`SimConfig::record_trace`](super::SimConfig::record_trace)).
//!
//! Each lane shows the node's role as coloured bands (follower grey, pre-candidate and
//! candidate amber, leader green) with the term written where it changes, its commit index as
//! a rising line, crashes (red cross, then a hatched down time until the restart), node
//! failures (an orange triangle; the operator's kill follows as a crash), pauses
//! (blue band), membership changes (purple marks) and installed snapshots (teal diamonds).
//! Network faults (partitions, one-way cuts, deaf nodes, lossy spells) and heals are vertical
//! marks across every lane, labelled at the top. Every drawn event carries `data-t` (virtual
//! microseconds) and the events appear in time order, so a test can check the structure.
//!
//! Owns drawing only: it reads trace lines, never the simulator's state.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::trace::{BodySummary, InputSummary, TraceEvent, TraceLine};
use super::Simulator;
use crate::core::Role;
use crate::state_machine::StateMachine;
use crate::types::NodeId;

const WIDTH: f64 = 1400.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 40.0;
const LANE: f64 = 56.0;

impl<S: StateMachine> Simulator<S> {
    /// The run so far as an SVG timeline (see the module docs), or `None` unless the config
    /// kept the full trace ([`SimConfig::record_trace`](super::SimConfig::record_trace)).
    pub fn timeline_svg(&self) -> Option<String> {
        let lines = self.trace.structured()?;
        Some(render(lines, &self.node_ids(), self.now.max(1)))
    }
}

/// One lane's state while drawing.
#[derive(Clone, Copy)]
struct LaneState {
    since: u64,
    role: Role,
    term: u64,
    commit: u64,
    commit_at: u64,
    down_since: Option<u64>,
}

struct Canvas {
    lanes: BTreeMap<NodeId, usize>,
    end: u64,
    max_commit: u64,
    /// Drawn events with their virtual time; emitted sorted by time (stable).
    body: Vec<(u64, String)>,
}

impl Canvas {
    fn x(&self, t: u64) -> f64 {
        LEFT + (WIDTH - LEFT - 20.0) * t as f64 / self.end as f64
    }

    fn lane_y(&self, node: NodeId) -> Option<f64> {
        self.lanes.get(&node).map(|&i| TOP + LANE * i as f64)
    }

    fn commit_y(&self, y: f64, commit: u64) -> f64 {
        y + LANE - 8.0 - (LANE - 20.0) * commit as f64 / self.max_commit.max(1) as f64
    }

    /// A role band from `from` to `to` on `node`'s lane.
    fn band(&mut self, node: NodeId, state: &LaneState, to: u64) {
        let Some(y) = self.lane_y(node) else { return };
        let (x0, x1) = (self.x(state.since), self.x(to));
        let color = match state.role {
            Role::Follower => "#d9d9d9",
            Role::PreCandidate | Role::Candidate => "#f5c04a",
            Role::Leader => "#5cb85c",
        };
        let svg = format!(
            r#"<g class="event role" data-t="{}" data-node="{node}"><rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="14" fill="{color}"/><title>{node} {:?} in term {}</title></g>"#,
            state.since,
            y + 4.0,
            (x1 - x0).max(0.5),
            state.role,
            state.term
        );
        self.body.push((state.since, svg));
    }

    fn mark(&mut self, t: u64, node: NodeId, class: &str, shape: &str, title: &str) {
        let Some(y) = self.lane_y(node) else { return };
        let x = self.x(t);
        let shape =
            shape.replace("{x}", &format!("{x:.1}")).replace("{y}", &format!("{:.1}", y + 28.0));
        let svg = format!(
            r#"<g class="event {class}" data-t="{t}" data-node="{node}">{shape}<title>{}</title></g>"#,
            escape(title)
        );
        self.body.push((t, svg));
    }

    fn fault(&mut self, t: u64, text: &str) {
        let x = self.x(t);
        let bottom = TOP + LANE * self.lanes.len() as f64;
        let svg = format!(
            r##"<g class="event fault" data-t="{t}"><line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{bottom:.1}" stroke="#c0392b" stroke-dasharray="3,3"/><text x="{x:.1}" y="{}" font-size="9" transform="rotate(-30 {x:.1} {})">{}</text><title>{}</title></g>"##,
            TOP - 4.0,
            TOP - 6.0,
            TOP - 6.0,
            escape(&short(text)),
            escape(text)
        );
        self.body.push((t, svg));
    }
}

/// Draws the lines (in time order, as traced) as an SVG document.
pub(crate) fn render(lines: &[TraceLine], nodes: &[NodeId], end: u64) -> String {
    let lanes = nodes.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let max_commit = lines
        .iter()
        .filter_map(|l| match &l.event {
            TraceEvent::Step { after, .. } => Some(after.commit.0),
            _ => None,
        })
        .max()
        .unwrap_or(1);
    let mut canvas = Canvas { lanes, end, max_commit, body: Vec::new() };
    let mut states: BTreeMap<NodeId, LaneState> = BTreeMap::new();
    for node in nodes {
        let state = LaneState {
            since: 0,
            role: Role::Follower,
            term: 0,
            commit: 0,
            commit_at: 0,
            down_since: None,
        };
        states.insert(*node, state);
    }
    for line in lines {
        draw_line(&mut canvas, &mut states, line);
    }
    for (node, state) in &states {
        canvas.band(*node, state, end);
        if let Some(since) = state.down_since {
            down(&mut canvas, *node, since, end);
        }
    }
    document(&canvas, nodes)
}

fn draw_line(canvas: &mut Canvas, states: &mut BTreeMap<NodeId, LaneState>, line: &TraceLine) {
    let t = line.at;
    match &line.event {
        TraceEvent::Step { node, input, after, .. } => {
            let Some(mut state) = states.get(node).copied() else { return };
            if (after.role, after.term.0) != (state.role, state.term) {
                canvas.band(*node, &state, t);
                if after.term.0 != state.term {
                    let title = format!("{node} {:?} in {}", after.role, after.term);
                    let label = format!(
                        r#"<text x="{{x}}" y="{{y}}" font-size="9">{}</text>"#,
                        after.term.0
                    );
                    canvas.mark(t, *node, "term", &label, &title);
                }
                (state.since, state.role, state.term) = (t, after.role, after.term.0);
            }
            if after.commit.0 > state.commit {
                commit_step(canvas, *node, &state, t, after.commit.0);
                (state.commit, state.commit_at) = (after.commit.0, t);
            }
            if let InputSummary::Receive(m) = input {
                if let BodySummary::Snapshot { index, done: true, .. } = m.body {
                    let diamond =
                        r##"<path d="M{x},{y} m0,-6 l5,6 l-5,6 l-5,-6 z" fill="#17a2b8"/>"##;
                    canvas.mark(
                        t,
                        *node,
                        "snapshot",
                        diamond,
                        &format!("{node} snapshot chunk through {index} (last)"),
                    );
                }
            }
            states.insert(*node, state);
        }
        TraceEvent::Note(text) => note(canvas, states, t, text),
        TraceEvent::Dropped { .. } => {}
    }
}

/// The commit index rising from `state.commit` to `to` at `t`, drawn as a step of the line.
fn commit_step(canvas: &mut Canvas, node: NodeId, state: &LaneState, t: u64, to: u64) {
    let Some(y) = canvas.lane_y(node) else { return };
    let (x0, x1) = (canvas.x(state.commit_at), canvas.x(t));
    let (y0, y1) = (canvas.commit_y(y, state.commit), canvas.commit_y(y, to));
    let svg = format!(
        r##"<g class="event commit" data-t="{t}" data-node="{node}"><polyline points="{x0:.1},{y0:.1} {x1:.1},{y0:.1} {x1:.1},{y1:.1}" fill="none" stroke="#2c3e50" stroke-width="1"/><title>{node} commit {to}</title></g>"##
    );
    canvas.body.push((t, svg));
}

fn down(canvas: &mut Canvas, node: NodeId, since: u64, until: u64) {
    let Some(y) = canvas.lane_y(node) else { return };
    let (x0, x1) = (canvas.x(since), canvas.x(until));
    let svg = format!(
        r#"<g class="event down" data-t="{since}" data-node="{node}"><rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="14" fill="url(#down)"/><title>{node} down</title></g>"#,
        y + 4.0,
        (x1 - x0).max(0.5)
    );
    canvas.body.push((since, svg));
}

/// A note: node events (crash, restart, pause, membership) on their lane, faults across all.
fn note(canvas: &mut Canvas, states: &mut BTreeMap<NodeId, LaneState>, t: u64, text: &str) {
    let mut words = text.split_whitespace();
    let (first, second) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let node_of = |word: &str| states.keys().copied().find(|id| id.to_string() == word);
    match (first, node_of(second), node_of(first)) {
        ("crash" | "churn", Some(id), _) => {
            let cross = r##"<path d="M{x},{y} m-5,-5 l10,10 m0,-10 l-10,10" stroke="#c0392b" stroke-width="2"/>"##;
            canvas.mark(t, id, "crash", cross, text);
            if let Some(state) = states.get_mut(&id) {
                if state.down_since.is_none() && first == "crash" {
                    state.down_since = Some(t);
                }
            }
        }
        ("restart", Some(id), _) => {
            let since = states.get_mut(&id).and_then(|s| s.down_since.take());
            if let Some(since) = since {
                down(canvas, id, since, t);
            }
            let circle = r##"<circle cx="{x}" cy="{y}" r="4" fill="none" stroke="#27ae60" stroke-width="2"/>"##;
            canvas.mark(t, id, "restart", circle, text);
        }
        ("fail", Some(id), _) => {
            let bang = r##"<path d="M{x},{y} m0,-7 l6,12 l-12,0 z" fill="#e67e22"/>"##;
            canvas.mark(t, id, "failure", bang, text);
        }
        ("pause" | "resume", Some(id), _) => {
            let bar = r##"<rect x="{x}" y="{y}" width="3" height="10" fill="#2980b9"/>"##;
            canvas.mark(t, id, "pause", bar, text);
        }
        ("add" | "remove", Some(id), _) => membership(canvas, t, id, text),
        (_, _, Some(id)) if text.contains("removed") => membership(canvas, t, id, text),
        _ if is_fault(text) => canvas.fault(t, text),
        _ => {}
    }
}

fn membership(canvas: &mut Canvas, t: u64, id: NodeId, text: &str) {
    {
        let tri = r##"<path d="M{x},{y} m0,-6 l6,10 l-12,0 z" fill="#8e44ad"/>"##;
        canvas.mark(t, id, "membership", tri, text);
    }
}

fn is_fault(text: &str) -> bool {
    ["partition", "heal", "cut ", "deafen", "one-way", "network", "quiet", "armed", "won: firing"]
        .iter()
        .any(|p| text.starts_with(p) || text.contains(p))
}

fn short(text: &str) -> String {
    text.chars().take(40).collect()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn document(canvas: &Canvas, nodes: &[NodeId]) -> String {
    let height = TOP + LANE * nodes.len() as f64 + 40.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}" font-family="sans-serif">"##
    );
    svg.push_str(r##"<defs><pattern id="down" width="6" height="6" patternUnits="userSpaceOnUse"><path d="M0,6 l6,-6" stroke="#c0392b" stroke-width="1"/></pattern></defs>"##);
    svg.push('\n');
    for (i, node) in nodes.iter().enumerate() {
        let y = TOP + LANE * i as f64;
        let _ = writeln!(
            svg,
            r##"<g class="lane" data-node="{node}"><rect x="{LEFT}" y="{y:.1}" width="{:.1}" height="{LANE}" fill="{}"/><text x="8" y="{:.1}" font-size="13">{node}</text></g>"##,
            WIDTH - LEFT - 20.0,
            if i % 2 == 0 { "#fafafa" } else { "#f0f0f0" },
            y + LANE / 2.0
        );
    }
    let axis_y = TOP + LANE * nodes.len() as f64 + 16.0;
    for k in 0..=10u64 {
        let t = canvas.end * k / 10;
        let _ = writeln!(
            svg,
            r#"<text class="axis" x="{:.1}" y="{axis_y:.1}" font-size="10">{} ms</text>"#,
            canvas.x(t),
            t / 1000
        );
    }
    let mut events = canvas.body.iter().collect::<Vec<_>>();
    events.sort_by_key(|(t, _)| *t);
    for (_, event) in events {
        svg.push_str(event);
        svg.push('\n');
    }
    svg.push_str("</svg>\n");
    svg
}
