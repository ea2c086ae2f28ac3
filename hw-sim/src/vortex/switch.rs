//! The switch: the one place where epochs are numbered, the global order is decided and
//! source ids are stamped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::endpoint::Ack;
use super::mailbox::Mailbox;
use super::outbox::{Outbox, OutboxError, WhenFull};
use super::wire::{self, Frame};
use super::{DvError, MAX_MESSAGE};

/// Settings of one emulated switch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchConfig {
    /// How long an epoch with no traffic and no membership change stays open.
    pub idle_epoch: Duration,
    /// Largest message accepted, in bytes.
    pub max_message: usize,
    /// Each epoch close is delayed by a random time up to this (latency jitter; no loss).
    pub jitter: Duration,
    /// Seed of the jitter.
    pub seed: u64,
    /// How long an epoch waits for a member that has not entered its barrier (or is
    /// paused) once another member has: a member still out when it runs out is evicted,
    /// detached as if it had crashed, so that one stalled process (a stopped one, say)
    /// costs the others this long and no more. The wait runs from the first entry into
    /// the open epoch's barrier, or from the member's attachment if that came later.
    /// `None` waits forever, as the model without faults has it.
    ///
    /// The default, 100 ms, is below the shortest election timeout weft uses (150 ms), so
    /// that a stalled follower does not silence a healthy leader into an election, and far
    /// above what a member that is merely busy takes between two barriers.
    pub barrier_deadline: Option<Duration>,
    /// Bytes of events a member attached over a socket may leave unread before the switch
    /// gives up on it and evicts it (its epochs keep closing meanwhile: nobody waits on
    /// its reading). A single batch larger than this is still taken by an empty queue.
    pub port_queue: usize,
    /// The node ids allowed to attach (`None`: any). Any other id is refused with
    /// [`DvError::Denied`], so that a stray process cannot join the fabric under an id
    /// outside the cluster.
    pub members: Option<BTreeSet<u32>>,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            idle_epoch: Duration::from_millis(5),
            max_message: MAX_MESSAGE,
            jitter: Duration::ZERO,
            seed: 0,
            barrier_deadline: Some(Duration::from_millis(100)),
            port_queue: 64 << 20,
            members: None,
        }
    }
}

/// What the switch tells one endpoint.
#[derive(Clone, Debug)]
pub(crate) enum Event {
    /// The endpoint is attached: the open epoch and the message limit.
    Attached { epoch: u64, max_message: u32 },
    /// A message of a closed epoch.
    Deliver {
        src: u32,
        epoch: u64,
        bytes: Arc<[u8]>,
    },
    /// The fate of one of the endpoint's messages.
    Ack(Ack),
    /// An epoch closed; the members attached at the close.
    Closed { epoch: u64, members: Arc<[u32]> },
    /// The endpoint was crashed by fault injection.
    Crashed,
}

/// Where an endpoint's events go: straight into its mailbox in this process, or into its
/// connection's [`Outbox`] (one buffer per batch), which never makes the switch wait on
/// the endpoint reading: the switch pushes under its one lock, and a member that stopped
/// reading must not stop the others.
pub(crate) enum Sink {
    Local(Arc<Mailbox>),
    Remote(Outbox),
}

impl Sink {
    /// Hands `events` over without waiting; fails only when a remote member has left more
    /// than [`SwitchConfig::port_queue`] bytes unread.
    fn push(&self, events: Vec<Event>) -> Result<(), OutboxError> {
        match self {
            Sink::Local(m) => {
                m.apply(events);
                Ok(())
            }
            Sink::Remote(out) => {
                let mut buf = Vec::new();
                for e in &events {
                    buf.extend(wire::frame(&Frame::from_event(e)));
                }
                out.push(buf, WhenFull::Refuse)
            }
        }
    }

    /// Tells the endpoint it crashed, after what it was sent already.
    fn crash(self) {
        match self {
            Sink::Local(m) => m.apply(vec![Event::Crashed]),
            Sink::Remote(out) => {
                let _ = out.push(
                    wire::frame(&Frame::from_event(&Event::Crashed)),
                    WhenFull::Exceed,
                );
                out.close();
            }
        }
    }

    /// Cuts the endpoint off at once: an evicted member's backlog is dropped with it.
    fn cut(self) {
        match self {
            Sink::Local(m) => m.disconnect(),
            Sink::Remote(out) => out.cut(),
        }
    }
}

/// Why the switch evicted a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum Eviction {
    #[error("it did not enter the barrier within {0:?} of the others")]
    MissedBarrier(Duration),
    #[error("its connection took no more events: {0}")]
    Connection(OutboxError),
}

/// Recipients of an injected message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Group {
    /// Every attached endpoint except the sender.
    All,
    /// These nodes (the sender itself included if listed: loopback in the global order).
    Nodes(Vec<u32>),
}

struct Injected {
    src: u32,
    ticket: u64,
    group: Group,
    bytes: Arc<[u8]>,
}

struct Port {
    incarnation: u64,
    sink: Sink,
    in_barrier: bool,
    paused_until: Option<Instant>,
    attached_at: Instant,
}

impl Port {
    /// In the barrier and not held by a pause: the epoch waits on it no longer.
    fn ready(&self) -> bool {
        self.in_barrier && self.paused_until.is_none()
    }
}

struct State {
    cfg: SwitchConfig,
    /// The open epoch's number.
    epoch: u64,
    opened: Instant,
    ports: BTreeMap<u32, Port>,
    pending: Vec<Injected>,
    membership_changed: bool,
    jitter_until: Option<Instant>,
    rng: u64,
    attachments: u64,
    /// When the timer thread will next look, so it is woken only for an earlier deadline.
    timer_wake: Instant,
    /// Since when a member is ready in the open epoch's barrier (`None` while none is):
    /// the barrier deadline runs from here.
    waiting_since: Option<Instant>,
}

/// An emulated Data Vortex switch. Shared by its endpoints; a background thread closes
/// epochs whose close waits on time (idle epochs, pauses, jitter) and ends with the switch.
pub struct Switch {
    state: Mutex<State>,
    timer: Condvar,
}

impl Switch {
    /// A new switch with no endpoints.
    pub fn new(cfg: SwitchConfig) -> Arc<Switch> {
        let rng = cfg.seed | 1;
        let switch = Arc::new(Switch {
            state: Mutex::new(State {
                cfg,
                epoch: 1,
                opened: Instant::now(),
                ports: BTreeMap::new(),
                pending: Vec::new(),
                membership_changed: false,
                jitter_until: None,
                rng,
                attachments: 0,
                timer_wake: Instant::now(),
                waiting_since: None,
            }),
            timer: Condvar::new(),
        });
        let weak = Arc::downgrade(&switch);
        std::thread::Builder::new()
            .name("dv-switch-timer".into())
            .spawn(move || run_timer(weak))
            .expect("spawning the switch timer thread");
        switch
    }

    /// The in-process switch called `name`, created with default settings on first use and
    /// shared by every `local:NAME` endpoint while any of them is open.
    pub fn local(name: &str) -> Arc<Switch> {
        static REGISTRY: OnceLock<Mutex<HashMap<String, Weak<Switch>>>> = OnceLock::new();
        let mut reg = REGISTRY
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        reg.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = reg.get(name).and_then(Weak::upgrade) {
            return s;
        }
        let s = Switch::new(SwitchConfig::default());
        reg.insert(name.to_string(), Arc::downgrade(&s));
        s
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the maximum latency jitter added to each epoch close.
    pub fn set_jitter(&self, jitter: Duration) {
        self.lock().cfg.jitter = jitter;
    }

    /// The largest message this switch accepts.
    pub fn max_message(&self) -> usize {
        self.lock().cfg.max_message
    }

    /// The members attached now, ascending.
    pub fn members(&self) -> Vec<u32> {
        self.lock().ports.keys().copied().collect()
    }

    /// The open epoch's number.
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Fault injection: `node` crashes. Its later calls fail with [`DvError::Closed`]; what
    /// it injected before stays in the epoch; the others see it gone at the next barrier.
    pub fn crash(&self, node: u32) -> bool {
        let mut st = self.lock();
        let Some(port) = st.ports.remove(&node) else {
            return false;
        };
        port.sink.crash();
        st.membership_changed = true;
        self.progress(&mut st);
        true
    }

    /// Fault injection: `node` stops taking part in barriers for `d` (as a stalled host
    /// would), which holds every epoch close until it resumes, or until the barrier
    /// deadline evicts it.
    pub fn pause(&self, node: u32, d: Duration) -> bool {
        let mut st = self.lock();
        let Some(port) = st.ports.get_mut(&node) else {
            return false;
        };
        port.paused_until = Some(Instant::now() + d);
        self.progress(&mut st);
        true
    }

    /// Attaches `node`; returns the open epoch and the attachment's incarnation. A refused
    /// attachment's sink is dropped unused.
    pub(crate) fn attach(&self, node: u32, sink: Sink) -> Result<(u64, u64), DvError> {
        let mut st = self.lock();
        if st.cfg.members.as_ref().is_some_and(|m| !m.contains(&node)) {
            tracing::warn!(node, "refused an attachment: not a member of this fabric");
            return Err(DvError::Denied);
        }
        if st.ports.contains_key(&node) {
            return Err(DvError::InUse);
        }
        let attached = Event::Attached {
            epoch: st.epoch,
            max_message: st.cfg.max_message as u32,
        };
        // A new connection's queue is empty: it takes the first event whatever its size.
        sink.push(vec![attached]).map_err(|_| DvError::Io)?;
        st.attachments += 1;
        let incarnation = st.attachments;
        st.ports.insert(
            node,
            Port {
                incarnation,
                sink,
                in_barrier: false,
                paused_until: None,
                attached_at: Instant::now(),
            },
        );
        st.membership_changed = true;
        Ok((st.epoch, incarnation))
    }

    /// An orderly leave (or a lost connection) of one attachment of `node` (a later
    /// attachment of the same id is left alone): the others see it at the next barrier.
    pub(crate) fn detach(&self, node: u32, incarnation: u64) {
        let mut st = self.lock();
        if st
            .ports
            .get(&node)
            .is_some_and(|p| p.incarnation == incarnation)
        {
            st.ports.remove(&node);
            st.membership_changed = true;
            self.progress(&mut st);
        }
    }

    /// Adds a message from `src` (as the switch knows it) to the open epoch.
    pub(crate) fn inject(
        &self,
        src: u32,
        ticket: u64,
        group: Group,
        bytes: Arc<[u8]>,
    ) -> Result<(), DvError> {
        let mut st = self.lock();
        if !st.ports.contains_key(&src) {
            return Err(DvError::Closed);
        }
        if bytes.len() > st.cfg.max_message {
            return Err(DvError::TooLarge);
        }
        st.pending.push(Injected {
            src,
            ticket,
            group,
            bytes,
        });
        self.progress(&mut st);
        Ok(())
    }

    /// `node` enters the barrier of the open epoch.
    pub(crate) fn enter_barrier(&self, node: u32) -> Result<(), DvError> {
        let mut st = self.lock();
        let port = st.ports.get_mut(&node).ok_or(DvError::Closed)?;
        port.in_barrier = true;
        self.progress(&mut st);
        Ok(())
    }

    /// Closes the epoch if it may close now (evicting members past the barrier deadline
    /// first), and wakes the timer when the close or an eviction waits on a time earlier
    /// than the timer's next look.
    ///
    /// An idle epoch never needs the timer woken: it looks at least every idle period on
    /// its own, and waking a thread per epoch would cost more than the epoch.
    fn progress(&self, st: &mut State) {
        let waits_on_fault =
            st.jitter_until.is_some() || st.ports.values().any(|p| p.paused_until.is_some());
        let next = match try_close(st, Instant::now()) {
            Closable::Later if waits_on_fault => deadline(st),
            Closable::Waiting => eviction_due(st),
            _ => None,
        };
        if next.is_some_and(|d| d < st.timer_wake) {
            self.timer.notify_all();
        }
    }
}

#[derive(PartialEq, Eq, Debug)]
enum Closable {
    /// Closed just now.
    Closed,
    /// Waiting on an endpoint to enter the barrier.
    Waiting,
    /// Waiting on time only (idle epoch, pause, jitter).
    Later,
}

/// The earliest instant at which a time-blocked epoch might close.
fn deadline(st: &State) -> Option<Instant> {
    let mut d = st
        .ports
        .values()
        .filter_map(|p| p.paused_until)
        .max()
        .or(st.jitter_until);
    if st.pending.is_empty() && !st.membership_changed {
        let idle = st.opened + st.cfg.idle_epoch;
        d = Some(d.map_or(idle, |x| x.max(idle)));
    }
    d
}

/// When the first member still keeping the open epoch waiting is due for eviction.
fn eviction_due(st: &State) -> Option<Instant> {
    let (since, limit) = (st.waiting_since?, st.cfg.barrier_deadline?);
    st.ports
        .values()
        .filter(|p| !p.ready())
        .map(|p| since.max(p.attached_at) + limit)
        .min()
}

/// Evicts the members that kept a waiting epoch past the barrier deadline.
fn evict_stragglers(st: &mut State, now: Instant) {
    if !st.ports.values().any(Port::ready) {
        st.waiting_since = None;
        return;
    }
    let since = *st.waiting_since.get_or_insert(now);
    let Some(limit) = st.cfg.barrier_deadline else {
        return;
    };
    let late: Vec<u32> = st
        .ports
        .iter()
        .filter(|(_, p)| !p.ready() && now >= since.max(p.attached_at) + limit)
        .map(|(n, _)| *n)
        .collect();
    for node in late {
        evict(st, node, Eviction::MissedBarrier(limit));
    }
}

/// Detaches `node` as if it had crashed: the others see it gone at the next barrier, its
/// own calls fail with [`DvError::Closed`], and its id is free to attach again.
fn evict(st: &mut State, node: u32, why: Eviction) {
    if let Some(port) = st.ports.remove(&node) {
        tracing::warn!(node, epoch = st.epoch, "evicted a member: {why}");
        port.sink.cut();
        st.membership_changed = true;
    }
}

fn try_close(st: &mut State, now: Instant) -> Closable {
    for p in st.ports.values_mut() {
        if p.paused_until.is_some_and(|t| t <= now) {
            p.paused_until = None;
        }
    }
    evict_stragglers(st, now);
    if st.ports.is_empty() || !st.ports.values().all(|p| p.in_barrier) {
        return Closable::Waiting;
    }
    if st.ports.values().any(|p| p.paused_until.is_some()) {
        return Closable::Later;
    }
    let busy = !st.pending.is_empty() || st.membership_changed;
    if !busy && now < st.opened + st.cfg.idle_epoch {
        return Closable::Later;
    }
    if !st.cfg.jitter.is_zero() {
        let until = *st.jitter_until.get_or_insert_with(|| {
            st.rng ^= st.rng << 13;
            st.rng ^= st.rng >> 7;
            st.rng ^= st.rng << 17;
            let max = st.cfg.jitter.as_nanos().max(1) as u64;
            now + Duration::from_nanos(st.rng % max)
        });
        if now < until {
            return Closable::Later;
        }
    }
    close(st, now);
    Closable::Closed
}

/// Delivers the epoch: messages in the global order, then acknowledgements, then the close.
fn close(st: &mut State, now: Instant) {
    let epoch = st.epoch;
    let mut out: BTreeMap<u32, Vec<Event>> = st.ports.keys().map(|k| (*k, Vec::new())).collect();
    let members: Arc<[u32]> = st.ports.keys().copied().collect();
    for m in std::mem::take(&mut st.pending) {
        let (mut delivered, mut refused) = (0u32, 0u32);
        let mut deliver = |node: u32, out: &mut BTreeMap<u32, Vec<Event>>| match out.get_mut(&node)
        {
            Some(events) => {
                events.push(Event::Deliver {
                    src: m.src,
                    epoch,
                    bytes: m.bytes.clone(),
                });
                delivered += 1;
            }
            None => refused += 1,
        };
        match &m.group {
            Group::All => {
                for &n in members.iter().filter(|n| **n != m.src) {
                    deliver(n, &mut out);
                }
            }
            Group::Nodes(nodes) => {
                for n in nodes {
                    deliver(*n, &mut out);
                }
            }
        }
        if let Some(events) = out.get_mut(&m.src) {
            events.push(Event::Ack(Ack {
                ticket: m.ticket,
                epoch,
                delivered,
                refused,
            }));
        }
    }
    let mut unread = Vec::new();
    for (node, port) in st.ports.iter_mut() {
        port.in_barrier = false;
        let mut events = out.remove(node).unwrap_or_default();
        events.push(Event::Closed {
            epoch,
            members: members.clone(),
        });
        if let Err(e) = port.sink.push(events) {
            unread.push((*node, e));
        }
    }
    st.epoch += 1;
    st.opened = now;
    st.membership_changed = false;
    st.jitter_until = None;
    st.waiting_since = None;
    for (node, e) in unread {
        evict(st, node, Eviction::Connection(e));
    }
}

fn run_timer(weak: Weak<Switch>) {
    while let Some(switch) = weak.upgrade() {
        if Arc::strong_count(&switch) == 1 {
            return;
        }
        let mut st = switch.lock();
        let now = Instant::now();
        let max_wait = st.cfg.idle_epoch.max(Duration::from_micros(100));
        let wait = match try_close(&mut st, now) {
            Closable::Later => deadline(&st),
            Closable::Waiting => eviction_due(&st),
            Closable::Closed => None,
        }
        .map_or(max_wait, |d| d.saturating_duration_since(now))
        .min(max_wait);
        st.timer_wake = now + wait;
        let _ = switch
            .timer
            .wait_timeout(st, wait)
            .unwrap_or_else(|p| p.into_inner());
    }
}
