//! `renew`: asks the operator for one refresh of a credential now, like `cmctl renew`. It
//! sets spec.renewRequest to the current time and waits for status.renew to report the
//! outcome; the refresh itself goes through every safety rule of the operator.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams};

use crate::crd::{EagleEyeCredential, RenewStatus};
use crate::kubectl::KubeArgs;
use crate::renew;

/// Exit code when the operator refused the request or the refresh failed.
pub const NOT_RENEWED_EXIT: u8 = 3;

#[derive(Args, Debug, Clone)]
pub struct RenewArgs {
    /// The EagleEyeCredential to renew.
    pub name: String,
    #[command(flatten)]
    pub kube: KubeArgs,
    /// How long to wait for the operator's answer; `0s` returns once the request is set.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub wait: SignedDuration,
}

fn duration(s: &str) -> Result<SignedDuration, String> {
    crate::crd::parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration such as 60s"))
}

/// What the person is told before anything is changed.
pub fn warning(namespace: &str, cr: &EagleEyeCredential) -> String {
    let name = cr.metadata.name.as_deref().unwrap_or_default();
    let target = crate::target::target_name(cr);
    format!(
        "Renewing EagleEyeCredential {namespace}/{name}: the refresh ENDS the access token workloads use now.\nThey must read the new one from Secret {target:?}: pods that mount it see it within about a minute (at once with spec.consumers.podSelector); workloads that read it only at start need spec.consumers.restart."
    )
}

pub async fn run(args: RenewArgs) -> anyhow::Result<ExitCode> {
    let cluster = args.kube.connect().await?;
    let api: Api<EagleEyeCredential> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let cr = api.get(&args.name).await.with_context(|| {
        format!(
            "reading EagleEyeCredential {}/{}",
            cluster.namespace, args.name
        )
    })?;
    if cr.spec.suspend {
        eprintln!(
            "not renewed: EagleEyeCredential {}/{} is suspended (spec.suspend); resume it first",
            cluster.namespace, args.name
        );
        return Ok(ExitCode::from(NOT_RENEWED_EXIT));
    }
    eprintln!("{}", warning(&cluster.namespace, &cr));
    let request = renew_value(Timestamp::now());
    let patch = serde_json::json!({"spec": {"renewRequest": request}});
    api.patch(&args.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .context("setting spec.renewRequest")?;
    println!("renew requested: spec.renewRequest={request}");
    if args.wait <= SignedDuration::ZERO {
        return Ok(ExitCode::SUCCESS);
    }
    let limit = Duration::try_from(args.wait).unwrap_or(Duration::from_secs(60));
    let answered = tokio::time::timeout(limit, async {
        loop {
            if let Ok(cr) = api.get(&args.name).await
                && let Some(r) = cr.status.and_then(|s| s.renew)
                && r.request == request
            {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    match answered {
        Ok(r) => Ok(report(&r)),
        Err(_) => {
            eprintln!(
                "no answer from the operator within {:#}: the request stays set and is served once; see kubectl eagleeye status {} -n {}",
                args.wait, args.name, cluster.namespace
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// A request value: the time, to the millisecond, so two requests never coincide.
fn renew_value(now: Timestamp) -> String {
    Timestamp::from_millisecond(now.as_millisecond())
        .unwrap_or(now)
        .to_string()
}

fn report(r: &RenewStatus) -> ExitCode {
    println!("{}: {}", r.outcome, r.message);
    if r.outcome == renew::RENEWED {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(NOT_RENEWED_EXIT)
    }
}
