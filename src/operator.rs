//! `run`: wires the controller to the cluster. One controller per watched namespace (or
//! one for all), each watching its credentials and the metadata of Secrets, so that a
//! created, fixed or replaced Secret wakes the credentials that name it.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use std::net::SocketAddr;

use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::events::Reporter;
use kube::runtime::watcher;
use kube::runtime::{Controller, WatchStreamExt};
use kube_lease_manager::LeaseManagerBuilder;
use tracing::{info, warn};

use crate::admin::{self, Health};
use crate::metrics::Metrics;

use crate::controller::{self, Context, Leadership, LeanCredential, Memory, Settings, Shared};
use crate::crd::{EagleEyeCredential, parse_duration};
use crate::status::Lifetimes;
use crate::token::{
    AuthPolicy, EAGLE_EYE_API_HOSTS, EAGLE_EYE_AUTH_HOSTS, TokenClient, TokenClientOptions,
};

/// The shortest `--refresh-token-idle-lifetime` accepted. A quarter of it is the margin
/// kept before the idle end (see `schedule::idle_end_margin`): under a minute, that margin
/// is shorter than one answer may take to arrive, and whole-second times lose most of it.
const MIN_IDLE_LIFETIME: jiff::SignedDuration = jiff::SignedDuration::from_mins(1);

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Watch only these namespaces (comma-separated). Default: all namespaces.
    #[arg(long, env = "EAGLE_EYE_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Allow plain-http auth URLs to a loopback host (127.0.0.1, ::1, localhost) for local
    /// testing; plain http to any other host is refused even with this flag.
    #[arg(long, env = "EAGLE_EYE_ALLOW_INSECURE_HTTP")]
    pub allow_insecure_http: bool,
    /// Hosts and ports a credential's authUrl may name: `host[:port]`, `[IPv6][:port]` or
    /// `*.domain[:port]`, hosts matched as --allowed-api-hosts matches them. An entry without
    /// a port allows only the scheme's default: 443 for https (80 for the plain http
    /// --allow-insecure-http allows to loopback). A credential pointing elsewhere is
    /// `InvalidSpec`, and no client secret or refresh token is sent there.
    #[arg(long, env = "EAGLE_EYE_ALLOWED_AUTH_HOSTS", value_delimiter = ',', default_value = EAGLE_EYE_AUTH_HOSTS)]
    pub allowed_auth_hosts: Vec<String>,
    /// PEM file with extra CA certificates to trust for the auth server (a TLS-inspecting
    /// proxy, or a test server), besides the system roots.
    #[arg(long, env = "EAGLE_EYE_AUTH_CA_FILE")]
    pub auth_ca_file: Option<PathBuf>,
    /// Host names a token response may name as the API base (`*.domain` for subdomains).
    #[arg(long, env = "EAGLE_EYE_ALLOWED_API_HOSTS", value_delimiter = ',', default_value = EAGLE_EYE_API_HOSTS)]
    pub allowed_api_hosts: Vec<String>,
    /// Life of an unused rotating refresh token (Eagle Eye: 14 days). A refresh is due an
    /// hour before it ends at the latest, or a quarter of it before when that is less
    /// (under 4 hours); at least 1 minute.
    #[arg(long, default_value = "14d", value_parser = duration)]
    pub refresh_token_idle_lifetime: jiff::SignedDuration,
    /// Life of a chain of rotating refresh tokens from the Phase 1 login (Eagle Eye: 90 days).
    #[arg(long, default_value = "90d", value_parser = duration)]
    pub refresh_token_chain_lifetime: jiff::SignedDuration,
    /// How long before the refresh token's deadline `ReloginSoon` turns true.
    #[arg(long, default_value = "7d", value_parser = duration)]
    pub relogin_warning: jiff::SignedDuration,
    /// How long the auth server may take to answer a token call once it was sent. Generous
    /// on purpose: the server rotates the refresh token whether or not the operator still
    /// waits, so giving up early can lose the login. Other replicas wait this long (plus a
    /// grace) before they may spend a token whose answer is still outstanding.
    #[arg(long, default_value = "5m", value_parser = duration)]
    pub token_timeout: jiff::SignedDuration,
    /// How long past `--token-timeout` another holder's spend intent is still honoured: time
    /// for a replica that received an answer while cut off from the API server to store it
    /// before anyone spends the token it replaced. Also how long a replica restarted after a
    /// crash mid-refresh waits before it tries the token again.
    #[arg(long, default_value = "5m", value_parser = duration)]
    pub in_flight_grace: jiff::SignedDuration,
    /// Token-endpoint calls in flight at once to one auth destination (scheme, host, port),
    /// and for one namespace across all destinations; more wait their turn (before anything
    /// is sent), a freed slot going to the waiting namespace that holds the fewest. A small
    /// number keeps a burst of due credentials (a restart, a failover) from slowing the auth
    /// server down for all of them; an auth port that never answers holds only its own.
    #[arg(long, env = "EAGLE_EYE_MAX_CONCURRENT_REFRESHES", default_value_t = 4)]
    pub max_concurrent_refreshes: usize,
    /// Nudge the pods a credential names in spec.consumers after each new access token
    /// (an annotation, so that the kubelet rewrites their Secret volumes at once). Needs
    /// list and patch on pods where credentials are watched; without this flag such
    /// credentials report `PodsNudged=False` `PodNudgeDisabled`.
    #[arg(long, env = "EAGLE_EYE_NUDGE_PODS")]
    pub nudge_pods: bool,
    /// Pod annotations written per second at most, by the whole process: a credential
    /// with thousands of consuming pods never floods the API server.
    #[arg(long, env = "EAGLE_EYE_POD_NUDGES_PER_SECOND", default_value_t = 20)]
    pub pod_nudges_per_second: u32,
    #[command(flatten)]
    pub workloads: crate::restart::RestartArgs,
    /// How long after a credential with spec.revokeOnDelete is deleted a failed revocation
    /// is retried (with backoff) before the credential is let go with a Warning Event.
    #[arg(long, env = "EAGLE_EYE_REVOKE_RETRY_FOR", default_value = "5m", value_parser = duration)]
    pub revoke_retry_for: jiff::SignedDuration,
    /// This replica's name on Events and in the Lease (default: the pod name in a cluster,
    /// else the host name). A random suffix per process is always added, as client-go
    /// does: two processes started with the same flags are never one leader.
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,
    /// Port of the admin server: `/healthz` and `/readyz`, plain HTTP, for the kubelet's
    /// probes (and `/metrics` with --metrics-insecure).
    #[arg(long, env = "EAGLE_EYE_ADMIN_PORT", default_value_t = 8080)]
    pub admin_port: u16,
    /// Address the admin server binds.
    #[arg(long, env = "EAGLE_EYE_ADMIN_ADDRESS", default_value = "0.0.0.0")]
    pub admin_address: std::net::IpAddr,
    #[command(flatten)]
    pub metrics_serving: MetricsServing,
    /// Namespace of the leader-election Lease (the operator's own namespace in a cluster).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the leader-election Lease. Default: `eagle-eye-operator`, or with
    /// --credential-selector that name and the first 8 hex digits of the selector's SHA-256,
    /// so that each shard elects its own leader and its replicas share one.
    #[arg(long, env = "EAGLE_EYE_LEASE_NAME")]
    pub lease_name: Option<String>,
    /// Refresh only the credentials this label selector matches (e.g.
    /// `eagle-eye-operator.io/shard=a`): one shard of several operator deployments that
    /// split the credentials between them. Default: every credential watched. Relabel a
    /// credential to move it; the shard it leaves finishes a refresh in flight, and the one
    /// it joins waits for that answer to be stored before it spends anything.
    #[arg(long, env = "EAGLE_EYE_CREDENTIAL_SELECTOR")]
    pub credential_selector: Option<String>,
    /// Refresh without a Lease. Only for a single replica: two replicas refreshing one
    /// rotating token destroy it.
    #[arg(long)]
    pub no_leader_election: bool,
    #[command(flatten)]
    pub timing: Timing,
}

/// Where `/metrics` is served and to whom.
#[derive(Args, Debug, Clone)]
pub struct MetricsServing {
    /// Port of `/metrics` over HTTPS, for bearer tokens the API server accepts (TokenReview)
    /// whose owner may `get` the non-resource URL `/metrics` (SubjectAccessReview).
    #[arg(long, env = "EAGLE_EYE_METRICS_PORT", default_value_t = 8443)]
    pub metrics_port: u16,
    /// Address the metrics server binds.
    #[arg(long, env = "EAGLE_EYE_METRICS_ADDRESS", default_value = "0.0.0.0")]
    pub metrics_address: std::net::IpAddr,
    /// Directory with `tls.crt` and `tls.key` for the metrics server (a mounted cert-manager
    /// or `kubernetes.io/tls` Secret), read again within 10 s of a change. Default: a self-signed certificate
    /// generated at start.
    #[arg(long, env = "EAGLE_EYE_METRICS_CERT_DIR")]
    pub metrics_cert_dir: Option<PathBuf>,
    /// Local development only: serve `/metrics` without TLS or authentication on the admin
    /// server, and no metrics port. Refused unless --admin-address is a loopback address:
    /// the page names every watched credential, its expiry and its failures.
    #[arg(long)]
    pub metrics_insecure: bool,
}

impl MetricsServing {
    /// Refuses `--metrics-insecure` where anyone but this host could read it.
    fn check(&self, admin_address: std::net::IpAddr) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.metrics_insecure || admin_address.is_loopback(),
            "--metrics-insecure serves every credential's name, expiry and failures to anyone who connects: it needs a loopback --admin-address (127.0.0.1 or ::1), not {admin_address}"
        );
        anyhow::ensure!(
            !(self.metrics_insecure && self.metrics_cert_dir.is_some()),
            "--metrics-cert-dir is for the HTTPS metrics server, which --metrics-insecure turns off"
        );
        Ok(())
    }

    /// Starts the metrics server (unless `/metrics` is on the admin port) and the admin
    /// server; each logs where it listens.
    async fn serve(
        &self,
        client: &Client,
        admin: SocketAddr,
        health: Health,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<()> {
        self.check(admin.ip())?;
        if self.metrics_insecure {
            let addr = admin::serve(admin, health, Some(metrics))
                .await
                .with_context(|| format!("binding the admin port {}", admin.port()))?;
            warn!(%addr, "admin server listening (/healthz, /readyz, /metrics without authentication: --metrics-insecure)");
            return Ok(());
        }
        let tls = crate::metrics_server::tls_config(self.metrics_cert_dir.as_deref())?;
        let gate = crate::metrics_auth::Gate::new(
            crate::metrics_auth::KubeReview {
                client: client.clone(),
            },
            crate::metrics_auth::Limits::default(),
        );
        let at = SocketAddr::new(self.metrics_address, self.metrics_port);
        let addr = crate::metrics_server::serve(at, tls, gate, metrics)
            .await
            .with_context(|| format!("binding the metrics port {}", self.metrics_port))?;
        info!(%addr, "metrics server listening (https /metrics, bearer token with get /metrics)");
        let addr = admin::serve(admin, health, None)
            .await
            .with_context(|| format!("binding the admin port {}", admin.port()))?;
        info!(%addr, "admin server listening (/healthz, /readyz)");
        Ok(())
    }
}

#[cfg(test)]
mod metrics_serving_tests {
    use super::*;

    fn serving(flags: &[&str]) -> (MetricsServing, std::net::IpAddr) {
        let args = RunArgs::from_flags(flags).unwrap();
        (args.metrics_serving, args.admin_address)
    }

    #[test]
    fn metrics_are_served_over_https_with_authentication_by_default() {
        let (m, admin) = serving(&[]);
        assert!(!m.metrics_insecure);
        assert_eq!(m.metrics_port, 8443);
        m.check(admin).unwrap();
    }

    #[test]
    fn metrics_insecure_is_refused_unless_the_admin_address_is_loopback() {
        let (m, admin) = serving(&["--metrics-insecure"]);
        let refused = m.check(admin).unwrap_err().to_string();
        assert!(refused.contains("loopback"), "{refused}");
        let (m, admin) = serving(&["--metrics-insecure", "--admin-address", "::1"]);
        m.check(admin).unwrap();
        let (m, admin) = serving(&["--metrics-insecure", "--admin-address", "127.0.0.1"]);
        m.check(admin).unwrap();
    }
}

/// How long the Lease lasts and how long shutdown may take. Hidden: the production values
/// (checked by the one test that runs with them) suit every cluster; the test bed shortens
/// them so that a failover takes seconds, not a Lease term.
#[derive(Args, Debug, Clone)]
pub struct Timing {
    /// How long a Lease lasts without renewal (whole seconds).
    #[arg(long, hide = true, default_value = "15s", value_parser = duration)]
    pub lease_duration: jiff::SignedDuration,
    /// How often the leader renews its Lease (whole seconds). A healthy leader then always
    /// has `--lease-duration` less this left, which must exceed the margin a refresh needs.
    #[arg(long, hide = true, default_value = "3s", value_parser = duration)]
    pub lease_renew_every: jiff::SignedDuration,
    /// How long shutdown (or a lost Lease manager) keeps trying to store a rotated token
    /// held in memory.
    #[arg(long, hide = true, default_value = "20s", value_parser = duration)]
    pub shutdown_flush_limit: jiff::SignedDuration,
}

/// A refresh starts only while this much of the Lease is left: a call may outlast the Lease,
/// but it never starts on one about to end.
const LEASE_MARGIN: std::time::Duration = std::time::Duration::from_secs(2);
/// The longest Lease `--lease-duration` accepts.
const MAX_LEASE: std::time::Duration = std::time::Duration::from_secs(3600);

impl Timing {
    /// The Lease's duration and kube-lease-manager's grace (renew this long before the end),
    /// in seconds, and the flush limit; refused when a healthy leader could not refresh.
    fn checked(&self) -> anyhow::Result<(u64, u64, std::time::Duration)> {
        let secs = |d: jiff::SignedDuration, flag: &str| {
            anyhow::ensure!(
                d.is_positive() && d.subsec_nanos() == 0,
                "--{flag} must be a positive whole number of seconds"
            );
            Ok(d.as_secs().unsigned_abs())
        };
        let duration = secs(self.lease_duration, "lease-duration")?;
        let every = secs(self.lease_renew_every, "lease-renew-every")?;
        // The Lease stores seconds as a 32-bit number; an hour is already far past any use.
        anyhow::ensure!(
            duration <= MAX_LEASE.as_secs(),
            "--lease-duration ({duration}s) must be at most {}s",
            MAX_LEASE.as_secs()
        );
        anyhow::ensure!(
            duration.saturating_sub(every) > LEASE_MARGIN.as_secs(),
            "--lease-duration ({duration}s) must exceed --lease-renew-every ({every}s) by more than {}s: a leader must always hold that much of its Lease to start a refresh",
            LEASE_MARGIN.as_secs()
        );
        let flush = std::time::Duration::try_from(self.shutdown_flush_limit)
            .ok()
            .filter(|d| !d.is_zero())
            .context("--shutdown-flush-limit must be positive")?;
        Ok((duration, duration - every, flush))
    }
}

impl RunArgs {
    /// The arguments `eagle-eye-operator run FLAGS…` would have (defaults and environment
    /// included), for embedding the operator.
    pub fn from_flags(flags: &[&str]) -> Result<RunArgs, clap::Error> {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: RunArgs,
        }
        use clap::Parser;
        let argv = std::iter::once("run").chain(flags.iter().copied());
        Wrapper::try_parse_from(argv).map(|w| w.args)
    }
}

fn duration(s: &str) -> Result<jiff::SignedDuration, String> {
    parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration such as 30s, 15m or 14d"))
}

/// Runs until `shutdown` resolves; in-flight reconciles finish and held tokens are stored
/// first, then the Lease is released.
pub async fn run(
    client: Client,
    reach: std::sync::Arc<crate::api_requests::Reachability>,
    args: RunArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let extra_ca_pem = match &args.auth_ca_file {
        Some(p) => Some(
            std::fs::read(p).with_context(|| format!("reading --auth-ca-file {}", p.display()))?,
        ),
        None => None,
    };
    anyhow::ensure!(
        args.max_concurrent_refreshes > 0,
        "--max-concurrent-refreshes must be at least 1"
    );
    anyhow::ensure!(
        !args.in_flight_grace.is_negative()
            && !args.token_timeout.is_negative()
            && !args.revoke_retry_for.is_negative(),
        "--in-flight-grace, --token-timeout and --revoke-retry-for must not be negative"
    );
    anyhow::ensure!(
        args.refresh_token_idle_lifetime >= MIN_IDLE_LIFETIME,
        "--refresh-token-idle-lifetime {:#} is shorter than {:#}: the quarter of it kept before a refresh token dies unused would be shorter than one token call may take",
        args.refresh_token_idle_lifetime,
        MIN_IDLE_LIFETIME
    );
    let (lease_seconds, lease_grace_seconds, flush_limit) = args.timing.checked()?;
    anyhow::ensure!(
        args.pod_nudges_per_second > 0,
        "--pod-nudges-per-second must be at least 1"
    );
    let auth_policy = AuthPolicy::new(&args.allowed_auth_hosts, args.allow_insecure_http)
        .map_err(anyhow::Error::msg)?;
    let tokens = TokenClient::new(TokenClientOptions {
        answer_timeout: std::time::Duration::try_from(args.token_timeout)
            .context("--token-timeout")?,
        max_concurrent_calls: args.max_concurrent_refreshes,
        extra_ca_pem,
        allowed_api_hosts: args.allowed_api_hosts.clone(),
        allowed_auth_hosts: args.allowed_auth_hosts.clone(),
        allow_http: args.allow_insecure_http,
        ..Default::default()
    })?;
    // Every replica and shard honours intents up to one fixed bound, whatever its own
    // flags; a process that could write longer ones would see them dismissed and its token
    // spent while its call is in flight.
    let hold = jiff::SignedDuration::try_from(tokens.answer_limit() + crate::token::MAX_SLOT_HOLD)
        .unwrap_or(jiff::SignedDuration::MAX)
        .saturating_add(args.in_flight_grace);
    crate::intent::hold_fits(hold).map_err(anyhow::Error::msg)?;
    let identity = process_identity(args.instance.as_deref());
    info!(%identity, "this process's identity in the Lease and on Events");
    let settings = Settings {
        identity: identity.clone(),
        in_flight_grace: args.in_flight_grace,
        pod_nudge: args
            .nudge_pods
            .then(|| Arc::new(crate::nudge::Limiter::new(args.pod_nudges_per_second))),
        workload_restart: args.workloads.limiter(),
        revoke_retry_for: args.revoke_retry_for,
        clock: jiff::Timestamp::now,
        // Checked by `validate` before anything is sent; the token client checks again.
        auth_policy,
        lifetimes: Lifetimes {
            idle: args.refresh_token_idle_lifetime,
            chain: args.refresh_token_chain_lifetime,
            warning: args.relogin_warning,
        },
    };
    let metrics = Arc::new(Metrics::default());
    let health = Health::default();
    args.metrics_serving
        .serve(
            &client,
            SocketAddr::new(args.admin_address, args.admin_port),
            health.clone(),
            metrics.clone(),
        )
        .await?;
    let mut namespaces = args.namespaces.clone();
    namespaces.retain(|n| !n.trim().is_empty());
    namespaces.sort();
    namespaces.dedup();
    let credential_selector = crate::shard::selector(args.credential_selector.as_deref());
    anyhow::ensure!(
        args.credential_selector.is_none() || credential_selector.is_some(),
        "--credential-selector is blank: leave it out to refresh every credential watched"
    );
    if let Some(selector) = &credential_selector {
        check_selector(&client, &namespaces, selector).await?;
        info!(%selector, "refreshing only the credentials this selector matches");
    }
    let lease_name = crate::shard::selector(args.lease_name.as_deref())
        .unwrap_or_else(|| crate::shard::lease_name(credential_selector.as_deref()));
    anyhow::ensure!(
        credential_selector.is_none() || lease_name != crate::shard::DEFAULT_LEASE,
        "--lease-name {} is the Lease of an operator for every credential; a shard (--credential-selector) elects its leader in a Lease of its own: leave --lease-name out, or name one per shard",
        crate::shard::DEFAULT_LEASE
    );
    let args = RunArgs {
        namespaces,
        credential_selector,
        lease_name: Some(lease_name.clone()),
        ..args
    };
    let leadership = if args.no_leader_election {
        Leadership::unchecked()
    } else {
        // A refresh starts only while this replica holds a fresh Lease. A call may outlast
        // the Lease (the server takes as long as it takes): the spend intent written before
        // it keeps a new leader from spending the same token until its answer is stored or
        // can no longer come (see `intent`).
        Leadership::lease(
            Api::namespaced(client.clone(), &args.lease_namespace),
            &lease_name,
            &identity,
            LEASE_MARGIN,
        )
    };
    let parts = Parts {
        client: client.clone(),
        identity: identity.clone(),
        tokens,
        settings,
        metrics: metrics.clone(),
        health: health.clone(),
        args: args.clone(),
        flush_limit,
        shared: Shared {
            metrics: metrics.clone(),
            memory: Memory::default(),
            leadership,
            known: Default::default(),
            reads: Default::default(),
            reach,
            shard: args.credential_selector.clone(),
        },
    };
    let shutdown = Box::pin(shutdown).shared();
    // From the signal on, no token call starts; those in flight finish and are stored.
    tokio::spawn({
        let (shutdown, tokens) = (shutdown.clone(), parts.tokens.clone());
        async move {
            shutdown.await;
            tokens.close();
        }
    });
    // Not against a CRD older than this operator (waiting for the API server meanwhile).
    tokio::select! {
        checked = crate::served_schema::ensure(&client) => checked?,
        _ = shutdown.clone() => return Ok(()),
    }

    if args.no_leader_election {
        metrics.set_leader(true);
        parts.run_controllers(shutdown).await;
        parts.shared.memory.report_lost();
        return Ok(());
    }
    // Until the API server answers, /healthz says alive and /readyz says not ready.
    let lease = LeaseSetup {
        client: client.clone(),
        name: lease_name.clone(),
        namespace: args.lease_namespace.clone(),
        identity: identity.clone(),
        seconds: lease_seconds,
        grace_seconds: lease_grace_seconds,
    };
    let Some(manager) = lease.manager(shutdown.clone()).await else {
        return Ok(());
    };
    // A follower that reached the API server is ready: it is a hot standby.
    health.set_ready(true);
    let (mut leading, task) = manager.watch().await;
    let mut lease_task = Some(task);
    let mut rebuild = false;
    loop {
        if std::mem::take(&mut rebuild) {
            let Some(manager) = lease.manager(shutdown.clone()).await else {
                break;
            };
            let (now_leading, task) = manager.watch().await;
            (leading, lease_task) = (now_leading, Some(task));
        }
        let mut wait_leading = leading.clone();
        // While following, keep trying to store any token held from the last term.
        let retry_held = async {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                if !parts.shared.memory.is_empty() {
                    let held = &parts.shared.memory;
                    held.flush(&parts.client, std::time::Duration::ZERO).await;
                }
            }
        };
        let followed = tokio::select! {
            _ = shutdown.clone() => break,
            _ = retry_held => Some(false),
            became = wait_leading.wait_for(|l| *l) => Some(became.is_err()),
            _ = parts.shared.leadership.released() => None,
        };
        let Some(manager_stopped) = followed else {
            // kube-lease-manager's follower looks again only when the holder's term would
            // end; a Lease released on SIGTERM is free now. A follower holds nothing: its
            // manager is stopped without a release (its requests over before the next one
            // sends any), and a new one, which reads the Lease afresh, takes it or loses
            // the race to another replica. First, as kube-lease-manager does after a
            // release, a random pause: followers seeing one release do not all try at once.
            if let Some(task) = lease_task.take() {
                task.abort();
                let _ = task.await;
            }
            info!(lease = %lease_name, "the Lease was released: trying to take it now");
            let pause = std::time::Duration::from_millis(rand::random_range(100..=1000));
            tokio::select! {
                _ = shutdown.clone() => break,
                _ = tokio::time::sleep(pause) => {}
            }
            rebuild = true;
            continue;
        };
        if manager_stopped {
            if parts
                .shared
                .memory
                .flush(&parts.client, parts.flush_limit)
                .await
                > 0
            {
                parts.shared.memory.report_lost();
            }
            anyhow::bail!("the Lease manager stopped");
        }
        info!(lease = %lease_name, "leading: starting controllers");
        metrics.set_leader(true);
        let mut wait_lost = leading.clone();
        let lost = async move {
            let _ = wait_lost.wait_for(|l| !*l).await;
        };
        let stop = futures::future::select(shutdown.clone(), Box::pin(lost))
            .map(|_| ())
            .shared();
        parts.run_controllers(stop).await;
        metrics.set_leader(false);
        // A follower exports no credential's series: frozen, they would hide the leader's.
        metrics.forget_all();
        if shutdown.clone().now_or_never().is_some() {
            break;
        }
        warn!("lost the Lease: controllers stopped, waiting to lead again");
    }
    parts.shared.memory.report_lost();
    drop(leading);
    // None when stopped while a follower's manager was being replaced: it held nothing.
    if let Some(task) = lease_task {
        match task.await {
            Ok(Ok(_)) => info!("released the Lease"),
            Ok(Err(e)) => warn!(error = %e, "releasing the Lease failed; it expires by itself"),
            Err(e) => warn!(error = %e, "the Lease task failed"),
        }
    }
    Ok(())
}

/// Where this process elects its leader, and as whom.
struct LeaseSetup {
    client: Client,
    name: String,
    namespace: String,
    identity: String,
    /// kube-lease-manager's duration and grace (renew this long before the end), `--lease-*`.
    seconds: u64,
    grace_seconds: u64,
}

impl LeaseSetup {
    /// A Lease manager once the API server answers (`None` if `shutdown` comes first).
    async fn manager(
        &self,
        shutdown: impl std::future::Future<Output = ()> + Clone,
    ) -> Option<kube_lease_manager::LeaseManager> {
        let mut delay = std::time::Duration::from_millis(500);
        loop {
            let built = LeaseManagerBuilder::new(self.client.clone(), &self.name)
                .with_namespace(&self.namespace)
                .with_identity(&self.identity)
                .with_duration(self.seconds)
                .with_grace(self.grace_seconds)
                .build()
                .await;
            match built {
                Ok(m) => return Some(m),
                Err(e) => {
                    warn!(error = %e, lease = %self.name, namespace = %self.namespace, "cannot set up the Lease yet; retrying")
                }
            }
            tokio::select! {
                _ = shutdown.clone() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(std::time::Duration::from_secs(30));
        }
    }
}

/// Credentials per page of a list: a page of padded ones (about 300 KiB each, metadata
/// included) stays a few MiB in transit; 10,000 ordinary ones (about 3 KiB) take 200 pages.
const CREDENTIAL_PAGE: u32 = 50;

struct Parts {
    client: Client,
    /// Unique to this process (see [`process_identity`]).
    identity: String,
    tokens: TokenClient,
    settings: Settings,
    metrics: Arc<Metrics>,
    health: Health,
    args: RunArgs,
    shared: Shared,
    /// How long storing held tokens may take on the way out (`--shutdown-flush-limit`).
    flush_limit: std::time::Duration,
}

impl Parts {
    /// One controller per watched namespace (or one for all) until `stop`; then any
    /// rotated token still held in memory is stored before returning.
    async fn run_controllers(
        &self,
        stop: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
    ) {
        let reporter = Reporter {
            controller: "eagle-eye-operator".into(),
            instance: Some(self.identity.clone()),
        };
        let namespaces: Vec<Option<String>> = if self.args.namespaces.is_empty() {
            vec![None]
        } else {
            self.args.namespaces.iter().cloned().map(Some).collect()
        };
        info!(?namespaces, "starting controllers");
        // A new term looks at every credential once, whatever was known in the last one,
        // and reads every Secret afresh.
        self.shared.known.clear();
        self.shared.reads.clear();
        // And knows no credential's tokens until it has read them (`controller::Memory`).
        self.shared.memory.new_term();
        // Reconciles seated at once: enough to keep every token-call slot of the auth server
        // busy and others moving beside them. The seats (`controller::reconcile`) are shared
        // fairly between namespaces; a due credential that finds none keeps a place in their
        // queue and leaves kube-runtime at once, to be woken when it is granted one.
        let seats = self.args.max_concurrent_refreshes.saturating_mul(2).max(16);
        // kube-runtime's own limit: the seated, those woken to use a call slot granted while
        // parked (they need no seat: as many as the call slots of every allowed
        // destination, `Context::with_seatless`), and room for those that find no seat and
        // leave. It bounds kube-runtime's map of
        // running reconciles, which keeps the size of its largest moment for good (about
        // 0.5 KiB a slot): unbounded, a cold start of N due credentials grew it to N. With
        // destinations past counting (`*.domain` allowed), it stays unbounded: a place
        // there, taken in no fair order, must never be what a credential waits for.
        let seatless = (self.settings.auth_policy.destinations()).map(|destinations| {
            self.args
                .max_concurrent_refreshes
                .saturating_mul(destinations)
        });
        let running = match seatless {
            Some(seatless) => {
                u16::try_from(seatless.saturating_add(seats).saturating_add(16)).unwrap_or(0)
            }
            None => 0,
        };
        let built: Vec<_> = namespaces
            .into_iter()
            .map(|ns| {
                let client = self.client.clone();
                let (crs, secrets): (Api<LeanCredential>, Api<PartialObjectMeta<Secret>>) =
                    match &ns {
                        Some(ns) => (
                            Api::namespaced(client.clone(), ns),
                            Api::namespaced(client.clone(), ns),
                        ),
                        None => (Api::all(client.clone()), Api::all(client.clone())),
                    };
                // Only news triggers a reconcile: not this process's own status writes,
                // nor objects a re-list shows unchanged (timers and Secrets still do).
                let (reader, writer) = kube::runtime::reflector::store();
                // Listed once: the store is then in sync. Told through a channel of our own:
                // the store's readiness future wakes only its last poller, and the
                // controller's runner waits on it too (polled here as well, the runner could
                // sleep through its start, and through a shutdown, until the next event).
                let (listed_tx, listed) = tokio::sync::watch::channel(false);
                let known = self.shared.known.clone();
                // Which credentials name which Secret, kept beside the store.
                let index = Arc::new(controller::Index::default());
                let indexed = index.clone();
                let mut config = watcher::Config::default().page_size(CREDENTIAL_PAGE);
                if let Some(selector) = &self.args.credential_selector {
                    config = config.labels(selector);
                }
                // The store keeps what a reconcile reads, nothing a tenant can pad, as JSON
                // (`controller::StoredCredential`); the index reads each event before.
                let news = watcher::watcher(crs, config)
                    .default_backoff()
                    .map_ok(crate::controller::credential_event)
                    .modify(crate::controller::project)
                    .inspect_ok(move |e| indexed.on_event(e))
                    .map_ok(crate::controller::stored_event)
                    .reflect(writer)
                    .inspect_ok(move |e| {
                        if matches!(e, watcher::Event::InitDone) {
                            listed_tx.send_replace(true);
                        }
                    })
                    .applied_objects()
                    .try_filter(move |cr| futures::future::ready(known.is_news(cr)));
                let config = kube::runtime::controller::Config::default().concurrency(running);
                (
                    Controller::for_stream(news, reader).with_config(config),
                    secrets,
                    listed,
                    index,
                )
            })
            .collect();
        // Every controller sees every store: a refresh token copied into another watched
        // namespace is claimed across them.
        let stores: Vec<_> = built.iter().map(|(c, _, _, _)| c.store()).collect();
        // One census of claims for the term, whichever controller reads its last credential.
        let census = Arc::new(controller::Census::new(
            built.iter().map(|(_, _, l, _)| l.clone()).collect(),
        ));
        let mut listed = Vec::new();
        let controllers: Vec<_> = built
            .into_iter()
            .enumerate()
            .map(|(i, (controller, secrets, synced, index))| {
                listed.push(synced.clone());
                let client = self.client.clone();
                let store = controller.store();
                let ctx = Arc::new(
                    Context::new(
                        client.clone(),
                        reporter.clone(),
                        self.tokens.clone(),
                        self.settings.clone(),
                        store.clone(),
                        stores.clone(),
                        self.shared.clone(),
                    )
                    .with_seats(seats)
                    .with_seatless(seatless)
                    .with_census(census.clone())
                    .with_index(index.clone()),
                );
                // Metadata only, paged: memory does not grow with the Secrets in the cluster.
                // Each event is news (someone else's change) or the echo of this process's
                // own write (`controller::secret_news`); news wakes the credentials naming
                // the Secret.
                let news = controller::SecretNews::new(self.shared.reads.clone(), index);
                let secret_events =
                    watcher::watcher(secrets, watcher::Config::default().page_size(100))
                        .default_backoff()
                        .filter_map(move |event| {
                            let woken = match event {
                                Ok(event) => news.on_event(&event),
                                Err(e) => {
                                    warn!(error = %e, "watching Secrets");
                                    Vec::new()
                                }
                            };
                            futures::future::ready(Some(futures::stream::iter(woken)))
                        })
                        .flatten();
                let metrics = self.metrics.clone();
                // A credential granted a call slot while parked is reconciled to use it.
                let woken = ctx.take_wakes();
                // Stopping: no more seats granted, and parked waits give up at once.
                tokio::spawn({
                    let (stop, ctx) = (stop.clone(), Arc::downgrade(&ctx));
                    async move {
                        stop.await;
                        if let Some(ctx) = ctx.upgrade() {
                            ctx.stop();
                        }
                    }
                });
                // A census completed with no reconcile ending is noticed all the same: one
                // look for the term, whose census every controller shares.
                (i == 0).then(|| {
                    tokio::spawn({
                        let (stop, looks) = (stop.clone(), ctx.clone().census_looks());
                        async move {
                            futures::future::select(Box::pin(stop), Box::pin(looks)).await;
                        }
                    })
                });
                let run = controller
                    .reconcile_on(woken)
                    .reconcile_on(secret_events)
                    .graceful_shutdown_on(stop.clone())
                    .run(controller::reconcile, controller::error_policy, ctx)
                    .for_each(move |result| {
                        metrics.reconciled(result.is_err());
                        match result {
                            Ok((obj, action)) => {
                                tracing::debug!(credential = %obj, ?action, "reconciled")
                            }
                            // The error policy already logged a failed reconcile; anything
                            // else (a watch the API server refuses, say) is logged here.
                            Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                            // A look that was scheduled for a credential since deleted, or
                            // relabelled out of this shard: nothing to do.
                            Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                                tracing::debug!(credential = %obj, "no longer watched")
                            }
                            Err(e) => tracing::warn!(error = %e, "controller error"),
                        }
                        futures::future::ready(())
                    });
                // kube-runtime's graceful shutdown waits for the store to be ready before it
                // lets the controller end, and a stop before the first list completes stops
                // the list too: it would wait forever. Before the list nothing has run, so
                // such a controller is simply dropped.
                let stopped_unlisted = {
                    let (stop, mut synced) = (stop.clone(), synced);
                    async move {
                        stop.await;
                        if *synced.borrow_and_update() {
                            std::future::pending::<()>().await;
                        }
                    }
                };
                futures::future::select(Box::pin(run), Box::pin(stopped_unlisted)).map(|_| ())
            })
            .collect();
        let health = self.health.clone();
        let (shared, client) = (self.shared.clone(), self.client.clone());
        let synced = tokio::spawn(async move {
            for mut l in listed {
                if l.wait_for(|listed| *listed).await.is_err() {
                    return;
                }
            }
            health.set_ready(true);
            // With the stores in sync, whatever is kept for a deleted credential goes.
            crate::controller::deleted_credentials(stores, shared, client).await;
        });
        futures::future::join_all(controllers).await;
        synced.abort();
        // Reads kept for parked credentials would wait, unused and never aged out, for the
        // next term (which starts with none).
        self.shared.reads.drop_parked();
        if !self.shared.memory.is_empty() {
            self.shared
                .memory
                .flush(&self.client, self.flush_limit)
                .await;
        }
        info!("controllers stopped");
    }
}

/// Refuses a `--credential-selector` the API server refuses (it alone parses selectors as
/// the watch will), before any Lease is taken; an API server not reachable yet is no reason
/// to stop: the watch reports its errors later.
async fn check_selector(
    client: &Client,
    namespaces: &[String],
    selector: &str,
) -> anyhow::Result<()> {
    let api: Api<EagleEyeCredential> = match namespaces.first() {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let params = kube::api::ListParams::default().labels(selector).limit(1);
    match api.list_metadata(&params).await {
        Err(kube::Error::Api(status)) if status.code == 400 => {
            anyhow::bail!(
                "--credential-selector {selector:?} is not a label selector: {}",
                status.message
            )
        }
        Err(e) => {
            warn!(error = %crate::secrets::kube_reason(&e), "cannot check --credential-selector yet")
        }
        Ok(_) => {}
    }
    Ok(())
}

/// `instance` (or the host name) and a random suffix: unique per process, so that two
/// processes never share a Lease holder identity, even when started with the same flags.
fn process_identity(instance: Option<&str>) -> String {
    let base = instance
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "eagle-eye-operator".to_owned());
    // Spend intents name the holder in a space-separated value: no whitespace in it.
    let base: String = base
        .chars()
        .map(|c| if c.is_whitespace() { '-' } else { c })
        .collect();
    format!("{base}_{:08x}", rand::random::<u32>())
}
