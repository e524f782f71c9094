//! A hostile tenant, with nothing but `create` on credentials and Secrets in its own
//! namespace, tries to starve, bloat or stall the operator that also serves its neighbours:
//! the API server refuses what is padded past the CRD's bounds, and a victim credential in
//! another namespace keeps a working token throughout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::operator::{
    Operator, create_secrets, credential, login, secret, stand_in, wait_for_reason, working_token,
};
use crate::support::{TestEnv, env, env_on, figure};
use eagle_eye_operator::crd::EagleEyeCredential;
use eagle_eye_testbed::standin::StandIn;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};

/// `n` distinct keys of exactly the longest length the CRD accepts for label keys (317).
fn long_keys(n: usize, tag: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            let prefix = format!("{tag}{i}.{}", "p".repeat(252));
            format!("{}/{}", &prefix[..253], "n".repeat(63))
        })
        .collect()
}

fn map(keys: &[String], value: &str) -> serde_json::Value {
    keys.iter()
        .map(|k| (k.clone(), serde_json::Value::from(value)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// A spec with every string, list and map at the longest the CRD accepts. Its Secrets do
/// not exist (a tenant need not create them to make the operator hold the credential).
pub fn padded_spec(stand_in: &StandIn, tag: &str) -> serde_json::Value {
    let url = stand_in.url().to_string();
    let auth_url = format!("{url}{}", "p".repeat(512 - url.len()));
    let name = |c: char| format!("{tag}{}", c.to_string().repeat(253 - tag.len()));
    let key = |c: char| c.to_string().repeat(253);
    let expression = serde_json::json!({
        "key": long_keys(1, "e")[0],
        "operator": "In",
        "values": (0..16).map(|i| format!("{i:02}{}", "v".repeat(61))).collect::<Vec<_>>(),
    });
    serde_json::json!({
        "clientSecretRef": {"name": name('c'), "clientIdKey": key('i'), "clientSecretKey": key('s')},
        "refreshTokenSecretRef": {"name": name('r'), "key": key('k')},
        "authUrl": auth_url,
        "scope": "s".repeat(512),
        "refreshBefore": format!("{}1s", "0".repeat(62)),
        "target": {
            "name": name('t'),
            "labels": map(&long_keys(16, "l"), &"v".repeat(63)),
            "annotations": map(&long_keys(16, "a"), &"v".repeat(1024)),
            "keys": {
                "accessToken": key('a'), "baseUrl": key('b'), "hostname": key('h'),
                "port": key('p'), "expiresAt": key('x'), "tokenType": key('y'),
            },
        },
        "consumers": {"podSelector": {
            "matchLabels": map(&long_keys(16, "m"), &"v".repeat(63)),
            "matchExpressions": vec![expression; 16],
        }},
    })
}

/// A maximally padded credential: `padded_spec`, and metadata annotations and labels near
/// what the API server allows an object (256 KiB of annotations), as `kubectl apply` of a
/// large manifest would add.
pub fn padded_credential(stand_in: &StandIn, name: &str) -> EagleEyeCredential {
    let mut cr = credential(name, stand_in, serde_json::json!({}));
    cr.spec = serde_json::from_value(padded_spec(stand_in, name)).unwrap();
    cr.metadata.annotations = Some([("pad".to_owned(), "x".repeat(250 * 1024))].into());
    cr.metadata.labels = Some(
        (0..64)
            .map(|i| (format!("pad-{i}"), "v".repeat(63)))
            .collect(),
    );
    cr
}

/// Pads one field of a spec past its bound.
type Pad = Box<dyn Fn(&mut serde_json::Value)>;

fn refused(result: Result<EagleEyeCredential, kube::Error>) -> Option<String> {
    match result {
        Err(kube::Error::Api(s)) if s.code == 422 => Some(s.message.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn the_api_server_refuses_a_credential_padded_past_any_bound_and_accepts_one_at_them() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let api = env.api::<EagleEyeCredential>();
    let at_bounds = padded_credential(&si, "at-bounds");
    api.create(&PostParams::default(), &at_bounds)
        .await
        .expect("a credential at every bound is accepted");

    let spec = padded_spec(&si, "over");
    let over: Vec<(&str, Pad)> = vec![
        (
            "a 17th target annotation",
            Box::new(|s| s["target"]["annotations"]["one-more"] = "v".into()),
        ),
        (
            "an annotation value of 1025 characters",
            Box::new(|s| {
                let k = long_keys(1, "a")[0].clone();
                s["target"]["annotations"][k] = "v".repeat(1025).into()
            }),
        ),
        (
            "a label key of 318 characters",
            Box::new(|s| {
                let labels = s["target"]["labels"].as_object_mut().unwrap();
                let first = labels.keys().next().unwrap().clone();
                labels.remove(&first);
                labels.insert(format!("{first}n"), "v".into());
            }),
        ),
        (
            "a label value of 64 characters",
            Box::new(|s| {
                let k = long_keys(1, "l")[0].clone();
                s["target"]["labels"][k] = "v".repeat(64).into()
            }),
        ),
        (
            "an authUrl of 513 characters",
            Box::new(|s| {
                let url = s["authUrl"].as_str().unwrap().to_owned();
                s["authUrl"] = format!("{url}p").into()
            }),
        ),
        (
            "a scope of 513 characters",
            Box::new(|s| s["scope"] = "s".repeat(513).into()),
        ),
        (
            "a key name of 254 characters",
            Box::new(|s| s["refreshTokenSecretRef"]["key"] = "k".repeat(254).into()),
        ),
        (
            "a 17th pod selector expression",
            Box::new(|s| {
                let e = s["consumers"]["podSelector"]["matchExpressions"][0].clone();
                s["consumers"]["podSelector"]["matchExpressions"]
                    .as_array_mut()
                    .unwrap()
                    .push(e)
            }),
        ),
        (
            "a 17th value in a pod selector expression",
            Box::new(|s| {
                s["consumers"]["podSelector"]["matchExpressions"][0]["values"]
                    .as_array_mut()
                    .unwrap()
                    .push("one-more".into())
            }),
        ),
    ];
    for (i, (what, pad)) in over.iter().enumerate() {
        let mut s = spec.clone();
        pad(&mut s);
        let mut cr = credential(&format!("over-{i}"), &si, serde_json::json!({}));
        cr.spec = serde_json::from_value(s).unwrap();
        let message = refused(api.create(&PostParams::default(), &cr).await)
            .unwrap_or_else(|| panic!("a credential with {what} was not refused with 422"));
        assert!(!message.is_empty(), "{what}");
    }

    // A status write that no decoder of the type could read would break every list and
    // watch of credentials, in every namespace: the API server refuses it.
    for attempts in [-1_i64, 1_000_000_001] {
        let patch = serde_json::json!({"status": {"failedRefreshAttempts": attempts}});
        let result = api
            .patch_status("at-bounds", &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        assert!(
            refused(result).is_some(),
            "failedRefreshAttempts {attempts} was not refused"
        );
    }
    // So is a time the API server's own date-time check lets through but no decoder of the
    // type reads: a stray character before the fraction, ten or more fraction digits.
    for (field, time) in [
        ("lastRefreshAt", "2026-01-01T00:00:00x1Z"),
        ("lastRefreshAt", "2026-01-01T00:00:00.1234567890123Z"),
        ("accessTokenExpiresAt", "2026-01-01t00:00:00z"),
        ("refreshTokenDeadline", "9999-12-31T23:59:59Z"),
    ] {
        let patch = serde_json::json!({"status": {field: time}});
        let result = api
            .patch_status("at-bounds", &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        assert!(refused(result).is_some(), "{field}: {time} was not refused");
    }
    // Times people and tools really write still go in, far-future ones included.
    for time in ["9998-12-31T23:59:59Z", "2026-12-06T10:00:00.123456+01:00"] {
        let patch = serde_json::json!({"status": {"lastRefreshAt": time}});
        api.patch_status("at-bounds", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("{time}: {e}"));
    }
    let lean: kube::Api<eagle_eye_operator::controller::LeanCredential> =
        kube::Api::namespaced(env.client.clone(), &env.namespace);
    assert!(lean.list(&Default::default()).await.is_ok());
    assert!(api.list(&Default::default()).await.is_ok());
}

/// How long the hostile tenant keeps at it while the victim is sampled.
const SAMPLE_SECS: usize = 100;

#[tokio::test]
async fn a_victim_keeps_a_working_token_while_another_tenant_pads_floods_and_churns() {
    let victim = crate::support::own_env().await;
    let hostile = env_on(victim.plane).await;
    let si = stand_in(Duration::from_secs(10)).await;
    // An allowed auth destination that accepts connections and never answers.
    let (hole, hung, _hole_task) = crate::fair_calls::black_hole().await;
    let hole_entry = format!("127.0.0.1:{hole}");
    // Two shards, as `credentialSelector` makes them, each for all namespaces: the victim
    // and the tenant share shard a.
    let start = |shard: &'static str| {
        let (victim, si, hole) = (&victim, &si, &hole_entry);
        async move {
            let selector = format!("shard={shard}");
            let extra = [
                "--credential-selector",
                &selector,
                "--allow-insecure-http",
                "--allowed-auth-hosts",
                hole,
            ];
            let mut op = Operator::start(victim, si, &extra).await;
            // Cluster scope, as the chart installs it by default: one controller, one set
            // of reconcile seats, for every namespace.
            op.set_args(|args| {
                let at = args.iter().position(|a| a == "--namespaces").unwrap();
                args.drain(at..at + 2);
            })
            .await;
            op
        }
    };
    let mut shard_a = start("a").await;
    let mut shard_b = start("b").await;

    let login_v = login(&si, "victim-client", true).await;
    create_secrets(&victim, "victim", &login_v).await;
    let mut cr = credential("victim", &si, serde_json::json!({}));
    cr.metadata.labels = Some([("shard".to_owned(), "a".to_owned())].into());
    victim
        .api::<EagleEyeCredential>()
        .create(&PostParams::default(), &cr)
        .await
        .unwrap();
    wait_for_reason(&victim, "victim", "TokenRefreshed", Duration::from_secs(30)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let churn = tokio::spawn(churn(
        hostile_env(&hostile),
        si.url().to_string(),
        stop.clone(),
    ));
    let flood = flood(&hostile, &si, hole);

    let mut samples = Vec::new();
    let sampling = async {
        for _ in 0..SAMPLE_SECS {
            let t = tokio::time::Instant::now();
            samples.push(working_token(&victim, &si, "victim-token").await);
            tokio::time::sleep_until(t + Duration::from_secs(1)).await;
        }
    };
    let ((), created) = tokio::join!(sampling, flood);
    stop.store(true, Ordering::SeqCst);
    let flips = churn.await.unwrap();

    let working = samples.iter().filter(|s| s.is_ok()).count();
    let failed: Vec<(usize, &String)> = samples
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.as_ref().err().map(|e| (i, e)))
        .collect();
    let share = working as f64 / samples.len() as f64 * 100.0;
    let reuse = si.counters().reused_refresh_tokens;
    let peak = shard_a
        .pid()
        .map(|pid| crate::support::proc_kib(pid, "VmHWM"))
        .unwrap_or_default();
    figure(format!(
        "the shard serving victim and tenant peaked at {peak} KiB RSS (VmHWM, debug build)"
    ));
    figure(format!(
        "victim held a working token in {working} of {} one-second samples ({share:.1}%) while another tenant created {created} credentials ({PADDED} padded to every bound, {DEAD} with dead logins, {SILENT} aimed at an auth host that never answers) and churned Secrets and shard labels {flips} times; {reuse} reuse",
        samples.len()
    ));
    assert!(
        shard_a.is_running() && shard_b.is_running(),
        "an operator exited"
    );
    // The silent destination was called, by at most its slots' worth of calls per shard.
    let hung = hung.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=8).contains(&hung),
        "{hung} connections to the silent destination"
    );
    assert_eq!(reuse, 0, "a refresh token was reused");
    assert!(
        share >= 99.0,
        "the victim held a working token in only {share:.1}% of samples; failed samples: {failed:?}"
    );
    shard_a.kill().await;
    shard_b.kill().await;
}

fn hostile_env(env: &TestEnv) -> (kube::Client, String) {
    (env.client.clone(), env.namespace.clone())
}

const PADDED: usize = 60;
const DEAD: usize = 1000;
const SILENT: usize = 200;

/// Creates the credentials aimed at the silent port `hole`, the padded credentials and the
/// dead logins, a few at a time; returns how many credentials it created.
async fn flood(env: &TestEnv, si: &StandIn, hole: u16) -> usize {
    let shard_a = |mut cr: EagleEyeCredential| {
        cr.metadata
            .labels
            .get_or_insert_default()
            .insert("shard".into(), "a".into());
        cr
    };
    let credentials = env.api::<EagleEyeCredential>();
    let padded = futures::stream::iter(0..PADDED)
        .map(|i| {
            let cr = shard_a(padded_credential(si, &format!("pad-{i}")));
            let api = credentials.clone();
            async move { api.create(&PostParams::default(), &cr).await.is_ok() }
        })
        .buffer_unordered(8)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    assert_eq!(padded, PADDED, "every padded credential is accepted");

    // Dead logins: refresh tokens the auth server never issued, one Secret each.
    let dead = login(si, "dead-client", true).await;
    create_secrets(env, "dead", &dead).await;
    let secrets = env.api::<Secret>();

    for i in 0..SILENT {
        let name = format!("silent-{i}");
        // A token of its own: one shared with another credential is RefreshTokenInUse and
        // never sent anywhere.
        let token = format!("silent-token-{i}");
        let stored = secret(&format!("{name}-refresh"), &[("refresh_token", &token)]);
        secrets
            .create(&PostParams::default(), &stored)
            .await
            .unwrap();
        let spec = serde_json::json!({"authUrl": format!("http://127.0.0.1:{hole}")});
        let mut cr = shard_a(credential(&name, si, spec));
        cr.spec.client_secret_ref.name = "dead-client".into();
        credentials
            .create(&PostParams::default(), &cr)
            .await
            .unwrap();
    }
    let created = futures::stream::iter(0..DEAD)
        .map(|i| {
            let (secrets, credentials) = (secrets.clone(), credentials.clone());
            let name = format!("dead-{i}");
            let mut cr = shard_a(credential(&name, si, serde_json::json!({})));
            cr.spec.client_secret_ref.name = "dead-client".into();
            async move {
                let stored = secret(
                    &format!("{name}-refresh"),
                    &[("refresh_token", &format!("never-issued-{i}"))],
                );
                secrets.create(&PostParams::default(), &stored).await.ok()?;
                credentials.create(&PostParams::default(), &cr).await.ok()
            }
        })
        .buffer_unordered(16)
        .filter(|c| futures::future::ready(c.is_some()))
        .count()
        .await;
    assert_eq!(created, DEAD, "every dead login is created");
    SILENT + PADDED + DEAD
}

/// Until `stop`: a credential's Secrets deleted and recreated, and another credential moved
/// between the shards, over and over. Returns how many rounds it made.
async fn churn(
    (client, namespace): (kube::Client, String),
    auth_url: String,
    stop: Arc<AtomicBool>,
) -> usize {
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), &namespace);
    let credentials: kube::Api<EagleEyeCredential> = kube::Api::namespaced(client, &namespace);
    let spec = serde_json::json!({
        "clientSecretRef": {"name": "churn-client"},
        "refreshTokenSecretRef": {"name": "churn-refresh"},
        "authUrl": auth_url,
    });
    for (name, shard) in [("churn", "a"), ("flip", "a")] {
        let cr: EagleEyeCredential = serde_json::from_value(serde_json::json!({
            "apiVersion": "eagle-eye-operator.io/v1alpha1",
            "kind": "EagleEyeCredential",
            "metadata": {"name": name, "labels": {"shard": shard}},
            "spec": spec,
        }))
        .unwrap();
        credentials
            .create(&PostParams::default(), &cr)
            .await
            .unwrap();
    }
    let mut rounds = 0;
    while !stop.load(Ordering::SeqCst) {
        for name in ["churn-client", "churn-refresh"] {
            let _ = secrets.delete(name, &DeleteParams::default()).await;
            let data = [
                ("client_id", "c"),
                ("client_secret", "s"),
                ("refresh_token", "r"),
            ];
            let _ = secrets
                .create(&PostParams::default(), &secret(name, &data))
                .await;
        }
        let shard = if rounds % 2 == 0 { "b" } else { "a" };
        let relabel = serde_json::json!({"metadata": {"labels": {"shard": shard}}});
        let _ = credentials
            .patch("flip", &PatchParams::default(), &Patch::Merge(&relabel))
            .await;
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    rounds
}
