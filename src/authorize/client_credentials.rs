//! Where the application's client ID and secret come from: the client Secret already in the
//! cluster, or (when the person asks authorize to store them) the environment or a prompt.
//! Never the command line, where shell history and `ps` would keep the secret.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use secrecy::SecretString;

use crate::secrets::{self, SecretError};
use crate::token::ClientCredentials;

use super::error::AuthorizeError;
use super::plan::ClientSecretPlan;

/// Environment variable holding the client secret when authorize stores it.
pub const CLIENT_SECRET_ENV: &str = "EAGLE_EYE_CLIENT_SECRET";
/// Environment variable holding the client ID (also `--client-id`).
pub const CLIENT_ID_ENV: &str = "EAGLE_EYE_CLIENT_ID";

/// The client credentials stored in the cluster.
pub async fn from_secret(
    secrets: &Api<Secret>,
    plan: &ClientSecretPlan,
    namespace: &str,
) -> Result<ClientCredentials, AuthorizeError> {
    secrets::read_client(secrets, &plan.name, &plan.id_key, &plan.secret_key)
        .await
        .map_err(|e| match e {
            SecretError::Api { source, .. } => AuthorizeError::Kube {
                what: format!("reading Secret {:?} in namespace {namespace:?}", plan.name),
                error: source,
            },
            other => AuthorizeError::Input(format!(
                "{other} in namespace {namespace:?}, so there is no client ID and secret to log \
                 in with. Create it with keys {:?} and {:?}, or pass --write-client-secret to \
                 store the ones you give ({CLIENT_ID_ENV} or --client-id, and {CLIENT_SECRET_ENV} \
                 or a hidden prompt)",
                plan.id_key, plan.secret_key
            )),
        })
}

/// The client credentials the person gives: `--client-id` / the environment, or prompts on
/// the terminal (the secret without echo).
pub fn from_person(client_id: Option<String>) -> Result<ClientCredentials, AuthorizeError> {
    let interactive = std::io::stdin().is_terminal();
    let missing = |what: &str, source: &str| {
        AuthorizeError::Input(format!(
            "no {what} given: set {source}, or run authorize in a terminal to be prompted"
        ))
    };
    let id = match client_id.map(|s| s.trim().to_owned()) {
        Some(id) if !id.is_empty() => id,
        _ if interactive => prompt_line("Client ID (from the Eagle Eye Developer Portal): ")
            .map_err(|e| AuthorizeError::Input(format!("reading the client ID: {e}")))?,
        _ => String::new(),
    };
    if id.is_empty() {
        return Err(missing(
            "client ID",
            &format!("--client-id or {CLIENT_ID_ENV}"),
        ));
    }
    let secret = match std::env::var(CLIENT_SECRET_ENV).map(|s| s.trim().to_owned()) {
        Ok(s) if !s.is_empty() => s,
        _ if interactive => rpassword::prompt_password("Client secret (input hidden): ")
            .map_err(|e| AuthorizeError::Input(format!("reading the client secret: {e}")))?
            .trim()
            .to_owned(),
        _ => String::new(),
    };
    if secret.is_empty() {
        return Err(missing("client secret", CLIENT_SECRET_ENV));
    }
    Ok(ClientCredentials {
        id,
        secret: SecretString::from(secret),
    })
}

fn prompt_line(prompt: &str) -> std::io::Result<String> {
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_owned())
}
