//! Slots shared fairly between tenants (namespaces): each destination `D` has its own
//! `per_destination` slots, so a destination whose holders never finish holds only its own;
//! a tenant holds at most `per_tenant` across all destinations; and a freed slot goes to the
//! waiting tenant that holds the fewest, ties by arrival (fair queuing between flows, as
//! API Priority and Fairness does in kube-apiserver). Token calls use it per auth
//! destination (`crate::token`); reconciles per controller (`crate::controller`).

use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

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
    destinations: HashMap<D, Queue<D>>,
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

/// One destination's slots held, and its waiters in one line per tenant (first come,
/// first served within a tenant): a grant compares the lines' first waiters only, so it
/// costs the lines (tenants waiting, per destination), not the waiters: a cold start queues
/// thousands of one tenant for one destination.
#[derive(Debug)]
struct Queue<D> {
    held: usize,
    waiting: HashMap<Arc<str>, VecDeque<Waiter<D>>>,
}

impl<D> Default for Queue<D> {
    fn default() -> Self {
        Queue {
            held: 0,
            waiting: HashMap::new(),
        }
    }
}

struct Waiter<D> {
    ticket: u64,
    grant: Grant<D>,
}

/// How a waiter learns of its slot.
enum Grant<D> {
    /// A task awaiting it (`Slots::acquire`).
    Task(oneshot::Sender<()>),
    /// An entry with no task behind it (`Slots::enter`): its owner is asked, under the
    /// lock, whether `id` still wants a slot (an entry that does not goes without one), and
    /// is handed the slot once the lock is released.
    Entry {
        id: Arc<str>,
        owner: Weak<dyn Owner<D>>,
    },
}

/// What keeps entries in the queue (`Slots::enter`) for the things it names by id.
pub(crate) trait Owner<D: Key>: Send + Sync {
    /// Whether `id` still waits for a slot. Asked under the queue's lock: it must not
    /// touch the queue.
    fn wanted(&self, id: &str) -> bool;
    /// `id`'s slot, granted. Called with no lock of the queue held.
    fn granted(&self, id: Arc<str>, permit: Permit<D>);
}

/// Slots granted to entries under the lock, handed to their owners once it is released.
type Handover<D> = Vec<(D, Arc<str>, u64, Arc<str>, Weak<dyn Owner<D>>)>;

impl<D> std::fmt::Debug for Waiter<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter")
            .field("ticket", &self.ticket)
            .finish()
    }
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
        let handover = self.slots.dispatch(&mut state, None);
        drop(state);
        self.slots.hand_over(handover, None);
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
            if let Some(q) = state.destinations.get_mut(self.destination)
                && let Some(line) = q.waiting.get_mut(self.tenant)
            {
                // A line is in ticket order: its place is found, not searched for.
                if let Ok(at) = line.binary_search_by_key(&self.ticket, |w| w.ticket) {
                    line.remove(at);
                }
                if line.is_empty() {
                    q.waiting.remove(self.tenant);
                }
            }
            state.forget_if_idle(self.destination);
        }
        let handover = self.slots.dispatch(&mut state, None);
        drop(state);
        self.slots.hand_over(handover, None);
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
                .entry(tenant.clone())
                .or_default()
                .push_back(Waiter {
                    ticket,
                    grant: Grant::Task(tx),
                });
            let handover = self.dispatch(&mut state, None);
            drop(state);
            self.hand_over(handover, None);
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

    /// A slot to `destination` for `tenant`, now if this entry is the one the queue grants
    /// next; else `id` keeps a place in the queue, with no task behind it, and `owner` is
    /// handed the slot when the queue grants it (and `owner.wanted(id)` still says so).
    pub fn enter(
        self: &Arc<Self>,
        destination: D,
        tenant: &str,
        id: Arc<str>,
        owner: Weak<dyn Owner<D>>,
    ) -> Option<Permit<D>> {
        let tenant: Arc<str> = Arc::from(tenant);
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state
            .destinations
            .entry(destination)
            .or_default()
            .waiting
            .entry(tenant)
            .or_default()
            .push_back(Waiter {
                ticket,
                grant: Grant::Entry { id, owner },
            });
        let handover = self.dispatch(&mut state, Some(ticket));
        drop(state);
        self.hand_over(handover, Some(ticket))
    }

    /// Hands slots granted to entries to their owners, but the one of ticket `mine`, which
    /// is returned.
    fn hand_over(self: &Arc<Self>, handover: Handover<D>, mine: Option<u64>) -> Option<Permit<D>> {
        let mut own = None;
        for (destination, tenant, ticket, id, owner) in handover {
            let permit = Permit {
                slots: self.clone(),
                destination,
                tenant,
            };
            if Some(ticket) == mine {
                own = Some(permit);
            } else if let Some(owner) = owner.upgrade() {
                owner.granted(id, permit);
            }
            // An owner gone: the permit dropped here hands the slot on.
        }
        own
    }

    /// Slots held, across all destinations and tenants.
    pub fn held(&self) -> usize {
        self.lock().held
    }

    /// Destinations with a slot held or a waiter.
    pub fn destinations(&self) -> usize {
        self.lock().destinations.len()
    }

    /// Places in the queues.
    #[cfg(test)]
    fn waiters(&self) -> usize {
        let state = self.lock();
        let lines = state.destinations.values().flat_map(|q| q.waiting.values());
        lines.map(std::collections::VecDeque::len).sum()
    }

    /// Grants free slots, one at a time, each to the waiter whose tenant holds the fewest
    /// slots (then the earliest), among the destinations with a free slot and the tenants
    /// below their ceiling.
    /// The entry of ticket `entering`, entered just now, wants its slot without asking.
    fn dispatch(&self, state: &mut State<D>, entering: Option<u64>) -> Handover<D> {
        let mut handover = Vec::new();
        loop {
            let mut best: Option<(usize, u64, &D, &Arc<str>)> = None;
            for (destination, queue) in &state.destinations {
                if queue.held >= self.per_destination {
                    continue;
                }
                for (tenant, line) in &queue.waiting {
                    let holds = state.tenants.get(tenant).copied().unwrap_or(0);
                    let Some(first) = line.front().filter(|_| holds < self.per_tenant) else {
                        continue;
                    };
                    if best.is_none_or(|(h, t, _, _)| (holds, first.ticket) < (h, t)) {
                        best = Some((holds, first.ticket, destination, tenant));
                    }
                }
            }
            let Some((_, _, destination, tenant)) = best else {
                return handover;
            };
            let (destination, tenant) = (destination.clone(), tenant.clone());
            // Invariant: `best` names a queue and a tenant's line in it, found just above,
            // and a line is never left empty.
            let queue = state
                .destinations
                .get_mut(&destination)
                .expect("the chosen queue exists");
            let line = queue
                .waiting
                .get_mut(&tenant)
                .expect("the chosen line exists");
            let waiter = line.pop_front().expect("a line is never empty");
            if line.is_empty() {
                queue.waiting.remove(&tenant);
            }
            let granted = match waiter.grant {
                Grant::Task(grant) => grant.send(()).is_ok(),
                Grant::Entry { id, owner } => {
                    let wanted = Some(waiter.ticket) == entering
                        || owner.upgrade().is_some_and(|o| o.wanted(&id));
                    if wanted {
                        let ticket = waiter.ticket;
                        handover.push((destination.clone(), tenant.clone(), ticket, id, owner));
                    }
                    wanted
                }
            };
            if granted {
                queue.held += 1;
                state.held += 1;
                *state.tenants.entry(tenant).or_default() += 1;
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

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::Slots;

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_tenant_holding_fewest_and_each_tenants_line_keeps_its_order()
    {
        let slots = Slots::<()>::new(2, 2);
        let (h1, h2) = (slots.acquire((), "a").await, slots.acquire((), "a").await);
        // A long line of one tenant, then one waiter of another.
        let mut line: Vec<_> = (0..1000)
            .map(|_| Box::pin(slots.acquire((), "a")))
            .collect();
        for w in &mut line {
            assert!((&mut *w).now_or_never().is_none());
        }
        let mut other = Box::pin(slots.acquire((), "b"));
        assert!((&mut other).now_or_never().is_none());

        // b holds none, a one: b goes first, past a's whole line.
        drop(h1);
        let b = (&mut other)
            .now_or_never()
            .expect("b is granted the freed slot");
        assert!((&mut line[0]).now_or_never().is_none());
        // Then a's line, in its order.
        drop(h2);
        let first = (&mut line[0])
            .now_or_never()
            .expect("a's first waiter is next");
        assert!((&mut line[1]).now_or_never().is_none());
        assert!(line.last_mut().unwrap().now_or_never().is_none());

        // Waiters that leave take their places with them; once all is released, nothing
        // of the destination stays.
        drop(line);
        assert_eq!(
            slots.waiters(),
            0,
            "a place left goes at once, not at the next grant"
        );
        drop((b, first));
        assert_eq!((slots.held(), slots.destinations()), (0, 0));
    }
}
