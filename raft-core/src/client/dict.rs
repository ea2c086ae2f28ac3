//! [`DistributedDict`]: rafty's dictionary-like client, a local copy of the whole
//! dictionary refreshed from the cluster according to a [`RefreshPolicy`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{CasOutcome, Client, ClientError};

/// When a [`DistributedDict`] fetches the dictionary again before a read (rafty's
/// `RefreshPolicy*` classes). Writes always go to the cluster at once, whatever the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshPolicy {
    /// Fetch before every read: never outdated (with linearizable reads), one round trip
    /// per read. rafty's default.
    Always,
    /// rafty's `RefreshPolicyLock`: a toggle, flipped at will with
    /// [`DistributedDict::set_refreshing`], that turns pre-read updates on or off. While
    /// `refresh` is `true` (rafty's lock "set", its default) every read fetches first, like
    /// `Always`; while it is `false` reads are served from the local copy, which stays as
    /// it was (apart from this client's own writes) until the toggle is flipped back or
    /// [`DistributedDict::refresh`] is called.
    Lock {
        /// Whether reads fetch first.
        refresh: bool,
    },
    /// Fetch on every n-th read: with `Count(3)`, reads 1 and 2 after a refresh use the
    /// local copy and read 3 fetches first (rafty's `RefreshPolicyCount`, whose counter
    /// triggers when it reaches `maximum`). Any refresh restarts the count. `Count(0)` and
    /// `Count(1)` fetch before every read.
    Count(u64),
    /// Fetch before a read when more than this long has passed since the last refresh
    /// (rafty's `RefreshPolicyTime`).
    Time(Duration),
}

/// A dictionary-like view of the cluster's key-value state (rafty's `DistributedDict`).
///
/// It keeps a copy of the whole dictionary, fetched with [`Client::get_all`] (linearizable
/// unless the client is configured otherwise) when it is created and whenever the
/// [`RefreshPolicy`] says so before a read. Writes go through the client (exactly-once,
/// acknowledged once committed) and, once acknowledged, are also applied to the local copy,
/// so a dictionary reads its own writes whatever the policy.
pub struct DistributedDict {
    client: Client,
    policy: RefreshPolicy,
    cache: BTreeMap<String, Bytes>,
    reads_since_refresh: u64,
    last_refresh: Instant,
    refreshes: u64,
}

impl DistributedDict {
    /// A dictionary over `client`, fetched once now.
    pub fn new(client: Client, policy: RefreshPolicy) -> Result<DistributedDict, ClientError> {
        let mut d = DistributedDict {
            client,
            policy,
            cache: BTreeMap::new(),
            reads_since_refresh: 0,
            last_refresh: Instant::now(),
            refreshes: 0,
        };
        d.refresh()?;
        Ok(d)
    }

    /// The refresh policy.
    pub fn policy(&self) -> RefreshPolicy {
        self.policy
    }

    /// Changes the refresh policy (the read count and the timer restart from now).
    pub fn set_policy(&mut self, policy: RefreshPolicy) {
        self.policy = policy;
        self.reads_since_refresh = 0;
        self.last_refresh = Instant::now();
    }

    /// Flips rafty's lock toggle: `true` makes every read fetch first, `false` serves reads
    /// from the local copy. Switches the policy to [`RefreshPolicy::Lock`] if it was
    /// another one.
    pub fn set_refreshing(&mut self, refresh: bool) {
        self.policy = RefreshPolicy::Lock { refresh };
    }

    /// Fetches the whole dictionary now, whatever the policy.
    pub fn refresh(&mut self) -> Result<(), ClientError> {
        self.cache = self.client.get_all()?;
        self.reads_since_refresh = 0;
        self.last_refresh = Instant::now();
        self.refreshes += 1;
        Ok(())
    }

    /// How many times the dictionary was fetched (creation included).
    pub fn refreshes(&self) -> u64 {
        self.refreshes
    }

    /// When the dictionary was last fetched.
    pub fn last_refresh(&self) -> Instant {
        self.last_refresh
    }

    /// The value of `key` (a read: may fetch first, per the policy).
    pub fn get(&mut self, key: &str) -> Result<Option<Bytes>, ClientError> {
        self.before_read()?;
        Ok(self.cache.get(key).cloned())
    }

    /// Whether `key` is present (a read).
    pub fn contains_key(&mut self, key: &str) -> Result<bool, ClientError> {
        self.before_read()?;
        Ok(self.cache.contains_key(key))
    }

    /// Number of keys (a read).
    pub fn len(&mut self) -> Result<usize, ClientError> {
        self.before_read()?;
        Ok(self.cache.len())
    }

    /// Whether the dictionary is empty (a read).
    pub fn is_empty(&mut self) -> Result<bool, ClientError> {
        Ok(self.len()? == 0)
    }

    /// The keys, sorted (a read).
    pub fn keys(&mut self) -> Result<Vec<String>, ClientError> {
        self.before_read()?;
        Ok(self.cache.keys().cloned().collect())
    }

    /// The whole dictionary (a read).
    pub fn to_map(&mut self) -> Result<BTreeMap<String, Bytes>, ClientError> {
        self.before_read()?;
        Ok(self.cache.clone())
    }

    /// The local copy as it is, without fetching and without counting as a read.
    pub fn cached(&self) -> &BTreeMap<String, Bytes> {
        &self.cache
    }

    /// Sets `key` to `value` in the cluster; returns the previous value.
    pub fn insert(
        &mut self,
        key: &str,
        value: impl Into<Bytes>,
    ) -> Result<Option<Bytes>, ClientError> {
        let value = value.into();
        let previous = self.client.put(key, value.clone())?;
        self.cache.insert(key.to_string(), value);
        Ok(previous)
    }

    /// Removes `key` in the cluster; returns the value it had.
    pub fn remove(&mut self, key: &str) -> Result<Option<Bytes>, ClientError> {
        let previous = self.client.delete(key)?;
        self.cache.remove(key);
        Ok(previous)
    }

    /// Compare-and-set in the cluster; the local copy learns the outcome (the new value if
    /// it swapped, the value found if it did not).
    pub fn compare_and_set(
        &mut self,
        key: &str,
        expected: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<CasOutcome, ClientError> {
        let outcome = self.client.cas(key, expected, new.clone())?;
        let now = if outcome.swapped {
            new
        } else {
            outcome.current.clone()
        };
        match now {
            Some(v) => self.cache.insert(key.to_string(), v),
            None => self.cache.remove(key),
        };
        Ok(outcome)
    }

    /// The client underneath.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Gives the client back.
    pub fn into_client(self) -> Client {
        self.client
    }

    fn before_read(&mut self) -> Result<(), ClientError> {
        self.reads_since_refresh += 1;
        let due = match self.policy {
            RefreshPolicy::Always => true,
            RefreshPolicy::Lock { refresh } => refresh,
            RefreshPolicy::Count(n) => self.reads_since_refresh >= n.max(1),
            RefreshPolicy::Time(d) => self.last_refresh.elapsed() > d,
        };
        if due {
            self.refresh()?;
        }
        Ok(())
    }
}
