//! `run`: wires the controller to the cluster. One controller per watched namespace (or
//! one for all), each watching its credentials and the metadata of Secrets, so that a
//! created, fixed or replaced Secret wakes the credentials that name it.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::runtime::{Controller, WatchStreamExt};
use kube::{Client, ResourceExt};
use tracing::info;

use crate::controller::{self, Context, Settings, parse_duration};
use crate::crd::EagleEyeCredential;
use crate::status::Lifetimes;
use crate::token::{EAGLE_EYE_API_HOSTS, TokenClient, TokenClientOptions};

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Watch only these namespaces (comma-separated). Default: all namespaces.
    #[arg(long, env = "EAGLE_EYE_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Allow plain-http auth URLs (local testing only: tokens would cross the network in clear).
    #[arg(long, env = "EAGLE_EYE_ALLOW_INSECURE_HTTP")]
    pub allow_insecure_http: bool,
    /// PEM file with extra CA certificates to trust for the auth server (a TLS-inspecting
    /// proxy, or a test server), besides the system roots.
    #[arg(long, env = "EAGLE_EYE_AUTH_CA_FILE")]
    pub auth_ca_file: Option<PathBuf>,
    /// Host names a token response may name as the API base (`*.domain` for subdomains).
    #[arg(long, env = "EAGLE_EYE_ALLOWED_API_HOSTS", value_delimiter = ',', default_value = EAGLE_EYE_API_HOSTS)]
    pub allowed_api_hosts: Vec<String>,
    /// Life of an unused rotating refresh token (Eagle Eye: 14 days).
    #[arg(long, default_value = "14d", value_parser = duration)]
    pub refresh_token_idle_lifetime: jiff::SignedDuration,
    /// Life of a chain of rotating refresh tokens from the Phase 1 login (Eagle Eye: 90 days).
    #[arg(long, default_value = "90d", value_parser = duration)]
    pub refresh_token_chain_lifetime: jiff::SignedDuration,
    /// How long before the refresh token's deadline `ReloginSoon` turns true.
    #[arg(long, default_value = "7d", value_parser = duration)]
    pub relogin_warning: jiff::SignedDuration,
    /// Time limit of one call to the token endpoint.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub token_timeout: jiff::SignedDuration,
    /// Name reported on Events.
    #[arg(long, env = "POD_NAME", default_value = "eagle-eye-operator")]
    pub instance: String,
}

fn duration(s: &str) -> Result<jiff::SignedDuration, String> {
    parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration such as 30s, 15m or 14d"))
}

/// Runs until `shutdown` resolves; in-flight reconciles finish first.
pub async fn run(
    client: Client,
    args: RunArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let extra_ca_pem = match &args.auth_ca_file {
        Some(p) => Some(
            std::fs::read(p).with_context(|| format!("reading --auth-ca-file {}", p.display()))?,
        ),
        None => None,
    };
    let tokens = TokenClient::new(TokenClientOptions {
        timeout: std::time::Duration::try_from(args.token_timeout).context("--token-timeout")?,
        extra_ca_pem,
        allowed_api_hosts: args.allowed_api_hosts.clone(),
        allow_http: args.allow_insecure_http,
        ..Default::default()
    })?;
    let settings = Settings {
        allow_http: args.allow_insecure_http,
        lifetimes: Lifetimes {
            idle: args.refresh_token_idle_lifetime,
            chain: args.refresh_token_chain_lifetime,
            warning: args.relogin_warning,
        },
    };
    let reporter = Reporter {
        controller: "eagle-eye-operator".into(),
        instance: Some(args.instance.clone()),
    };
    let namespaces: Vec<Option<String>> = if args.namespaces.is_empty() {
        vec![None]
    } else {
        args.namespaces.iter().cloned().map(Some).collect()
    };
    info!(?namespaces, "starting");

    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let controllers = namespaces.into_iter().map(|ns| {
        let (crs, secrets): (Api<EagleEyeCredential>, Api<PartialObjectMeta<Secret>>) = match &ns {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
        let controller = Controller::new(crs, watcher::Config::default().any_semantic());
        let store = controller.store();
        let ctx = Arc::new(Context::new(
            client.clone(),
            Recorder::new(client.clone(), reporter.clone()),
            tokens.clone(),
            settings.clone(),
            store.clone(),
        ));
        let secret_events =
            watcher::watcher(secrets, watcher::Config::default().any_semantic()).touched_objects();
        controller
            .watches_stream(secret_events, move |secret: PartialObjectMeta<Secret>| {
                credentials_naming(&store, &secret)
            })
            .graceful_shutdown_on(shutdown.clone())
            .run(controller::reconcile, controller::error_policy, ctx)
            .for_each(|result| {
                match result {
                    Ok((obj, action)) => tracing::debug!(credential = %obj, ?action, "reconciled"),
                    Err(e) => tracing::debug!(error = %e, "reconcile error"),
                }
                futures::future::ready(())
            })
    });
    futures::future::join_all(controllers).await;
    info!("stopped");
    Ok(())
}

/// Credentials in the Secret's namespace that read it, or own it as their target.
fn credentials_naming(
    store: &kube::runtime::reflector::Store<EagleEyeCredential>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<EagleEyeCredential>> {
    let name = secret.name_any();
    store
        .state()
        .into_iter()
        .filter(|cr| cr.namespace() == secret.namespace())
        .filter(|cr| {
            cr.spec.client_secret_ref.name == name
                || cr.spec.refresh_token_secret_ref.name == name
                || crate::target::target_name(cr) == name
        })
        .map(|cr| ObjectRef::from_obj(&*cr))
        .collect()
}
