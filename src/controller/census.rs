//! One leadership term's census of claims (see `memory`): the credentials still to read per
//! auth destination, and the due credentials waiting for it. Every controller of the term
//! shares one, so the census a reconcile in one namespace's controller completes wakes the
//! credentials waiting in another's at once (`Context::census_advance`, at the end of every
//! reconcile, and every 10 s for a census completed otherwise: its last credential left
//! with no reconcile, or its patience ran out, or it completed within a reconcile still
//! running). It also knows each controller of the term, so that a credential is woken
//! through the controller that watches it, whichever controller asks
//! (`Context::wake_credential`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use kube::runtime::reflector::{ObjectRef, Store};

use super::StoredCredential;
use super::lock;
use super::parked::Parked;

#[derive(Default)]
pub struct Census {
    /// The auth destinations whose credentials have all been read in this term.
    pub(super) done: Mutex<HashSet<String>>,
    /// Per destination, the credentials still to read, listed once from the stores.
    pub(super) queues: Mutex<Option<HashMap<String, VecDeque<String>>>>,
    /// Per destination whose census is not complete, the credentials waiting for it to
    /// spend, with the controller that wakes each: woken once it completes (seen at the
    /// end of a reconcile, or at the term's look every 10 s), not each polling it.
    pub(super) waiting: Mutex<HashMap<String, Waiters>>,
    /// When the census was first listed (its patience counts from then).
    pub(super) listed_at: OnceLock<tokio::time::Instant>,
    /// Turned true once each store of the term has its first list (none: the stores are
    /// taken as listed).
    pub(super) listed: Vec<tokio::sync::watch::Receiver<bool>>,
    /// Each controller of the term: its store, and the parking lot that wakes its
    /// credentials.
    controllers: Mutex<Vec<(Store<StoredCredential>, Arc<Parked>)>>,
}

/// The credentials waiting for one destination's census, each with the parking lot of its
/// controller, which wakes it.
pub(super) type Waiters = HashMap<ObjectRef<StoredCredential>, Arc<Parked>>;

impl Census {
    /// The census of a term whose stores report their first list on `listed`.
    pub fn new(listed: Vec<tokio::sync::watch::Receiver<bool>>) -> Self {
        Census {
            listed,
            ..Census::default()
        }
    }

    /// A controller of the term, watching `store`, whose credentials `parked` wakes.
    pub(super) fn watched_by(&self, store: Store<StoredCredential>, parked: Arc<Parked>) {
        lock(&self.controllers).push((store, parked));
    }

    /// The parking lot that wakes `credential`: its controller's.
    pub(super) fn parked_for(
        &self,
        credential: &ObjectRef<StoredCredential>,
    ) -> Option<Arc<Parked>> {
        lock(&self.controllers)
            .iter()
            .find(|(store, _)| store.get(credential).is_some())
            .map(|(_, parked)| parked.clone())
    }

    /// Registers `credential` (woken through `parked`) as waiting for the census of
    /// `destination`, unless it has completed since it was looked at: then there is
    /// nothing to wait for (false). Whoever completes a census marks it done, then takes
    /// its waiters under the `waiting` lock, which is held here while `done` is read: a
    /// waiter either sees the census done or is among those taken.
    pub(super) fn wait(
        &self,
        destination: String,
        credential: ObjectRef<StoredCredential>,
        parked: &Arc<Parked>,
    ) -> bool {
        let mut waiting = lock(&self.waiting);
        if lock(&self.done).contains(&destination) {
            return false;
        }
        waiting
            .entry(destination)
            .or_default()
            .entry(credential)
            .or_insert_with(|| parked.clone());
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::controller::StoredCredential;

    use futures::{FutureExt, StreamExt};
    use kube::runtime::reflector::ObjectRef;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher;

    use super::Census;
    use crate::controller::parked::Parked;
    use crate::crd::EagleEyeCredential;
    use crate::fixtures;

    fn a() -> ObjectRef<StoredCredential> {
        ObjectRef::new("a").within("one")
    }

    fn credential(ns: &str, name: &str) -> EagleEyeCredential {
        let mut cr = EagleEyeCredential::test();
        cr.metadata.namespace = Some(ns.into());
        cr.metadata.name = Some(name.into());
        cr
    }

    /// Two controllers of one term, sharing its census: one watching namespace `one`
    /// (credential `a`), the other `two` (credential `b`).
    fn two_controllers() -> (
        crate::controller::Shared,
        Arc<crate::controller::Context>,
        Arc<crate::controller::Context>,
    ) {
        let (mut one, mut two) = (Writer::default(), Writer::default());
        one.apply_watcher_event(&watcher::Event::Apply(credential("one", "a").into()));
        two.apply_watcher_event(&watcher::Event::Apply(credential("two", "b").into()));
        let stores = vec![one.as_reader(), two.as_reader()];
        let shared = fixtures::shared(jiff::Timestamp::now);
        let census = Arc::new(Census::default());
        let context = |store| {
            let all = stores.clone();
            let now = jiff::Timestamp::now;
            fixtures::context_over(store, all, shared.clone(), now, census.clone()).0
        };
        let (one, two) = (context(stores[0].clone()), context(stores[1].clone()));
        (shared, one, two)
    }

    #[tokio::test]
    async fn the_controller_that_completes_a_census_wakes_those_waiting_in_another() {
        let (shared, one, two) = two_controllers();
        let (mut woken_in_one, mut woken_in_two) = (one.take_wakes(), two.take_wakes());
        let url = url::Url::parse(&credential("one", "a").spec.auth_url).unwrap();

        shared.memory.mark_read("one/a", one.term);
        let unread = one.census_pending_for(&url, a()).await;
        assert_eq!(unread.as_deref(), Some("two/b"), "a waits for b to be read");
        assert!(woken_in_one.next().now_or_never().is_none());

        // b is read in the other namespace's controller, whose reconcile ends with a look.
        shared.memory.mark_read("two/b", two.term);
        two.census_advance();
        assert_eq!(woken_in_one.next().now_or_never(), Some(Some(a())));
        assert!(woken_in_two.next().now_or_never().is_none());
        assert_eq!(one.census_pending_for(&url, a()).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_credential_that_failed_only_before_the_census_holds_it_back_past_the_patience() {
        let (shared, one, _two) = two_controllers();
        let url = url::Url::parse(&credential("one", "a").spec.auth_url).unwrap();
        // b's reads failed during an outage, before the census was listed.
        shared.memory.with("two/b", |e| e.api_failed(true));
        shared.memory.mark_read("one/a", one.term);
        let unread = one.census_pending_for(&url, a()).await;
        assert_eq!(unread.as_deref(), Some("two/b"));

        tokio::time::advance(std::time::Duration::from_secs(300)).await;
        let unread = one.census_pending(&url).await;
        assert_eq!(
            unread.as_deref(),
            Some("two/b"),
            "the outage's failure is not b's own"
        );
        // Past the patience, b fails again, for the API server's reason (503, 429).
        shared.memory.with("two/b", |e| e.api_failed(false));
        let unread = one.census_pending(&url).await;
        assert_eq!(unread.as_deref(), Some("two/b"), "nor is a failed answer");

        // b is tried again past the patience, and still fails: it holds no one back.
        shared.memory.with("two/b", |e| e.api_failed(true));
        assert_eq!(one.census_pending(&url).await, None);
    }

    #[tokio::test]
    async fn a_credential_is_woken_through_the_controller_that_watches_it_whichever_asks() {
        let (_, one, two) = two_controllers();
        let (mut woken_in_one, mut woken_in_two) = (one.take_wakes(), two.take_wakes());

        one.wake_credential("two/b");
        assert_eq!(
            woken_in_two.next().now_or_never(),
            Some(Some(ObjectRef::new("b").within("two")))
        );
        assert!(woken_in_one.next().now_or_never().is_none());
        one.wake_credential("two/gone");
        one.wake_credential("no-slash");
        assert!(woken_in_two.next().now_or_never().is_none());
    }

    #[tokio::test]
    async fn a_census_completed_after_it_was_looked_at_keeps_no_one_waiting() {
        let census = Census::default();
        let (parked, _wakes) = Parked::new(tokio::sync::watch::channel(false).1);
        crate::controller::lock(&census.done).insert("auth".into());
        assert!(!census.wait("auth".into(), a(), &parked));
        assert!(crate::controller::lock(&census.waiting).is_empty());
        assert!(census.wait("other".into(), a(), &parked));
        assert!(
            census.wait("other".into(), a(), &parked),
            "once, however often"
        );
        assert_eq!(crate::controller::lock(&census.waiting)["other"].len(), 1);
    }

    /// A controller whose store (its writer returned) holds `video/a`, read, and `video/cam`,
    /// unread.
    fn a_read_and_cam_unread() -> (
        Writer<StoredCredential>,
        Arc<crate::controller::Context>,
        fixtures::ApiServerVerifier,
    ) {
        let mut store = Writer::default();
        store.apply_watcher_event(&watcher::Event::Apply(credential(fixtures::NS, "a").into()));
        store.apply_watcher_event(&watcher::Event::Apply(EagleEyeCredential::test().into()));
        let reader = store.as_reader();
        let now = jiff::Timestamp::now;
        let shared = fixtures::shared(now);
        let (ctx, verifier) =
            fixtures::context_over(reader.clone(), vec![reader], shared, now, Arc::default());
        ctx.memory.mark_read("video/a", ctx.term);
        (store, ctx, verifier)
    }

    /// `a_read_and_cam_unread`, with `a` waiting for the census, then `cam` deleted: the
    /// census now waits for no one.
    async fn a_waits_for_cam_deleted() -> (
        Arc<crate::controller::Context>,
        fixtures::ApiServerVerifier,
        futures::stream::BoxStream<'static, ObjectRef<StoredCredential>>,
    ) {
        let (mut store, ctx, verifier) = a_read_and_cam_unread();
        let woken = ctx.take_wakes();
        let url = url::Url::parse(&EagleEyeCredential::test().spec.auth_url).unwrap();
        let a = ObjectRef::new("a").within(fixtures::NS);
        let unread = ctx.census_pending_for(&url, a).await;
        assert_eq!(unread.as_deref(), Some("video/cam"));
        store.apply_watcher_event(&watcher::Event::Delete(EagleEyeCredential::test().into()));
        (ctx, verifier, woken)
    }

    #[tokio::test]
    async fn a_credential_deleted_and_held_by_another_finalizer_holds_no_census_back() {
        let (mut store, ctx, _verifier) = a_read_and_cam_unread();
        let url = url::Url::parse(&EagleEyeCredential::test().spec.auth_url).unwrap();
        assert_eq!(ctx.census_pending(&url).await.as_deref(), Some("video/cam"));

        // A tenant deletes cam, which a finalizer of theirs keeps: it is never read again.
        let mut deleted = EagleEyeCredential::test();
        deleted.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        deleted.metadata.finalizers = Some(vec!["tenant.example/keep".into()]);
        store.apply_watcher_event(&watcher::Event::Apply(deleted.into()));
        assert_eq!(ctx.census_pending(&url).await, None);
    }

    #[tokio::test]
    async fn a_reconcile_that_finds_its_credential_deleted_completes_the_census_it_held_back() {
        let (ctx, verifier, mut woken) = a_waits_for_cam_deleted().await;
        let server = tokio::spawn(async move { verifier.credential_gone().await.done().await });
        let ended =
            crate::controller::reconcile(Arc::new(EagleEyeCredential::test().into()), ctx).await;
        assert!(ended.is_ok());
        server.await.unwrap();
        let a = ObjectRef::new("a").within(fixtures::NS);
        assert_eq!(woken.next().now_or_never(), Some(Some(a)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_census_whose_last_credential_left_without_a_reconcile_completes_at_the_next_look() {
        let (ctx, _verifier, mut woken) = a_waits_for_cam_deleted().await;
        let looks = tokio::spawn(ctx.clone().census_looks());
        tokio::task::yield_now().await;
        assert!(woken.next().now_or_never().is_none());
        tokio::time::sleep(super::super::CENSUS_LOOK + std::time::Duration::from_secs(1)).await;
        let a = ObjectRef::new("a").within(fixtures::NS);
        assert_eq!(woken.next().now_or_never(), Some(Some(a)));
        // The looks end with the controller.
        drop(ctx);
        tokio::time::sleep(super::super::CENSUS_LOOK * 2).await;
        assert!(looks.is_finished());
    }
}
