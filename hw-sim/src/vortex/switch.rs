//! The switch: the one place where epochs are numbered, the global order is decided and
//! source ids are stamped.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use std::io::Write;
use std::os::unix::net::UnixStream;

use super::endpoint::Ack;
use super::mailbox::Mailbox;
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
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            idle_epoch: Duration::from_millis(5),
            max_message: MAX_MESSAGE,
            jitter: Duration::ZERO,
            seed: 0,
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

/// Where an endpoint's events go: straight into its mailbox in this process, or onto its
/// socket connection (written by the switch thread that produced them, in one write per
/// batch: the endpoint's reader thread always drains its socket, so this cannot block for
/// long, and a thread hop per epoch would cost more than the write).
pub(crate) enum Sink {
    Local(Arc<Mailbox>),
    Remote(UnixStream),
}

impl Sink {
    fn push(&self, events: Vec<Event>) {
        match self {
            Sink::Local(m) => m.apply(events),
            Sink::Remote(stream) => {
                let mut buf = Vec::new();
                for e in &events {
                    buf.extend(super::wire::frame(&super::wire::Frame::from_event(e)));
                }
                // A closed connection is detached by its reader; nothing to do here.
                let _ = (&*stream).write_all(&buf);
            }
        }
    }
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
        port.sink.push(vec![Event::Crashed]);
        st.membership_changed = true;
        self.progress(&mut st);
        true
    }

    /// Fault injection: `node` stops taking part in barriers for `d` (as a stalled host
    /// would), which holds every epoch close until it resumes.
    pub fn pause(&self, node: u32, d: Duration) -> bool {
        let mut st = self.lock();
        let Some(port) = st.ports.get_mut(&node) else {
            return false;
        };
        port.paused_until = Some(Instant::now() + d);
        self.progress(&mut st);
        true
    }

    /// Attaches `node`; returns the open epoch and the attachment's incarnation.
    pub(crate) fn attach(&self, node: u32, sink: Sink) -> Result<(u64, u64), DvError> {
        let mut st = self.lock();
        if st.ports.contains_key(&node) {
            return Err(DvError::InUse);
        }
        st.attachments += 1;
        let incarnation = st.attachments;
        st.ports.insert(
            node,
            Port {
                incarnation,
                sink,
                in_barrier: false,
                paused_until: None,
            },
        );
        st.membership_changed = true;
        let attached = Event::Attached {
            epoch: st.epoch,
            max_message: st.cfg.max_message as u32,
        };
        if let Some(p) = st.ports.get(&node) {
            p.sink.push(vec![attached]);
        }
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

    /// Closes the epoch if it may close now, and wakes the timer when the close waits on
    /// a time earlier than the timer's next look.
    ///
    /// An idle epoch never needs the timer woken: it looks at least every idle period on
    /// its own, and waking a thread per epoch would cost more than the epoch.
    fn progress(&self, st: &mut State) {
        let waits_on_fault =
            st.jitter_until.is_some() || st.ports.values().any(|p| p.paused_until.is_some());
        if try_close(st, Instant::now()) == Closable::Later
            && waits_on_fault
            && deadline(st).is_some_and(|d| d < st.timer_wake)
        {
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

fn try_close(st: &mut State, now: Instant) -> Closable {
    if st.ports.is_empty() || !st.ports.values().all(|p| p.in_barrier) {
        return Closable::Waiting;
    }
    for p in st.ports.values_mut() {
        if p.paused_until.is_some_and(|t| t <= now) {
            p.paused_until = None;
        }
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
    for (node, port) in st.ports.iter_mut() {
        port.in_barrier = false;
        let mut events = out.remove(node).unwrap_or_default();
        events.push(Event::Closed {
            epoch,
            members: members.clone(),
        });
        port.sink.push(events);
    }
    st.epoch += 1;
    st.opened = now;
    st.membership_changed = false;
    st.jitter_until = None;
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
            Closable::Later => deadline(&st).map_or(max_wait, |d| d.saturating_duration_since(now)),
            _ => max_wait,
        }
        .min(max_wait);
        st.timer_wake = now + wait;
        let _ = switch
            .timer
            .wait_timeout(st, wait)
            .unwrap_or_else(|p| p.into_inner());
    }
}
