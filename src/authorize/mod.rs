//! `authorize`: the Phase 1 login, done by a person once and again every 90 days. It checks
//! everything it can before the browser step, receives the code on the redirect URI (or as a
//! pasted address), exchanges it at once, and stores the refresh token and its login time
//! where the operator reads them. An answer that carries a refresh token but is otherwise
//! unusable is still stored (the code is spent: the login exists nowhere else), then
//! reported, with exit code [`STORED_FROM_UNUSABLE_ANSWER_EXIT`].

mod browser;
mod callback;
mod client_credentials;
mod error;
mod plan;
mod redirect;
mod write;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use secrecy::SecretString;

use crate::crd::EagleEyeCredential;
use crate::kubectl::{Cluster, KubeArgs};
use crate::token::{
    ClientCredentials, EAGLE_EYE_API_HOSTS, EAGLE_EYE_AUTH_HOSTS, TokenClient, TokenClientOptions,
};

pub use error::AuthorizeError;
pub use plan::{CredentialChange, Plan, Wanted};
pub use redirect::{DEFAULT_REDIRECT_URI, RedirectUri};

use callback::Listener;
use write::read_error;

/// The vendor's chain lifetime, for the re-login date printed at the end.
const CHAIN_LIFETIME: SignedDuration = SignedDuration::from_hours(90 * 24);

/// Exit code when the login was stored, but from a token response that was otherwise
/// unusable: not 1, which tells a person or script that the login failed and must be done
/// again (this one must not: it would only replace a good token); not 0, since the answer
/// shows something wrong that may keep the credential from working, which a script must
/// not carry on past as after a clean login. The same code as `status` gives for a
/// credential that is not Ready.
pub const STORED_FROM_UNUSABLE_ANSWER_EXIT: u8 = 3;

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Exit status: 0 the login was stored; 3 the login was stored from an \
    answer that was otherwise unusable (do not log in again; the warning says what to fix); \
    1 an error (its message says what, if anything, was stored); 2 a usage error."
)]
pub struct AuthorizeArgs {
    /// Name of the EagleEyeCredential to create, or to log in again.
    pub name: String,
    #[command(flatten)]
    pub kube: KubeArgs,
    /// The redirect URI registered for the application, character for character as Eagle Eye
    /// whitelisted it. A plain-http loopback URI is listened on; any other needs --paste.
    #[arg(long, env = "EAGLE_EYE_REDIRECT_URI", default_value = DEFAULT_REDIRECT_URI)]
    pub redirect_uri: String,
    /// Base URL of the auth server. Default: the credential's authUrl (only when its host
    /// and port are in --allowed-auth-hosts), else the real one (https://auth.eagleeyenetworks.com). A URL
    /// given here is used whatever its host.
    #[arg(long, value_name = "URL")]
    pub auth_url: Option<String>,
    /// OAuth2 scope. Default: the credential's scope, else vms.all.
    #[arg(long)]
    pub scope: Option<String>,
    /// Secret holding the client ID and secret. Default: the credential's, else <NAME>-client.
    #[arg(long, value_name = "SECRET")]
    pub client_secret_name: Option<String>,
    /// Secret to store the refresh token in. Default: the credential's, else
    /// <NAME>-refresh-token.
    #[arg(long, value_name = "SECRET")]
    pub refresh_token_secret_name: Option<String>,
    /// Store the client ID and secret in the client Secret (created if missing). They come
    /// from --client-id / EAGLE_EYE_CLIENT_ID and EAGLE_EYE_CLIENT_SECRET, or prompts.
    /// Without this flag they are read from the client Secret.
    #[arg(long)]
    pub write_client_secret: bool,
    /// The application's client ID (not a secret), with --write-client-secret.
    #[arg(long, env = "EAGLE_EYE_CLIENT_ID", value_name = "ID")]
    pub client_id: Option<String>,
    /// Do not open a browser; only print the URL to open (the answer still comes back here).
    #[arg(long)]
    pub no_browser: bool,
    /// Headless mode: do not listen. Open the URL in a browser anywhere, then paste the
    /// address it ends up on (it will not load; that is expected) into this terminal.
    #[arg(long)]
    pub paste: bool,
    /// How long to wait for the login.
    #[arg(long, default_value = "10m", value_parser = duration)]
    pub timeout: SignedDuration,
    /// PEM file with extra CA certificates to trust for the auth server (a TLS-inspecting
    /// proxy), besides the system roots.
    #[arg(long, env = "EAGLE_EYE_AUTH_CA_FILE", value_name = "FILE")]
    pub auth_ca_file: Option<PathBuf>,
    #[command(flatten)]
    pub hosts: Box<HostArgs>,
    /// Allow a plain-http auth URL on a loopback address (local testing only).
    #[arg(long, env = "EAGLE_EYE_ALLOW_INSECURE_HTTP")]
    pub allow_insecure_http: bool,
}

/// Where answers and logins may lead (boxed: the command's arguments stay small).
#[derive(Args, Debug, Clone)]
pub struct HostArgs {
    /// Host names the token response may name as the API base (`*.domain` for subdomains).
    #[arg(long, env = "EAGLE_EYE_ALLOWED_API_HOSTS", value_delimiter = ',', default_value = EAGLE_EYE_API_HOSTS, value_name = "HOSTS")]
    pub allowed_api_hosts: Vec<String>,
    /// Hosts and ports the credential's authUrl may name: `host[:port]`, `[IPv6][:port]` or
    /// `*.domain[:port]`, an entry without a port allowing only 443 (80 for plain http):
    /// whoever may edit the credential must not choose the page you log in on. --auth-url is
    /// not held to it.
    #[arg(long, env = "EAGLE_EYE_ALLOWED_AUTH_HOSTS", value_delimiter = ',', default_value = EAGLE_EYE_AUTH_HOSTS, value_name = "HOSTS")]
    pub allowed_auth_hosts: Vec<String>,
}

fn duration(s: &str) -> Result<SignedDuration, String> {
    crate::crd::parse_duration(s)
        .filter(|d| d.is_positive())
        .ok_or_else(|| format!("{s:?} is not a duration such as 90s, 10m or 1h"))
}

pub async fn run(args: AuthorizeArgs) -> anyhow::Result<ExitCode> {
    let redirect = RedirectUri::parse(&args.redirect_uri).map_err(|problem| {
        AuthorizeError::BadRedirectUri {
            uri: args.redirect_uri.clone(),
            problem,
        }
    })?;
    let listen_addr = match (args.paste, redirect.listen_addr()) {
        (true, _) => None,
        (false, Some(addr)) => Some(addr),
        (false, None) => {
            return Err(AuthorizeError::CannotListen {
                uri: args.redirect_uri.clone(),
            }
            .into());
        }
    };
    let limit = std::time::Duration::try_from(args.timeout)?;
    let extra_ca_pem = match &args.auth_ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|e| {
            AuthorizeError::Input(format!("reading --auth-ca-file {}: {e}", path.display()))
        })?),
        None => None,
    };
    let tokens = TokenClient::new(TokenClientOptions {
        extra_ca_pem: extra_ca_pem.clone(),
        allowed_api_hosts: args.hosts.allowed_api_hosts.clone(),
        // The plan holds the credential's authUrl to the allow-list; one given with
        // --auth-url is the person's choice (empty: any host).
        allowed_auth_hosts: match args.auth_url {
            Some(_) => Vec::new(),
            None => args.hosts.allowed_auth_hosts.clone(),
        },
        allow_http: args.allow_insecure_http,
        ..Default::default()
    })?;
    let cluster = args.kube.connect().await?;
    let login = Login::prepare(&args, redirect, tokens, cluster).await?;

    let state = redirect::new_state();
    let url = redirect::authorize_url(
        &login.plan.auth_url,
        &login.client.id,
        &login.plan.scope,
        &login.redirect,
        &state,
    )
    .map_err(AuthorizeError::Input)?;
    let listener = match listen_addr {
        Some(addr) => Some(Listener::bind(addr).await?),
        None => None,
    };
    browser::preflight(
        &url,
        extra_ca_pem.as_deref(),
        args.allow_insecure_http,
        &login.client.id,
        login.redirect.as_str(),
    )
    .await?;

    let (code, drain) = receive_code(&login, listener, &url, &state, limit, args.no_browser).await;
    let result = match code {
        Ok(code) => login.complete(code).await,
        Err(e) => Err(e.into()),
    };
    if let Some(drain) = drain {
        drain.finish().await;
    }
    result
}

/// Shows the person the URL and waits for the login to come back: to the listener, or
/// pasted. The drain, when there is one, lets the browser finish reading its page.
async fn receive_code(
    login: &Login,
    listener: Option<Listener>,
    url: &url::Url,
    state: &str,
    limit: std::time::Duration,
    no_browser: bool,
) -> (
    Result<SecretString, AuthorizeError>,
    Option<callback::Drain>,
) {
    let (ns, name) = (&login.ns, &login.plan.name);
    let anywhere = if listener.is_some() {
        ""
    } else {
        " on any machine"
    };
    eprintln!(
        "Log in to Eagle Eye Networks to authorize client {:?} for EagleEyeCredential \
         {ns}/{name}. Open this URL in a browser{anywhere}:",
        login.client.id
    );
    println!("{url}");
    let waited = callback::humanize(limit);
    let redirect_uri = login.redirect.as_str();
    match listener {
        Some(listener) => {
            if !no_browser && browser::open(url) {
                eprintln!("(A browser window was opened for it.)");
            }
            eprintln!("Waiting up to {waited} for the login to come back to {redirect_uri} ...");
            let (code, drain) = listener
                .wait(login.redirect.path(), state, limit, redirect_uri)
                .await;
            (code, Some(drain))
        }
        None => {
            eprintln!(
                "The browser then goes to {redirect_uri}?code=... which will not load: that is \
                 expected. Copy that whole address from the address bar, paste it here and \
                 press Enter (within {waited}):"
            );
            (callback::read_pasted(state, limit).await, None)
        }
    }
}

/// Everything decided and checked before the browser step.
struct Login {
    plan: Plan,
    client: ClientCredentials,
    redirect: RedirectUri,
    tokens: TokenClient,
    ns: String,
    secrets: Api<Secret>,
    credentials: Api<EagleEyeCredential>,
    write_client_secret: bool,
    /// The existing credential has `spec.suspend` set.
    suspended: bool,
}

impl Login {
    /// Reads what exists, resolves the plan, and checks that the person may write what the
    /// login will produce, so that no login is wasted on a failure known in advance.
    async fn prepare(
        args: &AuthorizeArgs,
        redirect: RedirectUri,
        tokens: TokenClient,
        cluster: Cluster,
    ) -> Result<Login, AuthorizeError> {
        let ns = cluster.namespace;
        let credentials: Api<EagleEyeCredential> = Api::namespaced(cluster.client.clone(), &ns);
        let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &ns);
        let existing = credentials.get_opt(&args.name).await.map_err(|e| {
            read_error(
                format!(
                    "reading EagleEyeCredential {:?} in namespace {ns:?}",
                    args.name
                ),
                &ns,
                e,
            )
        })?;
        let plan = Plan::resolve(
            &Wanted {
                name: args.name.clone(),
                client_secret: args.client_secret_name.clone(),
                refresh_token_secret: args.refresh_token_secret_name.clone(),
                auth_url: args.auth_url.clone(),
                scope: args.scope.clone(),
                allow_insecure_http: args.allow_insecure_http,
                allowed_auth_hosts: args.hosts.allowed_auth_hosts.clone(),
            },
            existing.as_ref(),
        )
        .map_err(AuthorizeError::Input)?;
        check_claimants(&credentials, &plan, &ns).await?;

        let exists = |name: &str| {
            let (secrets, name, ns) = (secrets.clone(), name.to_owned(), ns.clone());
            async move {
                let found = secrets.get_metadata_opt(&name).await.map_err(|e| {
                    read_error(
                        format!("reading Secret {name:?} in namespace {ns:?}"),
                        &ns,
                        e,
                    )
                })?;
                // A credential's target dies with that credential: a login stored there
                // would too (and the operator refuses to use it).
                let target_of = found
                    .as_ref()
                    .and_then(|s| crate::target::controlling_credential(&s.metadata));
                if let Some(owner) = target_of.map(|o| &o.name) {
                    return Err(AuthorizeError::Input(format!(
                        "Secret {ns}/{name} is the target Secret of EagleEyeCredential {owner:?} and is deleted with it; a login stored there would be lost. Choose another Secret with --refresh-token-secret-name (or --client-secret-name)"
                    )));
                }
                Ok::<_, AuthorizeError>(found.is_some())
            }
        };
        let refresh_exists = exists(&plan.refresh.name).await?;
        let client_exists = match args.write_client_secret {
            true => Some(exists(&plan.client.name).await?),
            false => None,
        };
        let needed = write::needed_access(&plan, refresh_exists, client_exists);
        write::check_access(&cluster.client, &ns, &needed).await?;
        let client = match args.write_client_secret {
            true => client_credentials::from_person(args.client_id.clone())?,
            false => client_credentials::from_secret(&secrets, &plan.client, &ns).await?,
        };
        Ok(Login {
            plan,
            client,
            redirect,
            tokens,
            ns,
            secrets,
            credentials,
            write_client_secret: args.write_client_secret,
            suspended: existing.is_some_and(|cr| cr.spec.suspend),
        })
    }

    /// From the code to the stored login.
    async fn complete(self, code: SecretString) -> anyhow::Result<ExitCode> {
        let (plan, ns) = (&self.plan, &self.ns);
        eprintln!("Received the login; exchanging the code ...");
        // The chain's 90 days start at the login; the moment before the exchange is the
        // earliest this program can name, so the deadline it implies is never late.
        let login_time = Timestamp::from_second(Timestamp::now().as_second())?;
        let answer = self
            .tokens
            .exchange_code(
                &plan.auth_url,
                &self.client,
                &code,
                self.redirect.as_str(),
                &plan.scope,
            )
            .await;
        drop(code);
        // An answer that carries a refresh token but is otherwise unusable (too large, not
        // UTF-8, an API host not allowed, cut short after the token) still holds the login,
        // and the code that bought it is spent: the token is stored as from a clean answer,
        // and what was wrong is reported after that.
        let (refresh_token, unusable) = match answer {
            Ok(grant) => (
                grant.refresh_token.ok_or(AuthorizeError::NoRefreshToken)?,
                None,
            ),
            Err(err) => match err.refresh_token() {
                Some(token) => (token.clone(), Some(err)),
                None => return Err(AuthorizeError::Exchange(err).into()),
            },
        };

        let lost = match &unusable {
            None => "the new login is lost (nothing else holds its refresh token): fix this and \
                     run authorize again"
                .to_owned(),
            Some(err) => format!(
                "the new login is lost (nothing else holds its refresh token; the auth server's \
                 answer was also unusable: {err}): fix this and run authorize again"
            ),
        };
        let stored = |what: String| {
            move |source| AuthorizeError::Kube {
                what,
                error: source,
            }
        };
        if self.write_client_secret {
            let c = &plan.client;
            let update = write::client_update(&c.id_key, &c.secret_key, &self.client);
            write::store(&self.secrets, &c.name, &update)
                .await
                .map_err(stored(format!(
                    "storing the client credentials in Secret {ns}/{}; {lost}",
                    c.name
                )))?;
            eprintln!("Stored the client ID and secret in Secret {ns}/{}.", c.name);
        }
        let r = &plan.refresh;
        let update = write::refresh_token_update(&r.key, &refresh_token, login_time, &plan.name);
        write::store(&self.secrets, &r.name, &update)
            .await
            .map_err(stored(format!(
                "storing the refresh token in Secret {ns}/{}; {lost}",
                r.name
            )))?;
        drop(update);
        println!(
            "Stored the new refresh token in Secret {ns}/{} (key {:?}), login time {login_time}.",
            r.name, r.key
        );
        let outcome = match plan.credential {
            CredentialChange::Unchanged => {
                "already uses it: the operator adopts the new refresh \
                                            token now, no restart needed"
            }
            change => {
                let applied = write::apply_credential(&self.credentials, plan).await;
                if let (Err(_), Some(err)) = (&applied, &unusable) {
                    eprintln!("warning: {}", error::stored_from_unusable_answer(err));
                }
                applied.map_err(stored(format!(
                    "writing EagleEyeCredential {ns}/{} (the refresh token is stored: run \
                     authorize again, or point the credential at Secret {:?} by hand)",
                    plan.name, r.name
                )))?;
                match change {
                    CredentialChange::Create => "created: the operator takes it from here",
                    _ => "updated: the operator takes it from here",
                }
            }
        };
        println!("EagleEyeCredential {ns}/{} {outcome}.", plan.name);
        if self.suspended {
            eprintln!(
                "Note: the credential is suspended (spec.suspend: true); the operator uses the new \
                 token once that is set to false. Within 14 days: an unused refresh token dies."
            );
        }
        println!(
            "Log in again by {} (90 days after this login). Check with: kubectl eagleeye status {} -n {ns}",
            (login_time + CHAIN_LIFETIME).strftime("%Y-%m-%d"),
            plan.name
        );
        match unusable {
            None => Ok(ExitCode::SUCCESS),
            Some(err) => {
                eprintln!("warning: {}", error::stored_from_unusable_answer(&err));
                Ok(ExitCode::from(STORED_FROM_UNUSABLE_ANSWER_EXIT))
            }
        }
    }
}

/// Refuses a refresh-token Secret that another credential already refreshes. When the
/// person may not list credentials, the operator will still refuse it (`RefreshTokenInUse`).
async fn check_claimants(
    credentials: &Api<EagleEyeCredential>,
    plan: &Plan,
    ns: &str,
) -> Result<(), AuthorizeError> {
    let list = match credentials.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(s)) if s.code == 403 => return Ok(()),
        Err(source) => {
            return Err(AuthorizeError::Kube {
                what: format!("listing EagleEyeCredentials in namespace {ns:?}"),
                error: source,
            });
        }
    };
    match plan::other_claimant(&list, &plan.name, &plan.refresh.name) {
        Some(other) => Err(AuthorizeError::Input(format!(
            "Secret {ns}/{} is already the refresh-token Secret of EagleEyeCredential {other:?}; \
             two credentials spending one rotating token destroy it. Log in again for {other:?} \
             instead, or choose another Secret with --refresh-token-secret-name",
            plan.refresh.name
        ))),
        None => Ok(()),
    }
}
