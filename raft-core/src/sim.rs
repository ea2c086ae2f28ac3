//! Deterministic simulation: N [`RawNode`]s under a seeded network, clock and storage.
//!
//! In the spirit of FoundationDB and TigerBeetle, the simulator owns everything that is
//! nondeterministic in production: time advances in steps (a tick every
//! [`SimOptions::steps_per_tick`]), messages travel through a network that loses,
//! duplicates, delays and reorders them, links can be cut, nodes crash and restart from
//! exactly what they persisted, and a crash in the middle of handling a `Ready` loses the
//! unsynced tail. All choices come from one seed, so a failing run replays exactly.
//!
//! After every step the simulator checks Raft's safety properties: Election Safety, Log
//! Matching, Leader Completeness, State Machine Safety, and monotonic terms and commit
//! indexes. A violation panics with the seed and step.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::lincheck::{self, Event, KvOp, KvRet};
use crate::node::StoreJob;
use crate::{
    Config, Entry, HardState, Index, Membership, Message, NodeId, Payload, Persisted, ProposeError,
    RawNode, ReadState, Role, Snapshot, Term,
};

/// What the network and the disks do wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct Faults {
    /// Probability a message is lost.
    pub drop: f64,
    /// Probability a message is delivered twice.
    pub duplicate: f64,
    /// Probability a message is delayed by up to `max_delay` steps (and so reordered).
    pub delay: f64,
    /// Longest delay, in steps.
    pub max_delay: u64,
    /// Probability per step that a live node crashes (restart follows after a while).
    pub crash: f64,
    /// Probability that a crash strikes while a `Ready` is being persisted, losing it.
    pub torn_write: f64,
}

impl Faults {
    /// A perfect network and disks.
    pub fn none() -> Faults {
        Faults {
            drop: 0.0,
            duplicate: 0.0,
            delay: 0.0,
            max_delay: 0,
            crash: 0.0,
            torn_write: 0.0,
        }
    }

    /// An unreliable network: loss, duplication and long reordering delays.
    pub fn unreliable() -> Faults {
        Faults {
            drop: 0.1,
            duplicate: 0.05,
            delay: 0.2,
            max_delay: 200,
            crash: 0.0,
            torn_write: 0.0,
        }
    }
}

/// How a simulation is set up.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Number of nodes (ids 1..=n).
    pub nodes: u32,
    /// How many of them are voters at the start (ids 1..=voters); the rest wait to be
    /// added by a membership change.
    pub voters: u32,
    /// Seeds every random choice.
    pub seed: u64,
    /// Network and disk faults.
    pub faults: Faults,
    /// Steps between two ticks of a node's clock.
    pub steps_per_tick: u64,
    /// The Raft settings of every node (its `id` and `seed` are set per node).
    pub raft: Config,
    /// Compact a node's log when this many applied entries are not yet in a snapshot
    /// (0: never).
    pub snapshot_every: u64,
    /// Persist as the node runtime does, on a storage thread: a Ready is handed off
    /// ([`RawNode::advance_handed`]) and becomes durable some random steps later, in order
    /// and often several at once, only then sending its messages and telling the node
    /// ([`RawNode::on_persisted`]); a crash loses whatever was not yet written.
    pub async_persist: bool,
}

impl SimOptions {
    /// `nodes` voters, seed `seed`, perfect network, default Raft settings.
    pub fn new(nodes: u32, seed: u64) -> SimOptions {
        SimOptions {
            nodes,
            voters: nodes,
            seed,
            faults: Faults::none(),
            steps_per_tick: 10,
            raft: Config::new(NodeId(1)),
            snapshot_every: 0,
            async_persist: false,
        }
    }
}

/// The reference model of a node's durable storage: what a [`crate::node::LogStore`]
/// must be equivalent to across crashes (the simulator's disk, and the oracle of the
/// write-ahead log's crash tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelDisk {
    /// The persisted hard state.
    pub hard: HardState,
    /// The persisted snapshot.
    pub snapshot: Option<Snapshot>,
    /// The persisted entries.
    pub entries: Vec<Entry>,
}

impl ModelDisk {
    /// The model of what was recovered.
    pub fn of(p: &Persisted) -> ModelDisk {
        ModelDisk {
            hard: p.hard_state,
            snapshot: p.snapshot.clone(),
            entries: p.entries.clone(),
        }
    }

    /// Persists a ready. A snapshot from the leader keeps the stored entries after it only
    /// if the stored entry at its index has its term, exactly as the core's log does.
    pub fn persist(
        &mut self,
        hard: Option<HardState>,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
    ) {
        if let Some(s) = snapshot {
            let matches = self
                .entries
                .iter()
                .any(|e| e.index == s.meta.index && e.term == s.meta.term);
            if matches {
                self.entries.retain(|e| e.index > s.meta.index);
            } else {
                self.entries.clear();
            }
            self.snapshot = Some(s.clone());
        }
        if let Some(first) = entries.first() {
            self.entries.retain(|e| e.index < first.index);
            self.entries.extend_from_slice(entries);
        }
        if let Some(h) = hard {
            self.hard = h;
        }
    }

    /// Records a local snapshot: the entries it covers go, the suffix stays.
    pub fn compact(&mut self, snapshot: &Snapshot) {
        self.entries.retain(|e| e.index > snapshot.meta.index);
        self.snapshot = Some(snapshot.clone());
    }

    /// What recovery must return: the hard state, the snapshot, and the entries after it.
    pub fn recovered(&self) -> ModelDisk {
        let base = self.snapshot.as_ref().map_or(0, |s| s.meta.index);
        ModelDisk {
            hard: self.hard,
            snapshot: self.snapshot.clone(),
            entries: self
                .entries
                .iter()
                .filter(|e| e.index > base)
                .cloned()
                .collect(),
        }
    }

    /// The last index held (an entry's, else the snapshot's, else 0).
    pub fn last_index(&self) -> Index {
        self.entries
            .last()
            .map(|e| e.index)
            .or(self.snapshot.as_ref().map(|s| s.meta.index))
            .unwrap_or(0)
    }
}

/// The applied state of one node: every applied command, the key-value store they build,
/// and the results of the clients' operations.
#[derive(Clone, Debug, Default)]
struct Applied {
    /// (index, command) for every applied command.
    commands: Vec<(Index, Bytes)>,
    /// Applied index.
    index: Index,
    kv: BTreeMap<u64, u64>,
    results: HashMap<(u64, u64), KvRet>,
}

/// Marks a command as a client's key-value operation.
const KV_TAG: &[u8] = b"KV";

impl Applied {
    fn apply(&mut self, index: Index, command: Bytes) {
        if let Some(rest) = command.strip_prefix(KV_TAG) {
            if let Ok((client, seq, op)) = rmp_serde::from_slice::<(u64, u64, KvOp)>(rest) {
                let (value, ret) = op.apply(self.kv.get(&op.key()).copied());
                match value {
                    Some(v) => self.kv.insert(op.key(), v),
                    None => self.kv.remove(&op.key()),
                };
                self.results.insert((client, seq), ret);
            }
        }
        self.commands.push((index, command));
    }

    fn restore(data: &[u8], index: Index) -> Applied {
        let mut a = Applied::default();
        for (i, c) in decode_commands(data) {
            a.apply(i, c);
        }
        a.index = index;
        a
    }
}

enum Waiting {
    Write { seq: u64 },
    Read { ctx: u64, index: Option<Index> },
}

struct Pending {
    op: KvOp,
    node: NodeId,
    call: u64,
    deadline: u64,
    waiting: Waiting,
}

/// A simulated client issuing one key-value operation at a time.
struct Client {
    id: u64,
    seq: u64,
    pending: Option<Pending>,
}

struct SimNode {
    raw: Option<RawNode>,
    disk: ModelDisk,
    applied: Applied,
    /// Steps until a crashed node restarts.
    down_until: u64,
    last_term: Term,
    last_commit: Index,
    read_states: Vec<ReadState>,
    /// Work handed to the simulated storage thread, oldest first (`async_persist`).
    writing: VecDeque<StoreJob>,
    /// A hard state written by a batch that needed no sync ([`crate::Ready::must_sync`]):
    /// durable with the next synced batch, lost in a crash before it.
    unsynced: Option<HardState>,
    /// The highest term the node has put in a message (pre-votes aside): it must never
    /// come back from a crash with less. (With `async_persist` a term heard but never
    /// written, and so never revealed, may be lost in a crash; that is allowed.)
    revealed_term: Term,
}

/// Steps from send to deadline on a deadline-ordered fabric (Δ, in steps).
const DEADLINE_STEPS: u64 = 2;

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    due: u64,
    seq: u64,
    to: u32,
    bytes: Bytes,
}

/// A simulated cluster.
pub struct Sim {
    opts: SimOptions,
    rng: ChaCha8Rng,
    nodes: Vec<SimNode>,
    net: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    step: u64,
    /// Cut links (from, to).
    cut: Vec<(u32, u32)>,
    /// The leader of each term ever seen.
    leaders: BTreeMap<Term, NodeId>,
    /// Every entry applied anywhere: index -> (term, payload).
    applied_log: BTreeMap<Index, (Term, Payload)>,
    /// Entries known committed: index -> (entry term, highest term any node had when the
    /// entry was first seen applied). Leaders of later terms must hold the entry.
    committed: BTreeMap<Index, (Term, Term)>,
    /// Messages delivered.
    pub delivered: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    clients: Vec<Client>,
    keys: u64,
    history: Vec<Event>,
    next_value: u64,
}

impl Sim {
    /// A new cluster of `opts.nodes` voters, none of which has run yet.
    pub fn new(opts: SimOptions) -> Sim {
        let rng = ChaCha8Rng::seed_from_u64(opts.seed);
        let mut sim = Sim {
            rng,
            nodes: Vec::new(),
            net: BinaryHeap::new(),
            seq: 0,
            step: 0,
            cut: Vec::new(),
            leaders: BTreeMap::new(),
            applied_log: BTreeMap::new(),
            committed: BTreeMap::new(),
            delivered: 0,
            snapshots_installed: 0,
            clients: Vec::new(),
            keys: 1,
            history: Vec::new(),
            next_value: 0,
            opts,
        };
        for id in 1..=sim.opts.nodes {
            let raw = sim.boot(id, Persisted::default());
            sim.nodes.push(SimNode {
                raw: Some(raw),
                disk: ModelDisk::default(),
                applied: Applied::default(),
                down_until: 0,
                last_term: 0,
                last_commit: 0,
                read_states: Vec::new(),
                writing: VecDeque::new(),
                unsynced: None,
                revealed_term: 0,
            });
        }
        sim
    }

    fn boot(&self, id: u32, persisted: Persisted) -> RawNode {
        let mut cfg = self.opts.raft.clone();
        cfg.id = NodeId(id);
        cfg.seed = self
            .opts
            .seed
            .wrapping_mul(31)
            .wrapping_add(u64::from(id))
            .wrapping_add(self.step);
        let voters = Membership::with_voters((1..=self.opts.voters).map(NodeId));
        RawNode::new(cfg, voters, persisted).expect("valid sim config")
    }

    fn fail(&self, what: String) -> ! {
        fail_at(
            self.opts.seed,
            self.step,
            format!("{what}\n{}", self.dump()),
        )
    }

    /// The current step.
    pub fn now(&self) -> u64 {
        self.step
    }

    /// The number of node slots (ids 1..=n).
    pub fn size(&self) -> u32 {
        self.nodes.len() as u32
    }

    /// Changes the faults from now on.
    pub fn set_faults(&mut self, faults: Faults) {
        self.opts.faults = faults;
    }

    /// Runs `steps` steps.
    pub fn run(&mut self, steps: u64) {
        for _ in 0..steps {
            self.step();
        }
    }

    /// Runs until `pred` holds or `max_steps` pass; returns whether it held.
    pub fn run_until(&mut self, max_steps: u64, mut pred: impl FnMut(&Sim) -> bool) -> bool {
        for _ in 0..max_steps {
            if pred(self) {
                return true;
            }
            self.step();
        }
        pred(self)
    }

    /// One step: deliver due messages, tick on schedule, handle every ready, check.
    pub fn step(&mut self) {
        self.step += 1;
        let now = self.step;
        while self.net.peek().is_some_and(|Reverse(m)| m.due <= now) {
            let Reverse(m) = self.net.pop().expect("peeked");
            let node = &mut self.nodes[m.to as usize - 1];
            if let Some(raw) = &mut node.raw {
                // With barrier epochs a message is delivered at the close of epoch `due`.
                let epoch = if self.opts.raft.barrier_epochs {
                    m.due
                } else {
                    0
                };
                match Message::decode_for(&m.bytes, NodeId(m.to), epoch) {
                    Ok(msg) => {
                        self.delivered += 1;
                        raw.step(msg);
                    }
                    Err(e) => panic!("seed {}: a message failed to decode: {e}", self.opts.seed),
                }
            }
        }
        if now % self.opts.steps_per_tick == 0 {
            for n in &mut self.nodes {
                if let Some(raw) = &mut n.raw {
                    raw.tick();
                }
            }
        }
        self.random_crashes();
        self.drive_clients();
        for id in 1..=self.size() {
            self.finish_writes(id);
            self.handle_ready(id);
        }
        self.check();
    }

    /// Adds `n` clients that issue puts, gets and compare-and-sets on `keys` keys, one
    /// operation at a time each, through whichever node they pick. Their history is
    /// checked by [`Sim::check_linearizable`].
    pub fn add_clients(&mut self, n: u64, keys: u64) {
        self.keys = keys.max(1);
        for _ in 0..n {
            let id = self.clients.len() as u64 + 1;
            self.clients.push(Client {
                id,
                seq: 0,
                pending: None,
            });
        }
    }

    /// The client history so far.
    pub fn history(&self) -> &[Event] {
        &self.history
    }

    /// Checks the clients' history for linearizability; panics with the seed if it fails.
    pub fn check_linearizable(&self) {
        // Writes still waiting for an answer may or may not have taken effect.
        let mut history = self.history.clone();
        for p in self.clients.iter().filter_map(|c| c.pending.as_ref()) {
            if let Waiting::Write { .. } = p.waiting {
                history.push(Event {
                    op: p.op,
                    call: p.call,
                    ret_at: 0,
                    ret: KvRet::Unknown,
                });
            }
        }
        if let Err(v) = lincheck::check(&history) {
            let mut events: Vec<&Event> = history.iter().filter(|e| e.op.key() == v.key).collect();
            events.sort_by_key(|e| e.call);
            let lines: Vec<String> = events
                .iter()
                .map(|e| {
                    format!(
                        "  [{:>5} .. {:>5}] {:?} -> {:?}",
                        e.call, e.ret_at, e.op, e.ret
                    )
                })
                .collect();
            self.fail(format!("linearizability: {v}\n{}", lines.join("\n")));
        }
    }

    fn drive_clients(&mut self) {
        const TIMEOUT: u64 = 2000;
        let now = self.step;
        for c in 0..self.clients.len() {
            if let Some(p) = self.clients[c].pending.take() {
                let client = self.clients[c].id;
                match self.poll_client(client, p) {
                    Ok(event) => self.history.push(event),
                    Err(p) if now >= p.deadline || !self.is_up(p.node) => {
                        if let Waiting::Write { .. } = p.waiting {
                            // The client never learns whether it happened.
                            self.history.push(Event {
                                op: p.op,
                                call: p.call,
                                ret_at: 0,
                                ret: KvRet::Unknown,
                            });
                        }
                    }
                    Err(p) => self.clients[c].pending = Some(p),
                }
                continue;
            }
            if self.rng.gen_range(0..10) != 0 {
                continue;
            }
            self.start_op(c, now + TIMEOUT);
        }
    }

    fn start_op(&mut self, c: usize, deadline: u64) {
        let key = self.rng.gen_range(0..self.keys);
        self.next_value += 1;
        let value = self.next_value;
        let op = match self.rng.gen_range(0..3) {
            0 => KvOp::Put { key, value },
            1 => KvOp::Get { key },
            _ => {
                let expected = match self.rng.gen_range(0..3) {
                    0 => None,
                    _ => Some(self.rng.gen_range(value.saturating_sub(20)..=value)),
                };
                KvOp::Cas {
                    key,
                    expected,
                    new: value,
                }
            }
        };
        let node = match self.leader() {
            Some(l) if self.rng.gen_range(0..10) < 8 => l,
            _ => NodeId(self.rng.gen_range(1..=self.size())),
        };
        let client = &mut self.clients[c];
        client.seq += 1;
        let (id, seq) = (client.id, client.seq);
        let call = self.step;
        let waiting = match op {
            KvOp::Get { .. } => {
                let ctx = id << 32 | seq;
                match self.node_mut(node).map(|r| r.read_index(ctx)) {
                    Some(Ok(())) => Waiting::Read { ctx, index: None },
                    _ => return,
                }
            }
            _ => {
                let mut data = KV_TAG.to_vec();
                data.extend(rmp_serde::to_vec(&(id, seq, op)).expect("serializes"));
                match self.propose(node, Bytes::from(data)) {
                    Ok(_) => Waiting::Write { seq },
                    Err(_) => return, // refused: it never entered any log
                }
            }
        };
        self.clients[c].pending = Some(Pending {
            op,
            node,
            call,
            deadline,
            waiting,
        });
    }

    /// Completes `p` if its node has answered.
    fn poll_client(&mut self, client: u64, mut p: Pending) -> Result<Event, Pending> {
        let now = self.step;
        let i = p.node.0 as usize - 1;
        if self.nodes[i].raw.is_none() {
            return Err(p);
        }
        let node = &mut self.nodes[i];
        let ret = match &mut p.waiting {
            Waiting::Write { seq } => node.applied.results.get(&(client, *seq)).copied(),
            Waiting::Read { ctx, index } => {
                if index.is_none() {
                    if let Some(pos) = node.read_states.iter().position(|r| r.ctx == *ctx) {
                        *index = Some(node.read_states.swap_remove(pos).index);
                    }
                }
                match index {
                    Some(at) if node.applied.index >= *at => {
                        Some(KvRet::Value(node.applied.kv.get(&p.op.key()).copied()))
                    }
                    _ => None,
                }
            }
        };
        match ret {
            Some(ret) => Ok(Event {
                op: p.op,
                call: p.call,
                ret_at: now,
                ret,
            }),
            None => Err(p),
        }
    }

    fn random_crashes(&mut self) {
        let f = self.opts.faults.clone();
        if f.crash <= 0.0 {
            return;
        }
        for id in 1..=self.size() {
            let i = id as usize - 1;
            if self.nodes[i].raw.is_none() {
                if self.step >= self.nodes[i].down_until {
                    self.restart(NodeId(id));
                }
            } else if self.rng.gen_bool(f.crash) {
                let torn = self.rng.gen_bool(f.torn_write);
                if torn {
                    // Crash while persisting: the ready in progress is lost unsynced, after
                    // its early messages went out (as they may).
                    let early = match &mut self.nodes[i].raw {
                        Some(raw) => raw.ready().early_messages,
                        None => Vec::new(),
                    };
                    self.send_all(id, &early);
                }
                let down = self.rng.gen_range(10..500);
                self.crash(NodeId(id));
                self.nodes[i].down_until = self.step + down;
            }
        }
    }

    fn handle_ready(&mut self, id: u32) {
        let i = id as usize - 1;
        let Some(raw) = &mut self.nodes[i].raw else {
            return;
        };
        if !raw.has_ready() {
            return;
        }
        let ready = raw.ready();
        self.send_all(id, &ready.early_messages);
        let (seed, step) = (self.opts.seed, self.step);
        let max_term = self.nodes.iter().map(|n| n.last_term).max().unwrap_or(0);
        let asynchronous = self.opts.async_persist;
        let node = &mut self.nodes[i];
        if !asynchronous {
            node.disk
                .persist(ready.hard_state, ready.snapshot.as_ref(), &ready.entries);
            self.send_all(id, &ready.messages);
        }
        let node = &mut self.nodes[i];
        if let Some(s) = &ready.snapshot {
            self.snapshots_installed += 1;
            node.applied = Applied::restore(&s.data, s.meta.index);
        }
        for e in &ready.committed {
            if e.index <= node.applied.index {
                continue;
            }
            if e.index != node.applied.index + 1 {
                fail_at(
                    seed,
                    step,
                    format!("node {id} applies {} after {}", e.index, node.applied.index),
                );
            }
            node.applied.index = e.index;
            if let Payload::Command(c) = &e.payload {
                node.applied.apply(e.index, c.clone());
            }
            match self.applied_log.get(&e.index) {
                Some((t, p)) if (*t, p) != (e.term, &e.payload) => fail_at(seed, step, format!(
                    "State Machine Safety: node {id} applied ({}, {:?}) at {} where another applied ({t}, {p:?})",
                    e.term, e.payload, e.index
                )),
                Some(_) => {}
                None => {
                    self.applied_log.insert(e.index, (e.term, e.payload.clone()));
                }
            }
            self.committed.entry(e.index).or_insert((e.term, max_term));
        }
        node.read_states.extend(ready.read_states.iter().copied());
        let raw = node.raw.as_mut().expect("alive");
        if asynchronous {
            raw.advance_handed(&ready);
            node.writing.extend(StoreJob::of(ready));
        } else {
            raw.advance(&ready);
        }
        let every = self.opts.snapshot_every;
        if every > 0 && raw.applied_index() >= raw.first_index() + every {
            let index = raw.applied_index();
            let data = encode_commands(&node.applied.commands);
            if let Ok(snap) = raw.compact(index, data) {
                if asynchronous {
                    node.writing.push_back(StoreJob::Compact(snap));
                } else {
                    node.disk.compact(&snap);
                }
            }
        }
    }

    /// The simulated storage thread of `id`: four steps in five it is still busy; otherwise it
    /// writes a random number of the oldest jobs (one fsync for all), then sends their
    /// messages and reports them durable, in order.
    fn finish_writes(&mut self, id: u32) {
        let i = id as usize - 1;
        if self.nodes[i].writing.is_empty() || self.rng.gen_bool(0.8) {
            return;
        }
        let count = self.rng.gen_range(1..=self.nodes[i].writing.len());
        let jobs: Vec<StoreJob> = self.nodes[i].writing.drain(..count).collect();
        let synced = jobs.iter().any(|j| match j {
            StoreJob::Persist(p) => p.sync,
            StoreJob::Compact(_) => true,
        });
        let node = &mut self.nodes[i];
        if synced {
            node.disk.persist(node.unsynced.take(), None, &[]);
        }
        let (mut reports, mut bad) = (Vec::new(), None);
        for job in jobs {
            match job {
                StoreJob::Persist(p) if synced => {
                    node.disk
                        .persist(p.hard_state, p.snapshot.as_ref(), &p.entries);
                    reports.push((p.messages, p.durable));
                }
                StoreJob::Persist(p) => {
                    // Written, not synced: only a commit index may move this way.
                    let base = node.unsynced.unwrap_or(node.disk.hard);
                    if let Some(h) = p.hard_state {
                        if (h.term, h.vote) != (base.term, base.vote) {
                            bad = Some(format!(
                                "node {id}: a write without a sync moves term/vote from {base:?} to {h:?}"
                            ));
                            break;
                        }
                        node.unsynced = Some(h);
                    }
                    reports.push((p.messages, p.durable));
                }
                StoreJob::Compact(snap) => node.disk.compact(&snap),
            }
        }
        if let Some(what) = bad {
            self.fail(what);
        }
        for (messages, durable) in reports {
            self.send_all(id, &messages);
            if let Some(raw) = &mut self.nodes[i].raw {
                raw.on_persisted(&durable);
            }
        }
    }

    fn send_all(&mut self, from: u32, msgs: &[Message]) {
        let revealed = msgs
            .iter()
            .filter(|m| {
                !matches!(
                    m.body,
                    crate::Body::RequestVote { pre: true, .. }
                        | crate::Body::VoteResponse { pre: true, .. }
                )
            })
            .map(|m| m.term)
            .max()
            .unwrap_or(0);
        let node = &mut self.nodes[from as usize - 1];
        node.revealed_term = node.revealed_term.max(revealed);
        if !self.opts.raft.ordered_election {
            for m in msgs {
                self.send(from, m);
            }
            return;
        }
        // An ordered fabric. With barrier epochs (Data Vortex): everything sent in this step
        // is delivered at the next step's barrier, to every receiver in one global order (a
        // random one per epoch), stamped with the epoch; nothing is lost or duplicated.
        // Without (deadline-ordered `ptp`): a message is due `DEADLINE_STEPS` after it was
        // sent and receivers release in (deadline, stamp) order, except that a copy is late
        // with probability `faults.delay` (up to `faults.max_delay` steps more) and then
        // arrives out of the order at that receiver. Identical bodies go out as one
        // multicast: one stamp, one place in the order for all their recipients.
        let epochs = self.opts.raft.barrier_epochs;
        let due = self.step + if epochs { 1 } else { DEADLINE_STEPS };
        for (group, m) in crate::message::group_by_body(msgs) {
            let seq = self.rng.gen();
            let bytes = m.encode_to(crate::message::TO_GROUP);
            for to in group {
                if to.0 == 0 || to.0 > self.size() || self.cut.contains(&(from, to.0)) {
                    continue;
                }
                let f = &self.opts.faults;
                let late = !epochs && self.rng.gen_bool(f.delay);
                let extra = if late {
                    1 + self.rng.gen_range(0..f.max_delay.max(1))
                } else {
                    0
                };
                self.net.push(Reverse(InFlight {
                    due: due + extra,
                    seq,
                    to: to.0,
                    bytes: bytes.clone(),
                }));
            }
        }
    }

    fn send(&mut self, from: u32, m: &Message) {
        let to = m.to.0;
        if to == 0 || to > self.size() || self.cut.contains(&(from, to)) {
            return;
        }
        let f = &self.opts.faults;
        let (drop, dup, delay, max_delay) = (f.drop, f.duplicate, f.delay, f.max_delay);
        if self.rng.gen_bool(drop) {
            return;
        }
        let copies = if self.rng.gen_bool(dup) { 2 } else { 1 };
        let bytes = m.encode();
        for _ in 0..copies {
            let extra = if max_delay > 0 && self.rng.gen_bool(delay) {
                self.rng.gen_range(1..=max_delay)
            } else {
                0
            };
            self.seq += 1;
            self.net.push(Reverse(InFlight {
                due: self.step + 1 + self.rng.gen_range(0..3) + extra,
                seq: self.seq,
                to,
                bytes: bytes.clone(),
            }));
        }
    }

    /// Stops `id`: its volatile state is gone, its disk stays.
    pub fn crash(&mut self, id: NodeId) {
        let n = &mut self.nodes[id.0 as usize - 1];
        n.raw = None;
        n.read_states.clear();
        n.writing.clear(); // never written: lost with the process
        n.unsynced = None;
        n.down_until = u64::MAX;
    }

    /// Restarts `id` from its disk.
    pub fn restart(&mut self, id: NodeId) {
        let i = id.0 as usize - 1;
        if self.nodes[i].raw.is_some() {
            return;
        }
        let disk = self.nodes[i].disk.clone();
        let persisted = Persisted {
            hard_state: disk.hard,
            snapshot: disk.snapshot.clone(),
            entries: disk.entries.clone(),
        };
        let raw = self.boot(id.0, persisted);
        let n = &mut self.nodes[i];
        n.applied = match &disk.snapshot {
            Some(s) => Applied::restore(&s.data, s.meta.index),
            None => Applied::default(),
        };
        n.last_commit = raw.commit_index();
        if self.opts.async_persist {
            // Only the written term counts (see `revealed_term`).
            n.last_term = raw.term();
        }
        let (term, revealed) = (raw.term(), n.revealed_term);
        n.raw = Some(raw);
        n.down_until = 0;
        if term < revealed {
            self.fail(format!(
                "node {id}: restarted in term {term} after sending messages of term {revealed}"
            ));
        }
    }

    /// Whether `id` is running.
    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes[id.0 as usize - 1].raw.is_some()
    }

    /// Cuts every link between different groups (a node in no group is isolated).
    pub fn partition(&mut self, groups: &[Vec<u32>]) {
        self.cut.clear();
        for a in 1..=self.size() {
            for b in 1..=self.size() {
                let together = groups.iter().any(|g| g.contains(&a) && g.contains(&b));
                if a != b && !together {
                    self.cut.push((a, b));
                }
            }
        }
    }

    /// Cuts the links between `id` and everyone else.
    pub fn isolate(&mut self, id: NodeId) {
        for other in 1..=self.size() {
            if other != id.0 {
                self.cut.push((id.0, other));
                self.cut.push((other, id.0));
            }
        }
    }

    /// Cuts one link in both directions.
    pub fn cut_link(&mut self, a: NodeId, b: NodeId) {
        self.cut.push((a.0, b.0));
        self.cut.push((b.0, a.0));
    }

    /// The links currently cut, as unordered pairs.
    pub fn cut_links(&self) -> Vec<(NodeId, NodeId)> {
        let mut v: Vec<(NodeId, NodeId)> = self
            .cut
            .iter()
            .filter(|(a, b)| a < b)
            .map(|(a, b)| (NodeId(*a), NodeId(*b)))
            .collect();
        v.dedup();
        v
    }

    /// Restores one link.
    pub fn heal_link(&mut self, a: NodeId, b: NodeId) {
        self.cut.retain(|l| *l != (a.0, b.0) && *l != (b.0, a.0));
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// A random number from the simulation's seeded generator.
    pub fn random(&mut self, below: u64) -> u64 {
        self.rng.gen_range(0..below.max(1))
    }

    /// The node `id`'s Raft state, if it is up.
    pub fn node(&self, id: NodeId) -> Option<&RawNode> {
        self.nodes[id.0 as usize - 1].raw.as_ref()
    }

    /// The node `id`'s Raft state for direct calls, if it is up.
    pub fn node_mut(&mut self, id: NodeId) -> Option<&mut RawNode> {
        self.nodes[id.0 as usize - 1].raw.as_mut()
    }

    /// The live leader with the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|n| n.raw.as_ref())
            .filter(|r| r.role() == Role::Leader)
            .max_by_key(|r| r.term())
            .map(|r| r.id())
    }

    /// Every term that had a leader, with that leader.
    pub fn leaders(&self) -> &BTreeMap<Term, NodeId> {
        &self.leaders
    }

    /// Proposes `data` at `id`.
    pub fn propose(&mut self, id: NodeId, data: Bytes) -> Result<Index, ProposeError> {
        match self.node_mut(id) {
            Some(raw) => raw.propose(data),
            None => Err(ProposeError::NotLeader { leader: None }),
        }
    }

    /// Proposes at the current leader, if there is one.
    pub fn propose_at_leader(&mut self, data: Bytes) -> Option<Index> {
        let l = self.leader()?;
        self.propose(l, data).ok()
    }

    /// How many nodes have applied the command `data` (up nodes only).
    pub fn applied_count(&self, data: &[u8]) -> usize {
        self.nodes
            .iter()
            .filter(|n| {
                n.raw.is_some() && n.applied.commands.iter().any(|(_, c)| c.as_ref() == data)
            })
            .count()
    }

    /// The index at which `data` was applied anywhere, if it was.
    pub fn applied_index_of(&self, data: &[u8]) -> Option<Index> {
        self.applied_log.iter().find_map(|(i, (_, p))| match p {
            Payload::Command(c) if c.as_ref() == data => Some(*i),
            _ => None,
        })
    }

    /// The commands `id` has applied since its snapshot point, with their indexes.
    pub fn applied_commands(&self, id: NodeId) -> &[(Index, Bytes)] {
        &self.nodes[id.0 as usize - 1].applied.commands
    }

    /// The highest index applied by `id`.
    pub fn applied_index(&self, id: NodeId) -> Index {
        self.nodes[id.0 as usize - 1].applied.index
    }

    /// Read states delivered to `id` and not yet taken.
    pub fn take_read_states(&mut self, id: NodeId) -> Vec<ReadState> {
        std::mem::take(&mut self.nodes[id.0 as usize - 1].read_states)
    }

    /// A one-line-per-node account of the cluster, for failure messages.
    pub fn dump(&self) -> String {
        let mut out = format!("step {} cut {:?}\n", self.step, self.cut_links());
        for (i, n) in self.nodes.iter().enumerate() {
            match &n.raw {
                None => out.push_str(&format!("  n{}: down\n", i + 1)),
                Some(r) => {
                    out.push_str(&format!(
                        "  n{}: {:?} term {} leader {:?} commit {} applied {} log {}..={} members {:?}\n",
                        i + 1,
                        r.role(),
                        r.term(),
                        r.leader(),
                        r.commit_index(),
                        r.applied_index(),
                        r.first_index(),
                        r.last_index(),
                        r.membership()
                    ));
                    for (id, p) in r.progress() {
                        out.push_str(&format!(
                            "      {id:?}: match {} next {} {:?} inflight {} active {}\n",
                            p.matched,
                            p.next,
                            p.mode,
                            p.inflight.len(),
                            p.recent_active
                        ));
                    }
                }
            }
        }
        out
    }

    /// Messages in flight.
    pub fn in_flight(&self) -> usize {
        self.net.len()
    }

    fn check(&mut self) {
        for i in 0..self.nodes.len() {
            let Some(raw) = &self.nodes[i].raw else {
                continue;
            };
            let (id, term, commit, role) = (raw.id(), raw.term(), raw.commit_index(), raw.role());
            if term < self.nodes[i].last_term {
                self.fail(format!(
                    "node {id}: term went back from {} to {term}",
                    self.nodes[i].last_term
                ));
            }
            if commit < self.nodes[i].last_commit {
                self.fail(format!(
                    "node {id}: commit went back from {} to {commit}",
                    self.nodes[i].last_commit
                ));
            }
            // A leadership counts once its term and vote are durable: before that the
            // node sends nothing as leader (asynchronous persistence), and a crash erases it.
            if role == Role::Leader && raw.term_durable() {
                match self.leaders.get(&term) {
                    Some(other) if *other != id => self.fail(format!(
                        "Election Safety: {other} and {id} both lead term {term}"
                    )),
                    Some(_) => {}
                    None => {
                        self.leaders.insert(term, id);
                        self.check_leader_completeness(i);
                    }
                }
            }
            self.nodes[i].last_term = term;
            self.nodes[i].last_commit = commit;
        }
        if self.step % 64 == 0 {
            self.check_log_matching();
        }
    }

    fn check_leader_completeness(&self, i: usize) {
        let raw = self.nodes[i].raw.as_ref().expect("alive");
        for (&index, &(term, seen_at)) in &self.committed {
            if index < raw.first_index() || raw.term() <= seen_at {
                // Compacted into its snapshot (which holds only committed entries), or the
                // leader's term may predate the commitment.
                continue;
            }
            if raw.term_at(index) != Some(term) {
                self.fail(format!(
                    "Leader Completeness: leader {} of term {} lacks committed entry {index} (term {term})",
                    raw.id(),
                    raw.term()
                ));
            }
        }
    }

    /// Log Matching: two logs with an entry of the same index and term agree on every
    /// entry before it.
    pub fn check_log_matching(&self) {
        let live: Vec<&RawNode> = self.nodes.iter().filter_map(|n| n.raw.as_ref()).collect();
        for (a_i, a) in live.iter().enumerate() {
            for b in &live[a_i + 1..] {
                let lo = a.first_index().max(b.first_index());
                let hi = a.last_index().min(b.last_index());
                let mut matched_from = None;
                for idx in (lo..=hi).rev() {
                    if a.term_at(idx).is_some() && a.term_at(idx) == b.term_at(idx) {
                        matched_from = Some(idx);
                        break;
                    }
                }
                let Some(top) = matched_from else { continue };
                for idx in lo..=top {
                    if a.entry(idx) != b.entry(idx) {
                        self.fail(format!(
                            "Log Matching: nodes {} and {} agree at {top} but differ at {idx}",
                            a.id(),
                            b.id()
                        ));
                    }
                }
            }
        }
    }
}

fn fail_at(seed: u64, step: u64, what: String) -> ! {
    panic!("seed {seed} step {step}: {what}")
}

fn encode_commands(commands: &[(Index, Bytes)]) -> Bytes {
    Bytes::from(rmp_serde::to_vec(commands).expect("commands serialize"))
}

fn decode_commands(data: &[u8]) -> Vec<(Index, Bytes)> {
    rmp_serde::from_slice(data).unwrap_or_default()
}

/// A bare message for tests that drive nodes by hand.
pub fn message(from: u32, to: u32, term: Term, body: crate::Body) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term,
        epoch: 0,
        body,
    }
}
