//! Slots shared fairly between tenants (namespaces): each destination `D` has its own
//! `per_destination` slots, so a destination whose holders never finish holds only its own;
//! a tenant holds at most `per_tenant` across all destinations; and a freed slot goes to the
//! waiting tenant that holds the fewest, ties by arrival (fair queuing between flows, as
//! API Priority and Fairness does in kube-apiserver). Token calls use it per auth
//! destination (`crate::token`); reconciles per controller (`crate::controller`).

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// Fairly shared slots, by destination `D`.
#[derive(Debug)]
pub(crate) struct Slots<D> {
    state: Mutex<State<D>>,
    per_destination: usize,
    per_tenant: usize,
}

#[derive(Debug)]
struct State<D> {
    next_ticket: u64,
    held: usize,
    /// Slots held per tenant; a tenant holding none has no entry.
    tenants: HashMap<Arc<str>, usize>,
    /// Destinations with a slot held or a waiter; an idle one has no entry, so the map
    /// never holds more than the calls in flight and waiting.
    destinations: HashMap<D, Queue>,
}

impl<D> Default for State<D> {
    fn default() -> Self {
        State {
            next_ticket: 0,
            held: 0,
            tenants: HashMap::new(),
            destinations: HashMap::new(),
        }
    }
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
pub(crate) struct Permit<D: Key> {
    slots: Arc<Slots<D>>,
    destination: D,
    tenant: Arc<str>,
}

/// What a destination must be.
pub(crate) trait Key: Clone + Eq + Hash + Debug + Send + Sync + 'static {}
impl<T: Clone + Eq + Hash + Debug + Send + Sync + 'static> Key for T {}

impl<D: Key> Permit<D> {
    pub fn belongs_to(&self, slots: &Arc<Slots<D>>) -> bool {
        Arc::ptr_eq(&self.slots, slots)
    }

    pub fn destination(&self) -> &D {
        &self.destination
    }
}

impl<D: Key> Drop for Permit<D> {
    fn drop(&mut self) {
        let mut state = self.slots.lock();
        state.release(&self.destination, &self.tenant);
        self.slots.dispatch(&mut state);
    }
}

/// A waiter's place in its queue: leaving it (the future dropped) takes the place out, or
/// hands on a slot granted meanwhile.
struct Place<'a, D: Key> {
    slots: &'a Arc<Slots<D>>,
    destination: &'a D,
    tenant: &'a Arc<str>,
    ticket: u64,
    /// Told of the grant, under the lock: alive as long as the place, so a grant never
    /// finds it gone.
    granted: oneshot::Receiver<()>,
    armed: bool,
}

impl<D: Key> Drop for Place<'_, D> {
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

impl<D: Key> Slots<D> {
    pub fn new(per_destination: usize, per_tenant: usize) -> Arc<Slots<D>> {
        Arc::new(Slots {
            state: Mutex::default(),
            per_destination,
            per_tenant,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<D>> {
        // Nothing panics while the lock is held; a poisoned lock still holds whole counts.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a slot to `destination` for `tenant`. Dropping the future gives up the
    /// place in the queue (or the slot, if it was granted meanwhile).
    pub async fn acquire(self: &Arc<Self>, destination: D, tenant: &str) -> Permit<D> {
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
    fn dispatch(&self, state: &mut State<D>) {
        loop {
            let mut best: Option<(usize, u64, &D, usize)> = None;
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

impl<D: Key> State<D> {
    fn release(&mut self, destination: &D, tenant: &Arc<str>) {
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

    fn forget_if_idle(&mut self, destination: &D) {
        if self
            .destinations
            .get(destination)
            .is_some_and(|q| q.held == 0 && q.waiting.is_empty())
        {
            self.destinations.remove(destination);
        }
    }
}
