//! The stand-in's HTTP surface: `/oauth2/token`, `/oauth2/authorize`, `/oauth2/revoke` and
//! `/api/v3.0/users/self`. Handlers read the request, ask the ledger, and shape the answer;
//! every decision about tokens lives in the ledger.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{any, get, post};
use serde::Serialize;

use super::Shared;
use super::faults::{self, Action, Fault, Mangle};
use super::ledger::{AuthorizeError, Ledger};
use super::oauth_error::OAuthError;
use super::request::{Form, accepts_json, basic_credentials, is_form};
use super::server::ConnectionKill;
use super::types::{ApiCall, Grant};

/// The only scope the vendor grants.
const SCOPE: &str = "vms.all";
/// Token requests are a few hundred bytes; anything far larger is not one.
const MAX_BODY: usize = 64 * 1024;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/oauth2/token", any(token))
        .route("/oauth2/authorize", get(authorize).post(authorize))
        .route("/oauth2/revoke", post(revoke))
        .route("/api/v3.0/users/self", get(users_self))
        .with_state(shared)
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn read_body(body: Body) -> Option<Bytes> {
    axum::body::to_bytes(body, MAX_BODY).await.ok()
}

async fn token(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (index, fault) = shared.begin_token_request();
    let response = answer_token(&shared, fault, request).await;
    shared.answered(index, response.status().as_u16());
    response
}

/// The token endpoint's answer to a request that was dealt `fault`.
async fn answer_token(shared: &Shared, fault: Option<Fault>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = read_body(body).await;
    let mut hostname = shared.host.as_str();
    let mut mangle = None;
    match fault.map(faults::action) {
        None => {}
        Some(Action::ForeignApiHost) => hostname = "api.foreign.example",
        Some(Action::Mangle(how)) => mangle = Some(how),
        Some(Action::Respond(response)) => return response,
        Some(Action::Delay(delay)) => tokio::time::sleep(delay).await,
        Some(Action::Hold(gate)) => gate.pass().await,
        Some(Action::Hang) => return std::future::pending().await,
        Some(Action::Drop) => {
            if let Some(kill) = parts.extensions.get::<ConnectionKill>() {
                kill.fire();
            }
            return std::future::pending().await;
        }
    }
    let now = shared.now();
    let mut ledger = shared.ledger();
    let outcome = match body {
        Some(body) => token_grant(&mut ledger, &parts, &body, now),
        None => Err(OAuthError::InvalidRequest),
    };
    match outcome {
        Ok(grant) => token_response(&grant, hostname, shared.port, mangle),
        Err(error) => {
            ledger.counters.rejected += 1;
            tracing::debug!(error = ?error.code(), "stand-in refused a token request");
            error.into_response()
        }
    }
}

/// The client that authenticated with HTTP Basic, by id.
fn authenticate(ledger: &Ledger, headers: &HeaderMap) -> Result<String, OAuthError> {
    let (id, secret) = basic_credentials(header_str(headers, header::AUTHORIZATION))?
        .ok_or(OAuthError::InvalidClient)?;
    match ledger.authenticate(&id, &secret) {
        Some(client) => Ok(client.id.clone()),
        None => Err(OAuthError::InvalidClient),
    }
}

fn token_grant(
    ledger: &mut Ledger,
    parts: &Parts,
    body: &[u8],
    now: SystemTime,
) -> Result<Grant, OAuthError> {
    if parts.method != Method::POST {
        return Err(OAuthError::MethodNotAllowed);
    }
    // Repeated `Accept` lines form one comma-separated list (RFC 9110 §5.3).
    let accept: Vec<&str> = parts
        .headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !accepts_json((!accept.is_empty()).then(|| accept.join(",")).as_deref()) {
        return Err(OAuthError::NotAcceptable);
    }
    let client_id = authenticate(ledger, &parts.headers)?;
    // The vendor: "Query parameters are not supported."
    if parts.uri.query().is_some_and(|q| !q.is_empty()) {
        return Err(OAuthError::InvalidRequest);
    }
    // A JSON body (as the guide's prose suggests) is refused, whatever its content type says:
    // either the type is wrong or the form has no `grant_type` parameter.
    if !is_form(header_str(&parts.headers, header::CONTENT_TYPE)) {
        return Err(OAuthError::InvalidRequest);
    }
    let form = Form::parse(body);
    let grant_type = form.required("grant_type")?;
    // Spring lets `scope` out (it means everything granted); anything else must be `vms.all`.
    let scope_ok = |form: &Form| match form.single("scope")? {
        None | Some(SCOPE) => Ok(()),
        Some(_) => Err(OAuthError::InvalidScope),
    };
    let grant = match grant_type {
        "authorization_code" => {
            let code = form.required("code")?;
            let redirect_uri = form.single("redirect_uri")?;
            scope_ok(&form)?;
            ledger.exchange_code(&client_id, code, redirect_uri, now)?
        }
        "refresh_token" => {
            let refresh_token = form.required("refresh_token")?;
            scope_ok(&form)?;
            ledger.refresh(&client_id, refresh_token, now)?
        }
        _ => return Err(OAuthError::UnsupportedGrantType),
    };
    tracing::debug!(client_id, grant_type, "stand-in granted tokens");
    Ok(grant)
}

/// The vendor's success body, field for field and in its order.
#[derive(Serialize)]
struct TokenBody<'a> {
    access_token: &'a str,
    expires_in: u64,
    #[serde(rename = "httpsBaseUrl")]
    https_base_url: BaseUrl<'a>,
    refresh_token: &'a str,
    scope: &'a str,
    token_type: &'a str,
}

#[derive(Serialize)]
struct BaseUrl<'a> {
    hostname: &'a str,
    port: u16,
}

fn token_response(grant: &Grant, hostname: &str, port: u16, mangle: Option<Mangle>) -> Response {
    let body = TokenBody {
        access_token: &grant.access_token,
        expires_in: grant.expires_in,
        https_base_url: BaseUrl { hostname, port },
        refresh_token: &grant.refresh_token,
        scope: SCOPE,
        token_type: "Bearer",
    };
    let headers = [
        (header::CACHE_CONTROL, "no-store"),
        (header::PRAGMA, "no-cache"),
    ];
    match mangle {
        None => (headers, Json(body)).into_response(),
        Some(how) => {
            // Invariant: a struct of strings and numbers always serialises.
            let json = serde_json::to_vec(&body).expect("token body serialises");
            let json_type = [(header::CONTENT_TYPE, "application/json")];
            (headers, json_type, how.apply(json)).into_response()
        }
    }
}

/// A 400 page: with an unknown client or redirect URI there is nowhere safe to redirect to.
fn error_page(reason: &str) -> Response {
    let page = format!(
        "<!DOCTYPE html><html><head><title>Bad Request</title></head>\
         <body><h1>400 Bad Request</h1><p>{reason}</p></body></html>\n"
    );
    let html = [(header::CONTENT_TYPE, "text/html; charset=utf-8")];
    (StatusCode::BAD_REQUEST, html, page).into_response()
}

/// 302 to `redirect_uri` with `params` appended to its query.
fn redirect(redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let separator = if redirect_uri.contains('?') { '&' } else { '?' };
    let location = format!("{redirect_uri}{separator}{query}");
    match HeaderValue::try_from(location) {
        Ok(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
        Err(_) => error_page("The redirect URI cannot be sent in a header."),
    }
}

/// Phase 1, with the user approving at once.
async fn authorize(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let param = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let (Some(client_id), Some(redirect_uri)) = (param("client_id"), param("redirect_uri")) else {
        return error_page("client_id and redirect_uri are required.");
    };
    let now = shared.now();
    let mut ledger = shared.ledger();
    match ledger.check_redirect(client_id, redirect_uri) {
        Ok(()) => {}
        Err(AuthorizeError::UnknownClient) => return error_page("Unknown client."),
        Err(AuthorizeError::RedirectNotWhitelisted) => {
            return error_page("The redirect URI is not whitelisted for this client.");
        }
    }
    let state = param("state");
    let with_state = |mut params: Vec<(&'static str, String)>| {
        if let Some(state) = state {
            params.push(("state", state.to_owned()));
        }
        let borrowed: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        redirect(redirect_uri, &borrowed)
    };
    if param("response_type") != Some("code") {
        return with_state(vec![("error", "unsupported_response_type".to_owned())]);
    }
    if param("scope").is_some_and(|s| s != SCOPE) {
        return with_state(vec![("error", "invalid_scope".to_owned())]);
    }
    match ledger.authorize(client_id, redirect_uri, now) {
        Ok(code) => with_state(vec![("code", code)]),
        Err(_) => error_page("The client or redirect URI changed during the request."),
    }
}

/// RFC 7009 revocation.
async fn revoke(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Some(body) = read_body(body).await else {
        return OAuthError::InvalidRequest.into_response();
    };
    let mut ledger = shared.ledger();
    match revoke_token(&mut ledger, &parts, &body) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(error) => error.into_response(),
    }
}

fn revoke_token(ledger: &mut Ledger, parts: &Parts, body: &[u8]) -> Result<(), OAuthError> {
    let client_id = authenticate(ledger, &parts.headers)?;
    if !is_form(header_str(&parts.headers, header::CONTENT_TYPE)) {
        return Err(OAuthError::InvalidRequest);
    }
    let form = Form::parse(body);
    let token = form.required("token")?;
    ledger
        .revoke(&client_id, token)
        .map_err(|_| OAuthError::InvalidClient)
}

/// The header a workload names itself with, recorded with each API call.
const CONSUMER: &str = "x-consumer";

/// A cheap call that proves an access token works.
async fn users_self(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let bearer = header_str(&headers, header::AUTHORIZATION)
        .and_then(|h| h.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let now = shared.now();
    let client =
        bearer.and_then(|token| shared.ledger().access_client(token, now).map(str::to_owned));
    super::lock(&shared.api_calls).push(ApiCall {
        at: SystemTime::now(),
        consumer: headers
            .get(CONSUMER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        accepted: client.is_some(),
    });
    match client {
        Some(client_id) => Json(serde_json::json!({
            "id": "ca0f61ab",
            "accountId": "00000001",
            "firstName": "Stand",
            "lastName": "In",
            "email": "standin@example.invalid",
            "clientId": client_id,
        }))
        .into_response(),
        None => {
            let body = serde_json::json!({
                "code": 401,
                "status": "unauthorized",
                "message": "The access token is missing, invalid or expired",
            });
            let challenge = [(header::WWW_AUTHENTICATE, "Bearer")];
            (StatusCode::UNAUTHORIZED, challenge, Json(body)).into_response()
        }
    }
}
