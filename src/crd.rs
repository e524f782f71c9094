//! The `EagleEyeCredential` API: what users write (spec) and read (status).
//! Every doc comment here becomes `kubectl explain` text; CEL rules let the API server
//! refuse what it can judge on its own.

// kube's typed `printcolumn(...)` repeats keys such as `type_` once per column, which
// clippy mistakes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// API group of the operator's resources.
pub const GROUP: &str = "eagle-eye-operator.io";
/// Auth server of Eagle Eye Networks.
pub const DEFAULT_AUTH_URL: &str = "https://auth.eagleeyenetworks.com";

/// Keeps one Eagle Eye Networks login alive: refreshes its access token on schedule, writes
/// the rotated refresh token back to its Secret, and publishes the current access token and
/// API base URL in a target Secret that workloads mount.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "eagle-eye-operator.io",
    version = "v1alpha1",
    kind = "EagleEyeCredential",
    namespaced,
    status = "EagleEyeCredentialStatus",
    shortname = "eecred",
    category = "eagleeye",
    doc = "An Eagle Eye Networks Video API v3 login kept alive by the operator.",
    // The target (named or by default `<name>-token`) is written by the operator: it must
    // never be one of the Secrets it reads, or publishing would overwrite the login.
    validation = kube::core::Rule::new(
        "(has(self.spec.target) && has(self.spec.target.name) ? self.spec.target.name : self.metadata.name + '-token') != self.spec.clientSecretRef.name && (has(self.spec.target) && has(self.spec.target.name) ? self.spec.target.name : self.metadata.name + '-token') != self.spec.refreshTokenSecretRef.name"
    ).message("the target Secret (spec.target.name, by default <name>-token) must not be the client or refresh-token Secret"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = "1"
    ),
    printcolumn(name = "Base URL", type_ = "string", json_path = ".status.baseUrl"),
    // Times to come as RFC 3339 strings: kubectl shows a future `date` as `<invalid>`.
    printcolumn(
        name = "Token Expires",
        type_ = "string",
        json_path = ".status.accessTokenExpiresAt"
    ),
    printcolumn(
        name = "Re-login By",
        type_ = "string",
        json_path = ".status.refreshTokenDeadline"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct EagleEyeCredentialSpec {
    /// Secret in this namespace holding the OAuth2 client ID and client secret of the
    /// application registered in the Eagle Eye Developer Portal.
    pub client_secret_ref: ClientSecretRef,

    /// Secret in this namespace holding the refresh token from the Phase 1 login. The
    /// operator rewrites it on every rotation. It may be the same Secret as clientSecretRef.
    pub refresh_token_secret_ref: RefreshTokenSecretRef,

    /// Base URL of the Eagle Eye auth server: https, with no user name or password, query
    /// or fragment (a path prefix is kept). Plain http only to a loopback host (127.0.0.1,
    /// ::1, localhost), and then only with the operator's --allow-insecure-http. The host
    /// and port must also be in the operator's --allowed-auth-hosts (default
    /// auth.eagleeyenetworks.com, port 443), or the credential is InvalidSpec and nothing
    /// is sent. At most 512 characters.
    #[serde(default = "default_auth_url")]
    #[schemars(length(max = 512))]
    #[x_kube(validation = kube::core::Rule::new(
        "isURL(self) && url(self).getHostname() != '' && (url(self).getScheme() == 'https' || (url(self).getScheme() == 'http' && url(self).getHostname() in ['127.0.0.1', 'localhost', '::1']))"
    ).message("authUrl must be https:// (plain http only for loopback)"))]
    #[x_kube(validation = kube::core::Rule::new(
        "!self.contains('?') && !self.contains('#') && !self.matches('^[^/]*//[^/?#]*@')"
    ).message("authUrl must not have a user name or password, query or fragment"))]
    pub auth_url: String,

    /// OAuth2 scope requested on every refresh (at most 512 characters).
    #[serde(default = "default_scope")]
    #[schemars(length(max = 512))]
    #[x_kube(validation = kube::core::Rule::new("self != ''").message("scope must not be empty"))]
    pub scope: String,

    /// How long before the access token expires to refresh it, as a duration such as
    /// `30m` or `1h`. Clamped to a third of the token's lifetime, so that short-lived tokens
    /// are refreshed in time. Non-rotating tokens are renewed right after expiry instead,
    /// because the server hands back the still-active token until then. At most 64
    /// characters.
    #[serde(default = "default_refresh_before")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = kube::core::Rule::new("duration(self) >= duration('0s')").message("refreshBefore must be a non-negative duration such as 30m"))]
    pub refresh_before: String,

    /// Whether refresh tokens rotate: `Auto` detects it from the first refresh (a returned
    /// refresh token equal to the one sent means non-rotating).
    #[serde(default)]
    pub rotation: RotationMode,

    /// The Secret the operator publishes for workloads.
    #[serde(default)]
    pub target: TargetSecret,

    /// Stop refreshing. The target Secret is left as it is and will expire.
    #[serde(default)]
    pub suspend: bool,

    /// Workloads that read the target Secret. Pods (podSelector) are nudged after each new
    /// access token so that the kubelet rewrites their mounted copy within seconds rather
    /// than at its next periodic sync (about a minute); needs the operator's `--nudge-pods`
    /// (chart value `podNudge.enabled`), without which the condition `PodsNudged` says so.
    /// Deployments, StatefulSets and DaemonSets (restart) are restarted once per new access
    /// token; the condition `WorkloadsRestarted` reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<Consumers>,

    /// On deletion, revoke the refresh token at the auth server (`/oauth2/revoke`) before
    /// the resource goes, so that no copy of it (a backup, an etcd snapshot) can be used
    /// again. A failed revocation is retried for the operator's `--revoke-retry-for`
    /// (default 5m), then reported in an Event; deletion is never blocked for longer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoke_on_delete: bool,

    /// Ask for one refresh now: set to a new value (a request id; `kubectl eagleeye renew`
    /// sets the current time, RFC 3339) and the operator refreshes once, through every
    /// safety rule (Lease, spend intent, claims, backoff after failures), and records the
    /// request and its outcome in status.renew and an Event. A value already handled is
    /// never served again, also after an operator restart. The refresh ends the live
    /// access token: consumers must read the new one. At most 64 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub renew_request: Option<String>,
}

/// The workloads that consume a credential's target Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "has(self.podSelector) || (has(self.restart) && size(self.restart) > 0)"
).message("consumers needs a podSelector, restart targets, or both"))]
pub struct Consumers {
    /// Pods in this namespace to nudge. After each new access token the operator sets
    /// the annotation `eagle-eye-operator.io/token-issued-at` (the token's issue time,
    /// never a secret) on each running or pending pod it selects, at most
    /// `--pod-nudges-per-second` across the operator. Must not be empty; at most 16
    /// matchLabels (values up to 63 characters) and 16 matchExpressions of up to 16 values.
    #[x_kube(validation = kube::core::Rule::new(
        "(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)"
    ).message("podSelector must not be empty: an empty selector would select every pod of the namespace"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "pod_selector_schema")]
    pub pod_selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    /// Deployments, StatefulSets and DaemonSets in this namespace that read the token once
    /// (an environment variable, a cached file): each is restarted once per new access
    /// token, as `kubectl rollout restart` does (the pod-template annotation
    /// `kubectl.kubernetes.io/restartedAt`). Needs the operator's `--restart-workloads`
    /// (chart value `workloadRestart.enabled`). At most 16 entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub restart: Vec<RestartTarget>,
    /// Rotations closer together than this cause one restart, not one each: the first
    /// restarts at once, later ones wait until this long after the previous restart. A
    /// duration such as `30s` or `5m` (at most 64 characters).
    #[serde(default = "default_restart_pause")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = kube::core::Rule::new("duration(self) >= duration('0s')").message("restartPause must be a non-negative duration such as 1m"))]
    pub restart_pause: String,
}

/// Workloads to restart after each new access token: one by name, or all of a kind that a
/// label selector matches.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "has(self.name) != has(self.selector)"
).message("a restart target names a workload or selects workloads by label, not both"))]
pub struct RestartTarget {
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: WorkloadKind,
    /// Name of the workload, in this namespace (at most 253 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = kube::core::Rule::new("self.size() <= 253 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("must be a workload name: lowercase letters, digits, '-' and '.'"))]
    pub name: Option<String>,
    /// Workloads of this kind in this namespace whose labels match (at most 16 matchLabels
    /// and 16 matchExpressions). Must not be empty.
    #[x_kube(validation = kube::core::Rule::new(
        "(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)"
    ).message("selector must not be empty: an empty selector would select every workload of the namespace"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "workload_selector_schema")]
    pub selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
}

/// The kinds of workload the operator restarts.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
pub enum WorkloadKind {
    /// An apps/v1 Deployment.
    Deployment,
    /// An apps/v1 StatefulSet.
    StatefulSet,
    /// An apps/v1 DaemonSet.
    DaemonSet,
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        })
    }
}

/// Durations as `refreshBefore` takes them: `90s`, `30m`, `1h30m` (what its CEL rule
/// accepts), or `14d` (days of 24 hours). The command-line flags take the same forms.
pub fn parse_duration(s: &str) -> Option<jiff::SignedDuration> {
    let span: jiff::Span = s.trim().parse().ok()?;
    span.to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .ok()
}

/// Reference to the Secret with the OAuth2 client credentials.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClientSecretRef {
    /// Name of the Secret, in the namespace of this resource (at most 253 characters).
    #[schemars(length(max = 253))]
    #[x_kube(validation = kube::core::Rule::new("self != ''").message("name must not be empty"))]
    #[x_kube(validation = kube::core::Rule::new("self.size() <= 253 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("must be a Secret name: lowercase letters, digits, '-' and '.'"))]
    pub name: String,
    /// Key holding the client ID (at most 253 characters).
    #[serde(default = "default_client_id_key")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = kube::core::Rule::new("self != ''").message("key must not be empty"))]
    pub client_id_key: String,
    /// Key holding the client secret (at most 253 characters).
    #[serde(default = "default_client_secret_key")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = kube::core::Rule::new("self != ''").message("key must not be empty"))]
    pub client_secret_key: String,
}

/// Reference to the Secret with the refresh token.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RefreshTokenSecretRef {
    /// Name of the Secret, in the namespace of this resource (at most 253 characters).
    #[schemars(length(max = 253))]
    #[x_kube(validation = kube::core::Rule::new("self != ''").message("name must not be empty"))]
    #[x_kube(validation = kube::core::Rule::new("self.size() <= 253 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("must be a Secret name: lowercase letters, digits, '-' and '.'"))]
    pub name: String,
    /// Key holding the refresh token (at most 253 characters). Values are read up to 16 KiB.
    #[serde(default = "default_refresh_token_key")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = kube::core::Rule::new("self != ''").message("key must not be empty"))]
    pub key: String,
}

/// Whether the account's refresh tokens rotate.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum RotationMode {
    /// Detect from the first refresh.
    #[default]
    Auto,
    /// Every refresh returns a new refresh token and kills the old one (Eagle Eye's default).
    Rotating,
    /// The refresh token never changes (enabled per client by Eagle Eye support).
    NonRotating,
}

/// The Secret published for workloads. Owned by this resource: deleted with it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetSecret {
    /// Name of the Secret. Defaults to `<name of this resource>-token`. At most 253
    /// characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = kube::core::Rule::new("self != ''").message("name must not be empty when set"))]
    #[x_kube(validation = kube::core::Rule::new("self.size() <= 253 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("must be a Secret name: lowercase letters, digits, '-' and '.'"))]
    pub name: Option<String>,
    /// Extra labels on the Secret: at most 16, keys at most 317 characters (a Kubernetes
    /// qualified name), values at most 63.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "labels_schema")]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations on the Secret: at most 16, keys at most 317 characters, values at
    /// most 1024.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "annotations_schema")]
    pub annotations: BTreeMap<String, String>,
    /// Names of the keys in the Secret (each at most 253 characters). Set a key's name to the
    /// empty string to leave it out.
    #[serde(default)]
    pub keys: TargetKeys,
    /// Extra keys, each rendered from a template in which `{{ .field }}` stands for one of
    /// `accessToken`, `tokenType`, `baseUrl`, `hostname`, `port` and `expiresAt`; nothing
    /// else is interpreted. For example `Authorization: "{{ .tokenType }} {{ .accessToken }}"`.
    /// A template naming another field, or a key that is also one of spec.target.keys, is
    /// reported in the condition `TemplatesRendered` and left out; the other keys are
    /// published as usual. At most 8 keys (valid Secret keys), templates at most 4096
    /// characters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "template_schema")]
    pub template: BTreeMap<String, String>,
}

/// Key names of the target Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.accessToken != ''").message("accessToken cannot be left out"))]
#[x_kube(validation = kube::core::Rule::new(
    "[self.accessToken, self.baseUrl, self.hostname, self.port, self.expiresAt, self.tokenType].filter(k, k != '').all(k, [self.accessToken, self.baseUrl, self.hostname, self.port, self.expiresAt, self.tokenType].filter(j, j == k).size() == 1)"
).message("target key names must differ from one another"))]
#[x_kube(validation = kube::core::Rule::new(
    "[self.accessToken, self.baseUrl, self.hostname, self.port, self.expiresAt, self.tokenType].all(k, k == '' || (k.size() <= 253 && k.matches('^[-._a-zA-Z0-9]+$') && k != '.' && !k.startsWith('..')))"
).message("target key names must be valid Secret keys (letters, digits, '-', '_', '.')"))]
pub struct TargetKeys {
    /// The access token (send as `Authorization: Bearer <token>`).
    #[serde(default = "k_access_token")]
    #[schemars(length(max = 253))]
    pub access_token: String,
    /// API base URL: `https://<hostname>` plus `:<port>` when the port is not 443.
    #[serde(default = "k_base_url")]
    #[schemars(length(max = 253))]
    pub base_url: String,
    /// API host name.
    #[serde(default = "k_hostname")]
    #[schemars(length(max = 253))]
    pub hostname: String,
    /// API port.
    #[serde(default = "k_port")]
    #[schemars(length(max = 253))]
    pub port: String,
    /// When the access token expires, RFC 3339.
    #[serde(default = "k_expires_at")]
    #[schemars(length(max = 253))]
    pub expires_at: String,
    /// Token type, `Bearer`.
    #[serde(default = "k_token_type")]
    #[schemars(length(max = 253))]
    pub token_type: String,
}

impl Default for TargetKeys {
    fn default() -> Self {
        TargetKeys {
            access_token: k_access_token(),
            base_url: k_base_url(),
            hostname: k_hostname(),
            port: k_port(),
            expires_at: k_expires_at(),
            token_type: k_token_type(),
        }
    }
}

/// What the operator observed and did. Never holds a secret value.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EagleEyeCredentialStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
    /// `Ready`: the target Secret holds a valid access token. `ReloginSoon`: the refresh
    /// token nears its 90-day chain end or 14-day idle end; a person must log in again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// When the published access token expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = DATE_TIME_PATTERN))]
    pub access_token_expires_at: Option<Time>,
    /// When the operator plans its next refresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = DATE_TIME_PATTERN))]
    pub next_refresh_at: Option<Time>,
    /// When the last successful refresh happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = DATE_TIME_PATTERN))]
    pub last_refresh_at: Option<Time>,
    /// When the refresh token dies (the earlier of its idle end and its chain end), after
    /// which a person must repeat the Phase 1 login. Empty for non-rotating tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = DATE_TIME_PATTERN))]
    pub refresh_token_deadline: Option<Time>,
    /// True when the deadline rests on the time the operator first saw the refresh token,
    /// because the Secret had no login-time annotation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refresh_token_deadline_is_estimate: bool,
    /// Start of the refresh-token chain (the Phase 1 login).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = DATE_TIME_PATTERN))]
    pub chain_started_at: Option<Time>,
    /// API base URL published in the target Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub base_url: Option<String>,
    /// Rotation mode in force: `Rotating` or `NonRotating`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationMode>,
    /// Name of the target Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub target_secret_name: Option<String>,
    /// Failed refresh attempts since the last success.
    #[serde(default)]
    #[schemars(with = "i32", range(min = 0, max = 1_000_000_000))]
    pub failed_refresh_attempts: u32,
    /// When the last refresh attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = DATE_TIME_PATTERN))]
    pub last_failure_time: Option<Time>,
    /// One-way fingerprint of the login the auth server refused as dead (auth URL, scope,
    /// client credentials and refresh token together). The operator does not send it again
    /// until one of them changes, as a new Phase 1 login does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub refused_login_fingerprint: Option<String>,
    /// The last nudge of the pods named by spec.consumers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<ConsumersStatus>,
    /// How many access tokens the operator has published for this credential: one more
    /// per refresh.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(with = "i64", range(min = 0))]
    pub revision: u64,
    /// The last refreshes, newest last (at most 10; failures in a row are one entry).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub history: Vec<RefreshRecord>,
    /// The last renew request (spec.renewRequest) handled, and how it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew: Option<RenewStatus>,
    /// The workloads of spec.consumers.restart, and the last restart of each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub restarts: Vec<WorkloadRestart>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One refresh, as the history keeps it. Never holds a token.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RefreshRecord {
    /// When it ended (for failures in a row: the last one).
    #[schemars(extend("pattern" = DATE_TIME_PATTERN))]
    pub time: Time,
    /// The operator process that made it (its pod name, or host name and process id).
    #[schemars(length(max = 253))]
    pub process: String,
    /// `Refreshed`, or the reason it failed (`RefreshFailed`, `ReauthorizationRequired`,
    /// `AnswerRefused`).
    #[schemars(length(max = 64))]
    pub outcome: String,
    /// The first 8 characters of the refresh token's fingerprint: the new token after a
    /// refresh, the one sent after a failure.
    #[schemars(length(max = 16))]
    pub refresh_token_fingerprint: String,
    /// status.revision after it.
    #[serde(default)]
    #[schemars(with = "i64", range(min = 0))]
    pub revision: u64,
    /// Failed attempts in a row this entry stands for (1 for a success).
    #[serde(default)]
    #[schemars(with = "i32", range(min = 0, max = 1_000_000_000))]
    pub attempts: u32,
}

/// What became of a renew request.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RenewStatus {
    /// The value of spec.renewRequest handled.
    #[schemars(length(max = 64))]
    pub request: String,
    /// `Renewed`, `Failed` (the refresh failed; retries go on under the usual backoff) or
    /// `Refused` (suspended, a login to repeat, a spec or Secret to fix).
    #[schemars(length(max = 64))]
    pub outcome: String,
    /// Why, in words.
    #[schemars(length(max = 1024))]
    pub message: String,
    /// When it was handled.
    #[schemars(extend("pattern" = DATE_TIME_PATTERN))]
    pub handled_at: Time,
}

/// One workload of spec.consumers.restart and its last restart.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRestart {
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: WorkloadKind,
    /// Name of the workload, in this namespace.
    #[schemars(length(max = 253))]
    pub name: String,
    /// The status.revision it was last restarted for (or found running with, when first
    /// named: a workload is restarted for the access tokens published after that).
    #[schemars(with = "i64", range(min = 0))]
    pub revision: u64,
    /// When it was last restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = DATE_TIME_PATTERN))]
    pub restarted_at: Option<Time>,
    /// Why the last attempt failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub problem: Option<String>,
}

/// What the last nudge of the consuming pods did.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConsumersStatus {
    /// Issue time of the access token the pods were nudged for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = DATE_TIME_PATTERN))]
    pub token_issued_at: Option<Time>,
    /// When the nudge finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = DATE_TIME_PATTERN))]
    pub last_nudge_time: Option<Time>,
    /// Running or pending pods the selector matched.
    #[serde(default)]
    #[schemars(with = "i32", range(min = 0, max = 1_000_000_000))]
    pub selected_pods: u32,
    /// Of those, pods that carry the annotation for this token.
    #[serde(default)]
    #[schemars(with = "i32", range(min = 0, max = 1_000_000_000))]
    pub nudged_pods: u32,
    /// Of those, pods that could not be annotated (see the PodsNudged condition).
    #[serde(default)]
    #[schemars(with = "i32", range(min = 0, max = 1_000_000_000))]
    pub failed_pods: u32,
}

fn conditions_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    // Conditions are a list-map keyed by type, as Kubernetes API conventions ask.
    serde_json::from_value(serde_json::json!({
        "type": "array",
        "maxItems": 16,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status", "lastTransitionTime", "reason", "message"],
            "properties": {
                "type": {"type": "string", "maxLength": 316, "description": "Condition type."},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
                "lastTransitionTime": {"type": "string", "format": "date-time", "pattern": DATE_TIME_PATTERN},
                "reason": {"type": "string", "maxLength": 1024, "description": "CamelCase reason."},
                "message": {"type": "string", "maxLength": 32768, "description": "Human-readable detail."}
            }
        }
    }))
    .expect("static schema is valid JSON")
}

/// RFC 3339 times as the operator's decoder reads them, years 0000 to 9998. The API server's
/// `date-time` check alone lets through times no decoder of the type can read (a stray
/// character before the fraction, more than nine fraction digits, or 9999-12-31, past the
/// last instant jiff represents): one such status write would make every list and watch of
/// credentials fail, in every namespace.
pub const DATE_TIME_PATTERN: &str = r"^([0-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$";

/// Largest `status.failedRefreshAttempts` (and pod count) the CRD accepts; the count stops there.
pub const MAX_FAILED_ATTEMPTS: u32 = 1_000_000_000;

/// Longest label or annotation key Kubernetes accepts: a 253-character DNS prefix, `/`, and a
/// 63-character name.
pub const MAX_KEY_LENGTH: usize = 317;
/// Most entries in `spec.target.labels`, in `spec.target.annotations`, and in a pod selector.
pub const MAX_ENTRIES: usize = 16;
/// Longest value in `spec.target.annotations`.
pub const MAX_ANNOTATION_VALUE: usize = 1024;
/// Longest label value Kubernetes accepts.
pub const MAX_LABEL_VALUE: usize = 63;

/// A bounded map of strings: what a tenant writes into it can neither bloat the operator's
/// memory nor make the API server's CEL cost estimate unbounded.
fn bounded_map(value_max: usize) -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "maxProperties": MAX_ENTRIES,
        "additionalProperties": {"type": "string", "maxLength": value_max},
        "x-kubernetes-validations": [{
            "rule": format!("self.all(k, k.size() <= {MAX_KEY_LENGTH})"),
            "message": format!("keys must be at most {MAX_KEY_LENGTH} characters"),
        }],
    })
}

fn labels_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    serde_json::from_value(bounded_map(MAX_LABEL_VALUE)).expect("static schema is valid JSON")
}

fn annotations_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    serde_json::from_value(bounded_map(MAX_ANNOTATION_VALUE)).expect("static schema is valid JSON")
}

fn pod_selector_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    label_selector_schema("pods")
}

fn workload_selector_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    label_selector_schema("workloads")
}

/// Most keys in spec.target.template, and the longest template.
pub const MAX_TEMPLATES: usize = 8;
pub const MAX_TEMPLATE_LENGTH: usize = 4096;

fn template_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    serde_json::from_value(serde_json::json!({
        "type": "object",
        "maxProperties": MAX_TEMPLATES,
        "additionalProperties": {"type": "string", "maxLength": MAX_TEMPLATE_LENGTH},
        "x-kubernetes-validations": [{
            "rule": "self.all(k, k.size() <= 253 && k.matches('^[-._a-zA-Z0-9]+$') && k != '.' && !k.startsWith('..'))",
            "message": "template keys must be valid Secret keys (letters, digits, '-', '_', '.')",
        }],
    }))
    .expect("static schema is valid JSON")
}

/// A Kubernetes label selector over `what`, with every list, map and string bounded.
fn label_selector_schema(what: &str) -> schemars::Schema {
    let mut match_labels = bounded_map(MAX_LABEL_VALUE);
    match_labels["description"] =
        format!("The {what} whose labels hold every one of these key-value pairs.").into();
    serde_json::from_value(serde_json::json!({
        "type": "object",
        "description": format!("A label selector over the {what} of this namespace, as Deployments use."),
        "properties": {
            "matchLabels": match_labels,
            "matchExpressions": {
                "type": "array",
                "maxItems": MAX_ENTRIES,
                "description": format!("Requirements on the labels of the {what}, all of which must hold."),
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {"type": "string", "maxLength": MAX_KEY_LENGTH, "description": "The label key."},
                        "operator": {
                            "type": "string",
                            "enum": ["In", "NotIn", "Exists", "DoesNotExist"],
                            "description": "How the key relates to the values."
                        },
                        "values": {
                            "type": "array",
                            "maxItems": MAX_ENTRIES,
                            "items": {"type": "string", "maxLength": MAX_LABEL_VALUE},
                            "description": "Values for In and NotIn; empty for Exists and DoesNotExist."
                        }
                    }
                }
            }
        }
    }))
    .expect("static schema is valid JSON")
}

fn default_restart_pause() -> String {
    "1m".into()
}
fn default_auth_url() -> String {
    DEFAULT_AUTH_URL.into()
}
fn default_scope() -> String {
    "vms.all".into()
}
fn default_refresh_before() -> String {
    "30m".into()
}
fn default_client_id_key() -> String {
    "client_id".into()
}
fn default_client_secret_key() -> String {
    "client_secret".into()
}
fn default_refresh_token_key() -> String {
    "refresh_token".into()
}
fn k_access_token() -> String {
    "access_token".into()
}
fn k_base_url() -> String {
    "base_url".into()
}
fn k_hostname() -> String {
    "hostname".into()
}
fn k_port() -> String {
    "port".into()
}
fn k_expires_at() -> String {
    "expires_at".into()
}
fn k_token_type() -> String {
    "token_type".into()
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use jiff::SignedDuration;

    #[test]
    fn durations_parse_in_kubernetes_and_day_forms() {
        assert_eq!(parse_duration("30m"), Some(SignedDuration::from_mins(30)));
        assert_eq!(parse_duration("1h30m"), Some(SignedDuration::from_mins(90)));
        assert_eq!(parse_duration("90s"), Some(SignedDuration::from_secs(90)));
        assert_eq!(
            parse_duration("14d"),
            Some(SignedDuration::from_hours(14 * 24))
        );
        assert_eq!(parse_duration("0s"), Some(SignedDuration::ZERO));
        assert_eq!(parse_duration("soon"), None);
    }
}
