//! Token-call slots, shared fairly: each destination (scheme, host, port) has its own
//! `max_concurrent_calls`, so a destination that never answers holds only its own slots;
//! a namespace holds at most `max_concurrent_calls` across all destinations; and a freed
//! slot goes to the waiting namespace that holds the fewest, ties by arrival (fair queuing
//! between flows, as API Priority and Fairness does in kube-apiserver).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;
use url::Url;

/// Where a call goes: what one connection pool serves, and what a hung server holds up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    scheme: String,
    host: String,
    port: u16,
}

impl Destination {
    /// The destination of a URL: its scheme, its host as the URL parser normalised it
    /// (lower case, IPv6 in brackets), and its port, the scheme's default when none is given.
    pub fn of(url: &Url) -> Destination {
        Destination {
            scheme: url.scheme().to_owned(),
            host: url.host_str().unwrap_or_default().to_owned(),
            port: url.port_or_known_default().unwrap_or_default(),
        }
    }
}

impl fmt::Display for Destination {
    /// Safe to show: scheme, host and port carry no userinfo, path or query.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// The slots of one [`TokenClient`](super::TokenClient) and all its clones.
#[derive(Debug)]
pub(crate) struct Slots {
    state: Mutex<State>,
    per_destination: usize,
    per_tenant: usize,
}

#[derive(Debug, Default)]
struct State {
    next_ticket: u64,
    held: usize,
    /// Slots held per tenant; a tenant holding none has no entry.
    tenants: HashMap<Arc<str>, usize>,
    /// Destinations with a slot held or a waiter; an idle one has no entry, so the map
    /// never holds more than the calls in flight and waiting.
    destinations: HashMap<Destination, Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    held: usize,
    waiting: Vec<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    ticket: u64,
    tenant: Arc<str>,
    grant: oneshot::Sender<()>,
}

/// One granted slot; frees (and is handed on) when dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    slots: Arc<Slots>,
    destination: Destination,
    tenant: Arc<str>,
}

impl Permit {
    pub fn belongs_to(&self, slots: &Arc<Slots>) -> bool {
        Arc::ptr_eq(&self.slots, slots)
    }

    pub fn destination(&self) -> &Destination {
        &self.destination
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.slots.lock();
        state.release(&self.destination, &self.tenant);
        self.slots.dispatch(&mut state);
    }
}

/// A waiter's place in its queue: leaving it (the future dropped) takes the place out, or
/// hands on a slot granted meanwhile.
struct Place<'a> {
    slots: &'a Arc<Slots>,
    destination: &'a Destination,
    tenant: &'a Arc<str>,
    ticket: u64,
    /// Told of the grant, under the lock: alive as long as the place, so a grant never
    /// finds it gone.
    granted: oneshot::Receiver<()>,
    armed: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = self.slots.lock();
        if self.granted.try_recv().is_ok() {
            // Granted while the future was being dropped: the slot is handed on.
            state.release(self.destination, self.tenant);
        } else {
            // Still waiting: only the place goes.
            if let Some(q) = state.destinations.get_mut(self.destination) {
                q.waiting.retain(|w| w.ticket != self.ticket);
            }
            state.forget_if_idle(self.destination);
        }
        self.slots.dispatch(&mut state);
    }
}

impl Slots {
    pub fn new(per_destination: usize, per_tenant: usize) -> Arc<Slots> {
        Arc::new(Slots {
            state: Mutex::default(),
            per_destination,
            per_tenant,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held; a poisoned lock still holds whole counts.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a slot to `destination` for `tenant`. Dropping the future gives up the
    /// place in the queue (or the slot, if it was granted meanwhile).
    pub async fn acquire(self: &Arc<Self>, destination: Destination, tenant: &str) -> Permit {
        let tenant: Arc<str> = Arc::from(tenant);
        let (tx, rx) = oneshot::channel();
        let ticket = {
            let mut state = self.lock();
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            state
                .destinations
                .entry(destination.clone())
                .or_default()
                .waiting
                .push(Waiter {
                    ticket,
                    tenant: tenant.clone(),
                    grant: tx,
                });
            self.dispatch(&mut state);
            ticket
        };
        let mut place = Place {
            slots: self,
            destination: &destination,
            tenant: &tenant,
            ticket,
            granted: rx,
            armed: true,
        };
        // The sender is dropped unsent only by `place` itself (it is still armed here).
        let granted = (&mut place.granted).await;
        debug_assert!(granted.is_ok(), "a waiter's sender is never dropped unsent");
        place.armed = false;
        drop(place);
        Permit {
            slots: self.clone(),
            destination,
            tenant,
        }
    }

    /// Slots held, across all destinations and tenants.
    pub fn held(&self) -> usize {
        self.lock().held
    }

    /// Destinations with a slot held or a waiter.
    pub fn destinations(&self) -> usize {
        self.lock().destinations.len()
    }

    /// Grants free slots, one at a time, each to the waiter whose tenant holds the fewest
    /// slots (then the earliest), among the destinations with a free slot and the tenants
    /// below their ceiling.
    fn dispatch(&self, state: &mut State) {
        loop {
            let mut best: Option<(usize, u64, &Destination, usize)> = None;
            for (destination, queue) in &state.destinations {
                if queue.held >= self.per_destination {
                    continue;
                }
                for (at, w) in queue.waiting.iter().enumerate() {
                    let holds = state.tenants.get(&w.tenant).copied().unwrap_or(0);
                    if holds >= self.per_tenant {
                        continue;
                    }
                    if best.is_none_or(|(h, t, _, _)| (holds, w.ticket) < (h, t)) {
                        best = Some((holds, w.ticket, destination, at));
                    }
                }
            }
            let Some((_, _, destination, at)) = best else {
                return;
            };
            let destination = destination.clone();
            // Invariant: `best` names a queue and a waiter in it, found just above.
            let queue = state
                .destinations
                .get_mut(&destination)
                .expect("the chosen queue exists");
            let waiter = queue.waiting.remove(at);
            if waiter.grant.send(()).is_ok() {
                queue.held += 1;
                state.held += 1;
                *state.tenants.entry(waiter.tenant).or_default() += 1;
            } else {
                state.forget_if_idle(&destination);
            }
        }
    }
}

impl State {
    fn release(&mut self, destination: &Destination, tenant: &Arc<str>) {
        self.held = self.held.saturating_sub(1);
        if let Some(queue) = self.destinations.get_mut(destination) {
            queue.held = queue.held.saturating_sub(1);
        }
        self.forget_if_idle(destination);
        if let Some(holds) = self.tenants.get_mut(tenant) {
            *holds = holds.saturating_sub(1);
            if *holds == 0 {
                self.tenants.remove(tenant);
            }
        }
    }

    fn forget_if_idle(&mut self, destination: &Destination) {
        if self
            .destinations
            .get(destination)
            .is_some_and(|q| q.held == 0 && q.waiting.is_empty())
        {
            self.destinations.remove(destination);
        }
    }
}
