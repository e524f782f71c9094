//! Token safety, part B (issue 8): what a user sees when the operator must not spend a
//! refresh token again, although something else went wrong around it — a status it cannot
//! write, an answer it cannot read, an answer its configuration refuses.

use std::time::{Duration, Instant};

use crate::support::operator::{
    Login, Operator, api_accepts, create_credential, create_secrets, login, ready, secret_data,
    set_flag, stand_in, wait_for_reason,
};
use crate::support::{TestEnv, env, eventually, figure};
use eagle_eye_operator::crd::EagleEyeCredential;
use eagle_eye_testbed::standin::{Fault, Gate, StandIn};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

/// Events about the credential `name`, as (reason, note).
async fn events_about(env: &TestEnv, name: &str) -> Vec<(String, String)> {
    let events = env
        .api::<Event>()
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    events
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

/// Spends `refresh_token` at the stand-in as another client of the same login would (a
/// second tool, a person with curl): afterwards it is rotated out, so any later use of it
/// is a reuse. Returns whether the stand-in granted the refresh; the new tokens are
/// dropped.
async fn spend_out_of_band(si: &StandIn, login: &Login, refresh_token: &str) -> bool {
    // RFC 6749 §2.3.1: each Basic part form-encoded, as the stand-in decodes them.
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if let Some(pem) = si.ca_pem() {
        builder =
            builder.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
    }
    let response = builder
        .build()
        .unwrap()
        .post(si.url().join("oauth2/token").unwrap())
        .basic_auth(encode(&login.client_id), Some(encode(&login.client_secret)))
        .header("accept", "application/json")
        .form(&[
            ("grant_type", "refresh_token"),
            ("scope", "vms.all"),
            ("refresh_token", refresh_token),
        ])
        .send()
        .await
        .unwrap();
    response.status() == 200
}

/// A ValidatingAdmissionPolicy (with its binding) that refuses every write of the status
/// of credential `name` in the test's namespace, as a cluster policy or a broken webhook
/// might. Returns once kube-apiserver enforces it.
async fn refuse_status_writes(env: &TestEnv, name: &str) -> String {
    let policy_name = format!("eeo-no-status-{}-{name}", env.namespace);
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": policy_name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [{
                    "apiGroups": ["eagle-eye-operator.io"],
                    "apiVersions": ["*"],
                    // A patch, server-side apply included, is an UPDATE to admission.
                    "operations": ["UPDATE"],
                    "resources": ["eagleeyecredentials/status"],
                }],
            },
            "validations": [{
                "expression": format!(
                    "!(object.metadata.namespace == '{}' && object.metadata.name == '{name}')",
                    env.namespace
                ),
                "message": "status writes of this credential are refused by a test policy",
                "reason": "Forbidden",
            }],
        },
    }))
    .unwrap();
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": policy_name},
        "spec": {"policyName": policy_name, "validationActions": ["Deny"]},
    }))
    .unwrap();
    Api::<ValidatingAdmissionPolicy>::all(env.client.clone())
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    Api::<ValidatingAdmissionPolicyBinding>::all(env.client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    // kube-apiserver loads policies asynchronously: a dry-run status change shows when it
    // is enforced, without changing anything.
    let api = env.api::<EagleEyeCredential>();
    let dry_run = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    eventually(
        "kube-apiserver to enforce the policy",
        Duration::from_secs(30),
        || async {
            let change = serde_json::json!({"status": {"failedRefreshAttempts": 4242}});
            api.patch_status(name, &dry_run, &Patch::Merge(&change))
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    policy_name
}

async fn remove_policy(env: &TestEnv, policy_name: &str) {
    let _ = Api::<ValidatingAdmissionPolicyBinding>::all(env.client.clone())
        .delete(policy_name, &DeleteParams::default())
        .await;
    let _ = Api::<ValidatingAdmissionPolicy>::all(env.client.clone())
        .delete(policy_name, &DeleteParams::default())
        .await;
}

/// Issue 8, failure 6: the memory of a refused login lived only in the status, so when the
/// status could not be written the dead token was sent again at every retry (and
/// `Retry-After` was skipped). Every such send counts as token reuse at the vendor.
#[tokio::test]
async fn a_refused_login_is_not_sent_again_while_its_status_cannot_be_written() {
    let env = env().await;
    // 30 s tokens: the scheduled refresh comes about 20 s after the first one.
    let si = stand_in(Duration::from_secs(30)).await;
    let login = login(&si, "unwritable-client", true).await;
    create_secrets(&env, "unwritable", &login).await;
    // The refresh below is held at the stand-in while the test sets the scene, longer than a
    // Lease allows a token call (10 s) on a loaded machine: one replica, no leader election.
    let op = Operator::start(
        &env,
        &si,
        &["--no-leader-election", "--token-timeout", "60s"],
    )
    .await;
    create_credential(&env, "unwritable", &si, serde_json::json!({})).await;
    wait_for_reason(
        &env,
        "unwritable",
        "TokenRefreshed",
        Duration::from_secs(30),
    )
    .await;
    let before = si.counters();

    // The next scheduled refresh waits at the stand-in while status writes are made to fail
    // and the token it carries is spent elsewhere: its answer will be invalid_grant.
    let gate = Gate::new();
    si.inject(Fault::Hold(gate.clone()), 1);
    let policy = refuse_status_writes(&env, "unwritable").await;
    eventually(
        "the next scheduled refresh to reach the stand-in",
        Duration::from_secs(60),
        || async { (si.counters().token_requests > before.token_requests).then_some(()) },
    )
    .await;
    let stored = secret_data(&env, "unwritable-refresh").await.unwrap()["refresh_token"].clone();
    assert!(
        spend_out_of_band(&si, &login, &stored).await,
        "the stored refresh token could be spent out of band"
    );
    // The held refresh, then the out-of-band one.
    let requests_before_refusal = si.token_requests().len();
    gate.open();
    eventually(
        "the held refresh to be refused as a reuse",
        Duration::from_secs(10),
        || async {
            (si.counters().reused_refresh_tokens > before.reused_refresh_tokens).then_some(())
        },
    )
    .await;
    let refused_at = Instant::now();

    // Every later send of the dead token is a reuse at the stand-in. 20 s covers the first
    // four retries the operator could make after a failed reconcile (Kubernetes API failures
    // and refresh failures are both retried after 1 s, 2 s, 4 s, 8 s...); a correct operator
    // sends nothing at all until the login changes.
    let window = Duration::from_secs(20);
    while refused_at.elapsed() < window {
        if si.counters().reused_refresh_tokens > before.reused_refresh_tokens + 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let watched = refused_at.elapsed();
    let sends = si.counters().reused_refresh_tokens - before.reused_refresh_tokens;
    // When each later token request came, counted from the refused one's arrival.
    let log = si.token_requests();
    let held = log[before.token_requests as usize].arrived;
    let later: Vec<Duration> = log[requests_before_refusal..]
        .iter()
        .map(|r| r.arrived - held)
        .collect();

    // What a user can see while the status cannot be written.
    let visible = ready(&env, "unwritable").await;
    println!("Ready condition (status writes refused): {visible:?}");
    let events = events_about(&env, "unwritable").await;
    for (reason, note) in &events {
        println!("event {reason}: {note}");
    }
    let logs = op.current_logs();
    let phase_1_lines: Vec<&str> = logs.lines().filter(|l| l.contains("Phase 1")).collect();
    for line in phase_1_lines.iter().take(5) {
        println!("log: {line}");
    }
    remove_policy(&env, &policy).await;

    assert!(
        sends <= 1,
        "the refused refresh token was sent {sends} times within {watched:?} of its refusal \
         (later token requests came {later:?} after the refused one)"
    );
    assert!(
        events.iter().any(|(_, note)| note.contains("Phase 1")) || !phase_1_lines.is_empty(),
        "neither an Event nor a log line says the login needs a new Phase 1"
    );
    let stored_now = secret_data(&env, "unwritable-refresh").await.unwrap();
    assert!(
        stored_now["refresh_token"] == stored,
        "nothing replaced the dead refresh token meanwhile"
    );
}

/// A 200 answer carrying a new refresh token that the operator cannot use whole: the
/// stand-in rotates the token and sends `fault`'s body; the retry after it is held until
/// the test has looked at what the user sees.
async fn rotated_token_in_an_unusable_answer_is_stored(name: &str, fault: Fault) {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let login = login(&si, &format!("{name}-client"), true).await;
    create_secrets(&env, name, &login).await;
    si.inject(fault, 1);
    let retry = Gate::new();
    si.inject(Fault::Hold(retry.clone()), 1);
    // The retry is held while the test looks, longer than a Lease allows a token call on a
    // loaded machine: one replica, no leader election.
    let _op = Operator::start(
        &env,
        &si,
        &["--no-leader-election", "--token-timeout", "60s"],
    )
    .await;
    create_credential(&env, name, &si, serde_json::json!({})).await;
    eventually(
        "the stand-in to rotate the token and send the unusable answer",
        Duration::from_secs(30),
        || async { (si.counters().refreshes >= 1).then_some(()) },
    )
    .await;
    assert!(
        !si.refresh_token_is_live(&login.grant.refresh_token),
        "the unusable answer rotated the login's first token"
    );
    let retried = eventually(
        "the operator to try again after the unusable answer",
        Duration::from_secs(60),
        || async { (si.token_requests().len() >= 2).then_some(Instant::now()) },
    )
    .await;
    let refresh_secret = format!("{name}-refresh");
    let stored = secret_data(&env, &refresh_secret).await.unwrap()["refresh_token"].clone();
    let visible = ready(&env, name).await;
    println!("Ready condition after the unusable answer: {visible:?}");
    // Checked before the retry is let through: were the stored token dead, the retry would
    // spend it, a reuse that loses the login.
    assert!(
        si.refresh_token_is_live(&stored),
        "when the operator tried again, Secret {refresh_secret} held a refresh token the \
         stand-in no longer accepts: the one rotated in the unusable answer was not stored"
    );
    assert_eq!(
        si.counters().reused_refresh_tokens,
        0,
        "no token was spent twice"
    );

    retry.open();
    wait_for_reason(&env, name, "TokenRefreshed", Duration::from_secs(60)).await;
    figure(format!(
        "{name}: Ready {:?} after the retry reached the stand-in",
        retried.elapsed()
    ));
    assert_eq!(
        si.counters().reused_refresh_tokens,
        0,
        "no token was spent twice"
    );
    let stored = secret_data(&env, &refresh_secret).await.unwrap();
    assert!(
        si.refresh_token_is_live(&stored["refresh_token"]),
        "the stored refresh token is the live one"
    );
    let data = secret_data(&env, &format!("{name}-token")).await.unwrap();
    assert!(api_accepts(&si, &data["base_url"], &data["access_token"]).await);
}

/// Issue 8, failure 7, body over the cap: `Padded` makes the answer larger than the
/// operator's 64 KiB limit, with the new refresh token near its start.
#[tokio::test]
async fn a_rotated_token_in_an_answer_over_the_size_cap_is_stored_and_the_next_answer_makes_it_ready()
 {
    rotated_token_in_an_unusable_answer_is_stored("padded", Fault::Padded { bytes: 100_000 }).await;
}

/// Issue 8, failure 7, a body that is not UTF-8: `InvalidUtf8` appends a member whose bytes
/// are not UTF-8 after the new refresh token.
#[tokio::test]
async fn a_rotated_token_in_an_answer_that_is_not_utf8_is_stored_and_the_next_answer_makes_it_ready()
 {
    rotated_token_in_an_unusable_answer_is_stored("notutf8", Fault::InvalidUtf8).await;
}

/// Issue 8, failure 8: an answer naming an API host outside `--allowed-api-hosts` was
/// classed transient, so the operator rotated the token again and again (every retry is a
/// new rotation) without ever publishing. It must store the rotated token, say what is
/// wrong, and send nothing more until its configuration changes.
#[tokio::test]
async fn an_api_host_outside_the_allow_list_stores_the_rotated_token_says_so_and_refreshes_no_more()
{
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let login = login(&si, "allowlist-client", true).await;
    create_secrets(&env, "allow", &login).await;
    // One replica, so that the restart below does not wait for a Lease to expire.
    let mut op = Operator::start(&env, &si, &["--no-leader-election"]).await;
    // The stand-in names 127.0.0.1 as the API host; this allow-list does not include it.
    op.set_args(|args| set_flag(args, "--allowed-api-hosts", "*.eagleeyenetworks.com"))
        .await;
    create_credential(&env, "allow", &si, serde_json::json!({})).await;
    eventually(
        "the first token request to be answered",
        Duration::from_secs(30),
        || async {
            let first = si.token_requests().first()?.status?;
            (first == 200).then_some(())
        },
    )
    .await;
    let answered_at = Instant::now();
    assert_eq!(si.counters().refreshes, 1, "the stand-in rotated the token");
    let (status, reason, message) =
        eventually("a not-Ready condition", Duration::from_secs(30), || async {
            let (status, reason, message) = ready(&env, "allow").await?;
            (status == "False").then_some((status, reason, message))
        })
        .await;
    println!("after the refused answer: Ready={status} reason={reason}: {message}");
    let stored = eventually(
        "the rotated refresh token to be stored",
        Duration::from_secs(30),
        || async {
            let d = secret_data(&env, "allow-refresh").await?;
            (d["refresh_token"] != login.grant.refresh_token).then_some(d)
        },
    )
    .await;
    let stored_was_live = si.refresh_token_is_live(&stored["refresh_token"]);

    // Nothing more may be sent. A transient classification retries after 1 s, 2 s, 4 s and
    // 8 s (each plus up to a fifth of jitter), all within these 20 s; a correct operator
    // waits for its configuration to change, which a restart below does.
    let window = Duration::from_secs(20);
    while answered_at.elapsed() < window && si.token_requests().len() == 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = si.token_requests();
    let first = requests[0].arrived;
    let later: Vec<Duration> = requests[1..].iter().map(|r| r.arrived - first).collect();
    let (status_then, reason_then, message_then) = ready(&env, "allow").await.unwrap();
    println!(
        "{:?} after the answer: Ready={status_then} reason={reason_then}: {message_then}",
        answered_at.elapsed()
    );
    assert!(
        stored_was_live,
        "the stored refresh token was live at the stand-in after the refused answer"
    );
    assert!(
        later.is_empty(),
        "{} more token requests were sent after the refused answer, at {later:?} from the \
         first (each rotates the token again)",
        later.len()
    );
    assert_eq!(status_then, "False");
    assert!(
        message_then.contains("127.0.0.1"),
        "the condition names the API host that was refused: {message_then}"
    );
    assert_eq!(si.counters().reused_refresh_tokens, 0);

    // With the host allowed, the operator finishes the job from the stored token.
    let restarted = Instant::now();
    op.set_args(|args| set_flag(args, "--allowed-api-hosts", "127.0.0.1,localhost"))
        .await;
    wait_for_reason(&env, "allow", "TokenRefreshed", Duration::from_secs(30)).await;
    figure(format!(
        "Ready {:?} after a restart with the host allowed",
        restarted.elapsed()
    ));
    assert_eq!(
        si.counters().reused_refresh_tokens,
        0,
        "no token was spent twice"
    );
    let stored = secret_data(&env, "allow-refresh").await.unwrap();
    assert!(si.refresh_token_is_live(&stored["refresh_token"]));
    let data = secret_data(&env, "allow-token").await.unwrap();
    assert!(api_accepts(&si, &data["base_url"], &data["access_token"]).await);
}
